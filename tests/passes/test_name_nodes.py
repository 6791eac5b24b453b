from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.passes import NameNodesPass


def test_unique_names() -> None:
    x = gs.Variable("x")
    nodes = [gs.Node("Relu", name=n, inputs=[x], outputs=[gs.Variable(f"o{i}")])
             for i, n in enumerate(["", "a", "a", "", "Relu_0"])]
    graph = gs.Graph(nodes=nodes, inputs=[x])
    result = NameNodesPass()(graph)
    names = [n.name for n in graph.nodes]
    assert len(set(names)) == len(names) and all(names)
    assert result.stats["nodes_renamed"] == 4
    assert not NameNodesPass()(graph).modified
