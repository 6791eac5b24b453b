"""The MNIST split every benchmark uses, and the reader of MNIST's IDX files.

The first 8,000 digits of ../shared/data/mnist (the real MNIST test set) to train, the last
2,000 to test; the sample models were trained on other digits. MNIST is a benchmark's data, not
a user's, so its reader lives here rather than in the library.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import onnx

from onnxprune.api import normalize
from onnxprune.errors import UsageError
from onnxprune.shadow import ShadowModel
from onnxprune.training.data import Dataset
from onnxprune.training.loop import TrainConfig
from onnxprune.training.loop import train as fit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data" / "mnist"
MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--mnist FOLDER`` (default ../shared/data/mnist beside the clone)."""
    parser.add_argument("--mnist", type=Path, default=DEFAULT)


def load(folder: Path) -> tuple[Dataset, Dataset]:
    """The train (first 8,000) and test (last 2,000) digits."""
    mnist = load_mnist_idx(folder)
    return mnist.subset(np.arange(8000)), mnist.subset(np.arange(8000, 10000))


def reference(name: str, train: Dataset, epochs: int = 5) -> onnx.ModelProto:
    """Sample ``name`` fine-tuned dense for ``epochs`` on ``train`` (BatchNorm inserted, lr 0.05).

    The samples were trained on the scikit-learn digits; this is the dense model the MNIST
    benchmarks prune and compare against.
    """
    dense = ShadowModel(normalize(ROOT / "sample_models" / f"{name}.onnx")[0])
    dense.add_batchnorm(next(train.batches(256, shuffle=True))[0])
    fit(dense, train, TrainConfig(epochs=epochs, lr=0.05, quiet=True))
    return dense.export()


def load_mnist_idx(folder: str | os.PathLike) -> Dataset:
    """The MNIST test set from its original IDX files (``t10k-*-ubyte.gz``) in ``folder``.

    x is float32 (N, 1, 28, 28) = pixels / 255, y the int64 labels 0..9. Raises UsageError
    when a file is missing or not an IDX file of bytes.
    """
    images, labels = (read_idx(Path(folder) / name) for name in MNIST_FILES)
    x = images.astype(np.float32)[:, None] / np.float32(255)
    return Dataset(x, labels.astype(np.int64), source=str(folder))


def read_idx(path: Path) -> np.ndarray:
    """An IDX array of unsigned bytes (magic 0x08, then its number of dims) from a .gz file."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file (an MNIST folder holds t10k-*-ubyte.gz files)")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        if raw[:3] != b"\x00\x00\x08":
            raise ValueError("magic is not 0x0008 (unsigned bytes)")
        dims = np.frombuffer(raw, ">i4", count=raw[3], offset=4)
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)
    except (OSError, EOFError, ValueError) as e:
        raise UsageError(f"{path}: not an IDX file of bytes ({e})") from e
