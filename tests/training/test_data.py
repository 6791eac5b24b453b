"""Data loading: .npz, image folders, module:function, Python objects; split, synthetic, check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import pytest
import torch
from conftest import ROOT
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from onnxprune.errors import UsageError
from onnxprune.training import data as datasets
from onnxprune.training.data import Dataset, InputSpec

DIGITS = ROOT / "sample_models" / "digits.npz"
SPEC = InputSpec("input", ("N", 1, 4, 4), np.dtype(np.float32))


def _arrays(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, n)


# .npz

def test_npz_with_labels_keeps_integer_values_and_casts(tmp_path: Path) -> None:
    x = np.arange(5 * 16, dtype=np.uint8).reshape(5, 1, 4, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 1, 0], np.int32))
    data = datasets.load_data(tmp_path / "d.npz", SPEC)
    assert data.labelled and len(data) == 5
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x, x.astype(np.float32))  # not rescaled
    np.testing.assert_array_equal(data.y, [0, 1, 2, 1, 0])
    datasets.check(data, SPEC)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_npz_float_inputs_are_cast_to_the_spec_dtype(tmp_path: Path, dtype: type) -> None:
    np.savez(tmp_path / "d.npz", x=np.full((3, 1, 4, 4), 0.5, dtype))
    data = datasets.load_data(str(tmp_path / "d.npz"), SPEC)
    assert data.x.dtype == np.float32 and not data.labelled and data.y is None
    assert (np.asarray(data.x) == 0.5).all()


def test_npz_errors_name_the_problem_and_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 1, 4, 4)), y=np.zeros(3, np.int64))
    np.savez(tmp_path / "nox.npz", images=np.zeros((4, 1, 4, 4)))
    np.savez(tmp_path / "floaty.npz", x=np.zeros((4, 1, 4, 4)), y=np.zeros(4, np.float32))
    (tmp_path / "bad.npz").write_text("not a zip")
    (tmp_path / "d.csv").write_text("1,2")
    cases = {"short.npz": "4 inputs x but labels y have shape (3,)",
             "nox.npz": "no array 'x' (it holds: images)",
             "floaty.npz": "labels y must be integer class indices, got float32",
             "bad.npz": "not an .npz archive", "d.csv": "unsupported data file",
             "missing.npz": "no such file or directory"}
    for name, message in cases.items():
        with pytest.raises(UsageError, match=r"^.*" + name) as info:
            datasets.load_data(tmp_path / name, SPEC)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_shipped_digits_load_and_check_against_the_model_shape() -> None:
    spec = InputSpec("input", ("N", 1, 28, 28), np.dtype(np.float32))
    data = datasets.load_data(DIGITS, spec)
    assert data.x.shape == (1797, 1, 28, 28) and data.y.dtype == np.int64
    assert set(np.unique(data.y)) == set(range(10))
    datasets.check(data, spec)
    wrong = InputSpec("input", ("N", 3, 32, 32), np.dtype(np.float32))
    with pytest.raises(UsageError) as info:
        datasets.check(data, wrong)
    assert str(info.value).endswith("digits.npz: inputs have shape (N, 1, 28, 28) but model "
                                    "input 'input' expects (N, 3, 32, 32)")


def test_check_ignores_symbolic_dims_and_refuses_rank_and_dtype_mismatch() -> None:
    data = Dataset(np.zeros((2, 3, 5, 7), np.float32), source="d")
    datasets.check(data, InputSpec("x", ("batch", 3, "h", "w"), np.dtype(np.float32)))
    with pytest.raises(UsageError, match=r"d: inputs have shape \(N, 3, 5, 7\) but model input "
                                         r"'x' expects \(N, 105\)"):
        datasets.check(data, InputSpec("x", ("N", 105), np.dtype(np.float32)))
    with pytest.raises(UsageError, match="model input 'x' is int64; onnxprune trains models "
                                         "with a float input"):
        datasets.check(data, InputSpec("x", ("N", 3, 5, 7), np.dtype(np.int64)))


def test_mean_and_std_normalise_every_source_per_channel(tmp_path: Path) -> None:
    x = np.ones((2, 2, 3, 3), np.uint8) * np.array([10, 20], np.uint8)[None, :, None, None]
    np.savez(tmp_path / "d.npz", x=x)
    spec = InputSpec("x", ("N", 2, 3, 3), np.dtype(np.float32))
    data = datasets.load_data(tmp_path / "d.npz", spec, mean=[10, 30], std=[2])
    np.testing.assert_array_equal(data.x[:, 0], 0.0)
    np.testing.assert_array_equal(data.x[:, 1], -5.0)
    with pytest.raises(UsageError, match="--mean has 3 values but .*d.npz has 2 channels"):
        datasets.load_data(tmp_path / "d.npz", spec, mean=[1, 2, 3])
    with pytest.raises(UsageError, match="--std must be positive"):
        datasets.load_data(tmp_path / "d.npz", spec, std=[1, 0])
    sized = datasets.load_data(tmp_path / "d.npz", spec, input_size=(8, 8))  # not resized:
    with pytest.raises(UsageError, match=r"d\.npz: inputs have shape \(N, 2, 3, 3\) but model "
                                         r"input 'x' expects \(N, 2, 8, 8\)"):  # checked
        datasets.check(sized, InputSpec("x", ("N", 2, 8, 8), np.dtype(np.float32)))


# image folders

def _image_folder(root: Path) -> Path:
    (root / "b_zebra").mkdir(parents=True)
    (root / "a_cat").mkdir()
    Image.new("RGB", (12, 9), (255, 0, 51)).save(root / "a_cat" / "1.png")  # constant colour
    Image.new("RGB", (5, 20), (0, 0, 0)).save(root / "b_zebra" / "2.png")
    Image.new("L", (8, 8), 128).save(root / "b_zebra" / "3.PNG")
    Image.new("RGB", (30, 30), (10, 20, 30)).save(root / "b_zebra" / "4.bmp")
    (root / "a_cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_resizes_labels_by_sorted_folder_and_normalises(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs")
    spec = InputSpec("input", ("N", 3, 8, 8), np.dtype(np.float32))
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.25, 0.2]
    data = datasets.load_data(folder, spec, mean=mean, std=std)
    assert data.x.shape == (4, 3, 8, 8) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.y, [0, 1, 1, 1])  # a_cat, then b_zebra
    f = np.float32
    for c, value in enumerate((255, 0, 51)):
        expected = (f(value) / f(255) - f(mean[c])) / f(std[c])
        np.testing.assert_array_equal(data.x[0, c], np.full((8, 8), expected, np.float32))
    np.testing.assert_allclose(data.x[0, :, 0, 0], [1.0, -2.0, -1.5], rtol=1e-6)
    datasets.check(data, spec)


def test_image_folder_grayscale_and_input_size(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs")
    spec = InputSpec("input", ("N", 1, "H", "W"), np.dtype(np.float32))
    data = datasets.load_data(str(folder), spec, input_size=(6, 5))
    assert data.x.shape == (4, 1, 6, 5)
    np.testing.assert_array_equal(data.x[2], np.float32(128) / np.float32(255))
    assert np.asarray(data.x).min() >= 0 and np.asarray(data.x).max() <= 1
    with pytest.raises(UsageError, match="give --input-size H W"):
        datasets.load_data(folder, spec)
    with pytest.raises(UsageError, match=r"need a model input of shape \(N, 1 or 3, H, W\)"):
        datasets.load_data(folder, InputSpec("input", ("N", 4, 8, 8), np.dtype(np.float32)))


def test_image_folder_errors(tmp_path: Path) -> None:
    spec = InputSpec("input", ("N", 3, 8, 8), np.dtype(np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="empty: no class subfolders"):
        datasets.load_data(tmp_path / "empty", spec)
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "a.txt").write_text("x")
    with pytest.raises(UsageError, match=r"noimg: no images \(.png"):
        datasets.load_data(tmp_path / "noimg", spec)
    (tmp_path / "noimg" / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match="broken.png: not a readable image"):
        datasets.load_data(tmp_path / "noimg", spec)


# module:function and Python objects

BATCHES_PY = '''
import numpy as np
import torch

def labelled():
    rng = np.random.default_rng(0)
    for i in range(3):
        yield rng.random((4, 1, 4, 4)), np.full(4, i)

def unlabelled():
    return [torch.full((2, 1, 4, 4), float(i)) for i in range(3)]

def whole():
    return np.zeros((5, 1, 4, 4)), np.arange(5)
'''


def test_module_function_from_a_file_and_from_an_importable_module(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_batches_mod.py").write_text(BATCHES_PY)
    data = datasets.load_data(f"{tmp_path}/my_batches_mod.py:labelled", SPEC)
    assert data.x.shape == (12, 1, 4, 4) and data.x.dtype == np.float32
    np.testing.assert_array_equal(data.y, np.repeat([0, 1, 2], 4))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = datasets.load_data("my_batches_mod:unlabelled", SPEC)
    assert data.x.shape == (6, 1, 4, 4) and not data.labelled
    np.testing.assert_array_equal(data.x[:, 0, 0, 0], [0, 0, 1, 1, 2, 2])
    assert len(datasets.load_data("my_batches_mod:whole", SPEC)) == 5
    with pytest.raises(UsageError, match="my_batches_mod:nope: module my_batches_mod has no "
                                         "function nope"):
        datasets.load_data("my_batches_mod:nope", SPEC)
    with pytest.raises(UsageError, match="cannot import module no_such_module_xyz"):
        datasets.load_data("no_such_module_xyz:f", SPEC)
    with pytest.raises(UsageError, match="no such file"):
        datasets.load_data(f"{tmp_path}/absent.py:f", SPEC)


def test_dataloader_tuple_array_and_dataset_inputs() -> None:
    x, y = _arrays(10)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=3)
    data = datasets.load_data(loader, SPEC)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    unlabelled = datasets.load_data(DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=4),
                                    SPEC)
    assert not unlabelled.labelled and len(unlabelled) == 10
    assert datasets.load_data((x, y), SPEC).labelled
    assert not datasets.load_data(torch.from_numpy(x).double(), SPEC).labelled
    assert datasets.load_data(x, SPEC).x.dtype == np.float32
    ready = Dataset(x, y)
    assert datasets.load_data(ready, SPEC) is ready
    with pytest.raises(UsageError, match="cannot load data from int"):
        datasets.load_data(42, SPEC)
    with pytest.raises(UsageError, match="some batches have labels y and some do not"):
        datasets.load_data([(x, y), x], SPEC)
    with pytest.raises(UsageError, match="list: gave no batches"):
        datasets.load_data([], SPEC)


# split, synthetic, batches

def test_split_is_seeded_disjoint_and_complete() -> None:
    x, y = _arrays(100)
    data = Dataset(x, np.arange(100))
    train, val = datasets.split(data)
    assert len(val) == 10 and len(train) == 90
    assert set(train.y).isdisjoint(val.y) and set(train.y) | set(val.y) == set(range(100))
    again_train, again_val = datasets.split(data)
    np.testing.assert_array_equal(again_val.y, val.y)
    np.testing.assert_array_equal(again_train.x, train.x)
    assert not np.array_equal(datasets.split(data, seed=1)[1].y, val.y)
    assert len(datasets.split(data, 0.25)[1]) == 25
    with pytest.raises(UsageError, match="between 0 and 1"):
        datasets.split(data, 1.0)


def test_synthetic_has_the_model_shape_no_labels_and_is_seeded() -> None:
    spec = InputSpec("input", ("batch", 1, 28, 28), np.dtype(np.float32))
    data = datasets.synthetic(spec, n=16)
    assert data.x.shape == (16, 1, 28, 28) and data.x.dtype == np.float32 and not data.labelled
    np.testing.assert_array_equal(data.x, datasets.synthetic(spec, n=16).x)
    assert not np.array_equal(data.x, datasets.synthetic(spec, n=16, seed=1).x)
    assert len(datasets.synthetic(spec)) == 512
    datasets.check(data, spec)
    free = InputSpec("input", ("N", 3, "H", "W"), np.dtype(np.float32))
    with pytest.raises(UsageError, match=r"'input' has shape \(N, 3, H, W\); .*--input-size"):
        datasets.synthetic(free)
    assert datasets.synthetic(free, n=2, input_size=(5, 6)).x.shape == (2, 3, 5, 6)


def test_batches_shuffle_is_seeded_and_covers_every_sample_once() -> None:
    x, _ = _arrays(10)
    data = Dataset(x, np.arange(10))

    def order(**kwargs: object) -> list[int]:
        return [int(i) for _, y in data.batches(3, **kwargs) for i in y]

    assert order() == list(range(10))
    assert order(shuffle=True, seed=5) == order(shuffle=True, seed=5)
    assert order(shuffle=True, seed=5) != order(shuffle=True, seed=6)
    assert sorted(order(shuffle=True, seed=5)) == list(range(10))
    assert len(order(drop_last=True)) == 9
    xb, yb = next(data.batches(4, shuffle=True))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.shape == (4, 1, 4, 4)
    np.testing.assert_array_equal(xb.numpy(), x[yb.numpy()])
    assert all(y is None for _, y in Dataset(x).batches(4))
    with pytest.raises(UsageError, match="batch size must be at least 1"):
        data.batches(0)


# input_spec

def _model(inputs: list[str]) -> onnx.ModelProto:
    values = [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 2]) for n in inputs]
    weight = oh.make_tensor("w", onnx.TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    graph = oh.make_graph(
        [oh.make_node("MatMul", [inputs[0], "w"], ["out"])], "g",
        values + [oh.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [2, 2])],  # IR v3 style
        [oh.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 2])], [weight])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])


def test_input_spec_skips_initializers_and_refuses_several_inputs() -> None:
    assert datasets.input_spec(_model(["a"])) == InputSpec("a", ("N", 2), np.dtype(np.float32))
    with pytest.raises(UsageError, match="onnxprune trains models with one input; this model "
                                         "has 2: a, b"):
        datasets.input_spec(_model(["a", "b"]))


def test_input_spec_of_lenet5() -> None:
    spec = datasets.input_spec(onnx.load(ROOT / "sample_models" / "lenet5.onnx"))
    assert spec.name == "input" and spec.dtype == np.float32
    assert isinstance(spec.shape[0], str) and spec.shape[1:] == (1, 28, 28)
