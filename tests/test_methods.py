from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, groups_of, normalized

from onnxprune import methods
from onnxprune import model as modelio
from onnxprune.budget import Budget, plan_for_budget
from onnxprune.errors import UsageError
from onnxprune.groups import producer_weights
from onnxprune.methods.magnitude import normalised_l1
from onnxprune.methods.registry import register


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("magnitude")(type("Other", (), {}))


def test_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown method 'nope'.*magnitude"):
        methods.create("nope")


def test_normalised_l1_is_scale_free_per_layer() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 27))
    np.testing.assert_allclose(normalised_l1([w]), normalised_l1([w * 1000]))
    assert normalised_l1([w]).mean() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budget_keeps_the_highest_scores_and_the_least_pruning(seed: int) -> None:
    model = normalized(ROOT / "sample_models" / "vgg_bn.onnx")
    graph = modelio.to_graph(model)
    groups = groups_of(model)
    rng = np.random.default_rng(seed)
    scores = {g.id: rng.random(g.size) for g in groups if not g.blocked}
    plan = plan_for_budget(graph, groups, scores, Budget(max_flops=0.5), round_to=1)
    for g in groups:
        if g.id in scores:
            kept = plan.kept(g)
            dropped = plan.removed(g)
            if dropped.size:
                assert scores[g.id][kept].min() >= scores[g.id][dropped].max()
    looser = plan_for_budget(graph, groups, scores, Budget(max_flops=0.8), round_to=1)
    assert sum(len(v) for v in looser.keep.values()) >= sum(len(v) for v in plan.keep.values())


def test_magnitude_drops_the_weakest_filters() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    graph = modelio.to_graph(model)
    ctx = methods.Context(graph, tuple(groups_of(model)), Budget(max_params=0.6), 1)
    plan = methods.create("magnitude").run(ctx)
    for g in ctx.prunable:
        score = normalised_l1(producer_weights(graph, g))
        if plan.removed(g).size:
            assert score[plan.kept(g)].min() >= score[plan.removed(g)].max()


def test_magnitude_needs_a_target() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    ctx = methods.Context(modelio.to_graph(model), tuple(groups_of(model)), Budget(), 1)
    with pytest.raises(UsageError, match="--max-flops"):
        methods.create("magnitude").run(ctx)


def test_unknown_option_is_refused() -> None:
    from onnxprune import prune

    with pytest.raises(UsageError, match="takes no option rho"):
        prune(ROOT / "sample_models" / "lenet5.onnx", max_flops=0.5, round_to=1, rho=3)
