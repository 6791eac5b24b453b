"""Unlabelled inputs for the samples: what calibrates a one-shot prune and what measures it.

The classifiers read digits.npz: the first 512 to calibrate, from the 1,025th on to measure
(773 inputs). The DBNet-style detector reads 64x64 canvases built as its training ones were:
of training digits to calibrate, of the held-out digits to measure (its README's 512).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
CALIBRATION = 512


def inputs(name: str, calibration: int = CALIBRATION,
           ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Calibration inputs, held-out inputs and the input size (H, W) for sample ``name``."""
    x = np.load(SAMPLES / "digits.npz")["x"]
    if name != "dbnet":
        return x[:calibration], x[1024:], (28, 28)
    sys.path.insert(0, str(SAMPLES))
    from build import split_indices  # noqa: PLC0415 (the samples' own data)
    from build_detector import canvases, held_out  # noqa: PLC0415

    train_idx, val_idx = split_indices(len(x))
    calib, _ = canvases(x[train_idx], calibration, seed=7)
    held, _ = held_out(x, val_idx)
    return calib, held, (calib.shape[2], calib.shape[3])
