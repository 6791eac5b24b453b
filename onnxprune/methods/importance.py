"""Channel importance from calibration data: the consumer-output error a channel's removal causes.

``--importance reconstruction``. A consumer layer computes ``y = sum_p W[:, p] a_p`` over its
input positions ``p``. Removing channel ``c`` (with its mean put back by the bias, as layer
reconstruction and bias compensation do) changes the output by ``W[:, p] (a_p - E a_p)`` at the
positions ``p`` of ``c``, whose expected energy is, ignoring correlations between positions,

    e_p = Var(a_p) * ||W[:, p]||^2        (for a Conv: Var over images and pixels, the
                                            squared norm over outputs and the kernel)

A channel's share of its consumer is ``sum_{p in c} e_p / sum_p e_p``, the fraction of that
layer's output energy it carries. Shares are comparable across layers; times the consumer's
channel count they average 1 per layer, the scale of :func:`~onnxprune.methods.magnitude.
normalised_l1`. A channel read by several consumers (a residual group, a Concat) sums them.
Statistics stream: per position a running sum and sum of squares, one batch in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from onnxprune import modelio
from onnxprune.analysis.groups import ChannelGroup, Slice
from onnxprune.graph import attr
from onnxprune.methods.reconstruct import Batches, capture


def _reads(node: gs.Node, weight: str) -> tuple[str, int] | None:
    """The activation ``node`` reads through ``weight``, and its channel axis (None: unknown)."""
    if node.op in ("Conv", "ConvTranspose"):
        return node.inputs[0].name, 1
    if node.op == "Gemm":
        return node.inputs[0].name, 0 if attr(node, "transA", 0) else 1
    if node.op == "MatMul" and len(node.inputs) == 2:
        if node.inputs[1].name == weight:
            return node.inputs[0].name, -1
        return node.inputs[1].name, -2
    return None


def _energy(s: Slice, w: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``||W[:, p]||^2`` for each input position ``p`` of the slice."""
    moved = np.moveaxis(np.asarray(w, dtype=np.float64), s.axis, 0)
    if s.groups > 1:  # a grouped Conv: position p is column p % width of block p // width
        width, per_block = moved.shape[0], moved.shape[1] // s.groups
        rows = moved.reshape(width, s.groups, per_block, -1)
        return np.array([np.square(rows[p % width, p // width]).sum() for p in positions])
    return np.square(moved[positions]).reshape(len(positions), -1).sum(1)


def reconstruction_scores(model: onnx.ModelProto, groups: Sequence[ChannelGroup],
                          batches: Batches) -> dict[str, np.ndarray]:
    """Per prunable group, each channel's share of its consumers' output energy (see above)."""
    graph = modelio.to_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    prunable = [g for g in groups if not g.blocked]
    reads = {(s.node, s.initializer): _reads(nodes[s.node], s.initializer)
             for g in prunable for s in g.consumers}
    wanted = sorted({r for r in reads.values() if r is not None})
    stats = _moments(model, wanted, batches)
    totals: dict[tuple[str, str], float] = {}
    scores = {}
    for g in prunable:
        score = np.zeros(g.size)
        for s in g.consumers:
            read = reads[(s.node, s.initializer)]
            if read is None:
                continue
            var = stats[read]
            w = np.asarray(tensors[s.initializer].values)
            key = (s.node, s.initializer)
            if key not in totals:  # the consumer's whole input, every group's channels
                width = var.size
                totals[key] = float((var * _energy(s, w, np.arange(width))).sum()) or 1e-30
            channels = np.arange(g.size)
            pos = s.positions(channels)
            if pos.size == 0:
                continue
            inside = channels[(channels >= s.start)
                              & (channels < s.start + (s.length or g.size))]
            e = (var[pos] * _energy(s, w, pos)).reshape(len(inside), -1).sum(1)
            score[inside] += e / totals[key] * (var.size / max(s.stride, 1))
        scores[g.id] = score
    return scores


def _moments(model: onnx.ModelProto, reads: list[tuple[str, int]],
             batches: Batches) -> dict[tuple[str, int], np.ndarray]:
    """The variance of each activation at each position of its channel axis, streamed."""
    names = list(dict.fromkeys(name for name, _ in reads))
    run = capture(model, names)
    sums: dict[tuple[str, int], list] = {}
    for x in batches():
        values = dict(zip(names, run(x), strict=True))
        for name, axis in reads:
            flat = values[name].movedim(axis, 0)
            flat = flat.reshape(flat.shape[0], -1).double()
            acc = sums.setdefault((name, axis), [0.0, 0.0, 0])
            acc[0] = acc[0] + flat.sum(1)
            acc[1] = acc[1] + flat.square().sum(1)
            acc[2] += flat.shape[1]
    out = {}
    for key, (total, squares, count) in sums.items():
        mean = total / count
        out[key] = torch.clamp(squares / count - mean.square(), min=0).numpy()
    return out
