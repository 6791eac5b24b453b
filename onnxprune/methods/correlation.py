"""Filter correlation: pairs of correlated filters, the term that correlates them, the fold.

*Correlation.* A channel's filter is the flattened row of each producer of its group (biases
left out). The correlation of channels ``i`` and ``j`` is the absolute Pearson correlation of
their rows, averaged over the group's producers: a residual group's channel is one unit,
written by every producer that adds into it. Pearson is blind to a row's scale, so BatchNorm (folded
or re-inserted) does not change it.

*Pairs.* :func:`rank_pairs` takes, most correlated first, pairs whose channels are in no pair
yet (greedy: each round's pairs are disjoint). A group that grouped Convs split into equal
parts pairs channels within a part only, and the list interleaves the parts, so that its
first ``k * parts`` pairs take ``k`` from each part.

*Term.* :class:`CorrelationTerm` raises the chosen pairs' correlation during training, per
group and producer ``k``, with ``rho_p`` the Pearson correlation of pair ``p`` on producer k:
``linear``: ``c * sum_p (1 - |rho_p|)``; ``exp``: ``c * exp(S0 - sum_p |rho_p|)``, where
``S0`` is the sum at the round's start, so that both forms pull as hard at the start (the exp
form is the paper's ``exp(-sum |rho|)`` times the constant ``exp(S0)``; it eases as the pairs
correlate), averaged over the producers. ``c = strength * mean_p(|a_p| |b_p|) / reach``, with
``|a|`` a row's centred norm and ``reach`` how far a unit of gradient moves a weight in one
round: the pull on a row is about ``strength * |b| * sin(angle)`` over the round, the distance
that aligns the two rows, whatever the layer's scale or the number of steps (the task loss and
the decaying learning rate resist it; :mod:`onnxprune.methods.corr` says how far it gets).

*Fold.* Before channel ``b`` of pair ``(a, b)`` goes, each consumer that reads the group adds
``b``'s contribution to ``a``'s: with ``x_b ~ s x_a + t`` fit by least squares on calibration
activations at the consumer's input (after the nonlinearity), ``W[:, a] += s W[:, b]`` and
``bias += t * sum W[:, b]`` (per output; Gemm's ``alpha / beta`` applied; ``W`` as forward uses it,
masks applied, so an output channel already masked gains no bias), then ``W[:, b] = 0``.
Exact when ``b`` is an affine function of ``a`` there (a linear map between them, the bias
term exact but at the borders of a zero-padded consumer); approximate through a ReLU. The
zeroed column means the removed channel's constant activation contributes nothing, so the
prune pass that folds such constants into consumer biases adds nothing on top: ``t`` is not
counted twice. A Concat or Flatten consumer reads a channel at several positions
(:meth:`Slice.positions`): position ``k`` of ``b`` folds into position ``k`` of ``a``, with one
``(s, t)`` per pair fit over all of them. Consumers that cannot take the fold (no bias
input, a grouped Conv, a MatMul) keep ``b``'s column; the prune pass then folds its constant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
import torch
from torch import nn

from onnxprune.analysis.groups import ChannelGroup, Slice
from onnxprune.graph import attr
from onnxprune.methods.filters import Filters, Values
from onnxprune.shadow import ShadowModel
from onnxprune.training.loop import Hooks

TERMS = ("linear", "exp")
_FOLDABLE = {"Conv": 0, "ConvTranspose": 1}  # op -> the weight's output axis (Gemm: transB)


def _unit_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows centred and scaled to unit norm, and their centred norms."""
    centred = rows - rows.mean(1, keepdim=True)
    norms = centred.norm(dim=1)
    return centred / norms.clamp_min(1e-12)[:, None], norms


def correlation_matrix(filters: Filters, values: Values, gid: str,
                       channels: torch.Tensor) -> torch.Tensor:
    """|Pearson| between ``channels`` of group ``gid``, averaged over its producers."""
    mats = []
    for rows in filters.rows(values, gid):
        unit, _ = _unit_rows(rows[channels].double())
        mats.append((unit @ unit.T).abs())
    return torch.stack(mats).mean(0)


def pair_correlations(filters: Filters, values: Values, gid: str,
                      pairs: torch.Tensor) -> torch.Tensor:
    """The signed Pearson correlation of each pair (rows of ``pairs``), one row per producer."""
    out = []
    for rows in filters.rows(values, gid):
        a, _ = _unit_rows(rows[pairs[:, 0]])
        b, _ = _unit_rows(rows[pairs[:, 1]])
        out.append((a * b).sum(1))
    return torch.stack(out)


