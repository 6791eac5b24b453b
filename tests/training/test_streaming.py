"""Streaming data: image folders and map-style datasets read a batch at a time, .npz inputs
mapped from the file, other iterables of batches spooled to a mapped temporary file."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx.numpy_helper
import pytest
import torch
from conftest import ROOT
from PIL import Image

import onnxprune
import onnxprune.api
from onnxprune.errors import UsageError
from onnxprune.training import data as datasets
from onnxprune.training import lazy, sources, torch_data

SPEC = datasets.InputSpec("input", ("N", 1, 28, 28), np.dtype(np.float32))
LENET = ROOT / "sample_models" / "lenet5.onnx"


def _folder(tmp_path: Path, n: int, classes: int = 3) -> Path:
    """``n`` generated 20x20 grayscale PNGs, pixel value = index mod 256, in class folders."""
    root = tmp_path / "images"
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 20), i % 256, np.uint8)).save(folder / f"{i:05d}.png")
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of images decoded by each read, observed on every :class:`lazy.Images`."""
    seen: list[int] = []
    rows = lazy.Images.rows

    def counted(self: lazy.Images, index: np.ndarray) -> np.ndarray:
        seen.append(len(index))
        return rows(self, index)

    monkeypatch.setattr(lazy.Images, "rows", counted)
    return seen


def test_an_image_folder_is_decoded_a_batch_at_a_time(tmp_path: Path, reads: list[int]) -> None:
    root = _folder(tmp_path, 300)
    data = datasets.load_data(root, SPEC)
    datasets.check(data, SPEC, classes=10)
    train, val = datasets.split(data)
    assert not reads  # loading, checking and splitting decode nothing
    assert isinstance(train.x, lazy.Lazy) and len(train) + len(val) == 300
    batches = list(train.batches(32, shuffle=True))
    assert max(reads) == 32 and sum(reads) == len(train)  # each image once, 32 at a time
    x, y = batches[0]
    assert x.shape == (32, 1, 28, 28) and y is not None
    order = np.random.default_rng(0).permutation(len(train))[:32]
    want = np.asarray(train.x[order])  # the same rows, read again
    np.testing.assert_array_equal(x.numpy(), want)
    assert float(x.max()) <= 1.0


def test_a_prune_reads_no_more_than_a_batch_or_a_calibration_draw(tmp_path: Path,
                                                                  reads: list[int]) -> None:
    root = _folder(tmp_path, 400, classes=10)
    result = onnxprune.prune(LENET, "magnitude", max_flops=0.6, data=root, epochs=1,
                             round_to=1, quiet=True)
    assert result.report["training"]["epochs"] == 1
    assert reads and max(reads) <= 256  # the batch size, or one calibration batch


