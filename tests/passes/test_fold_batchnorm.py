from __future__ import annotations

import numpy as np
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