def rank_pairs(correlation: torch.Tensor, channels: Sequence[int], size: int,
               parts: int = 1) -> list[tuple[int, int, float]]:
    """Disjoint pairs of ``channels``, most correlated first (greedy), parts interleaved.

    ``correlation`` is the (n, n) matrix of ``channels`` (group indices, sorted); ``size``
    the group's width, split into ``parts`` equal parts that pair only within themselves.
    Example: with |rho| 0.9 for (0, 1), 0.8 for (1, 2) and 0.7 for (2, 3), the pairs are
    (0, 1) then (2, 3).
    """
    channels = np.asarray(channels, dtype=np.int64)
    part = channels // (size // parts)
    i, j = np.triu_indices(len(channels), 1)
    values = correlation.detach().cpu().numpy()[i, j]
    order = np.argsort(-values, kind="stable")
    used: set[int] = set()
    by_part: list[list[tuple[int, int, float]]] = [[] for _ in range(parts)]
    for k in order:
        a, b = int(i[k]), int(j[k])
        if a in used or b in used or part[a] != part[b]:
            continue
        used.update((a, b))
        by_part[part[a]].append((int(channels[a]), int(channels[b]), float(values[k])))
    depth = min(len(p) for p in by_part)
    return [p[n] for n in range(depth) for p in by_part]


class CorrelationTerm(Hooks):
    """The loss term that raises the correlation of each group's chosen pairs (module doc)."""

    def __init__(self, filters: Filters, pairs: dict[str, torch.Tensor], form: str,
                 strength: float, reach: float, values: Values) -> None:
        if form not in TERMS:
            raise ValueError(f"term must be one of {TERMS}, got {form}")
        self.filters, self.pairs, self.form = filters, pairs, form
        self.coefficients: dict[str, torch.Tensor] = {}
        self.start: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for gid, p in pairs.items():
                scale = []
                for rows in filters.rows(values, gid):
                    _, na = _unit_rows(rows[p[:, 0]].double())
                    _, nb = _unit_rows(rows[p[:, 1]].double())
                    scale.append(float((na * nb).mean()))
                self.coefficients[gid] = strength * torch.tensor(scale) / max(reach, 1e-12)
                self.start[gid] = pair_correlations(filters, values, gid, p).abs().sum(1)

    def extra_loss(self, model: nn.Module) -> torch.Tensor:
        """The term on the model's current weights (raw parameters: Pearson ignores scale)."""
        assert isinstance(model, ShadowModel)
        values = {n: model.parameter(n) for n in self.filters.names()}
        total = torch.zeros((), device=next(iter(values.values())).device)
        for gid, p in self.pairs.items():
            rho = pair_correlations(self.filters, values, gid, p.to(total.device)).abs()
            c = self.coefficients[gid].to(total.device, rho.dtype) / len(rho)
            if self.form == "linear":
                total = total + (c * (1 - rho).sum(1)).sum()
            else:
                gap = self.start[gid].to(total.device, rho.dtype) - rho.sum(1)
                total = total + (c * torch.exp(gap)).sum()
        return total


@dataclass(frozen=True)
class Fold:
    """One consumer weight's edit: columns ``drop`` go into columns ``keep``, scaled by ``s``.

    ``t`` times the dropped columns, summed per output, times ``bias_scale``, goes into
    ``bias``; ``axis`` is the weight's input axis, ``out_axis`` its output axis.
    """

    weight: str
    bias: str
    axis: int
    out_axis: int
    bias_scale: float
    keep: torch.Tensor
    drop: torch.Tensor
    s: torch.Tensor
    t: torch.Tensor


def _foldable(node: gs.Node, s: Slice, shadow: ShadowModel) -> tuple[str, int, float] | None:
    """``(bias, output axis, bias scale)`` when ``s`` can take a fold, else None."""
    if s.groups > 1 or len(node.inputs) < 3:
        return None
    if node.op == "Gemm":
        if attr(node, "transA", 0):
            return None
        out_axis = 0 if attr(node, "transB", 0) else 1
        scale = float(attr(node, "alpha", 1.0)) / float(attr(node, "beta", 1.0))
    elif node.op in _FOLDABLE:
        out_axis, scale = _FOLDABLE[node.op], 1.0
    else:
        return None
    weight, bias = node.inputs[1].name, node.inputs[2].name
    if not ({weight, bias} <= set(shadow.initializer_names())
            and all(isinstance(shadow.parameter(n), nn.Parameter) for n in (weight, bias))
            and shadow.parameter(bias).numel() == shadow.parameter(weight).shape[out_axis]):
        return None
    return bias, out_axis, scale


