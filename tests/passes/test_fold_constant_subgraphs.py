from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx.parser
import pytest
from conftest import max_diff
from exporter_patterns import (
    C1,
    STATIC,
    SYMBOLIC,
    caffe2_bn,
    feeds_for,
    fp16_weights,
    old_normalize,
    op_types,
    paddle,
    shape_flatten,
    swish,
)

from onnxprune import api, modelio
from onnxprune.analysis import analyze
from onnxprune.passes import FoldConstantNodesPass, FoldConstantSubgraphsPass

DIMS = pytest.mark.parametrize("dims", [SYMBOLIC, STATIC], ids=["symbolic", "static"])


def _fold(model: onnx.ModelProto, **options: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    graph = modelio.to_graph(model)
    FoldConstantNodesPass()(graph)
    result = FoldConstantSubgraphsPass(**options)(graph)
    folded = modelio.to_model(graph, model)
    onnx.checker.check_model(folded, full_check=True)
    return folded, result.stats


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    feeds = feeds_for(a)
    assert max_diff(modelio.run(a, feeds), modelio.run(b, feeds)) <= 1e-6


def _initializer(model: onnx.ModelProto, node_name: str, index: int) -> np.ndarray:
    (node,) = [n for n in model.graph.node if n.name == node_name]
    found = {t.name: onh.to_array(t) for t in model.graph.initializer}
    assert node.input[index] in found, f"{node_name} input {index} is not an initializer"
    return found[node.input[index]]


@DIMS
@pytest.mark.parametrize(("build", "gone"), [
    (paddle, {"Reshape"}),
    (caffe2_bn, {"Reshape"}),
    (fp16_weights, {"Cast"}),
    (swish, {"Cast"}),
], ids=["paddle", "caffe2-bn", "fp16", "swish"])
def test_constant_subgraphs_become_initializers(build: Callable, gone: set[str],
                                                dims: list) -> None:
    model = build(dims)
    assert gone <= set(op_types(model))

    folded, stats = _fold(model)

    assert stats["tensors_folded"] > 0
    assert not gone & set(op_types(folded))
    assert set(op_types(folded)) == set(op_types(model)) - gone
    _same_outputs(model, folded)


@DIMS
def test_fp16_weights_become_float32_initializers(dims: list) -> None:
    model = fp16_weights(dims)
    folded, _ = _fold(model)
    w16 = {t.name: onh.to_array(t) for t in model.graph.initializer}["w116"]
    w1 = _initializer(folded, "conv1", 1)
    assert w1.dtype == np.float32
    np.testing.assert_array_equal(w1, w16.astype(np.float32))
    assert _initializer(folded, "conv1", 2).dtype == np.float32


def test_static_shape_chain_folds_to_a_constant_reshape_target() -> None:
    model = shape_flatten(STATIC)
    folded, _ = _fold(model)
    assert op_types(folded) == ["Conv", "Gemm", "Relu", "Reshape"]
    (reshape,) = [n for n in folded.graph.node if n.op_type == "Reshape"]
    target = {t.name: onh.to_array(t) for t in folded.graph.initializer}[reshape.input[1]]
    np.testing.assert_array_equal(target, [1, -1])
    _same_outputs(model, folded)


def test_symbolic_batch_keeps_the_shape_chain() -> None:
    model = shape_flatten(["N", 3, 8, 8])
    folded, _ = _fold(model)
    assert {"Shape", "Gather", "Concat"} <= set(op_types(folded))
    _same_outputs(model, folded)


TEXT = '<ir_version: 8, opset_import: ["": 13]> g (float[N,4] x) => ({outputs}) {{\n{body}\n}}'


def _text(body: str, outputs: str = "float[N,4] y", inits: str = "") -> onnx.ModelProto:
    text = TEXT.format(outputs=outputs, body=body)
    if inits:
        text = text.replace(") {", f") <{inits}> {{", 1)
    return modelio.load(onnx.parser.parse_model(text))


def test_nothing_that_reads_a_graph_input_folds() -> None:
    model = _text("two = Constant<value = float {2.0}>()\n d = Div(two, two)\n"
                  " y = Mul(x, d)\n")
    folded, _ = _fold(model)
    assert op_types(folded) == ["Mul"]
    _same_outputs(model, folded)


def test_a_graph_output_that_folds_keeps_its_name() -> None:
    model = _text("r = Reshape(k, s)\n y = Add(x, x)", outputs="float[N,4] y, float[4] r",
                  inits="float[2,2] k = {1, 2, 3, 4}, int64[1] s = {4}")
    folded, stats = _fold(model)
    assert [o.name for o in folded.graph.output] == ["y", "r"]
    assert stats["tensors_folded"] == 1
    assert "Reshape" not in op_types(folded)
    _same_outputs(model, folded)


@pytest.mark.parametrize(("max_bytes", "folds"), [(None, True), (63, False), (64, True)])
def test_outputs_over_the_size_limit_stay(max_bytes: int | None, folds: bool) -> None:
    """``Expand`` of a scalar to (4, 4) float32 is 64 bytes."""
    model = _text("e = Expand(k, s)\n t = ReduceSum<keepdims=0>(e, one)\n y = Add(x, t)",
                  inits="float k = {0.5}, int64[2] s = {4, 4}, int64[1] one = {1}")
    options = {} if max_bytes is None else {"max_bytes": max_bytes}
    folded, _ = _fold(model, **options)
    assert ("Expand" not in op_types(folded)) is folds
    _same_outputs(model, folded)


def test_random_nodes_are_not_frozen() -> None:
    model = _text("r = RandomUniform<shape = [4], dtype = 1>()\n y = Add(x, r)")
    graph = modelio.to_graph(model)
    FoldConstantSubgraphsPass()(graph)
    assert "RandomUniform" in [n.op for n in graph.nodes]


def test_nothing_to_fold_is_not_modified() -> None:
    model = _text("y = Relu(x)")
    assert not FoldConstantSubgraphsPass()(modelio.to_graph(model)).modified


def test_huge_constant_of_shape_is_still_refused_before_evaluation() -> None:
    big = oh.make_node("ConstantOfShape", ["claim"], ["big"])
    model = oh.make_model(oh.make_graph(
        [big, oh.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
         oh.make_node("Add", ["x", "s"], ["y"])], "g",
        [oh.make_tensor_value_info("x", 1, ["N"])], [oh.make_tensor_value_info("y", 1, ["N"])],
        [onh.from_array(np.array([1 << 20, 1, 1024, 900], np.int64), "claim")]),
        opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(Exception, match="more than half the memory"):
        api.normalize(model)


# -- the point of the work: analysis follows the channels once the constants are folded -------
@DIMS
@pytest.mark.parametrize("build", [paddle, caffe2_bn, fp16_weights, swish],
                         ids=["paddle", "caffe2-bn", "fp16", "swish"])
def test_normalize_unblocks_conv_groups(build: Callable, dims: list) -> None:
    model = build(dims)
    before = {g.id: g.blocked for g in analyze(modelio.to_graph(old_normalize(model)))}
    # the old pipeline could not follow these channels: conv1 was blocked, or not even a group
    assert before.get("conv1", "no group") is not None

    normalized, graph = api.normalize(model)

    groups = {g.id: g for g in analyze(graph)}
    assert groups["conv1"].blocked is None
    assert groups["conv1"].size == C1
    _same_outputs(model, normalized)


def test_normalize_unblocks_the_static_flatten_head() -> None:
    model = shape_flatten(STATIC)
    normalized, graph = api.normalize(model)
    assert {g.id: g.blocked for g in analyze(graph)}["conv1"] is None
    _same_outputs(model, normalized)
