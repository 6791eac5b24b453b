from __future__ import annotations

import pytest
from conftest import build, max_diff, zeroed

from onnxprune import api, modelio
from onnxprune.analysis import analyze
from onnxprune.passes import PruneContext, run_passes
from onnxprune.passes.pipeline import PRUNE
from onnxprune.plan import Plan


def _fold(body: str, weights: dict, outputs: str, keep: tuple[int, ...]):  # noqa: ANN202
    model = api.normalize(build(body, weights, outputs=outputs))[0]
    gid = next(g.id for g in analyze(modelio.to_graph(model)) if g.size == 6)
    plan = Plan({gid: keep})
    silent = zeroed(model, plan, biases=False)
    graph = modelio.to_graph(silent)
    log = dict(run_passes(PRUNE, graph, PruneContext(plan)))
    feeds = modelio.random_inputs(model, batch=2)
    diff = max_diff(modelio.run(silent, feeds), modelio.run(modelio.to_model(graph, model), feeds))
    return log["FoldRemovedChannelsPass"].stats, diff, graph


@pytest.mark.parametrize("consumer", [
    "y = Conv(r, w2)",
    "y = Conv<strides=[2,2]>(r, w2)",
    "f = Flatten(r)\n y = Gemm<transB=1, beta=0.5>(f, wg, bg)",
    "p = GlobalAveragePool(r)\n f = Flatten(p)\n y = MatMul(f, wm)",
])
def test_pad_free_consumers_fold_exactly(consumer: str) -> None:
    stats, diff, graph = _fold(
        f"a = Conv(x, w1, b1)\n r = Relu(a)\n {consumer}",
        {"w1": (6, 4, 3, 3), "b1": (6,), "w2": (3, 6, 1, 1), "wg": (3, 216), "bg": (3,),
         "wm": (6, 3)}, "float[N,?,?,?] y" if "Conv(r" in consumer else "float[N,3] y",
        keep=(0, 2, 5))
    assert stats["consumers_folded"] == 1 and stats["border_approximations"] == 0
    assert diff <= 1e-5
    assert graph.outputs[0].name == "y"


def test_padded_consumer_is_counted_as_approximate() -> None:
    stats, diff, _ = _fold("a = Conv(x, w1, b1)\n r = Relu(a)\n y = Conv<pads=[1,1,1,1]>(r, w2)",
                           {"w1": (6, 4, 3, 3), "b1": (6,), "w2": (3, 6, 3, 3)},
                           "float[N,3,6,6] y", keep=(0, 1))
    assert stats["border_approximations"] == 1
    assert diff > 1e-5


def test_channels_that_stay_zero_need_no_fold() -> None:
    stats, diff, _ = _fold("a = Conv(x, w1)\n r = Relu(a)\n y = Conv(r, w2)",
                           {"w1": (6, 4, 3, 3), "w2": (3, 6, 1, 1)}, "float[N,3,6,6] y",
                           keep=(1, 2))
    assert stats == {} or stats["consumers_folded"] == 0
    assert diff <= 1e-6
