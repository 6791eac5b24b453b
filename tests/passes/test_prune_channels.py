from __future__ import annotations

import numpy as np
import pytest
from conftest import build, max_diff

from onnxprune import api, modelio, verify
from onnxprune.analysis import analyze
from onnxprune.errors import PassError
from onnxprune.passes import NameNodesPass, PruneChannelsPass, PruneContext
from onnxprune.plan import Plan


def _pruned(model, keep):  # noqa: ANN001, ANN202
    graph = modelio.to_graph(model)
    NameNodesPass()(graph)
    result = PruneChannelsPass()(graph, PruneContext(Plan(keep)))
    return graph, result


def test_concat_consumer_is_cut_for_each_group_at_its_offset() -> None:
    model = build("""
        a = Conv(x, w1, b1)
        b = Conv(x, w2, b2)
        c = Concat<axis=1>(a, b)
        y = Conv(c, w3)""", {"w1": (3, 4, 1, 1), "b1": (3,), "w2": (5, 4, 1, 1), "b2": (5,),
                             "w3": (2, 8, 1, 1)}, outputs="float[N,2,8,8] y")
    model = api.normalize(model)[0]
    ids = {next(iter(g.producers)).initializer: g.id for g in analyze(modelio.to_graph(model))}
    graph, result = _pruned(model, {ids["w1"]: (0, 2), ids["w2"]: (1, 4)})
    w3 = np.asarray(graph.tensors()["w3"].values)
    original = np.asarray(modelio.to_graph(model).tensors()["w3"].values)
    np.testing.assert_array_equal(w3, original[:, [0, 2, 3 + 1, 3 + 4]])
    assert result.stats["channels_removed"] == 1 + 3


def test_depthwise_group_attribute_follows_kept_count() -> None:
    model = build("""
        a = Conv(x, w1)
        d = Conv<group=6>(a, wd)
        y = Conv(d, w2)""", {"w1": (6, 4, 1, 1), "wd": (6, 1, 3, 3), "w2": (2, 6, 1, 1)},
                  outputs="float[N,2,6,6] y")
    model = api.normalize(model)[0]
    gid = next(g.id for g in analyze(modelio.to_graph(model)) if g.size == 6)
    graph, _ = _pruned(model, {gid: (1, 3, 4)})
    dw = next(n for n in graph.nodes if n.attrs.get("group", 1) > 1)
    assert dw.attrs["group"] == 3 and dw.inputs[1].shape == (3, 1, 3, 3)
    verify.check_model(modelio.to_model(graph, model))


@pytest.mark.parametrize(("keep", "message"), [
    ("unknown", "does not have"),
    ("empty", "keeps no channel"),
    ("outside", "outside"),
    ("blocked", "blocked"),
])
def test_bad_plans_are_refused_before_any_change(keep: str, message: str) -> None:
    model = build("a = Conv(x, w1)\n r = Relu(a)\n y = Conv(r, w2)",
                  {"w1": (6, 4, 1, 1), "w2": (3, 6, 1, 1)}, outputs="float[N,3,8,8] y")
    model = api.normalize(model)[0]
    groups = {g.size: g.id for g in analyze(modelio.to_graph(model))}
    plans = {"unknown": {"nope": (0,)}, "empty": {groups[6]: ()}, "outside": {groups[6]: (0, 9)},
             "blocked": {groups[3]: (0,)}}
    graph = modelio.to_graph(model)
    NameNodesPass()(graph)
    before = {n: np.array(t.values) for n, t in graph.tensors().items() if hasattr(t, "values")}
    with pytest.raises(PassError, match=message):
        PruneChannelsPass()(graph, PruneContext(Plan(plans[keep])))
    for name, values in before.items():
        np.testing.assert_array_equal(graph.tensors()[name].values, values)


def test_reshape_shape_constant_shrinks() -> None:
    model = build("""
        a = Conv(x, w1)
        s = Constant<value = int64[2] {-1, 384}>()
        f = Reshape(a, s)
        y = Gemm<transB=1>(f, w2)""", {"w1": (6, 4, 1, 1), "w2": (3, 384)},
                  outputs="float[N,3] y")
    normalized, graph = api.normalize(model)
    gid = next(g.id for g in analyze(graph) if g.size == 6)
    plan = Plan({gid: (0, 5)})
    pruned = api.apply_plan(normalized, plan)
    shapes = [t for t in modelio.to_graph(pruned).tensors().values()
              if getattr(t, "dtype", None) == np.int64 and hasattr(t, "values")]
    assert [list(t.values) for t in shapes] == [[-1, 2 * 64]]
    feeds = modelio.random_inputs(normalized)
    from conftest import zeroed
    silent = zeroed(normalized, plan, biases=True)
    assert max_diff(modelio.run(silent, feeds), modelio.run(pruned, feeds)) <= 1e-5
