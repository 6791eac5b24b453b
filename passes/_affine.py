"""Fold a per-output-channel affine map ``y -> s * y + t`` into the Conv or Gemm computing ``y``.

For a producer ``y = W x + b`` (a Conv, or a Gemm ``alpha * A B + beta * C``),
``s * y + t = (s W) x + (s b + t)``: the weight's output rows are scaled by ``s`` and the bias
becomes ``s b + t``. Shared by :class:`FoldBatchNormPass` (``s = scale / sqrt(var + eps)``,
``t = beta - s * mean``) and :class:`FoldChannelAffinePass` (``Mul`` / ``Add`` by constants).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import attr, constant_value, input_or_none


def foldable_producer(graph: gs.Graph, y: gs.Tensor) -> tuple[gs.Node, int] | None:
    """Return the producer of ``y`` and its weight's output axis, when ``y`` can take a fold.

    That is: ``y`` is the only output of a Conv (any group) or a Gemm with ``transA=0``, and
    feeds exactly one node and no graph output, so changing it changes nothing else.
    """
    if len(y.inputs) != 1 or len(y.outputs) != 1 or y in graph.outputs:
        return None
    producer = y.inputs[0]
    if len([o for o in producer.outputs if o.name]) != 1:
        return None
    if producer.op == "Conv":
        return producer, 0
    if producer.op == "Gemm" and not attr(producer, "transA", 0):
        return producer, 0 if attr(producer, "transB", 0) else 1
    return None


def output_channels(producer: gs.Node, axis: int) -> int | None:
    """The producer's number of output channels, or None when its weight is not constant."""
    weight = constant_value(producer.inputs[1])
    return None if weight is None else int(weight.shape[axis])


def fold_affine(producer: gs.Node, axis: int, scale: np.ndarray, shift: np.ndarray,
                tag: str) -> bool:
    """Rewrite ``producer`` to compute ``scale * y + shift`` per output channel; False if not.

    ``scale`` and ``shift`` are ``(n_out,)`` vectors. Refused when the weight or bias is not
    constant, or when a Gemm ``C`` varies by row (see :func:`per_channel`). A producer without
    a bias gets one; the new weight and bias are fresh constants named ``<node>_weight_<tag>``
    and ``<node>_bias_<tag>`` (the output's name for an unnamed node), so a weight shared
    with another node is never changed.
    """
    weight = constant_value(producer.inputs[1])
    bias_t = input_or_none(producer, 2)
    bias = constant_value(bias_t) if bias_t is not None else None
    if weight is None or (bias_t is not None and bias is None):
        return False
    n_out = weight.shape[axis]
    b = np.zeros(n_out) if bias is None else per_channel(bias, n_out)
    if b is None:
        return False
    w = weight.astype(np.float64)
    if producer.op == "Gemm":  # alpha and beta become 1
        w = w * float(attr(producer, "alpha", 1.0))
        b = b * float(attr(producer, "beta", 1.0))
        producer.attrs["alpha"] = 1.0
        producer.attrs["beta"] = 1.0
    shape = [1] * weight.ndim
    shape[axis] = n_out
    new_w = (w * scale.reshape(shape)).astype(weight.dtype)
    new_b = (scale * b + shift).astype(weight.dtype)
    base = producer.name or producer.outputs[0].name  # unique even for unnamed nodes
    producer.inputs[1] = gs.Constant(f"{base}_weight_{tag}", new_w)
    bias_const = gs.Constant(f"{base}_bias_{tag}", new_b)
    if bias_t is None:
        if len(producer.inputs) < 3:
            producer.inputs.append(bias_const)
        else:  # an empty optional bias input
            producer.inputs[2] = bias_const
    else:
        producer.inputs[2] = bias_const
    return True


def bypass(node: gs.Node, producer: gs.Node) -> None:
    """Make ``producer`` write ``node``'s output and detach ``node`` (cleanup removes it)."""
    y = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    producer.outputs[0] = y


def per_channel(bias: np.ndarray, n_out: int) -> np.ndarray | None:
    """Return ``bias`` as a float64 ``(n_out,)`` vector, or None when it varies by row.

    Conv biases are ``(n_out,)``; a Gemm ``C`` only needs to broadcast to ``(M, n_out)``, so
    ``()``, ``(1,)``, ``(1, 1)`` and ``(1, n_out)`` are per-channel too.
    """
    if bias.ndim > 2 or any(d != 1 for d in bias.shape[:-1]):
        return None
    if bias.ndim and bias.shape[-1] not in (1, n_out):
        return None
    return np.broadcast_to(bias.astype(np.float64).reshape(-1), (n_out,)).copy()
