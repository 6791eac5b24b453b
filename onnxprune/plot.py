"""Curves of a run's stages or rounds, drawn with matplotlib (the optional ``plot`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from onnxprune.errors import UsageError


def require_matplotlib() -> None:
    """Raise a clear error when matplotlib is missing, before any long work starts."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from e


def plot_stages(stages: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Draw validation quality against compression, one point per stage, into ``path``.

    Compression is dense weights / non-zeros for weight pruning, original / kept FLOPs for
    filter pruning.
    """
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in ("accuracy", "agreement") if stages and k in stages[0]), None)
    if key is None:
        raise UsageError("--plot: the run has no validation data to draw a curve of")
    if "compression" in stages[0]:
        xs, label = [s["compression"] for s in stages], "compression (dense weights / non-zeros)"
    else:
        xs, label = [1 / s["flops_kept"] for s in stages], "FLOPs cut (original / pruned)"
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(xs, [s[key] for s in stages], "o-")
    for x, s in zip(xs, stages, strict=True):
        axis.annotate(str(s["stage"]), (x, s[key]), textcoords="offset points", xytext=(4, 4),
                      fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel(label)
    axis.set_ylabel(f"validation {key}")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
