from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.passes import CleanupPass


def test_removes_dead_nodes_keeps_inputs_and_sorts() -> None:
    x, unused = gs.Variable("x"), gs.Variable("unused")
    a, b, dead = gs.Variable("a"), gs.Variable("b"), gs.Variable("dead")
    second = gs.Node("Relu", "second", inputs=[a], outputs=[b])
    first = gs.Node("Relu", "first", inputs=[x], outputs=[a])
    orphan = gs.Node("Relu", "orphan", inputs=[x], outputs=[dead])
    graph = gs.Graph(nodes=[second, orphan, first], inputs=[x, unused], outputs=[b])
    result = CleanupPass()(graph)
    assert result.stats["nodes_removed"] == 1
    assert [n.name for n in graph.nodes] == ["first", "second"]
    assert [t.name for t in graph.inputs] == ["x", "unused"]
