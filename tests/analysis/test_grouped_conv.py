"""Grouped convolutions (1 < group < channels) and ShuffleNet's channel shuffle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from equivalence import assert_removal_exact, groups_by_producer, text_model

from onnxprune import api, modelio
from onnxprune.analysis import analyze, balance_blocks
from onnxprune.errors import PassError
from onnxprune.methods.budget import Budget, plan_for_budget, rounded_keep
from onnxprune.passes import NameNodesPass, PruneChannelsPass, PruneContext
from onnxprune.plan import Plan

GROUPED = {  # body, weights
    "alexnet_group2": ("""
        a = Conv(x, w1, b1)
        r = Relu(a)
        g = Conv<group=2, kernel_shape=[3, 3]>(r, wg, bg)
        s = Relu(g)
        y = Conv(s, w3)""", {"w1": (8, 4, 1, 1), "b1": (8,), "wg": (6, 4, 3, 3), "bg": (6,),
                             "w3": (2, 6, 1, 1)}),
    "resnext_group4": ("""
        a = Conv(x, w1, b1)
        g = Conv<group=4>(a, wg, bg)
        s = Relu(g)
        y = Conv(s, w3)""", {"w1": (8, 4, 1, 1), "b1": (8,), "wg": (12, 2, 1, 1), "bg": (12,),
                             "w3": (2, 12, 1, 1)}),
    "two_grouped_readers": ("""
        a = Conv(x, w1, b1)
        g = Conv<group=2>(a, wg, bg)
        h = Conv<group=4>(a, wh)
        k = Concat<axis=1>(g, h)
        y = Conv(k, w3)""", {"w1": (8, 4, 1, 1), "b1": (8,), "wg": (4, 4, 1, 1), "bg": (4,),
                             "wh": (8, 2, 1, 1), "w3": (2, 12, 1, 1)}),
    "grouped_after_grouped": ("""
        a = Conv(x, w1)
        g = Conv<group=2>(a, wg)
        h = Conv<group=2>(g, wh)
        y = Conv(h, w3)""", {"w1": (8, 4, 1, 1), "wg": (8, 4, 1, 1), "wh": (4, 4, 1, 1),
                             "w3": (2, 4, 1, 1)}),
}


def _model(case: str) -> onnx.ModelProto:
    body, weights = GROUPED[case]
    return text_model(body, weights)


def test_balance_blocks_keeps_equal_counts_per_part() -> None:
    assert balance_blocks([0, 1, 5], 8, 2) == (0, 1, 4, 5)
    assert balance_blocks([0, 1, 5], 8, 1) == (0, 1, 5)
    assert balance_blocks([3, 2, 7, 6], 8, 2, ranking=[3, 2, 7, 6, 5, 4, 1, 0],
                          per_block=1) == (3, 7)
    assert balance_blocks([], 8, 4, per_block=1) == (0, 2, 4, 6)


def test_rounded_keep_respects_blocks() -> None:
    assert rounded_keep(3, 8, 1, blocks=2) == 4
    assert rounded_keep(5, 24, 4, blocks=3) == 9
    assert rounded_keep(1, 8, 1) == 1


@pytest.mark.parametrize("case", sorted(GROUPED))
def test_grouped_conv_groups_carry_their_blocks(case: str) -> None:
    groups = groups_by_producer(_model(case))
    a = groups["w1"]
    want = {"alexnet_group2": 2, "resnext_group4": 4, "two_grouped_readers": 4,
            "grouped_after_grouped": 2}[case]
    assert a.blocked is None and a.blocks == want
    grouped = [s for s in a.consumers if s.groups > 1]
    assert grouped and all(s.axis == 1 for s in grouped)
    out = groups["wg"]
    assert out.blocks == (4 if case == "resnext_group4" else 2)
    assert out.blocked is None


@pytest.mark.parametrize("case", sorted(GROUPED))
def test_grouped_conv_removal_is_exact_and_group_holds(case: str) -> None:
    for pruned in assert_removal_exact(_model(case), biases=False):
        groups = {n.name: n for n in pruned.graph.node if n.op_type == "Conv"
                  and any(a.name == "group" for a in n.attribute)}
        assert groups, "the grouped Convs keep their group attribute"
        for node in groups.values():
            group = next(a.i for a in node.attribute if a.name == "group")
            assert group in (2, 4)


def test_unbalanced_plan_is_refused() -> None:
    model = api.normalize(_model("alexnet_group2"))[0]
    graph = modelio.to_graph(model)
    a = next(g for g in analyze(graph) if g.producers[0].initializer == "w1")
    NameNodesPass()(graph)
    with pytest.raises(PassError, match="equal"):
        PruneChannelsPass()(graph, PruneContext(Plan({a.id: (0, 1, 2, 5)})))


def test_budget_plans_are_balanced() -> None:
    model = api.normalize(_model("resnext_group4"))[0]
    graph = modelio.to_graph(model)
    groups = analyze(graph)
    rng = np.random.default_rng(0)
    scores = {g.id: rng.random(g.size) for g in groups if not g.blocked}
    plan = plan_for_budget(graph, groups, scores, Budget(max_params=0.6), round_to=1)
    for g in groups:
        if g.id in scores:
            parts = g.part_counts(plan.kept(g))
            assert len(set(parts)) == 1, parts
    assert any(plan.removed(g).size for g in groups)
    api.apply_plan(model, plan)


SHUFFLE = """
    a = Conv(x, w1, b1)
    b = Conv(x, w2, b2)
    k = Concat<axis=1>(a, b)
    s5 = Constant<value = int64[5] {{0, 2, {k}, 8, 8}}>()
    r1 = Reshape(k, s5)
    t = Transpose<perm=[0, 2, 1, 3, 4]>(r1)
    s4 = Constant<value = int64[4] {{0, {c}, 8, 8}}>()
    r2 = Reshape(t, s4)
    y = Conv(r2, w3)"""


def test_shuffle_of_two_branches_merges_them_at_stride_two() -> None:
    model = text_model(SHUFFLE.format(k=4, c=8), {
        "w1": (4, 4, 1, 1), "b1": (4,), "w2": (4, 4, 1, 1), "b2": (4,), "w3": (2, 8, 1, 1)})
    groups = groups_by_producer(model)
    merged = groups["w1"]
    assert merged.blocked is None and {s.initializer for s in merged.producers} >= {"w1", "w2"}
    (read,) = merged.consumers
    assert (read.initializer, read.offset, read.stride) == ("w3", 0, 2)
    assert len(merged.counts) == 2
    assert_removal_exact(model, biases=False)


def test_shuffle_with_minus_one_entries_needs_no_edit() -> None:
    model = text_model(SHUFFLE.format(k=-1, c=-1), {
        "w1": (4, 4, 1, 1), "b1": (4,), "w2": (4, 4, 1, 1), "b2": (4,), "w3": (2, 8, 1, 1)})
    merged = groups_by_producer(model)["w1"]
    assert merged.blocked is None and merged.counts == ()
    assert_removal_exact(model, biases=False)


def test_shuffle_within_one_group_blocks_with_the_reason() -> None:
    body = """
        a = Conv(x, w1)
        s5 = Constant<value = int64[5] {0, 2, 4, 8, 8}>()
        r1 = Reshape(a, s5)
        t = Transpose<perm=[0, 2, 1, 3, 4]>(r1)
        s4 = Constant<value = int64[4] {0, 8, 8, 8}>()
        r2 = Reshape(t, s4)
        y = Conv(r2, w3)"""
    a = groups_by_producer(text_model(body, {"w1": (8, 4, 1, 1), "w3": (2, 8, 1, 1)}))["w1"]
    assert a.blocked is not None and "channel shuffle" in a.blocked
    assert "not each one whole group" in a.blocked
