"""Features to distil on: which tensors, how they line up with the original, and the loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, groups_of, normalized, random_plan

from onnxprune import api, modelio
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.training.data import Dataset
from onnxprune.training.features import Feature, feature_loss, group_features
from onnxprune.training.loop import DISTIL_LR, LABELLED_LR, TrainConfig, train

SAMPLES = ["vgg_bn", "resnet", "mobilenetv2", "inception", "yolo_c2f"]


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("seed", [0, 1])
def test_features_line_up_with_the_original(name: str, seed: int) -> None:
    """Pruning one group: its features are the original's kept channels, exactly."""
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    groups = [g for g in groups_of(model) if g.blocked is None and g.size > 1]
    group = groups[np.random.default_rng(seed).integers(len(groups))]
    plan = Plan({group.id: random_plan([group], seed).keep[group.id]})
    features = [f for f in group_features(modelio.to_graph(model), [group], plan)]
    assert features, f"{group.id} has no feature"
    pruned = api.apply_plan(model, plan)
    x = torch.from_numpy(modelio.random_inputs(model, batch=2, seed=seed)[
        model.graph.input[0].name])
    names = [f.name for f in features]
    with torch.no_grad():
        got = ShadowModel(pruned).tensors((x,), names)
        want = ShadowModel(model).tensors((x,), names)
    for f, g in zip(features, got, strict=True):
        assert g.shape[1] == len(f.kept) < group.size
    assert float(feature_loss(got, want, features)) < 1e-8
    shuffled = [Feature(f.name, tuple(reversed(f.kept))) for f in features]
    assert float(feature_loss(got, want, shuffled)) > 1e-3


def test_every_group_of_a_plan_has_features_with_its_counts() -> None:
    model = normalized(ROOT / "sample_models" / "resnet.onnx")
    groups = groups_of(model)
    plan = random_plan(groups, 3)
    features = group_features(modelio.to_graph(model), groups, plan)
    kept = {len(plan.kept(g)) for g in groups if g.blocked is None}
    assert {len(f.kept) for f in features} == kept
    assert len({f.name for f in features}) == len(features)


def test_feature_loss_refuses_misaligned_tensors() -> None:
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4)
    with pytest.raises(ValueError, match="does not match"):
        feature_loss([a], [b], [Feature("t", (0, 1))])


def test_distilling_on_features_brings_them_closer() -> None:
    """Training with features lowers the feature loss more than training without."""
    path = ROOT / "sample_models" / "vgg_bn.onnx"
    model = normalized(path)
    x = np.load(ROOT / "sample_models" / "digits.npz")["x"][:256]
    groups = groups_of(model)
    plan = random_plan(groups, 0)
    pruned = api.apply_plan(model, plan)
    features = group_features(modelio.to_graph(model), groups, plan)
    teacher = ShadowModel(model)
    probe = torch.from_numpy(x[:64])

    def loss_after(with_features: bool) -> float:
        student = ShadowModel(pruned)
        config = TrainConfig.for_data(False, epochs=1, quiet=True)
        train(student, Dataset(x), config, teacher=teacher,
              features=features if with_features else ())
        names = [f.name for f in features]
        with torch.no_grad():
            return float(feature_loss(student.tensors((probe,), names),
                                      teacher.tensors((probe,), names), features))

    assert loss_after(True) < loss_after(False)


def test_training_defaults_follow_the_labels() -> None:
    labelled, distilled = TrainConfig.for_data(True), TrainConfig.for_data(False)
    assert (labelled.lr, labelled.batchnorm) == (LABELLED_LR, True)
    assert (distilled.lr, distilled.batchnorm) == (DISTIL_LR, False)
    chosen = TrainConfig.for_data(False, lr=0.1, batchnorm=True)
    assert (chosen.lr, chosen.batchnorm) == (0.1, True)


def test_report_records_the_resolved_training_defaults(tmp_path: Path) -> None:
    x = np.load(ROOT / "sample_models" / "digits.npz")["x"][:128]
    result = api.prune(ROOT / "sample_models" / "vgg_bn.onnx", "magnitude", max_flops=0.6,
                       data=x, epochs=1, quiet=True, distill_features=True)
    options = result.report["options"]
    assert (options["lr"], options["train_batchnorm"]) == (DISTIL_LR, False)
    assert result.report["training"]["features_distilled"] > 0
