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
    """Draw validation quality against compression, one point per stage, into ``path``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in ("accuracy", "agreement") if stages and k in stages[0]), None)
    if key is None:
        raise UsageError("--plot: the run has no validation data to draw a curve of")
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot([s["compression"] for s in stages], [s[key] for s in stages], "o-")
    for s in stages:
        axis.annotate(str(s["stage"]), (s["compression"], s[key]), textcoords="offset points",
                      xytext=(4, 4), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("compression (dense weights / non-zeros)")
    axis.set_ylabel(f"validation {key}")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
