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


def _ids(model):  # noqa: ANN001, ANN202
    return {s.initializer: g.id for g in analyze(modelio.to_graph(model)) for s in g.producers}


def test_implicit_split_becomes_explicit_int64_sizes() -> None:
    model = build("""
        a = Conv(x, w1)
        s1, s2 = Split<axis=1>(a)
        c = Conv(s1, w2)
        d = Conv(s2, w3)
        y = Concat<axis=1>(c, d)""", {"w1": (8, 4, 1, 1), "w2": (2, 4, 1, 1),
                                     "w3": (2, 4, 1, 1)}, outputs="float[N,4,8,8] y")
    model = api.normalize(model)[0]
    graph, _ = _pruned(model, {_ids(model)["w1"]: (0, 4, 5, 7)})
    split = next(n for n in graph.nodes if n.op == "Split")
    np.testing.assert_array_equal(split.inputs[1].values, [1, 3])
    assert split.inputs[1].values.dtype == np.int64
    assert graph.tensors()["w2"].shape == (2, 1, 1, 1)
    assert graph.tensors()["w3"].shape == (2, 3, 1, 1)
    verify.check_model(modelio.to_model(graph, model))


def test_slice_bounds_count_the_kept_positions_before_them() -> None:
    model = build("""
        a = Conv(x, w1)
        st = Constant<value = int64[1] {-6}>()
        en = Constant<value = int64[1] {6}>()
        ax = Constant<value = int64[1] {1}>()
        s = Slice(a, st, en, ax)
        y = Conv(s, w2)""", {"w1": (8, 4, 1, 1), "w2": (2, 4, 1, 1)},
                  outputs="float[N,2,8,8] y")
    model = api.normalize(model)[0]
    graph, _ = _pruned(model, {_ids(model)["w1"]: (0, 3, 4, 6, 7)})
    node = next(n for n in graph.nodes if n.op == "Slice")
    # positions 2..5 were read; kept 0, 3, 4, 6, 7: start 2 -> 1 kept before, end 6 -> 3
    assert (int(node.inputs[1].values[0]), int(node.inputs[2].values[0])) == (1, 3)
    original = np.asarray(modelio.to_graph(model).tensors()["w2"].values)
    np.testing.assert_array_equal(graph.tensors()["w2"].values, original[:, [1, 2]])


def test_grouped_conv_weight_is_cut_block_by_block() -> None:
    model = build("""
        a = Conv(x, w1)
        g = Conv<group=2>(a, wg)
        y = Conv(g, w3)""", {"w1": (8, 4, 1, 1), "wg": (6, 4, 1, 1), "w3": (2, 6, 1, 1)},
                  outputs="float[N,2,8,8] y")
    model = api.normalize(model)[0]
    ids = _ids(model)
    graph, _ = _pruned(model, {ids["w1"]: (1, 2, 4, 7), ids["wg"]: (0, 2, 3, 4)})
    original = np.asarray(modelio.to_graph(model).tensors()["wg"].values)
    wg = np.asarray(graph.tensors()["wg"].values)
    expected = np.concatenate([original[0:3][:, [1, 2]], original[3:6][:, [0, 3]]])
    np.testing.assert_array_equal(wg, expected[[0, 2, 3, 4]])
    conv = next(n for n in graph.nodes if n.inputs[1].name == "wg")
    assert conv.attrs["group"] == 2
    verify.check_model(modelio.to_model(graph, model))


def test_depthwise_group_counts_every_group_it_reads() -> None:
    model = build("""
        a = Conv(x, w1)
        b = Conv(x, w2)
        k = Concat<axis=1>(a, b)
        d = Conv<group=7>(k, wd)
        y = Conv(d, w3)""", {"w1": (3, 4, 1, 1), "w2": (4, 4, 1, 1), "wd": (7, 1, 3, 3),
                             "w3": (2, 7, 1, 1)}, outputs="float[N,2,6,6] y")
    model = api.normalize(model)[0]
    ids = _ids(model)
    graph, _ = _pruned(model, {ids["w1"]: (0,), ids["w2"]: (1, 3)})
    dw = next(n for n in graph.nodes if n.inputs[1].name == "wd")
    assert dw.attrs["group"] == 3 and graph.tensors()["wd"].shape == (3, 1, 3, 3)
    verify.check_model(modelio.to_model(graph, model))
