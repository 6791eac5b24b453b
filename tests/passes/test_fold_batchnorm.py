from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import ROOT, build, max_diff

from onnxprune import modelio
from onnxprune.passes import FoldBatchNormPass

BN = {"s": (6,), "b": (6,), "m": (6,), "v": (6,)}


@pytest.mark.parametrize(("producer", "weights"), [
    ("a = Conv(x, w, wb)", {"w": (6, 4, 3, 3), "wb": (6,)}),
    ("a = Conv(x, w)", {"w": (6, 4, 3, 3)}),
    ("a = Conv<group=2>(x, w)", {"w": (6, 2, 3, 3)}),
    ("f = Flatten(x)\n a = Gemm<transB=1, alpha=0.5, beta=2.0>(f, w, wb)",
     {"w": (6, 256), "wb": (6,)}),
    ("f = Flatten(x)\n a = Gemm(f, w)", {"w": (256, 6)}),
])
def test_folds_and_keeps_outputs(producer: str, weights: dict) -> None:
    model = build(f"{producer}\n y = BatchNormalization(a, s, b, m, v)",
                  {**weights, **BN}, outputs="float[N,6,?,?] y" if "Conv" in producer
                  else "float[N,6] y")
    graph = modelio.to_graph(model)
    for t in ("v",):  # variances must be positive
        graph.tensors()[t].values = np.abs(graph.tensors()[t].values) + 0.1
    model = modelio.to_model(graph, model)
    graph = modelio.to_graph(model)
    result = FoldBatchNormPass()(graph)
    assert result.modified and result.stats["batchnorms_folded"] == 1
    assert not [n for n in graph.nodes if n.op == "BatchNormalization"]
    feeds = modelio.random_inputs(model)
    assert max_diff(modelio.run(model, feeds),
                    modelio.run(modelio.to_model(graph, model), feeds)) <= 1e-5


def _gemm_bn_model(c_shape: tuple[int, ...] | None, trans_b: int, alpha: float,
                   beta: float) -> onnx.ModelProto:
    """f (3, 16) -> Gemm(w, c of shape ``c_shape``, or no c) -> BatchNormalization -> y."""
    weights = {"w": (6, 16) if trans_b else (16, 6), **BN}
    if c_shape is not None:
        weights["c"] = c_shape or (1,)  # the text syntax has no scalars: reshaped below
    model = build(f"a = Gemm<transB={trans_b}, alpha={alpha}, beta={beta}>"
                  f"(f, w{', c' if c_shape is not None else ''})\n"
                  " y = BatchNormalization(a, s, b, m, v)",
                  weights, inputs="float[3,16] f", outputs="float[3,6] y")
    graph = modelio.to_graph(model)
    tensors = graph.tensors()
    tensors["v"].values = np.abs(tensors["v"].values) + 0.1
    if c_shape is not None:
        tensors["c"].values = tensors["c"].values.reshape(c_shape)
    return modelio.to_model(graph, model)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("c_shape", "folds"), [
    (None, True), ((6,), True), ((1, 6), True), ((1,), True), ((), True), ((1, 1), True),
    ((3, 6), False), ((3, 1), False),
], ids=["no-c", "n", "1xn", "1", "scalar", "1x1", "mxn", "mx1"])
def test_gemm_bias_shapes(c_shape: tuple[int, ...] | None, folds: bool, trans_b: int,
                          alpha: float, beta: float) -> None:
    model = _gemm_bn_model(c_shape, trans_b, alpha, beta)
    graph = modelio.to_graph(model)
    result = FoldBatchNormPass()(graph)
    assert result.stats["batchnorms_folded"] == int(folds)
    assert any(n.op == "BatchNormalization" for n in graph.nodes) is not folds
    folded = modelio.to_model(graph, model)
    feeds = modelio.random_inputs(model)
    assert max_diff(modelio.run(model, feeds), modelio.run(folded, feeds)) <= 1e-5


def test_leaves_batchnorm_whose_input_has_other_readers() -> None:
    model = build("a = Conv(x, w)\n n = BatchNormalization(a, s, b, m, v)\n y = Add(n, a)",
                  {"w": (6, 4, 3, 3), **BN}, outputs="float[N,6,?,?] y")
    graph = modelio.to_graph(model)
    assert not FoldBatchNormPass()(graph).modified


def test_unfolded_sample_folds_to_the_folded_export() -> None:
    unfolded = modelio.load(ROOT / "sample_models" / "vgg_bn_unfolded.onnx")
    graph = modelio.to_graph(unfolded)
    count = sum(n.op == "BatchNormalization" for n in graph.nodes)
    assert count > 0
    assert FoldBatchNormPass()(graph).stats["batchnorms_folded"] == count
    feeds = modelio.random_inputs(unfolded, batch=3)
    assert max_diff(modelio.run(unfolded, feeds),
                    modelio.run(modelio.to_model(graph, unfolded), feeds)) <= 1e-4
