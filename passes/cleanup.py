"""CleanupPass: drop dead nodes and tensors, then sort the nodes topologically."""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs

from onnxprune.passes._base import Pass, PassResult


class CleanupPass(Pass):
    """Remove nodes and initializers nothing reads, and toposort.

    Rules:
      1. Graph inputs are kept even when unused: the model's signature does not change.
      2. Nodes are sorted so that every node comes after the producers of its inputs.
    """

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Clean in place."""
        before = len(graph.nodes)
        graph.cleanup(remove_unused_graph_inputs=False)  # rule 1
        graph.toposort()  # rule 2
        removed = before - len(graph.nodes)
        return PassResult(graph, removed > 0, {"nodes_removed": removed})