def fit_folds(shadow: ShadowModel, graph: gs.Graph, groups: dict[str, ChannelGroup],
              pairs: dict[str, list[tuple[int, int]]],
              batches: Iterable[torch.Tensor]) -> tuple[list[Fold], int]:
    """The folds that drop each pair's second channel into its first, fit on ``batches``.

    ``pairs`` maps a group id to ``(keep, drop)`` channels. Returns the folds and the number
    of consumer slices that cannot take one (they keep the dropped column).
    """
    nodes = {n.name: n for n in graph.nodes}
    plans, skipped = [], 0
    for gid, chosen in pairs.items():
        for s in groups[gid].consumers:
            node = nodes[s.node]
            target = _foldable(node, s, shadow)
            positions = [(s.positions(np.array([a])), s.positions(np.array([b])))
                         for a, b in chosen]
            usable = [(pa, pb) for pa, pb in positions if len(pa) == len(pb) > 0]
            reads = sum(len(pb) > 0 for _, pb in positions)
            if target is None or len(usable) < reads:
                skipped += reads > 0
            if target is not None and usable:
                plans.append((node.inputs[0].name, s, target, usable))
    if not plans:
        return [], skipped
    sums = _activation_sums(shadow, plans, batches)
    folds = []
    for (_, s, (bias, out_axis, scale), usable), moments in zip(plans, sums, strict=True):
        n, sa, sb, saa, sab = moments
        var = saa / n - (sa / n) ** 2
        slope = torch.where(var > 1e-12, (sab / n - sa * sb / n**2) / var.clamp_min(1e-12),
                            torch.zeros_like(var))
        offset = sb / n - slope * sa / n
        width = len(usable[0][0])
        keep = torch.as_tensor(np.concatenate([pa for pa, _ in usable]))
        drop = torch.as_tensor(np.concatenate([pb for _, pb in usable]))
        folds.append(Fold(s.initializer, bias, s.axis, out_axis, scale, keep, drop,
                          slope.repeat_interleave(width).float(),
                          offset.repeat_interleave(width).float()))
    return folds, skipped


def _activation_sums(shadow: ShadowModel, plans: list, batches: Iterable[torch.Tensor]) -> list:
    """Per plan, ``(n, sum a, sum b, sum a^2, sum a b)`` per pair over ``batches`` (float64)."""
    names = list(dict.fromkeys(p[0] for p in plans))
    sums: list = [None] * len(plans)
    shadow.eval()
    with torch.no_grad():
        for x in batches:
            found = dict(zip(names, shadow.tensors((x,), names), strict=True))
            for k, (tensor, _, _, usable) in enumerate(plans):
                act = found[tensor]
                pa = torch.as_tensor(np.concatenate([a for a, _ in usable]), device=act.device)
                pb = torch.as_tensor(np.concatenate([b for _, b in usable]), device=act.device)
                a = act.index_select(1, pa).reshape(len(act), len(usable), -1).double()
                b = act.index_select(1, pb).reshape(len(act), len(usable), -1).double()
                got = (torch.full((len(usable),), float(a.shape[0] * a.shape[2]),
                                  dtype=torch.float64, device=act.device),
                       a.sum((0, 2)), b.sum((0, 2)), a.square().sum((0, 2)), (a * b).sum((0, 2)))
                sums[k] = got if sums[k] is None else tuple(
                    u + v for u, v in zip(sums[k], got, strict=True))
    return [tuple(v.cpu() for v in s) for s in sums]


def apply_folds(shadow: ShadowModel, folds: Sequence[Fold]) -> dict[str, torch.Tensor]:
    """Apply ``folds`` to the shadow's parameters in place; return the values they replaced."""
    saved: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for f in folds:
            w, bias = shadow.parameter(f.weight), shadow.parameter(f.bias)
            for name, value in ((f.weight, w), (f.bias, bias)):
                saved.setdefault(name, value.detach().clone())
            shape = [1] * w.ndim
            shape[f.axis] = -1
            s, t = f.s.to(w).reshape(shape), f.t.to(w).reshape(shape)
            keep, drop = f.keep.to(w.device), f.drop.to(w.device)
            dropped = w.index_select(f.axis, drop)
            live = shadow.masked(f.weight).index_select(f.axis, drop)
            contribution = (live * t).sum([d for d in range(w.ndim) if d != f.out_axis])
            bias.add_((contribution * f.bias_scale).reshape(bias.shape))
            w.index_add_(f.axis, keep, dropped * s)
            w.index_fill_(f.axis, drop, 0.0)
    return saved


def restore(shadow: ShadowModel, saved: dict[str, torch.Tensor]) -> None:
    """Put back the parameter values :func:`apply_folds` returned."""
    with torch.no_grad():
        for name, value in saved.items():
            shadow.parameter(name).copy_(value)
