"""DESIGN.md invariants as properties over every sample model and several random plans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import groups_of, max_diff, normalized, random_plan, zeroed

from onnxprune import api, modelio
from onnxprune.errors import UsageError
from onnxprune.passes import PruneContext, run_passes
from onnxprune.passes.pipeline import PRUNE
from onnxprune.plan import Plan

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_channel_equivalence(sample: Path, seed: int) -> None:
    """Zeroing the producers of some channels == removing them (invariant 2)."""
    model = normalized(sample)
    plan = random_plan(groups_of(model), seed)
    assert any(plan.removed(g).size for g in groups_of(model))
    feeds = modelio.random_inputs(model, batch=3, seed=seed)
    silent = zeroed(model, plan, biases=True)
    pruned = api.apply_plan(silent, plan)
    assert max_diff(modelio.run(silent, feeds), modelio.run(pruned, feeds)) <= 1e-5
    assert pruned.ByteSize() < model.ByteSize()


def _prune_with_biases_kept(model: onnx.ModelProto, plan: Plan, feeds: dict):  # noqa: ANN202
    """Outputs with removed filters zeroed (biases kept) and after pruning, and fold stats."""
    silent = zeroed(model, plan, biases=False)
    graph = modelio.to_graph(silent)
    stats = dict(run_passes(PRUNE, graph, PruneContext(plan)))
    got = modelio.run(modelio.to_model(graph, model), feeds)
    return modelio.run(silent, feeds), got, stats["FoldRemovedChannelsPass"].stats


@pytest.mark.parametrize("seed", SEEDS)
def test_removal_with_nonzero_bias_is_exact_where_the_pass_says_so(sample: Path, seed: int) -> None:
    """With biases kept, the constant activation of removed channels is folded exactly.

    The fold is exact unless a consumer zero-pads (the pass then counts a border
    approximation); wherever it reports none, outputs must match to 1e-5.
    """
    model = normalized(sample)
    plan = random_plan(groups_of(model), seed)
    feeds = modelio.random_inputs(model, batch=3, seed=seed)
    expected, got, fold = _prune_with_biases_kept(model, plan, feeds)
    if fold.get("border_approximations", 0) == 0:
        assert max_diff(expected, got) <= 1e-5


@pytest.mark.parametrize("name", ["lenet5", "lenet5_opset11", "mlp"])
def test_bias_fold_is_exercised_and_exact_on_pad_free_consumers(name: str) -> None:
    """LeNet's conv2 -> Flatten -> fc and the MLP's Gemm chain fold non-zero biases exactly."""
    path = Path(__file__).resolve().parents[1] / "sample_models" / f"{name}.onnx"
    model = normalized(path)
    for seed in SEEDS:
        plan = random_plan(groups_of(model), seed)
        feeds = modelio.random_inputs(model, batch=2, seed=seed)
        expected, got, fold = _prune_with_biases_kept(model, plan, feeds)
        assert fold["consumers_folded"] > 0 and fold["border_approximations"] == 0
        assert max_diff(expected, got) <= 1e-5
        dropped = modelio.run(zeroed(model, plan, biases=True), feeds)
        assert max_diff(expected, dropped) > 1e-4, "the biases should matter in this test"


def test_keep_everything_plan_gives_same_outputs(sample: Path) -> None:
    """A plan that keeps every channel writes a model with the same outputs (invariant 3)."""
    original = modelio.load(sample)
    model = normalized(sample)
    plan = Plan({g.id: tuple(range(g.size)) for g in groups_of(model) if not g.blocked})
    pruned = api.apply_plan(model, plan)
    feeds = modelio.random_inputs(original, batch=4, seed=7)
    assert max_diff(modelio.run(original, feeds), modelio.run(pruned, feeds)) <= 1e-4
    assert max_diff(modelio.run(model, feeds), modelio.run(pruned, feeds)) <= 1e-6


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("round_to", [1, 8])
def test_magnitude_meets_flops_budget_and_writes_checked_models(
        sample: Path, fraction: float, round_to: int) -> None:
    """FLOPs after <= F x FLOPs before; every output passes the full checker (invariant 4)."""
    try:
        result = api.prune(sample, "magnitude", max_flops=fraction, round_to=round_to)
    except UsageError as e:
        assert "cannot be met" in str(e)
        return
    before, after = result.report["before"], result.report["after"]
    assert after["flops"] <= fraction * before["flops"]
    onnx.checker.check_model(result.model, full_check=True)
    modelio.session(result.model)
    feeds = modelio.random_inputs(result.model, batch=2)
    assert np.isfinite(modelio.run(result.model, feeds)[0]).all()


def test_input_file_is_never_modified(sample: Path, tmp_path: Path) -> None:
    """Invariant 5: the input file's bytes are the same after pruning and saving."""
    before = sample.read_bytes()
    result = api.prune(sample, "magnitude", max_flops=0.5, round_to=1)
    result.save(tmp_path / "out.onnx")
    assert sample.read_bytes() == before
    assert (tmp_path / "out.onnx").stat().st_size == result.report["after"]["bytes"]
