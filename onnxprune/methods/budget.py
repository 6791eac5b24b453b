"""From channel scores to a Plan that meets a FLOPs or parameter budget.

Every filter-level method ends the same way: each group's channels have scores (higher is
more important, comparable across groups), and the plan keeps, in each group, the channels
scoring at least a global threshold ``t``, never fewer than one, with kept counts rounded up
to a multiple of ``round_to`` (onnxruntime's CPU convolutions are fastest on channel counts
that fill its blocked layout). FLOPs and parameters only fall as ``t`` rises, so a binary
search over the candidate thresholds finds the least pruning that meets the budget. A group
that grouped Convs split into equal parts keeps the same count, its best, in each part
(:func:`~onnxprune.analysis.groups.balance_blocks`). Rounding
makes that search coarse (a 32-channel layer is either 16 or 32 wide), so a last greedy step
gives blocks of channels back, best-scoring first, while the budget still holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis.groups import ChannelGroup, balance_blocks
from onnxprune.errors import UsageError
from onnxprune.metrics import count, planned_shapes, prunable_share
from onnxprune.plan import Plan


@dataclass(frozen=True)
class Budget:
    """Fractions of the original FLOPs and parameters to keep (None: no limit)."""

    max_flops: float | None = None
    max_params: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_flops", "max_params"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise UsageError(f"--{name.replace('_', '-')} must be in (0, 1], got {value}")


def rounded_keep(k: int, size: int, round_to: int, blocks: int = 1) -> int:
    """Round a kept count up to a multiple of ``round_to``, then of ``blocks``, within [1, size].

    ``blocks`` is a group's number of equal parts (:attr:`ChannelGroup.blocks`), which must
    keep equal counts; ``size`` is a multiple of it.
    """
    k = max(k, 1)
    if round_to > 1:
        k = math.ceil(k / round_to) * round_to
    return min(math.ceil(k / blocks) * blocks, size)


def require_reachable(graph: gs.Graph, groups: Sequence[ChannelGroup],
                      prunable: Sequence[ChannelGroup], budget: Budget, round_to: int) -> None:
    """Raise UsageError when ``budget`` holds not even with ``prunable`` at their narrowest.

    The narrowest a group can be written is one channel, rounded up to ``round_to`` (and to
    its grouped-Conv parts); the error says how much that keeps, and what would help.
    """
    params0, flops0 = count(graph)
    narrowest = Plan({g.id: tuple(range(rounded_keep(1, g.size, round_to, g.blocks)))
                      for g in prunable})
    params, flops = count(graph, planned_shapes(graph, groups, narrowest))
    if ((budget.max_flops is None or flops <= budget.max_flops * flops0)
            and (budget.max_params is None or params <= budget.max_params * params0)):
        return
    raise UsageError(
        f"the budget cannot be met: keeping {round_to if round_to > 1 else 1} channel(s) per "
        f"prunable group still leaves {flops / flops0:.3f} of the FLOPs and "
        f"{params / params0:.3f} of the parameters"
        + ("; a smaller --round-to lets groups shrink further" if round_to > 1 else "")
        + f" ({prunable_share(graph, groups):.1%} of the FLOPs are in layers whose channels "
          "can be pruned; `onnxprune inspect` shows why the others are blocked)")


def plan_for_budget(graph: gs.Graph, groups: Sequence[ChannelGroup],
                    scores: Mapping[str, np.ndarray], budget: Budget,
                    round_to: int = 1) -> Plan:
    """Return the plan of least pruning (highest-scoring channels kept) that meets ``budget``.

    ``scores`` maps the id of each prunable group to one score per channel.
    Raises UsageError when even one channel per group (rounded) exceeds the budget.
    """
    params0, flops0 = count(graph)
    prunable = [g for g in groups if g.id in scores and not g.blocked]
    order = {g.id: np.argsort(-np.asarray(scores[g.id]), kind="stable") for g in prunable}

    def plan_of(counts: Mapping[str, int]) -> Plan:
        return Plan({g.id: balance_blocks(order[g.id][:counts[g.id]], g.size, g.blocks,
                                          order[g.id], counts[g.id] // g.blocks)
                     for g in prunable})

    def counts_at(threshold: float) -> dict[str, int]:
        return {g.id: rounded_keep(int((np.asarray(scores[g.id]) >= threshold).sum()), g.size,
                                   round_to, g.blocks) for g in prunable}

    def plan_at(threshold: float) -> Plan:
        return plan_of(counts_at(threshold))

    def fits(plan: Plan) -> bool:
        params, flops = count(graph, planned_shapes(graph, groups, plan))
        return ((budget.max_flops is None or flops <= budget.max_flops * flops0)
                and (budget.max_params is None or params <= budget.max_params * params0))

    candidates = np.unique(np.concatenate([np.asarray(scores[g.id], float) for g in prunable]
                                          + [np.array([-np.inf, np.inf])]))
    require_reachable(graph, groups, prunable, budget, round_to)
    lo, hi = 0, len(candidates) - 1  # fits(candidates[hi]) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(plan_at(candidates[mid])):
            hi = mid
        else:
            lo = mid + 1
    counts = counts_at(candidates[lo])
    while True:  # give back the best next block that still fits
        offers = sorted(((float(np.mean(np.asarray(scores[g.id])[order[g.id][counts[g.id]:k]])),
                          g.id, k) for g in prunable
                         if (k := rounded_keep(counts[g.id] + 1, g.size, round_to, g.blocks))
                         > counts[g.id]), reverse=True)
        for _, gid, k in offers:
            if fits(plan_of({**counts, gid: k})):
                counts[gid] = k
                break
        else:
            return plan_of(counts)
