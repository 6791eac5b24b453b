"""Curves of a run's stages or rounds, drawn with matplotlib (the optional ``plot`` extra)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from onnxprune import modelio
from onnxprune.errors import UsageError


def require_matplotlib() -> None:
    """Raise a clear error when matplotlib is missing, before any long work starts."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise UsageError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from e


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _quality_key(rows: Sequence[dict[str, Any]]) -> str:
    key = next((k for k in ("accuracy", "agreement") if rows and k in rows[0]), None)
    if key is None:
        raise UsageError("--plot: the run has no validation data to draw a curve of")
    return key


def plot_rounds(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Draw a pruning run by rounds into ``path``.

    Left: validation quality and FLOPs kept against the round (and, where the rounds record
    it, the quality right after each round's drop, with and without ``corr``'s fold). Right:
    each group's final width against its original width.
    """
    plt = _pyplot()
    rounds = report["rounds"]
    key = _quality_key(rounds)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    xs = [r["round"] for r in rounds]
    left.plot(xs, [r[key] for r in rounds], "o-", color="tab:blue", label=f"validation {key}")
    for kind, marker in (("fold", "^"), ("no_fold", "v")):
        if all(r.get("after_drop", {}).get(kind) is not None for r in rounds):
            left.plot(xs, [r["after_drop"][kind] for r in rounds], marker, color="tab:gray",
                      label=f"right after the drop, {kind.replace('_', ' ')}")
    if report["tolerance"] is not None:
        left.axhline(report["baseline"][key] - report["tolerance"] / 100,
                     color="tab:blue", linestyle=":", label="original - tolerance")
    left.set_xlabel("round")
    left.set_ylabel(f"validation {key}", color="tab:blue")
    flops = left.twinx()
    flops.plot(xs, [r["flops_kept"] for r in rounds], "s--", color="tab:red")
    flops.set_ylabel("FLOPs kept", color="tab:red")
    left.legend(loc="lower left", fontsize=8)
    left.grid(True, alpha=0.3)
    original, final = report["original_widths"], report["plan"]
    names = list(original)
    positions = range(len(names))
    right.bar(positions, [original[n] for n in names], color="lightgray", label="original")
    right.bar(positions, [final.get(n, original[n]) for n in names], color="tab:green",
              label="pruned")
    right.set_xticks(list(positions), names, rotation=90, fontsize=6)
    right.set_ylabel("channels")
    right.legend(fontsize=8)
    _save(figure, path)


def plot_stages(stages: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Draw validation quality against compression, one point per stage, into ``path``.

    Compression is dense weights / non-zeros for weight pruning, original / kept FLOPs for
    filter pruning.
    """
    plt = _pyplot()
    key = _quality_key(stages)
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
    _save(figure, path)


def plot_bands(weights: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Draw the density of each DCT band, per weight kept in the frequency domain, into ``path``.

    ``weights`` is fdp's report entry: per weight its domain, size and kept per band.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for name, entry in weights.items():
        if entry["domain"] != "dct":
            continue
        kept = entry["kept_per_band"]
        sizes = entry["band_sizes"]
        axis.plot(range(len(kept)), [k / n for k, n in zip(kept, sizes, strict=True)], "o-",
                  label=name, linewidth=1)
    axis.set_xlabel("DCT band (i + j)")
    axis.set_ylabel("coefficients kept")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=6)
    axis.grid(True, alpha=0.3)
    _save(figure, path)


def draw(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Draw the rounds, the bands or the stages a run's report records into ``path``."""
    if "weights" in report and any(w.get("domain") == "dct" for w in report["weights"].values()):
        plot_bands(report["weights"], path)
    elif "rounds" in report:
        plot_rounds(report, path)
    elif "stages" in report:
        plot_stages(report["stages"], path)
    else:
        raise UsageError(f"--plot: method '{report['method']}' records no stages or rounds")


def _save(figure: Any, path: str | os.PathLike) -> None:
    """Write ``figure`` as a PNG atomically (whole or not at all)."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    _pyplot().close(figure)
    modelio.save_bytes(buffer.getvalue(), path)
