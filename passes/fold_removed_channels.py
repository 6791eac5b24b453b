"""FoldRemovedChannelsPass: keep the effect of channels about to be removed (exact removal).

Once a channel's producer weights are zero, its activation no longer depends on the input:
it is whatever the producer bias becomes through the channel-wise ops that follow (a bias
through ReLU, a depthwise kernel's bias, ...). Removing the channel outright would drop that
constant. This pass measures it and adds what it contributes to each consumer's output:

    consumer(x) = consumer(x with removed channels set to 0) + consumer_nobias(removed part)

so that removing the channels afterwards is exact (DESIGN.md invariant 2). One case is not:
a consumer that zero-pads its input (a 3x3 Conv with ``pads=1``) sees the constant at every
position but the borders, where padding cuts it off, so the offset differs at the border
positions. Storing the whole offset map would cost ``C_out * H * W`` parameters per layer,
more than pruning saves; the pass folds the interior value into the bias and counts the
layer in ``stats["border_approximations"]``. Retraining absorbs that border difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis import analyze
from onnxprune.errors import PassError
from onnxprune.graph import attr, constant_value, input_or_none, set_values
from onnxprune.passes._base import Pass, PassResult
from onnxprune.passes._evaluate import evaluate, evaluate_node


class FoldRemovedChannelsPass(Pass):
    """Fold the constant activation of every channel the plan removes into its consumers.

    Rules:
      1. Probe: with the producer weights (not biases) of removed channels zeroed, run the
         graph on two random inputs and read each consumer's input; the removed channels
         must read the same both times (else the pass refuses).
      2. The consumer evaluated without bias on just those channels gives an offset.
      3. The offset goes into the consumer's bias (Conv, ConvTranspose, Gemm; created when
         absent); a MatMul gets an Add of the offset after it, and its output tensor keeps its
         name. Where zero padding makes the offset differ at the borders, the interior value
         (the per-channel median) is folded and the layer counted as approximate.
      4. Offsets below 1e-12 are skipped.
    ``ctx.plan`` holds the plan.
    """

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Fold in place."""
        removed = _removed_positions(graph, ctx.plan)
        if not removed:
            return PassResult(graph, False, {})
        consumers = {n.name: n for n in graph.nodes if n.name in removed}
        values = _probe(graph, ctx.plan, [consumers[name].inputs[0].name for name in removed])
        folded = approximate = 0
        for name, positions in removed.items():
            node = consumers[name]
            runs = values[node.inputs[0].name]
            slab = np.zeros_like(runs[0])
            slab[:, positions] = runs[0][:, positions]
            other = np.zeros_like(runs[1])
            other[:, positions] = runs[1][:, positions]
            if not np.allclose(slab, other, rtol=1e-5, atol=1e-6):  # rule 1
                raise PassError(f"removed channels of '{name}' still depend on the input")
            if np.abs(slab).max() < 1e-12:  # rule 4
                continue
            exact = _add_offset(graph, node, _linear_nobias(node, slab, graph.opset))
            folded += 1
            approximate += not exact
        return PassResult(graph, folded > 0, {"consumers_folded": folded,
                                              "border_approximations": approximate})


def _removed_positions(graph: gs.Graph, plan: Any) -> dict[str, np.ndarray]:
    """Map each consumer node to the input channel positions the plan removes."""
    out: dict[str, list[np.ndarray]] = {}
    for group in analyze(graph):
        gone = plan.removed(group)
        if gone.size:
            for s in group.consumers:
                out.setdefault(s.node, []).append(s.positions(gone))
    return {k: np.unique(np.concatenate(v)) for k, v in out.items()}


def _probe(graph: gs.Graph, plan: Any, tensors: list[str]) -> dict[str, list[np.ndarray]]:
    """Run the graph with removed producers zeroed on two inputs; return both readings."""
    zeroed = graph.copy()
    by_name = zeroed.tensors()
    for group in analyze(graph):
        gone = plan.removed(group)
        for s in group.producers:
            if gone.size and not s.bias:
                values = np.moveaxis(np.array(by_name[s.initializer].values), s.axis, 0)
                values[s.positions(gone)] = 0
                set_values(by_name[s.initializer], np.moveaxis(values, 0, s.axis))
    rng = np.random.default_rng(0)
    readings: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for _ in range(2):
        feeds = {t.name: rng.standard_normal(_static(t.shape)).astype(t.dtype or np.float32)
                 for t in zeroed.inputs}
        for name, value in evaluate(zeroed, feeds, sorted(set(tensors))).items():
            readings[name].append(value)
    return readings


def _static(shape: Any) -> list[int]:
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in (shape or [])]
    if any(not isinstance(d, int) for d in list(shape or [])[1:]):
        raise PassError("the probe needs static input dimensions after the batch")
    return dims


def _linear_nobias(node: gs.Node, x: np.ndarray, opset: int) -> np.ndarray:
    """Evaluate the linear part of a consumer (no bias) on ``x``."""
    w = constant_value(node.inputs[1])
    if node.op in ("Conv", "ConvTranspose"):
        return evaluate_node(node.op, node.attrs, [x.astype(w.dtype), w], opset)
    if node.op == "Gemm":
        w = w.T if attr(node, "transB", 0) else w
        return float(attr(node, "alpha", 1.0)) * (x @ w)
    return x @ w  # MatMul


def _add_offset(graph: gs.Graph, node: gs.Node, offset: np.ndarray) -> bool:
    """Add ``offset`` (batch 1, channels on axis 1) to ``node``'s output (rule 3).

    Returns whether the offset was exact (the same at every position of a channel).
    """
    per_channel = np.moveaxis(offset[0], 0, -1).reshape(-1, offset.shape[1])
    delta = np.median(per_channel, axis=0).astype(offset.dtype)
    exact = bool(np.allclose(per_channel, delta, rtol=1e-6, atol=1e-7))
    if node.op == "MatMul":
        out = node.outputs[0]
        inner = gs.Variable(f"{out.name}_before_fold", dtype=out.dtype)
        node.outputs[0] = inner
        graph.nodes.append(gs.Node("Add", f"{node.name}_fold", outputs=[out], inputs=[
            inner, gs.Constant(f"{node.name}_offset", delta)]))
        graph.toposort()
        return exact
    if node.op == "Gemm":
        delta = delta / float(attr(node, "beta", 1.0))
    bias = input_or_none(node, 2)
    if bias is None:
        node.inputs.append(gs.Constant(f"{node.name}_bias_folded", delta))
    else:
        current = constant_value(bias)
        if current.size == delta.size:  # (N,) or (1, N): keep the shape
            set_values(bias, (current + delta.reshape(current.shape)).astype(delta.dtype))
        else:  # a broadcast scalar becomes one value per unit
            set_values(bias, (current.reshape(-1)[0] + delta).astype(delta.dtype))
    return exact
