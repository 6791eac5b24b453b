"""FoldBatchNormPass: fold inference BatchNormalization into the Conv or Gemm before it.

With ``s = scale / sqrt(var + eps)``, ``BN(W x + b) = (s W) x + (s (b - mean) + beta)``: the
weights' output rows are scaled by ``s`` and the bias becomes ``s (b - mean) + beta``. The
rewrite itself is :func:`onnxprune.passes._affine.fold_affine`, shared with
:class:`FoldChannelAffinePass`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import attr, constant_value
from onnxprune.passes._affine import bypass, fold_affine, foldable_producer
from onnxprune.passes._base import Pass, PassResult


class FoldBatchNormPass(Pass):
    """Fold each foldable BatchNormalization node into its producer.

    Rules:
      1. The BN has one output, constant parameters, and reads the only output of a Conv
         (group any) or a Gemm with ``transA=0``, whose weight and bias are constants.
      2. That output feeds nothing but the BN and is not a graph output.
      3. Conv weight rows (axis 0) are scaled; Gemm weight along its output axis
         (axis 0 with ``transB=1``, else axis 1); ``alpha`` and ``beta`` are folded in too.
      4. A Gemm bias ``C`` folds when it is the same for every row: shape ``()``, ``(1,)``,
         ``(N,)``, ``(1, 1)`` or ``(1, N)``; it becomes a ``(N,)`` bias. A ``C`` that varies
         by row (``(M, 1)``, ``(M, N)`` with ``M > 1``) leaves the BN unfolded.
      5. A producer without bias gets one. The weights are copied, never shared.
    Other BatchNormalization nodes stay; analysis treats them as per-channel passengers.
    """

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Fold in place."""
        folded = 0
        for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
            if _fold(graph, bn):
                folded += 1
        if folded:
            graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(graph, folded > 0, {"batchnorms_folded": folded})


def _fold(graph: gs.Graph, bn: gs.Node) -> bool:
    if len([o for o in bn.outputs if o.name]) != 1:  # rule 1
        return False
    params = [constant_value(t) for t in bn.inputs[1:5]]
    found = foldable_producer(graph, bn.inputs[0])  # rules 1-3
    if found is None or any(p is None for p in params):
        return False
    producer, axis = found
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    s = scale / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    if not fold_affine(producer, axis, s, beta - s * mean, "bnfold"):  # rules 3-5
        return False
    bypass(bn, producer)
    return True
