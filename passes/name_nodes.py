"""NameNodesPass: give every node a unique name, so reports and plans can refer to it."""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs

from onnxprune.passes._base import Pass, PassResult


class NameNodesPass(Pass):
    """Name unnamed nodes and rename duplicates.

    Rules:
      1. A node with an empty name becomes ``<op_type>_<index>``.
      2. A node whose name is already taken gets ``_<k>`` appended until it is unique.
    """

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Rename in place."""
        seen: set[str] = set()
        renamed = 0
        for i, node in enumerate(graph.nodes):
            name = node.name or f"{node.op}_{i}"  # rule 1
            base, k = name, 1
            while name in seen:  # rule 2
                name = f"{base}_{k}"
                k += 1
            if name != node.name:
                node.name = name
                renamed += 1
            seen.add(name)
        return PassResult(graph, renamed > 0, {"nodes_renamed": renamed})
