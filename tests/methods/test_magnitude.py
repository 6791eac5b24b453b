"""Magnitude pruning: normalised L1 scores, the weakest filters go first."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT, groups_of, normalized

from onnxprune import methods, modelio
from onnxprune.analysis.groups import producer_weights
from onnxprune.errors import UsageError
from onnxprune.methods.budget import Budget
from onnxprune.methods.magnitude import normalised_l1


def test_normalised_l1_is_scale_free_per_layer() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 27))
    np.testing.assert_allclose(normalised_l1([w]), normalised_l1([w * 1000]))
    assert normalised_l1([w]).mean() == pytest.approx(1.0)


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
