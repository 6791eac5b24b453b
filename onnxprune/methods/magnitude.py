"""The ``magnitude`` method: one-shot global filter pruning, repaired with calibration data.

Each channel gets a score, comparable across layers; the lowest-scoring channels go until the
budget (``--max-flops`` / ``--max-params``) is met (see :mod:`onnxprune.methods.budget` for the
threshold search, the one-channel floor and the rounding). No retraining.

``--importance l1`` scores a channel by the L1 norm of its producer weights over the mean L1
norm of that producer's channels (averaged over a group's producers). ``--importance
reconstruction`` scores it by the share of its consumers' output energy it carries, measured on
calibration data (:mod:`onnxprune.methods.importance`); ``--importance taylor`` by the squared
first-order change of the model's outputs its removal causes (:mod:`onnxprune.methods.taylor`).
``--allocation global`` cuts every group at one threshold on these per-layer scores;
``--allocation sensitivity`` measures what cutting each group does to the outputs and spends
the budget where it hurts least (:mod:`onnxprune.methods.sensitivity`).

With ``--data`` (labels unused) the method reads at most ``--calibration-samples`` inputs,
streamed in batches, and after choosing the channels refits every consumer layer on the kept
channels (:mod:`onnxprune.methods.reconstruct`, on top of the bias compensation the prune
pass does). Without data it is weights only (``l1``, ``global``), and the report says so
(``report["oneshot"]``).

Defaults, from ``benchmarks/oneshot_fidelity.py`` (vgg_bn, resnet, mobilenetv2, inception,
resnext, yolo_c2f, mobilenetv3 at 0.6 and 0.4 of the FLOPs, yolo_c2f at 0.6 only, 512
unlabelled digits inputs, fidelity to the original on 773 held-out ones). Reconstruction is on
with data: with ``l1`` channels it took top-1 agreement from 0.10-0.74 to 0.80-1.00 and the
output cosine from -0.03-0.72 to 0.82-0.999 on every model and target. With it on, the
importance is ``taylor``: output cosine 0.907 at worst (resnext at 0.4) against 0.819 for ``l1``
(mobilenetv3 at 0.4; agreement 0.908 against 0.802) and 0.434 for ``reconstruction`` (which
empties resnext's grouped Convs, which are not refit), mean 0.966 against 0.942; it lost to
``l1`` by at most 0.03 (resnext at 0.6). The allocation is ``sensitivity``: with ``taylor`` it
won 10 of 13 cases (mean cosine 0.977 against 0.966; mobilenetv3 at 0.4 0.979 against 0.914)
and lost the worst case by 0.016 (resnext at 0.4, 0.891 against 0.907), at about twice the
time (seconds); on the DBNet-style detector (``benchmarks/distill_fidelity.py``'s canvases) it
decided: map cosine 0.968 against 0.929 at 0.4 of the FLOPs, 0.994 against 0.982 at 0.6 with
``--round-to 1``. Peak memory does not depend on the number of calibration samples
(``distill_fidelity.py``'s last table).

Those defaults serve fidelity to the original. When fine-tuning on labels follows
(``--epochs`` with labelled ``--data``), the defaults are ``l1`` and ``global``: from
``benchmarks/peer_torch_pruning.py``'s setup (0.25 of the FLOPs, 3 epochs on the MNIST split),
test accuracy after fine-tuning was 0.9805 / 0.9825 (vgg_bn / resnet) with ``l1`` + ``global``
against 0.979 / 0.9765 with ``taylor`` + ``sensitivity`` and 0.9755 / 0.976 with ``taylor`` +
``global``: uneven cuts that keep today's function retrain worse than even ones.
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
from onnxprune.methods.reconstruct import Batches, reconstruct
from onnxprune.methods.registry import Context, register
from onnxprune.methods.sensitivity import sensitivity_scores
from onnxprune.methods.taylor import taylor_scores
from onnxprune.plan import Plan
from onnxprune.training.data import Dataset

IMPORTANCES = ("l1", "reconstruction", "taylor")
ALLOCATIONS = ("global", "sensitivity")
CALIBRATION_BATCH = 64
SENSITIVITY_SAMPLES = 128  # the allocation's trials run on the first of the inputs read


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
    allocation: str | None = None
    calibration_samples: int = 512
    reconstruction: bool | None = None

    def __post_init__(self) -> None:
        for name, known in (("importance", IMPORTANCES), ("allocation", ALLOCATIONS)):
            value = getattr(self, name)
            if value is not None and value not in known:
                raise UsageError(f"--{name} must be one of {', '.join(known)}, got '{value}'")
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
            asked = [text for text, on in (
                (f"--importance {opts.importance}", opts.importance not in (None, "l1")),
                (f"--allocation {opts.allocation}", opts.allocation not in (None, "global")),
                ("--reconstruction", bool(opts.reconstruction))) if on]
            if asked:
                raise UsageError(f"{' and '.join(asked)} read calibration inputs: give --data")
            scores = {g.id: normalised_l1(producer_weights(ctx.graph, g))
                      for g in ctx.prunable}
            plan = plan_for_budget(ctx.graph, ctx.groups, scores, ctx.budget, ctx.round_to)
            return Plan(plan.keep, {}, {"oneshot": "weights only (no --data)"})
        n = min(len(data), int(opts.calibration_samples))
        retrained = ctx.train.epochs > 0 and data.labelled
        importance = opts.importance or ("l1" if retrained else "taylor")
        allocation = opts.allocation or ("global" if retrained else "sensitivity")
        refit = True if opts.reconstruction is None else bool(opts.reconstruction)
        batches = _batches(data, n)
        assert ctx.model is not None
        if importance == "l1":
            scores = {g.id: normalised_l1(producer_weights(ctx.graph, g))
                      for g in ctx.prunable}
        elif importance == "taylor":
            scores = taylor_scores(ctx.model, ctx.groups, batches)
        else:
            scores = reconstruction_scores(ctx.model, ctx.groups, batches)
        if allocation == "sensitivity":
            scores = sensitivity_scores(ctx.model, ctx.graph, ctx.groups, scores, ctx.budget,
                                        ctx.round_to, _batches(data, min(n, SENSITIVITY_SAMPLES)),
                                        refit)
        plan = plan_for_budget(ctx.graph, ctx.groups, scores, ctx.budget, ctx.round_to)
        weights = reconstruct(ctx.model, ctx.groups, plan, batches) if refit else {}
        return Plan(plan.keep, weights, {"oneshot": {
            "importance": importance, "allocation": allocation, "reconstruction": refit,
            "calibration_samples": n,
            "layers_refit": len({k for k in weights if k in _weight_names(ctx, weights)})}})


def _batches(data: Dataset, n: int) -> Batches:
    """The first ``n`` inputs of ``data`` in batches of :data:`CALIBRATION_BATCH`, on demand."""
    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, n, CALIBRATION_BATCH):
            yield torch.from_numpy(data.x[start:min(n, start + CALIBRATION_BATCH)])
    return batches


def _weight_names(ctx: Context, weights: dict[str, Any]) -> set[str]:
    """The refit layers' weights (not their biases) among ``weights``."""
    return {n.inputs[1].name for n in ctx.graph.nodes
            if len(n.inputs) > 1 and n.inputs[1].name in weights}
