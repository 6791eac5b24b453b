"""The MNIST split every benchmark uses.

The first 8,000 digits of ../shared/data/mnist (the real MNIST test set) to train, the last
2,000 to test; the sample models were trained on other digits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from onnxprune import data as datasets
from onnxprune.data import Dataset

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--mnist FOLDER`` (default ../shared/data/mnist beside the clone)."""
    parser.add_argument("--mnist", type=Path, default=DEFAULT)


def load(folder: Path) -> tuple[Dataset, Dataset]:
    """The train (first 8,000) and test (last 2,000) digits."""
    mnist = datasets.load_mnist_idx(folder)
    return mnist.subset(np.arange(8000)), mnist.subset(np.arange(8000, 10000))
