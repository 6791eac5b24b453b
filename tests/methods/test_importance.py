"""Data-aware one-shot: the importance, the options, and fidelity on the sample models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT, groups_of, normalized

import onnxprune
from onnxprune import api, methods, modelio
from onnxprune.errors import UsageError
from onnxprune.methods.budget import Budget
from onnxprune.methods.importance import reconstruction_scores
from onnxprune.methods.reconstruct import consumers
from onnxprune.training.data import Dataset
from onnxprune.training.loop import TrainConfig

DIGITS = np.load(ROOT / "sample_models" / "digits.npz")["x"]


def _batches(x: np.ndarray, size: int = 64):
    import torch

    def batches():
        for start in range(0, len(x), size):
            yield torch.from_numpy(x[start:start + size])
    return batches


def _context(name: str, data: Dataset | None, **options: object) -> methods.Context:
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    return methods.Context(modelio.to_graph(model), tuple(groups_of(model)),
                           Budget(max_flops=0.6), 1, options, data, None, model=model)


def test_reconstruction_importance_is_the_share_of_consumer_output_energy() -> None:
    model = normalized(ROOT / "sample_models" / "vgg_bn.onnx")
    groups = groups_of(model)
    scores = reconstruction_scores(model, groups, _batches(DIGITS[:128]))
    graph = modelio.to_graph(model)
    for g in groups:
        if g.blocked:
            continue
        assert scores[g.id].shape == (g.size,) and (scores[g.id] >= 0).all()
        if len(g.consumers) == 1 and g.consumers[0].stride == 1:  # one Conv reads all of it
            assert scores[g.id].mean() == pytest.approx(1.0)
    # a dead channel (its producer zeroed, a ReLU after it) carries nothing
    g = next(g for g in groups if not g.blocked and len(g.producers) == 2)
    weight = graph.tensors()[g.producers[0].initializer]
    w = np.array(weight.values)
    w[3] = 0
    bias = graph.tensors()[g.producers[1].initializer]
    b = np.array(bias.values)
    b[3] = -1.0
    dead = modelio.with_initializers(model, {weight.name: w, bias.name: b})
    assert reconstruction_scores(dead, groups, _batches(DIGITS[:64]))[g.id][3] == 0


def test_without_data_one_shot_is_weights_only_and_says_so() -> None:
    plan = methods.create("magnitude").run(_context("lenet5", None))
    assert plan.log == {"oneshot": "weights only (no --data)"} and plan.weights == {}
    with pytest.raises(UsageError, match="give --data"):
        methods.create("magnitude").run(_context("lenet5", None, importance="reconstruction"))
    with pytest.raises(UsageError, match="--importance must be one of"):
        methods.create("magnitude").run(_context("lenet5", None, importance="random"))


def test_with_data_the_log_names_the_path_and_the_samples_read() -> None:
    plan = methods.create("magnitude").run(
        _context("lenet5", Dataset(DIGITS[:100]), calibration_samples=40))
    ctx = _context("lenet5", None)
    refit = consumers(ctx.graph, ctx.groups, plan)
    assert refit and plan.log == {"oneshot": {
        "importance": "taylor", "allocation": "sensitivity", "reconstruction": True,
        "calibration_samples": 40,
        "layers_refit": len(refit)}}
    assert {layer.weight for layer in refit} <= set(plan.weights)



@pytest.mark.parametrize(("labelled", "epochs", "expected"), [
    (False, 0, ("taylor", "sensitivity")), (True, 0, ("taylor", "sensitivity")),
    (False, 2, ("taylor", "sensitivity")), (True, 2, ("l1", "global"))])
def test_defaults_follow_what_comes_after_the_prune(labelled: bool, epochs: int,
                                                    expected: tuple[str, str]) -> None:
    """Fidelity defaults, unless fine-tuning on labels follows (then even cuts retrain best)."""
    y = np.zeros(len(DIGITS[:64]), dtype=np.int64) if labelled else None
    ctx = replace(_context("lenet5", Dataset(DIGITS[:64], y)), train=TrainConfig(epochs=epochs))
    log = methods.create("magnitude").run(ctx).log["oneshot"]
    assert (log["importance"], log["allocation"]) == expected
    chosen = replace(ctx, options={"importance": "taylor", "allocation": "sensitivity"})
    log = methods.create("magnitude").run(chosen).log["oneshot"]
    assert (log["importance"], log["allocation"]) == ("taylor", "sensitivity")

def _fidelity(pruned, original, x: np.ndarray) -> tuple[float, float]:
    name = modelio.input_specs(original)[0][0]
    (a,), (b,) = modelio.run(original, {name: x}), modelio.run(pruned, {name: x})
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    a, b = a.reshape(len(x), -1), b.reshape(len(x), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return agree, float(cos.mean())


@pytest.mark.parametrize("name", ["vgg_bn", "resnet", "mobilenetv2", "inception"])
def test_reconstruction_keeps_one_shot_closer_to_the_original(name: str) -> None:
    """0.6 of the FLOPs, the same channels (l1, global), 256 unlabelled inputs: refit vs not."""
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    held = DIGITS[1024:1280]
    results = {}
    for refit in (False, True):
        ctx = _context(name, Dataset(DIGITS[:256]), importance="l1", allocation="global",
                       reconstruction=refit)
        plan = methods.create("magnitude").run(ctx)
        pruned = api.apply_plan(modelio.with_initializers(model, plan.weights), plan)  # checked
        results[refit] = _fidelity(pruned, model, held)
    (agree0, cos0), (agree1, cos1) = results[False], results[True]
    assert cos1 >= cos0 and agree1 >= agree0 - 0.01
    assert cos1 > 0.8


def test_synthetic_training_inputs_are_not_calibration_data() -> None:
    """Fine-tuning without --data draws random inputs; one-shot must not refit on them."""
    result = onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", max_flops=0.5, round_to=1,
                             epochs=1, quiet=True)
    assert result.report["data"]["synthetic"] is True
    assert result.report["oneshot"] == "weights only (no --data)"
