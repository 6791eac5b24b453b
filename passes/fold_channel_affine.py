"""FoldChannelAffinePass: fold ``Mul`` / ``Add`` by per-channel constants into the Conv before.

PaddlePaddle adds each Conv bias as ``Add(conv, b)`` with ``b`` of shape ``(1, C, 1, 1)``;
Caffe2-era exports apply BatchNorm as ``Mul(conv, s)`` then ``Add(., t)``. For a producer
``y = W x + b``, ``s * y = (s W) x + s b`` and ``y + t = W x + (b + t)``: the weight's output rows
are scaled and the bias moves, exactly as a BatchNormalization fold does (the shared rewrite is
:func:`onnxprune.passes._affine.fold_affine`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import constant_value
from onnxprune.passes._affine import bypass, fold_affine, foldable_producer, output_channels
from onnxprune.passes._base import Pass, PassResult

_OPS = ("Mul", "Add", "Sub")


class FoldChannelAffinePass(Pass):
    """Fold each ``Mul`` / ``Add`` / ``Sub`` of a Conv or Gemm output by a constant into it.

    Rules:
      1. The node is ``Mul(y, c)``, ``Mul(c, y)``, ``Add(y, c)``, ``Add(c, y)`` or
         ``Sub(y, c)`` with ``c`` a constant of the weight's dtype, and ``y`` the only output
         of a Conv (any group) or a Gemm with ``transA=0`` whose weight and bias are constant.
      2. ``y`` feeds nothing but that node and is not a graph output.
      3. ``c`` is per output channel and broadcasts over everything else without growing
         ``y``: of rank at most ``y``'s, and, right-aligned with ``y``, 1 on every axis but the
         channel axis (axis 1), where it is 1 or the channel count. For a Conv: ``(C, 1, 1)``,
         ``(1, C, 1, 1)``; for a Gemm: ``(N,)``, ``(1, N)``. A one-element ``c`` (``()``,
         ``(1,)``, ``(1, 1, 1, 1)``) folds as a scalar.
      4. ``Mul`` scales the weight's output rows and the bias; ``Add`` adds to the bias,
         ``Sub`` subtracts from it; a producer without bias gets one (as rule 5 of
         :class:`FoldBatchNormPass`, Gemm ``alpha``, ``beta`` and ``C`` included).
      5. Repeated until nothing folds, so ``Conv -> Mul -> Add`` folds both.
    A constant varying over batch or spatial positions (``(1, C, H, W)``), a ``Div``, or a
    ``y`` read elsewhere (the ``x * Sigmoid(x)`` of Swish) stays: analysis follows those.
    """

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Fold in place."""
        folded = 0
        changed = True
        while changed:  # rule 5
            changed = False
            for node in [n for n in graph.nodes if n.op in _OPS and n.outputs]:
                if _fold(graph, node):
                    folded += 1
                    changed = True
        if folded:
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(graph, folded > 0, {"affines_folded": folded})


def _fold(graph: gs.Graph, node: gs.Node) -> bool:
    if len(node.inputs) != 2 or len(node.outputs) != 1:
        return False
    for index in (0, 1):
        if node.op == "Sub" and index == 1:  # rule 1: only y - c
            return False
        y, c = node.inputs[index], node.inputs[1 - index]
        values = constant_value(c)
        found = foldable_producer(graph, y)  # rules 1-2
        if values is None or found is None:
            continue
        producer, axis = found
        n_out = output_channels(producer, axis)
        weight = constant_value(producer.inputs[1])
        if n_out is None or weight is None or values.dtype != weight.dtype:
            return False
        vector = _channel_vector(values, n_out, _rank(producer))  # rule 3
        if vector is None:
            return False
        ones, zeros = np.ones(n_out), np.zeros(n_out)
        scale, shift = {"Mul": (vector, zeros), "Add": (ones, vector),
                        "Sub": (ones, -vector)}[node.op]  # rule 4
        if not fold_affine(producer, axis, scale, shift, f"{node.op.lower()}fold"):
            return False
        bypass(node, producer)
        return True
    return False


def _rank(producer: gs.Node) -> int:
    """Rank of the producer's output: a Conv's is its weight's, a Gemm's is 2."""
    if producer.op == "Gemm":
        return 2
    return int(np.ndim(constant_value(producer.inputs[1])))


def _channel_vector(values: np.ndarray, n_out: int, rank: int) -> np.ndarray | None:
    """``values`` as a float64 ``(n_out,)`` vector when it is per channel (rule 3), else None."""
    if values.ndim > rank:
        return None
    if values.size == 1:
        return np.full(n_out, float(values.reshape(-1)[0]))
    shape = (1,) * (rank - values.ndim) + values.shape
    if shape[1] != n_out or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    return values.astype(np.float64).reshape(-1)
