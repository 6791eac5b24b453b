"""Streaming data: image folders decoded a batch at a time, .npz inputs mapped from the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx.numpy_helper
import pytest
import torch
from conftest import ROOT
from PIL import Image

import onnxprune
import onnxprune.api
from onnxprune.training import data as datasets
from onnxprune.training import lazy

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
