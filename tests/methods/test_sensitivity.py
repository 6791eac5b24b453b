"""Sensitivity-aware allocation: the budget goes where cutting hurts the outputs least."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NEEDS_EXE, ROOT, SAMPLE_DIR, build, cli, groups_of, normalized

from onnxprune import api, methods, modelio
from onnxprune.analysis.groups import producer_weights
from onnxprune.errors import UsageError
from onnxprune.methods.budget import Budget
from onnxprune.methods.magnitude import normalised_l1
from onnxprune.methods.sensitivity import degradation, sensitivity_scores
from onnxprune.metrics import count, planned_shapes
from onnxprune.training.data import Dataset

DIGITS = np.load(ROOT / "sample_models" / "digits.npz")["x"]


def _context(model, budget: Budget, data, round_to: int = 1, **options) -> methods.Context:
    return methods.Context(modelio.to_graph(model), tuple(groups_of(model)), budget, round_to,
                           options, data, model=model)


def _twin_branches():
    """Two identical Conv branches concatenated into a 1x1 head that reads A 100x louder."""
    model = build("""
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wa, ba)
        ra = Relu (a)
        b = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wb, bb)
        rb = Relu (b)
        c = Concat <axis = 1> (ra, rb)
        y = Conv <kernel_shape = [1, 1]> (c, wh)""",
                  {"wa": (8, 4, 3, 3), "ba": (8,), "wb": (8, 4, 3, 3), "bb": (8,),
                   "wh": (4, 16, 1, 1)}, outputs="float[N,4,8,8] y")
    tensors = modelio.to_graph(model).tensors()
    head = np.array(tensors["wh"].values)
    head[:, :8] *= 10
    head[:, 8:] *= 0.1
    twin = modelio.with_initializers(model, {"wb": np.array(tensors["wa"].values),
                                             "bb": np.array(tensors["ba"].values), "wh": head})
    return api.normalize(twin)[0]


def test_the_group_whose_cut_hurts_more_keeps_more_than_globally() -> None:
    model = _twin_branches()
    x = np.random.default_rng(0).standard_normal((64, 4, 8, 8)).astype(np.float32)
    kept = {}
    for allocation in ("global", "sensitivity"):
        ctx = _context(model, Budget(max_flops=0.6), Dataset(x), allocation=allocation,
                       reconstruction=False)
        plan = methods.create("magnitude").run(ctx)
        conv_a = next(g for g in ctx.prunable if "wa" in {s.initializer for s in g.producers})
        conv_b = next(g for g in ctx.prunable if g is not conv_a)
        kept[allocation] = (len(plan.kept(conv_a)), len(plan.kept(conv_b)))
    (a_global, b_global), (a_sens, b_sens) = kept["global"], kept["sensitivity"]
    assert abs(a_global - b_global) <= 1 and max(a_global, b_global) < 8  # twins: cut alike
    assert a_sens > max(a_global, b_global) and b_sens < min(a_global, b_global)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "inception", "yolo_c2f"])
def test_the_budget_is_met_and_each_group_still_loses_its_weakest(name: str) -> None:
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    ctx = _context(model, Budget(max_flops=0.5), Dataset(DIGITS[:64]), round_to=8,
                   allocation="sensitivity", reconstruction=False)
    plan = methods.create("magnitude").run(ctx)
    _, flops0 = count(ctx.graph)
    _, flops = count(ctx.graph, planned_shapes(ctx.graph, ctx.groups, plan))
    assert flops <= 0.5 * flops0
    assert plan.log["oneshot"]["allocation"] == "sensitivity"


def test_sensitivity_scores_keep_each_groups_ranking() -> None:
    model = normalized(ROOT / "sample_models" / "mobilenetv2.onnx")
    ctx = _context(model, Budget(max_flops=0.5), None)
    base = {g.id: normalised_l1(producer_weights(ctx.graph, g)) for g in ctx.prunable}

    def batches():
        yield torch.from_numpy(DIGITS[:32])
    scores = sensitivity_scores(model, ctx.graph, ctx.groups, base, ctx.budget, 8, batches,
                                False)
    for g in ctx.prunable:
        assert np.isfinite(scores[g.id]).all() and (scores[g.id] > 0).all()
        np.testing.assert_array_equal(np.argsort(-scores[g.id], kind="stable"),
                                      np.argsort(-base[g.id], kind="stable"))


def test_allocation_options_are_checked() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    with pytest.raises(UsageError, match="--allocation sensitivity read calibration inputs"):
        methods.create("magnitude").run(_context(model, Budget(max_flops=0.6), None,
                                                 allocation="sensitivity"))
    with pytest.raises(UsageError, match="--allocation must be one of global, sensitivity"):
        methods.create("magnitude").run(_context(model, Budget(max_flops=0.6), None,
                                                 allocation="uniform"))
    plan = methods.create("magnitude").run(_context(model, Budget(max_flops=0.6), None,
                                                    allocation="global"))
    assert plan.log == {"oneshot": "weights only (no --data)"}


@NEEDS_EXE
def test_the_cli_passes_allocation_and_importance_to_the_report(tmp_path: Path) -> None:
    done = cli(SAMPLE_DIR / "lenet5.onnx", "--max-flops", "0.6", "--round-to", "1",
               "--data", SAMPLE_DIR / "digits.npz", "--calibration-samples", "64",
               "--importance", "taylor", "--allocation", "sensitivity", "--quiet",
               "--out", tmp_path / "small.onnx", "--report", tmp_path / "r.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    oneshot = json.loads((tmp_path / "r.json").read_text())["oneshot"]
    assert oneshot["importance"] == "taylor" and oneshot["allocation"] == "sensitivity"


def test_trials_refit_like_the_plan_and_that_hurts_less() -> None:
    model = normalized(ROOT / "sample_models" / "resnet.onnx")
    ctx = _context(model, Budget(max_flops=0.5), None)
    base = {g.id: normalised_l1(producer_weights(ctx.graph, g)) for g in ctx.prunable}

    def batches():
        yield torch.from_numpy(DIGITS[:64])
    zeroed = degradation(model, ctx.groups, base, 8, batches, refit=False)
    refit = degradation(model, ctx.groups, base, 8, batches, refit=True)
    for gid, (kept, error) in zeroed.items():
        np.testing.assert_array_equal(refit[gid][0], kept)
        assert kept[-1] > kept[0] and error[-1] == 0 and (error[:-1] > 0).all()
        assert (refit[gid][1] <= error + 1e-6).all() and refit[gid][1][0] < error[0]
