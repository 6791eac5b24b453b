"""The ``magnitude`` method: one-shot global filter pruning, repaired with calibration data.

Each channel gets a score, comparable across layers; the lowest-scoring channels go until the
budget (``--max-flops`` / ``--max-params``) is met (see :mod:`onnxprune.methods.budget` for the
threshold search, the one-channel floor and the rounding). No retraining.

``--importance l1`` scores a channel by the L1 norm of its producer weights over the mean L1
norm of that producer's channels (averaged over a group's producers). ``--importance
reconstruction`` scores it by the share of its consumers' output energy it carries, measured on
calibration data (:mod:`onnxprune.methods.importance`).

With ``--data`` (labels unused) the method reads at most ``--calibration-samples`` inputs,
streamed in batches, and after choosing the channels refits every consumer layer on the kept
channels (:mod:`onnxprune.methods.reconstruct`, on top of the bias compensation the prune
pass does); ``--importance reconstruction`` also lets the data choose the channels. Without
data it is weights only, and the report says so (``report["oneshot"]``).

Defaults, from ``benchmarks/oneshot_fidelity.py`` (vgg_bn, resnet, mobilenetv2, inception,
resnext, yolo_c2f, mobilenetv3 at 0.6 and 0.4 of the FLOPs, 512 unlabelled digits inputs,
fidelity to the original on 773 held-out ones). Reconstruction is on with data: with ``l1``
channels it took top-1 agreement from 0.10-0.74 to 0.81-1.00 and the output cosine from
-0.03-0.72 to 0.82-0.999 on every model and target. The importance stays ``l1``: with
reconstruction on, ``reconstruction`` importance won on mobilenetv2 and mobilenetv3 (cosine
0.98 / 0.93 and 0.97 / 0.86 against 0.94 / 0.82 and 0.91 / 0.82 at 0.6 / 0.4) and tied on
inception, split resnet (0.99 / 0.95 against 0.98 / 0.98), ``l1`` won by 0.01 on vgg_bn and
yolo_c2f and by far on resnext (0.98 against 0.43: the data-aware score empties grouped Convs,
which are not refit), so ``l1`` has the better worst case. 512 samples were not swept for
fidelity: the refit solves systems of at most ``9 C + 1`` unknowns from 64 positions per image,
so a few hundred images over-determine them on these models; peak memory does not depend on
the count (the benchmark's last table: resnet, +115 MB at 256 samples, +122 MB at 4096).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onnxprune.analysis.groups import producer_weights
from onnxprune.errors import UsageError
from onnxprune.methods.budget import plan_for_budget
from onnxprune.methods.importance import reconstruction_scores
from onnxprune.methods.reconstruct import reconstruct
from onnxprune.methods.registry import Context, register
from onnxprune.plan import Plan
from onnxprune.training.data import Dataset

IMPORTANCES = ("l1", "reconstruction")
CALIBRATION_BATCH = 64


def normalised_l1(weights: list[np.ndarray]) -> np.ndarray:
    """Per-channel L1 norm of each (channels, -1) weight over its mean, averaged."""
    scores = []
    for w in weights:
        l1 = np.abs(w).sum(axis=1).astype(np.float64)
        scores.append(l1 / max(l1.mean(), 1e-12))
    return np.mean(scores, axis=0)


@dataclass(frozen=True)
class MagnitudeOptions:
    """The options of the magnitude method (None: the default for the data at hand)."""

    importance: str | None = None
    calibration_samples: int = 512
    reconstruction: bool | None = None

    def __post_init__(self) -> None:
        if self.importance is not None and self.importance not in IMPORTANCES:
            raise UsageError(f"--importance must be one of {', '.join(IMPORTANCES)}, got "
                             f"'{self.importance}'")
        if int(self.calibration_samples) < 1:
            raise UsageError(f"--calibration-samples must be at least 1, got "
                             f"{self.calibration_samples}")


def calibration(ctx: Context) -> Dataset | None:
    """The user's data to calibrate on, or None (no --data; synthetic inputs do not count)."""
    if ctx.model is None or ctx.data is None or ctx.synthetic or not len(ctx.data):
        return None
    return ctx.data


@register("magnitude")
class Magnitude:
    """Global filter pruning to a FLOPs or parameter budget (no retraining)."""

    name: str
    records = None
    options: frozenset[str] = frozenset(MagnitudeOptions.__dataclass_fields__)

    def run(self, ctx: Context) -> Plan:
        """Score every prunable group, cut to the budget, refit the consumers on data."""
        if ctx.budget.max_flops is None and ctx.budget.max_params is None:
            raise UsageError("magnitude needs a target: give --max-flops F or --max-params F")
        opts = MagnitudeOptions(**ctx.options)
        data = calibration(ctx)
        if data is None:
            if opts.importance not in (None, "l1") or opts.reconstruction:
                raise UsageError("--importance reconstruction and --reconstruction read "
                                 "calibration inputs: give --data")
            scores = {g.id: normalised_l1(producer_weights(ctx.graph, g))
                      for g in ctx.prunable}
            plan = plan_for_budget(ctx.graph, ctx.groups, scores, ctx.budget, ctx.round_to)
            return Plan(plan.keep, {}, {"oneshot": "weights only (no --data)"})
        n = min(len(data), int(opts.calibration_samples))
        importance = opts.importance or "l1"
        refit = True if opts.reconstruction is None else bool(opts.reconstruction)

        def batches() -> Iterator[torch.Tensor]:
            for start in range(0, n, CALIBRATION_BATCH):
                yield torch.from_numpy(data.x[start:min(n, start + CALIBRATION_BATCH)])

        assert ctx.model is not None
        if importance == "l1":
            scores = {g.id: normalised_l1(producer_weights(ctx.graph, g))
                      for g in ctx.prunable}
        else:
            scores = reconstruction_scores(ctx.model, ctx.groups, batches)
        plan = plan_for_budget(ctx.graph, ctx.groups, scores, ctx.budget, ctx.round_to)
        weights = reconstruct(ctx.model, ctx.groups, plan, batches) if refit else {}
        return Plan(plan.keep, weights, {"oneshot": {
            "importance": importance, "reconstruction": refit, "calibration_samples": n,
            "layers_refit": len({k for k in weights if k in _weight_names(ctx, weights)})}})


def _weight_names(ctx: Context, weights: dict[str, Any]) -> set[str]:
    """The refit layers' weights (not their biases) among ``weights``."""
    return {n.inputs[1].name for n in ctx.graph.nodes
            if len(n.inputs) > 1 and n.inputs[1].name in weights}