def test_an_npz_is_mapped_from_the_file_not_read(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((500, 1, 28, 28), dtype=np.float32)
    y = np.arange(500) % 10
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = datasets.load_data(tmp_path / "d.npz", SPEC)
    assert lazy.is_lazy(data.x) and isinstance(np.asarray(data.x[:2]), np.ndarray)
    assert isinstance(data.x, np.memmap)  # same dtype: the map itself
    train, val = datasets.split(data)
    assert isinstance(train.x, lazy.Indexed) and isinstance(val.x, lazy.Indexed)
    np.testing.assert_array_equal(np.asarray(data.x), x)
    np.testing.assert_array_equal(np.concatenate([b for b, _ in train.batches(64)]),
                                  x[np.sort(train.x.index)])


@pytest.mark.parametrize("save", [np.savez_compressed, np.savez])
def test_cast_and_normalisation_apply_as_rows_are_read(tmp_path: Path, save: object) -> None:
    x = np.random.default_rng(1).random((40, 1, 28, 28)).astype(np.float64)
    save(tmp_path / "d.npz", x=x)  # a compressed archive is read whole: same values
    data = datasets.load_data(tmp_path / "d.npz", SPEC, mean=[0.5], std=[0.25])
    assert data.x.dtype == np.float32
    np.testing.assert_allclose(np.asarray(data.x), (x - 0.5) / 0.25, atol=1e-6)


def test_workers_read_the_same_batches_and_train_the_same_model(tmp_path: Path) -> None:
    root = _folder(tmp_path, 120, classes=10)
    data = datasets.load_data(root, SPEC)
    alone = list(data.batches(16, shuffle=True, seed=3))
    helped = list(data.batches(16, shuffle=True, seed=3, workers=2))
    assert len(alone) == len(helped) == 8
    for (x1, y1), (x2, y2) in zip(alone, helped, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    runs = [onnxprune.prune(LENET, "magnitude", max_flops=0.6, data=root, epochs=1,
                            round_to=1, quiet=True, workers=w) for w in (0, 2)]
    assert [r.report["options"]["workers"] for r in runs] == [0, 2]
    for a, b in zip(runs[0].model.graph.initializer, runs[1].model.graph.initializer,
                    strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a),
                                      onnx.numpy_helper.to_array(b))
    assert onnxprune.api.default_workers(data) == max(0, min(4, (os.cpu_count() or 1) - 1))
    assert onnxprune.api.default_workers(datasets.Dataset(np.zeros((4, 1), np.float32))) == 0


class Counted(torch.utils.data.Dataset):
    """``n`` items ``(x, y)``: x a (1, 28, 28) tensor filled with i / n, y = i mod 10.

    ``reads`` counts the calls of ``dataset[i]`` per item; ``targets`` (torchvision's
    convention) holds the labels unless ``targets`` is False; ``labelled`` False gives x alone.
    """

    def __init__(self, n: int, *, targets: bool = True, labelled: bool = True) -> None:
        self.n, self.labelled, self.reads = n, labelled, Counter()
        if targets:
            self.targets = [i % 10 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | torch.Tensor:
        self.reads[i] += 1
        x = torch.full((1, 28, 28), i / self.n)
        return (x, i % 10) if self.labelled else x


def test_a_map_style_dataset_is_read_a_batch_at_a_time() -> None:
    items = Counted(3000)
    data = datasets.load_data(items, SPEC)
    assert items.reads == Counter([0])  # item 0 alone, for the shape and dtype; labels: targets
    assert isinstance(data.x, torch_data.Items) and data.x.shape == (3000, 1, 28, 28)
    np.testing.assert_array_equal(data.y, np.arange(3000) % 10)
    items.reads.clear()
    train, val = datasets.split(data)
    data.subset(np.arange(0, 3000, 7))
    assert not items.reads  # a subset is a list of positions
    batches = list(data.batches(64, shuffle=True))
    assert items.reads == Counter(range(3000))  # one epoch reads each item once
    x, y = batches[0]
    order = np.random.default_rng(0).permutation(3000)[:64]
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), order / 3000, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), order % 10)
    assert len(train) == 2700 and len(val) == 300


def test_a_dataset_without_targets_is_read_once_for_its_labels() -> None:
    items = Counted(500, targets=False)
    data = datasets.load_data(items, SPEC)
    assert items.reads == Counter(range(500))  # one pass for the labels; no inputs kept
    np.testing.assert_array_equal(data.y, np.arange(500) % 10)
    assert isinstance(data.x, torch_data.Items)
    unlabelled = Counted(50, targets=False, labelled=False)
    assert not datasets.load_data(unlabelled, SPEC).labelled
    assert unlabelled.reads == Counter([0])

    class Mixed(Counted):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | torch.Tensor:
            item = super().__getitem__(i)
            return item[0] if i == 7 else item

    with pytest.raises(UsageError, match="Mixed: some items have labels y and some do not"):
        datasets.load_data(Mixed(20, targets=False), SPEC)


def test_a_dataloader_gives_its_dataset_and_its_samplers_choice() -> None:
    items = Counted(200)
    loader = torch.utils.data.DataLoader(items, batch_size=32, shuffle=True, drop_last=True)
    data = datasets.load_data(loader, SPEC)  # training batches and shuffles; drop_last kept
    assert len(data) == 192 and isinstance(data.x, torch_data.Items)
    whole = datasets.load_data(torch.utils.data.DataLoader(items, batch_size=8), SPEC)
    assert isinstance(whole.x, torch_data.Items) and whole.x.order is None
    picked = torch.utils.data.DataLoader(
        items, batch_size=8, sampler=torch.utils.data.SubsetRandomSampler(range(0, 200, 4)))
    chosen = datasets.load_data(picked, SPEC)
    assert sorted(chosen.y.tolist()) == sorted(i % 10 for i in range(0, 200, 4))
    np.testing.assert_allclose(np.sort(np.asarray(chosen.x)[:, 0, 0, 0]),
                               np.arange(0, 200, 4) / 200, rtol=1e-6)


