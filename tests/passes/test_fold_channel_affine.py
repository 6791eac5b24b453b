from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import build, max_diff
from exporter_patterns import (
    C1,
    STATIC,
    SYMBOLIC,
    caffe2_bn,
    feeds_for,
    gemm_bias,
    old_normalize,
    op_types,
    paddle,
)

from onnxprune import api, modelio
from onnxprune.analysis import analyze
from onnxprune.passes import FoldChannelAffinePass

CONV_OUT = "float[N,6,6,6] y"  # 3x3 Conv, no padding, on 8x8


def _model(body: str, consts: dict[str, tuple[int, ...]], *, weights: dict | None = None,
           inputs: str = "float[N,4,8,8] x", outputs: str = CONV_OUT) -> onnx.ModelProto:
    """``body`` over a Conv weight ``w`` (6, 4, 3, 3) and constants of exactly these shapes."""
    flat = {name: (int(np.prod(shape)),) for name, shape in consts.items()}
    model = build(body, {**(weights or {"w": (6, 4, 3, 3)}), **flat}, inputs=inputs,
                  outputs=outputs)
    graph = modelio.to_graph(model)
    tensors = graph.tensors()
    for name, shape in consts.items():
        tensors[name].values = tensors[name].values.reshape(shape)
    return modelio.load(modelio.to_model(graph, model))


def _run(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    graph = modelio.to_graph(model)
    result = FoldChannelAffinePass()(graph)
    folded = modelio.to_model(graph, model)
    onnx.checker.check_model(folded, full_check=True)
    feeds = feeds_for(model)
    assert max_diff(modelio.run(model, feeds), modelio.run(folded, feeds)) <= 1e-5
    return folded, result.stats["affines_folded"]


PER_CHANNEL = [(6, 1, 1), (1, 6, 1, 1), (1,), (), (1, 1, 1, 1)]
PER_CHANNEL_IDS = ["c11", "1c11", "one", "scalar", "1111"]


@pytest.mark.parametrize("shape", PER_CHANNEL, ids=PER_CHANNEL_IDS)
@pytest.mark.parametrize(("body", "count", "left"), [
    ("c = Conv(x, w)\n m = Mul(c, s)\n y = Add(m, t)", 2, []),
    ("c = Conv(x, w, b)\n m = Mul(s, c)\n y = Add(t, m)", 2, []),
    ("c = Conv(x, w)\n y = Add(c, t)", 1, []),
    ("c = Conv(x, w)\n m = Mul(c, s)\n n = Mul(m, s)\n y = Add(n, t)", 3, []),
    ("c = Conv<group=2>(x, w)\n y = Mul(c, s)", 1, []),
    ("c = Conv(x, w, b)\n y = Sub(c, t)", 1, []),
    ("c = Conv(x, w)\n y = Sub(t, c)", 0, ["Sub"]),
], ids=["mul-add", "bias-commuted", "add", "mul-mul-add", "grouped-mul", "sub", "const-minus-conv"])
def test_folds_per_channel_constants(body: str, count: int, left: list[str],
                                     shape: tuple[int, ...]) -> None:
    weights = {"w": (6, 2, 3, 3) if "group" in body else (6, 4, 3, 3), "b": (6,)}
    consts = {name: shape for name in ("s", "t") if f", {name})" in body or f"({name}, " in body}
    model = _model(body, consts, weights=weights)
    folded, n = _run(model)
    assert n == count
    assert op_types(folded) == sorted(["Conv", *left])


@pytest.mark.parametrize(("body", "consts", "outputs"), [
    ("c = Conv(x, w)\n y = Add(c, t)", {"t": (1, 6, 6, 6)}, CONV_OUT),  # varies spatially
    ("c = Conv(x, w)\n y = Add(c, t)", {"t": (6,)}, CONV_OUT),  # along W, not C
    ("c = Conv(x, w)\n y = Add(c, t)", {"t": (1, 1, 6, 1, 1)}, "float[1,N,6,6,6] y"),  # grows
    ("c = Conv(x, w)\n y = Div(c, t)", {"t": (6, 1, 1)}, CONV_OUT),
    ("c = Conv(x, w)\n m = Mul(c, t)\n y = Add(m, c)", {"t": (6, 1, 1)}, CONV_OUT),  # read twice
    ("y = Conv(x, w)\n z = Mul(y, t)", {"t": (6, 1, 1)}, f"{CONV_OUT}, float[N,6,6,6] z"),
], ids=["spatial", "along-w", "grows-rank", "div", "read-twice", "graph-output"])
def test_leaves_what_is_not_exact(body: str, consts: dict, outputs: str) -> None:
    model = _model(body, consts, outputs=outputs)
    folded, n = _run(model)
    assert n == 0
    assert op_types(folded) == op_types(model)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("body", "consts", "folds"), [
    ("g = Gemm<transB={tb}, alpha=0.5, beta=2.0>(x, w, c)\n y = Add(g, t)",
     {"c": (1, 6), "t": (6,)}, 1),
    ("g = Gemm<transB={tb}>(x, w)\n y = Add(g, t)", {"t": (1, 6)}, 1),
    ("g = Gemm<transB={tb}>(x, w)\n m = Mul(g, s)\n y = Add(m, t)", {"s": (6,), "t": ()}, 2),
    ("g = Gemm<transB={tb}>(x, w)\n y = Add(g, t)", {"t": (3, 1)}, 0),  # varies by row
    ("g = Gemm<transB={tb}>(x, w, c)\n y = Add(g, t)", {"c": (3, 6), "t": (6,)}, 0),
], ids=["alpha-beta-c", "add", "mul-add", "row-const", "row-c"])
def test_gemm(body: str, consts: dict, folds: int, trans_b: int) -> None:
    weights = {"w": (6, 16) if trans_b else (16, 6)}
    model = _model(body.replace("{tb}", str(trans_b)), consts, weights=weights,
                   inputs="float[3,16] x", outputs="float[3,6] y")
    folded, n = _run(model)
    assert n == folds
    assert ("Add" in op_types(folded)) is (folds == 0)


