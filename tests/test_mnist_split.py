"""The benchmarks' MNIST reader (benchmarks/mnist_split.py) on the real IDX files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MNIST, ROOT

from onnxprune.errors import UsageError
from onnxprune.training import data as datasets

sys.path.insert(0, str(ROOT / "benchmarks"))
import mnist_split  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


@pytest.mark.skipif(not MNIST.is_dir(), reason="no ../shared/data/mnist beside the repository")
def test_load_mnist_idx() -> None:
    data = mnist_split.load_mnist_idx(MNIST)
    assert data.x.shape == (10000, 1, 28, 28) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and set(np.unique(data.y)) == set(range(10))
    assert data.x.min() == 0 and data.x.max() == 1
    datasets.check(data, datasets.input_spec(onnx.load(ROOT / "sample_models" / "lenet5.onnx")))
    train, test = mnist_split.load(MNIST)
    assert (len(train), len(test)) == (8000, 2000)
    assert np.array_equal(test.x[0], data.x[8000])


def test_load_mnist_idx_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="t10k-images-idx3-ubyte.gz: no such file"):
        mnist_split.load_mnist_idx(tmp_path)
