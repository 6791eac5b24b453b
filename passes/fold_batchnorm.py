"""FoldBatchNormPass: fold inference BatchNormalization into the Conv or Gemm before it.

With ``s = scale / sqrt(var + eps)``, ``BN(W x + b) = (s W) x + (s (b - mean) + beta)``: the
weights' output rows are scaled by ``s`` and the bias becomes ``s (b - mean) + beta``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import attr, constant_value, input_or_none
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
    x = bn.inputs[0]
    params = [constant_value(t) for t in bn.inputs[1:5]]
    if len(x.inputs) != 1 or any(p is None for p in params):
        return False
    producer = x.inputs[0]
    if len(x.outputs) != 1 or x in graph.outputs:  # rule 2
        return False
    if producer.op == "Conv":
        axis = 0
    elif producer.op == "Gemm" and not attr(producer, "transA", 0):
        axis = 0 if attr(producer, "transB", 0) else 1
    else:
        return False
    weight = constant_value(producer.inputs[1])
    bias_t = input_or_none(producer, 2)
    bias = constant_value(bias_t) if bias_t is not None else None
    if weight is None or (bias_t is not None and bias is None):
        return False
    n_out = weight.shape[axis]
    b = np.zeros(n_out) if bias is None else _per_channel(bias, n_out)
    if b is None:  # rule 4
        return False
    if producer.op == "Gemm":  # rule 3: alpha and beta become 1
        weight = weight * float(attr(producer, "alpha", 1.0))
        b = b * float(attr(producer, "beta", 1.0))
        producer.attrs["alpha"] = 1.0
        producer.attrs["beta"] = 1.0
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    s = scale / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    shape = [1] * weight.ndim
    shape[axis] = n_out
    new_w = (weight * s.reshape(shape)).astype(weight.dtype)
    new_b = (s * (b - mean) + beta).astype(weight.dtype)
    producer.inputs[1] = gs.Constant(f"{producer.name}_weight_bnfold", new_w)  # rule 5
    bias_const = gs.Constant(f"{producer.name}_bias_bnfold", new_b)
    if bias_t is None:
        producer.inputs.append(bias_const)
    else:
        producer.inputs[2] = bias_const
    y = bn.outputs[0]
    bn.outputs.clear()
    bn.inputs.clear()
    producer.outputs[0] = y
    return True


def _per_channel(bias: np.ndarray, n_out: int) -> np.ndarray | None:
    """Return ``bias`` as a float64 ``(n_out,)`` vector, or None when it varies by row.

    Conv biases are ``(n_out,)``; a Gemm ``C`` only needs to broadcast to ``(M, n_out)``, so
    ``()``, ``(1,)``, ``(1, 1)`` and ``(1, n_out)`` are per-channel too (rule 4).
    """
    if bias.ndim > 2 or any(d != 1 for d in bias.shape[:-1]):
        return None
    if bias.ndim and bias.shape[-1] not in (1, n_out):
        return None
    return np.broadcast_to(bias.astype(np.float64).reshape(-1), (n_out,)).copy()
