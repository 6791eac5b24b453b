"""How much memory one tensor may claim, so that a size claim fails before it is allocated.

A 259 KB model can hold a ``ConstantOfShape`` of 3.6 TiB, and an ``.npz`` header can claim as
much: allocating first would swap the machine or end in an out-of-memory kill with no message.
A tensor may take at most half of the memory available now.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from onnxprune.errors import OnnxPruneError, UsageError


def available_bytes() -> int:
    """Memory available to a new allocation now (``MemAvailable``), else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_tensor(shape: Sequence[int], dtype: np.dtype | type, what: str, *,
                 error: type[OnnxPruneError] = UsageError) -> None:
    """Refuse a tensor of ``shape`` and ``dtype`` that would take over half the free memory.

    ``what`` names it in the one-line error (e.g. "model.onnx: ConstantOfShape node 'c'").
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise error(f"{what}: claims a tensor of negative shape {tuple(dims)}")
    size = int(np.prod(dims, dtype=object)) * np.dtype(dtype).itemsize
    limit = available_bytes() // 2
    if size > limit:
        raise error(f"{what}: claims a tensor of shape {tuple(dims)} ({_human(size)}), more than "
                    f"half the memory available ({_human(limit)})")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"