def test_shared_weight_is_copied_not_changed() -> None:
    model = _model("c = Conv(x, w)\n m = Mul(c, s)\n d = Conv(x, w)\n y = Add(m, d)",
                   {"s": (6, 1, 1)})
    folded, n = _run(model)
    assert n == 1
    assert len([n for n in folded.graph.node if n.op_type == "Conv"]) == 2
    assert len({n.input[1] for n in folded.graph.node if n.op_type == "Conv"}) == 2


# -- end to end: normalize folds the exporters' patterns and analysis follows the channels ----
@pytest.mark.parametrize("dims", [SYMBOLIC, STATIC], ids=["symbolic", "static"])
@pytest.mark.parametrize(("build_model", "shape"), [
    (paddle, (1, -1, 1, 1)), (paddle, (-1, 1, 1)), (caffe2_bn, (C1, 1, 1)),
    (caffe2_bn, (1, C1, 1, 1)),
], ids=["paddle-1c11", "paddle-c11", "caffe2-c11", "caffe2-1c11"])
def test_normalize_folds_affines_into_the_convs(build_model: object, shape: tuple[int, ...],
                                                dims: list) -> None:
    model = build_model(dims, shape)
    before = {g.id: g.blocked for g in analyze(modelio.to_graph(old_normalize(model)))}
    assert before["conv1"] is not None

    normalized, graph = api.normalize(model)

    assert op_types(normalized) == ["Conv", "Conv", "Relu"]
    conv1 = next(n for n in normalized.graph.node if n.name == "conv1")
    assert len(conv1.input) == 3  # the bias now lives in the Conv
    groups = {g.id: g for g in analyze(graph)}
    assert groups["conv1"].blocked is None and groups["conv1"].size == C1
    feeds = feeds_for(model)
    assert max_diff(modelio.run(model, feeds), modelio.run(normalized, feeds)) <= 1e-5


def test_normalize_folds_a_gemm_bias_add() -> None:
    model = gemm_bias()
    assert {g.id: g.blocked for g in analyze(modelio.to_graph(old_normalize(model)))}["fc1"]
    normalized, graph = api.normalize(model)
    assert op_types(normalized) == ["Gemm", "Gemm", "Relu"]
    assert {g.id: g.blocked for g in analyze(graph)}["fc1"] is None
    feeds = feeds_for(model)
    assert max_diff(modelio.run(model, feeds), modelio.run(normalized, feeds)) <= 1e-5


def test_unnamed_convs_get_distinct_folded_weights() -> None:
    model = _model("c = Conv(x, w)\n m = Mul(c, s)\n d = Conv(x, w)\n e = Mul(d, s)\n"
                   " n = Mul(m, s)\n y = Add(n, e)", {"s": (6, 1, 1)})
    folded, n = _run(model)
    assert n == 3
    assert op_types(folded) == ["Add", "Conv", "Conv"]
