"""Tensors that If/Loop/Scan subgraphs read from the enclosing scope block their groups.

Every model here is ``x -> conv1 -> Relu (r1) -> conv2 (3x3) -> Relu -> conv3 -> y`` plus one
control-flow node whose subgraph reads ``c1`` or ``r1`` from the main graph. Each reading
branch runs its own 1x1 Conv over what it reads, so a model written with conv1 pruned fails in
onnxruntime as soon as that branch runs. conv1's group must be blocked; conv2's stays free.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune import api, modelio
from onnxprune.analysis import ChannelGroup, analyze
from onnxprune.analysis.builder import subgraph_reads
from onnxprune.errors import NothingToPruneError

make = onnx.helper.make_node
FLOAT, BOOL, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL, onnx.TensorProto.INT64
WIDTH = 8  # channels of conv1 (and r1), which the subgraphs read
WIDE = 32  # channels of conv2, most of the FLOPs: the budget can be met by pruning it alone


def _info(name: str, elem: int, shape: list[int]) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, elem, shape)


def _weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    seed = sum(map(ord, name))
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return onnx.numpy_helper.from_array(values, name)


def _reading_branch(prefix: str, read: str, reducer: str = "ReduceMean") -> onnx.GraphProto:
    """A subgraph computing ``reducer(Conv(read, own weight))`` of shape [1].

    Its own 1x1 weight expects ``WIDTH`` input channels, so it fails if ``read`` loses some.
    """
    return onnx.helper.make_graph(
        [make("Conv", [read, f"{prefix}_w"], [f"{prefix}_c"], name=f"{prefix}_conv"),
         make(reducer, [f"{prefix}_c"], [f"{prefix}_out"], axes=[1, 2, 3], keepdims=0,
              name=f"{prefix}_reduce")],
        prefix, [], [_info(f"{prefix}_out", FLOAT, [1])],
        [_weight(f"{prefix}_w", (2, WIDTH, 1, 1))])


def _constant_branch(prefix: str) -> onnx.GraphProto:
    """A subgraph that reads nothing from outside and returns a constant of shape [1]."""
    value = onnx.numpy_helper.from_array(np.array([0.5], np.float32))
    return onnx.helper.make_graph(
        [make("Constant", [], [f"{prefix}_out"], value=value, name=f"{prefix}_const")],
        prefix, [], [_info(f"{prefix}_out", FLOAT, [1])])


def _model(control: onnx.NodeProto | list[onnx.NodeProto],
           inputs: list[onnx.ValueInfoProto] | None = None,
           initializers: list[onnx.TensorProto] | None = None,
           z_shape: list[int] | None = None) -> onnx.ModelProto:
    """The main graph around ``control`` (one node or several), which computes output ``z``."""
    graph = onnx.helper.make_graph(
        [make("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         make("Relu", ["c1"], ["r1"], name="relu1"),
         make("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         make("Relu", ["c2"], ["r2"], name="relu2"),
         make("Conv", ["r2", "w3"], ["y"], name="conv3"),
         *(control if isinstance(control, list) else [control])],
        "subgraph_reads",
        [_info("x", FLOAT, [1, 3, 8, 8]), *(inputs or [_info("cond", BOOL, [])])],
        [_info("y", FLOAT, [1, 4, 8, 8]), _info("z", FLOAT, [1] if z_shape is None else z_shape)],
        [_weight("w1", (WIDTH, 3, 3, 3)), _weight("b1", (WIDTH,)),
         _weight("w2", (WIDE, WIDTH, 3, 3)), _weight("w3", (4, WIDE, 1, 1)),
         *(initializers or [])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def if_reading_relu_model() -> onnx.ModelProto:
    """If node 'cond_if' on graph input ``cond``: both branches read ``r1`` (prunable by conv1).

    Without the subgraph check, conv1's group is pruned and either branch fails in onnxruntime.
    """
    return _model(make("If", ["cond"], ["z"], name="cond_if",
                       then_branch=_reading_branch("then", "r1"),
                       else_branch=_reading_branch("else", "r1", "ReduceMax")))


def if_one_branch_reading_conv_model() -> onnx.ModelProto:
    """If node 'cond_if' whose then-branch reads the Conv output ``c1``; else is a constant."""
    return _model(make("If", ["cond"], ["z"], name="cond_if",
                       then_branch=_reading_branch("then", "c1"),
                       else_branch=_constant_branch("else")))


def loop_model() -> onnx.ModelProto:
    """Loop node 'loop' (3 trips while ``cond``) whose body adds a reduction of ``r1`` to z."""
    body = onnx.helper.make_graph(
        [make("Conv", ["r1", "body_w"], ["body_c"], name="body_conv"),
         make("ReduceMean", ["body_c"], ["body_r"], axes=[1, 2, 3], keepdims=0,
              name="body_reduce"),
         make("Add", ["v_in", "body_r"], ["v_out"], name="body_add"),
         make("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body",
        [_info("iter", INT64, []), _info("cond_in", BOOL, []), _info("v_in", FLOAT, [1])],
        [_info("cond_out", BOOL, []), _info("v_out", FLOAT, [1])],
        [_weight("body_w", (2, WIDTH, 1, 1))])
    trips = onnx.numpy_helper.from_array(np.array(3, np.int64), "trips")
    start = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "v0")
    return _model(make("Loop", ["trips", "cond", "v0"], ["z"], name="loop", body=body),
                  initializers=[trips, start])


def scan_model() -> onnx.ModelProto:
    """Scan node 'scan' over graph input ``seq`` (3 steps) whose body reads ``r1``."""
    body = onnx.helper.make_graph(
        [make("Conv", ["r1", "scan_w"], ["scan_c"], name="scan_conv"),
         make("ReduceMean", ["scan_c"], ["scan_r"], axes=[1, 2, 3], keepdims=0,
              name="scan_reduce"),
         make("Add", ["s_in", "scan_r"], ["scan_t"], name="scan_add"),
         make("Mul", ["scan_t", "s_x"], ["s_out"], name="scan_mul")],
        "scan_body",
        [_info("s_in", FLOAT, [1]), _info("s_x", FLOAT, [1])],
        [_info("s_out", FLOAT, [1])],
        [_weight("scan_w", (2, WIDTH, 1, 1))])
    start = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "s0")
    return _model(make("Scan", ["s0", "seq"], ["z"], name="scan", body=body, num_scan_inputs=1),
                  inputs=[_info("seq", FLOAT, [3, 1])], initializers=[start])


def nested_if_model() -> onnx.ModelProto:
    """If node 'outer_if' whose then-branch holds If 'inner_if', whose branches read ``r1``."""
    inner = make("If", ["cond"], ["outer_then_out"], name="inner_if",
                 then_branch=_reading_branch("in_then", "r1"),
                 else_branch=_reading_branch("in_else", "r1", "ReduceMax"))
    outer_then = onnx.helper.make_graph([inner], "outer_then", [],
                                        [_info("outer_then_out", FLOAT, [1])])
    return _model(make("If", ["cond"], ["z"], name="outer_if", then_branch=outer_then,
                       else_branch=_constant_branch("outer_else")))


# variant: (builder, the main-graph node named in the reason, the tensor it reads)
VARIANTS: dict[str, tuple[Callable[[], onnx.ModelProto], str, str]] = {
    "if": (if_reading_relu_model, "If node 'cond_if'", "r1"),
    "if_one_branch": (if_one_branch_reading_conv_model, "If node 'cond_if'", "c1"),
    "loop": (loop_model, "Loop node 'loop'", "r1"),
    "scan": (scan_model, "Scan node 'scan'", "r1"),
    "nested_if": (nested_if_model, "If node 'outer_if'", "r1"),
}


def _normalized_graph(model: onnx.ModelProto) -> gs.Graph:
    return modelio.to_graph(api.normalize(model)[0])


def _by_producer(groups: list[ChannelGroup]) -> dict[str, ChannelGroup]:
    return {s.initializer: g for g in groups for s in g.producers if not s.bias}


@pytest.mark.parametrize("variant", VARIANTS)
def test_subgraph_read_blocks_the_group_it_reads(variant: str) -> None:
    build, node, tensor = VARIANTS[variant]
    groups = _by_producer(analyze(_normalized_graph(build())))
    reason = groups["w1"].blocked
    assert reason is not None
    assert f"{node} reads '{tensor}' inside its subgraph" in reason
    assert groups["w2"].blocked is None, "conv2's channels are not read by the subgraph"
    assert "subgraph" not in (groups["w3"].blocked or "")


def test_subgraph_reads_are_the_outer_names_only() -> None:
    graph = _normalized_graph(loop_model())
    loop = next(n for n in graph.nodes if n.op == "Loop")
    # body inputs (iter, cond_in, v_in), body outputs and the body's own weight are local
    assert subgraph_reads(loop) == {"r1"}
    graph = _normalized_graph(nested_if_model())
    outer = next(n for n in graph.nodes if n.op == "If")
    assert subgraph_reads(outer) == {"cond", "r1"}
    assert all(subgraph_reads(n) == set() for n in graph.nodes if n.op != "If")


def test_a_subgraph_tensor_copy_with_the_outer_name_still_blocks() -> None:
    graph = _normalized_graph(if_reading_relu_model())
    if_node = next(n for n in graph.nodes if n.op == "If")
    for branch in (if_node.attrs["then_branch"], if_node.attrs["else_branch"]):
        conv = next(n for n in branch.nodes if n.op == "Conv")
        outer = conv.inputs[0]
        assert outer.name == "r1"
        conv.inputs[0] = gs.Variable("r1", dtype=outer.dtype, shape=outer.shape)
    assert all(n.op != "If" for n in graph.tensors()["r1"].outputs), "no shared object left"
    reason = _by_producer(analyze(graph))["w1"].blocked
    assert reason is not None and "If node 'cond_if' reads 'r1'" in reason


def test_subgraph_read_of_an_initializer_blocks_as_shared() -> None:
    branch = onnx.helper.make_graph(  # w2 times a value of the input: nothing here folds
        [make("ReduceMean", ["x"], ["s"], keepdims=0, name="mean_x"),
         make("Mul", ["w2", "s"], ["scaled"], name="rm_w2"),
         make("ReduceMean", ["scaled"], ["read_w2"], axes=[0, 1, 2, 3], keepdims=1),
         make("Reshape", ["read_w2", "one"], ["w2_out"], name="flat_w2")],
        "reads_w2", [], [_info("w2_out", FLOAT, [1])],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = _model(make("If", ["cond"], ["z"], name="cond_if", then_branch=branch,
                        else_branch=_constant_branch("else")))
    groups = _by_producer(analyze(_normalized_graph(model)))
    # w2 is conv2's producer and conv1's consumer: both groups would slice it
    for producer in ("w1", "w2"):
        reason = groups[producer].blocked
        assert reason is not None and "'w2' is shared by nodes conv2, rm_w2" in reason


@pytest.mark.parametrize(("op", "attrs", "body_inputs", "body_outputs"), [
    ("Loop", {}, [_info("i", INT64, []), _info("c", BOOL, []), _info("v", FLOAT, [1, WIDTH, 8, 8])],
     [_info("c_out", BOOL, []), _info("v_out", FLOAT, [1, WIDTH, 8, 8])]),
    ("Scan", {"num_scan_inputs": 1}, [_info("v", FLOAT, [WIDTH, 8, 8])],
     [_info("v_out", FLOAT, [WIDTH, 8, 8])]),
])
def test_explicit_inputs_of_control_flow_block_as_unknown_op(
        op: str, attrs: dict, body_inputs: list, body_outputs: list) -> None:
    nodes = [make("Identity", ["v"], ["v_out"], name="pass_v")]
    if op == "Loop":
        nodes.append(make("Identity", ["c"], ["c_out"], name="pass_c"))
    body = onnx.helper.make_graph(nodes, "body", body_inputs, body_outputs)
    explicit = ["trips", "cond", "r1"] if op == "Loop" else ["r1"]
    trips = onnx.numpy_helper.from_array(np.array(2, np.int64), "trips")
    control = make(op, explicit, ["carried"], name="flow", body=body, **attrs)
    reduce = make("ReduceMean", ["carried"], ["z"], axes=[0, 1, 2, 3], keepdims=0, name="rm")
    model = _model([control, reduce], initializers=[trips], z_shape=[])
    groups = _by_producer(analyze(_normalized_graph(model)))
    reason = groups["w1"].blocked
    assert reason is not None and f"{op} node 'flow' is not known to keep channels apart" in reason
    assert "subgraph" not in reason
    assert groups["w2"].blocked is None


def _feeds(model: onnx.ModelProto, cond: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    values = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
              "cond": np.array(cond), "seq": rng.standard_normal((3, 1)).astype(np.float32)}
    return {i.name: values[i.name] for i in model.graph.input}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("variant", VARIANTS)
def test_pruned_model_runs_on_both_branches(variant: str) -> None:
    model = VARIANTS[variant][0]()
    try:
        result = onnxprune.prune(model, method="magnitude", max_flops=0.5, round_to=1)
    except NothingToPruneError:
        return
    for cond in (True, False):
        before = _run(model, _feeds(model, cond))
        after = _run(result.model, _feeds(result.model, cond))
        assert [a.shape for a in after] == [b.shape for b in before], f"cond={cond}"
    widths = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert widths["w1"][0] == WIDTH, "conv1 feeds the subgraph and must keep its channels"
