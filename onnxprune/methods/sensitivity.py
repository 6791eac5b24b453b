"""Sensitivity-aware allocation: cut the budget where it degrades the outputs least.

``--allocation sensitivity``. Global allocation cuts every group at one threshold on scores
normalised per layer, so every layer loses a similar share of its channels, whatever that
does to the outputs: a compact head suffers as much as a redundant middle layer. Here each
group's cut is measured instead. For kept fractions 1/4, 1/2 and 3/4 (rounded like the plan),
its lowest-scoring channels are removed in a copy of the model the way the plan will remove
them: producer weights zeroed, biases kept (a removed channel emits the constant the prune
pass folds into the next bias), and with layer reconstruction on, its consumers refit
(:func:`~onnxprune.methods.reconstruct.reconstruct`). ``d_g(k)``, the degradation of keeping
``k`` channels, is the relative squared L2 error of the outputs (before a final Sigmoid /
Softmax) on a few calibration inputs. Measuring after the refit matters: zeroed alone, a
quarter of a MobileNet layer's channels already costs more than the whole output's energy, the
errors saturate and stop adding up, and the cut lands on the wrong layers (with ``taylor``
channels, output cosine 0.88 against 0.93 with the refit on mobilenetv2 at 0.4 of the FLOPs,
0.94 against 0.98 on mobilenetv3; resnext, whose grouped Convs are not refit, lost 0.01).

The errors of different groups' cuts are about independent, so their squares add and a plan
degrades the outputs by about ``sum_g d_g(k_g)``. Minimising that under the budget is a
knapsack that greedy solves when the curves are convex: remove next the channel whose removal
adds least degradation per unit of budget saved. The channel ranked ``r`` in its group (0:
best by the importance) therefore scores

    (d_g(r) - d_g(r + 1)) / cost_g

with ``d_g`` linear between the measured points (``d_g(size) = 0``; below the smallest count
measured the last slope continues) and ``cost_g`` the share of the FLOPs (of the parameters
under ``--max-params`` alone) one channel of ``g`` costs, so the global threshold of
:func:`~onnxprune.methods.budget.plan_for_budget` is the greedy cut. Scores are made
non-increasing along the ranking (each the largest of those ranked after it), and a tie-break
of ``1e-9`` of the largest score keeps each group losing its lowest-ranked channels first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from onnxprune.analysis.groups import ChannelGroup, balance_blocks
from onnxprune.methods.budget import Budget, rounded_keep
from onnxprune.methods.reconstruct import Batches, producer_zeros, reconstruct, zeroed
from onnxprune.metrics import count, planned_shapes
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel

FRACTIONS = (0.25, 0.5, 0.75)


def sensitivity_scores(model: onnx.ModelProto, graph: gs.Graph, groups: Sequence[ChannelGroup],
                       scores: Mapping[str, np.ndarray], budget: Budget, round_to: int,
                       batches: Batches, refit: bool) -> dict[str, np.ndarray]:
    """Rescore every prunable group's channels by degradation per budget saved (see above).

    ``scores`` rank the channels within each group; ``batches()`` yields the (few)
    calibration inputs the degradation is measured on; ``refit``: each trial refits the
    consumers it cuts into, as the final plan will be.
    """
    curves = degradation(model, groups, scores, round_to, batches, refit)
    by_rank: dict[str, np.ndarray] = {}
    for g in groups:
        if g.id not in curves:
            continue
        kept, degraded = curves[g.id]
        ranks = np.arange(g.size)
        slope = np.interp(ranks, kept, degraded) - np.interp(ranks + 1, kept, degraded)
        if len(kept) > 1 and kept[0] > 1:  # below the smallest count measured: the last slope
            slope[ranks < kept[0]] = (degraded[0] - degraded[1]) / (kept[1] - kept[0])
        slope = np.maximum.accumulate(np.maximum(slope, 0)[::-1])[::-1]
        by_rank[g.id] = slope / max(channel_cost(graph, groups, g, budget), 1e-30)
    top = max((float(s.max()) for s in by_rank.values() if s.size), default=0.0) or 1.0
    out = {}
    for g in groups:
        if g.id in by_rank:  # ties (a linear piece of the curve) go by the importance
            order = np.argsort(-np.asarray(scores[g.id]), kind="stable")
            out[g.id] = np.empty(g.size)
            out[g.id][order] = by_rank[g.id] + 1e-9 * top * (g.size - np.arange(g.size)) / g.size
    return out


def degradation(model: onnx.ModelProto, groups: Sequence[ChannelGroup],
                scores: Mapping[str, np.ndarray], round_to: int, batches: Batches,
                refit: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per prunable group, the kept counts measured (ascending, ending at its size) and ``d_g``.

    One shadow of ``model`` runs every trial: the group's producer weights are zeroed in
    place (its consumers refit, with ``refit``), the batches streamed, the weights put back.
    Reference outputs of the (few) calibration inputs are held in memory.
    """
    shadow = ShadowModel(model).eval()
    reference = [_logits(shadow, x) for x in batches()]
    energy = [sum(float(y.square().sum()) for y in ys) for ys in zip(*reference, strict=True)]
    curves = {}
    for g in groups:
        if g.blocked or g.id not in scores:
            continue
        order = np.argsort(-np.asarray(scores[g.id]), kind="stable")
        counts = sorted({rounded_keep(int(round(f * g.size)), g.size, round_to, g.blocks)
                         for f in FRACTIONS} - {g.size})
        plans = [Plan({g.id: balance_blocks(order[:k], g.size, g.blocks, order, k // g.blocks)})
                 for k in counts]
        measured = [_error(shadow, model, groups, plan, batches, reference, energy, refit)
                    for plan in plans]
        curves[g.id] = (np.array([*counts, g.size]), np.array([*measured, 0.0]))
    return curves


def channel_cost(graph: gs.Graph, groups: Sequence[ChannelGroup], group: ChannelGroup,
                 budget: Budget) -> float:
    """The share of the FLOPs (parameters, under a parameter budget alone) one channel costs.

    Measured by removing all but one of the group's channels; 0 for a one-channel group.
    """
    if group.size < 2:
        return 0.0
    params0, flops0 = count(graph)
    params, flops = count(graph, planned_shapes(graph, groups, Plan({group.id: (0,)})))
    if budget.max_flops is not None and flops0 and flops is not None:
        return (flops0 - flops) / flops0 / (group.size - 1)
    return (params0 - params) / params0 / (group.size - 1)


def _logits(shadow: ShadowModel, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The shadow's outputs on ``x`` before any final Sigmoid / Softmax, without gradients."""
    with torch.no_grad():
        return shadow.forward_logits(x)


def _error(shadow: ShadowModel, model: onnx.ModelProto, groups: Sequence[ChannelGroup],
           plan: Plan, batches: Batches, reference: list[tuple[torch.Tensor, ...]],
           energy: list[float], refit: bool) -> float:
    """The relative squared L2 error of the outputs once ``plan`` is simulated in ``shadow``.

    The producers it cuts are zeroed and, with ``refit``, their consumers refit on the
    batches; every value changed is put back afterwards.
    """
    saved = {}
    weights = reconstruct(model, groups, plan, batches) if refit else {}
    cuts = producer_zeros(groups, plan)
    for name in set(weights) | set(cuts):
        tensor = shadow.parameter(name)
        saved[name] = tensor.detach().clone()
        value = weights[name] if name in weights else saved[name].numpy()
        with torch.no_grad():
            tensor.copy_(torch.from_numpy(zeroed(value, cuts.get(name, []))))
    try:
        errors = [0.0] * len(energy)
        for x, ref in zip(batches(), reference, strict=True):
            for i, (y, y0) in enumerate(zip(_logits(shadow, x), ref, strict=True)):
                errors[i] += float((y - y0).square().sum())
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                shadow.parameter(name).copy_(value)
    return sum(e / max(total, 1e-30) for e, total in zip(errors, energy, strict=True))
