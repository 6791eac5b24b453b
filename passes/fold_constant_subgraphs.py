"""FoldConstantSubgraphsPass: evaluate every node that reads only constants, with graphsurgeon.

Real exports compute weights at run time from initializers: PaddlePaddle reshapes each Conv
bias (``Add(conv, Reshape(b, shape))``), Caffe2-era models reshape BatchNorm scales, fp16 models
``Cast`` their weights, and flatten heads build a ``Reshape`` target from ``Shape -> Gather ->
Unsqueeze -> Concat``. Analysis reads weights only from initializers, so this pass turns each such
subgraph into the initializer it computes, using onnx-graphsurgeon's ``Graph.fold_constants``
(which evaluates the subgraph in onnxruntime) instead of a folder of our own.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.util import misc

from onnxprune.limits import available_bytes
from onnxprune.passes._base import Pass, PassResult

# Ops whose value is a fresh draw at every run: folding would freeze one draw (rule 3).
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"})


class FoldConstantSubgraphsPass(Pass):
    """Replace every tensor computed from constants alone by an initializer holding its value.

    Runs after :class:`FoldConstantNodesPass`, which has already lowered ``Constant`` nodes and
    refused a ``ConstantOfShape`` claiming more than half the free memory with a clear error.

    Rules:
      1. A node folds when all its inputs are constants (initializers, or tensors folded
         before it); ``Reshape(c, s)``, ``Cast(c)``, ``Transpose(c)``, ``Div(c, d)`` and chains
         of them become one initializer. The value is what onnxruntime computes, dtype
         included (an fp16 weight cast to float becomes a float32 initializer).
      2. ``Shape`` of a tensor whose shape is static, and ``Gather`` / ``Slice`` of such a
         ``Shape`` over static dimensions, fold too (graphsurgeon's ``fold_shapes``), so a
         reshape target built from them becomes constant. A symbolic dimension (batch, H, W)
         never folds: nothing that depends on a graph input's run-time values or sizes does.
      3. A node stays when any output's shape is not static and known from shape inference,
         or would take more than ``max_bytes`` (default: half the memory available now), so
         evaluation never allocates an unbounded tensor; when it is random (``RandomNormal``,
         ...), since folding would freeze one draw; or when it is outside the default ONNX
         domain. A node that stays keeps its consumers from folding.
      4. A subgraph onnxruntime cannot evaluate is left as it is; the rest still folds
         (recursive partitioning).
      5. Graph outputs keep their names: one that folds becomes ``Identity(constant)``.
      6. Subgraphs are not flattened: graphsurgeon's inlining of an ``If`` with a constant
         condition can leave the If's output without a producer.
    Side effect of graphsurgeon's shape folding: ``Cast(int -> float) -> Add/Mul/... ->
    Cast(-> int)`` chains on shape values are computed in the integer type instead.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Fold in place, then drop the dead nodes."""
        limit = self.max_bytes if self.max_bytes is not None else available_bytes() // 2
        computed = {name for name, t in graph.tensors().items()
                    if isinstance(t, gs.Variable) and t.inputs}
        nodes_before = len(graph.nodes)
        graph.toposort()
        graph.fold_constants(fold_shapes=True, partitioning="recursive", error_ok=True,
                             flatten_subgraphs=False,  # rule 6: its If inlining loses outputs
                             size_threshold=limit,
                             should_exclude_node=partial(_stays, limit=limit))  # rules 1-4
        folded = sum(1 for name, t in graph.tensors().items()
                     if name in computed and isinstance(t, gs.Constant))
        _keep_outputs(graph)  # rule 5
        graph.cleanup(remove_unused_graph_inputs=False)
        removed = nodes_before - len(graph.nodes)
        return PassResult(graph, removed > 0 or folded > 0,
                          {"tensors_folded": folded, "nodes_removed": removed})

    def ensures(self, graph: gs.Graph, ctx: Any) -> None:
        """Raise when an output became an initializer (rule 5) or a tensor lost its producer."""
        for t in graph.outputs:
            if isinstance(t, gs.Constant):
                raise ValueError(f"graph output '{t.name}' became an initializer")
        inputs = {id(t) for t in graph.inputs}
        for node in graph.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Variable) and t.name and not t.inputs and id(t) not in inputs:
                    raise ValueError(f"'{t.name}', read by node '{node.name}', lost its producer")


def _stays(node: gs.Node, limit: int) -> bool:
    """Whether ``node`` must not fold although its inputs are constant (rule 3)."""
    if node.op in _RANDOM or node.domain not in ("", "ai.onnx", None):
        return True
    for out in node.outputs:
        if out.shape is None or out.dtype is None or misc.is_dynamic_shape(out.shape):
            return True
        size = int(np.prod([int(d) for d in out.shape], dtype=object))
        if size * np.dtype(out.dtype).itemsize > limit:
            return True
    return False


def _keep_outputs(graph: gs.Graph) -> None:
    """Give each graph output that folded to a constant back a producer (rule 5)."""
    for i, t in enumerate(graph.outputs):
        if isinstance(t, gs.Constant):
            out = gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
            t.name = f"{t.name}_folded"
            graph.nodes.append(gs.Node("Identity", name=f"{out.name}_identity", inputs=[t],
                                       outputs=[out]))
            graph.outputs[i] = out
