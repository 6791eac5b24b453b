from __future__ import annotations

import onnx.parser
from conftest import max_diff

from onnxprune import modelio
from onnxprune.passes import FoldConstantNodesPass

TEXT = """<ir_version: 8, opset_import: ["": 13]> g (float[N,2,5,5] x) => (float[N,3,5,5] y)
<float[3] bias = {0.5, -1.0, 2.0}> {
  w = Constant<value = float[3,2,1,1] {1, 2, 3, 4, 5, 6}>()
  wi = Identity(w)
  b = Identity(bias)
  shape = Constant<value = int64[4] {1, 3, 1, 1}>()
  k = ConstantOfShape<value = float[1] {0.25}>(shape)
  c = Conv(x, wi, b)
  y = Add(c, k)
}"""


def test_constants_become_initializers_and_outputs_stay() -> None:
    model = modelio.load(onnx.parser.parse_model(TEXT))
    graph = modelio.to_graph(model)
    result = FoldConstantNodesPass()(graph)
    assert result.stats["nodes_folded"] == 5
    assert sorted(n.op for n in graph.nodes) == ["Add", "Conv"]
    conv = next(n for n in graph.nodes if n.op == "Conv")
    assert all(type(t).__name__ == "Constant" for t in conv.inputs[1:])
    feeds = modelio.random_inputs(model)
    assert max_diff(modelio.run(model, feeds),
                    modelio.run(modelio.to_model(graph, model), feeds)) == 0


def test_nothing_to_fold_is_not_modified() -> None:
    model = modelio.load(onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["": 13]> g (float[2] x) => (float[2] y) {y = Relu(x)}'))
    assert not FoldConstantNodesPass()(modelio.to_graph(model)).modified