ITEMS_PY = '''
import torch

class Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 30

    def __getitem__(self, i):
        return torch.full((1, 28, 28), float(i * i)), i % 10

def squares():
    return Squares()
'''


def test_module_function_may_give_a_map_style_dataset(tmp_path: Path) -> None:
    (tmp_path / "items_mod.py").write_text(ITEMS_PY)
    data = datasets.load_data(f"{tmp_path}/items_mod.py:squares", SPEC, mean=[1.0])
    assert isinstance(data.x, lazy.Mapped) and isinstance(data.x.base, torch_data.Items)
    np.testing.assert_array_equal(np.asarray(data.x)[:, 0, 0, 0], np.arange(30) ** 2 - 1.0)
    np.testing.assert_array_equal(data.y, np.arange(30) % 10)


def _batches(n: int, rows: int = 40, labelled: bool = True) -> Iterator[object]:
    """``n`` seeded float32 batches of ``rows`` (1, 28, 28) inputs, labelled or not."""
    rng = np.random.default_rng(n)
    for i in range(n):
        x = rng.random((rows, 1, 28, 28), dtype=np.float32)
        yield (torch.from_numpy(x), torch.full((rows,), i)) if labelled else x


def test_a_generator_is_spooled_to_a_mapped_file_that_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    want = [(x.numpy(), y.numpy()) for x, y in _batches(5)]
    x, y = sources.read_object(_batches(5), "generator")
    assert isinstance(x, np.memmap) and not x.flags.writeable
    assert not list(tmp_path.iterdir())  # unlinked once mapped: nothing left behind
    np.testing.assert_array_equal(x, np.concatenate([a for a, _ in want]))
    np.testing.assert_array_equal(y, np.concatenate([b for _, b in want]))
    data = datasets.load_data(_batches(3, labelled=False), SPEC)
    assert isinstance(data.x, np.memmap) and not data.labelled and len(data) == 120
    assert isinstance(data.subset([0, 5]).x, lazy.Indexed)
    streamed = torch.utils.data.DataLoader(Stream(), batch_size=16)
    assert isinstance(datasets.load_data(streamed, SPEC).x, np.memmap)
    with pytest.raises(UsageError, match="generator: some batches have labels y and some do not"):
        sources.read_object(iter([*_batches(2), np.zeros((4, 1, 28, 28))]), "generator")
    with pytest.raises(UsageError, match=r"generator: batches do not stack \(batch 1 has shape"):
        sources.read_object(iter([np.zeros((4, 3)), np.zeros((4, 2))]), "generator")
    with pytest.raises(UsageError, match="generator: batch 1 is a str; batches must be"):
        sources.read_object(iter([np.zeros((4, 3)), "no"]), "generator")
    with pytest.raises(UsageError, match="generator: gave no batches"):
        sources.read_object(iter([]), "generator")
    assert not list(tmp_path.iterdir())  # refused: the file is gone too


class Stream(torch.utils.data.IterableDataset):
    """40 unlabelled (1, 28, 28) inputs, yielded one at a time: readable only in order."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (torch.full((1, 28, 28), float(i)) for i in range(40))


def test_spooling_holds_a_batch_not_the_data_set() -> None:
    size = 64 * 64 * 64 * 4  # one batch: 1 MiB
    tracemalloc.start()
    try:
        x, _ = sources.read_object((np.ones((64, 1, 64, 64), np.float32) for _ in range(40)),
                                   "generator")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (2560, 1, 64, 64) and float(x[-1].min()) == 1.0
    assert peak < 4 * size  # 40 MiB spooled


def test_a_prune_trains_from_a_map_style_dataset() -> None:
    with np.load(ROOT / "sample_models" / "digits.npz") as digits:
        x, y = digits["x"][:256], digits["y"][:256]

    class Digits(torch.utils.data.Dataset):
        """The first 256 digits, one ``(x, y)`` item at a time (no ``targets``)."""

        def __len__(self) -> int:
            return 256

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            return x[i], int(y[i])

    result = onnxprune.prune(LENET, "magnitude", max_flops=0.6, data=Digits(), epochs=1,
                             round_to=1, quiet=True)
    assert result.report["training"]["epochs"] == 1
    assert result.report["data"]["train"] + result.report["data"]["val"] == 256
    assert result.report["data"]["labelled"] is True
