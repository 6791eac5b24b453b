"""The ``magnitude`` method: one-shot global filter pruning by normalised L1 norm.

Each channel's score is the L1 norm of its producer weights divided by the mean L1 norm of
that producer's channels (averaged over a group's producers), so layers of different scale
compete fairly in one global ranking. The lowest-scoring channels go until the budget
(``--max-flops`` / ``--max-params``) is met; see :mod:`onnxprune.methods.budget` for the threshold
search, the one-channel floor and the rounding. No retraining.
"""

from __future__ import annotations

import numpy as np

from onnxprune.analysis.groups import producer_weights
from onnxprune.errors import UsageError
from onnxprune.methods.budget import plan_for_budget
from onnxprune.methods.registry import Context, register
from onnxprune.plan import Plan


def normalised_l1(weights: list[np.ndarray]) -> np.ndarray:
    """Per-channel L1 norm of each (channels, -1) weight over its mean, averaged."""
    scores = []
    for w in weights:
        l1 = np.abs(w).sum(axis=1).astype(np.float64)
        scores.append(l1 / max(l1.mean(), 1e-12))
    return np.mean(scores, axis=0)


@register("magnitude")
class Magnitude:
    """Global L1-norm filter pruning to a FLOPs or parameter budget (no retraining)."""

    name: str
    records = None
    options: frozenset[str] = frozenset()

    def run(self, ctx: Context) -> Plan:
        """Score every prunable group and cut to the budget."""
        if ctx.budget.max_flops is None and ctx.budget.max_params is None:
            raise UsageError("magnitude needs a target: give --max-flops F or --max-params F")
        scores = {g.id: normalised_l1(producer_weights(ctx.graph, g)) for g in ctx.prunable}
        return plan_for_budget(ctx.graph, ctx.groups, scores, ctx.budget, ctx.round_to)
