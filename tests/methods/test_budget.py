"""Budget search: a plan within the budget keeps the best-scored channels."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, groups_of, normalized

from onnxprune import modelio
from onnxprune.methods.budget import Budget, plan_for_budget


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
