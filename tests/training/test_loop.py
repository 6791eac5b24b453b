"""The training loop: labels, distillation, reproducibility, hooks; evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ROOT, normalized

from onnxprune.errors import UsageError
from onnxprune.shadow import ShadowModel
from onnxprune.training import data as datasets
from onnxprune.training.loop import Hooks, TrainConfig, evaluate, train

DIGITS = ROOT / "sample_models" / "digits.npz"


def _digits(n: int = 512) -> datasets.Dataset:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    return datasets.load_data(DIGITS, datasets.input_spec(model)).subset(np.arange(n))


def test_labelled_training_lowers_the_loss_and_is_reproducible() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    config = TrainConfig(epochs=2, lr=0.01, batch_size=64, quiet=True)
    first, second = ShadowModel(model), ShadowModel(model)
    with torch.no_grad():  # start from a damaged model so there is something to learn
        for shadow in (first, second):
            for name in shadow.initializer_names():
                shadow.parameter(name).mul_(0.5)
    history = train(first, _digits(), config)
    assert history[-1] < history[0]
    train(second, _digits(), config)
    for name in first.initializer_names():
        torch.testing.assert_close(first.parameter(name), second.parameter(name), rtol=0, atol=0)


def test_distillation_without_labels_moves_towards_the_teacher() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    teacher, student = ShadowModel(model), ShadowModel(model)
    with torch.no_grad():
        for name in student.initializer_names():
            student.parameter(name).add_(0.05 * torch.randn_like(student.parameter(name)))
    unlabelled = datasets.Dataset(_digits().x, None)
    before = evaluate(student, unlabelled, reference=teacher)
    train(student, unlabelled, TrainConfig(epochs=2, lr=0.01, quiet=True), teacher=teacher)
    after = evaluate(student, unlabelled, reference=teacher)
    assert after["output_error"] < before["output_error"]
    assert after["agreement"] >= before["agreement"]


def test_unlabelled_training_needs_a_teacher() -> None:
    shadow = ShadowModel(normalized(ROOT / "sample_models" / "lenet5.onnx"))
    with pytest.raises(UsageError, match="distil"):
        train(shadow, datasets.Dataset(_digits().x, None), TrainConfig(quiet=True))


def test_hooks_are_called_in_order() -> None:
    calls: list[str] = []

    class Recorder(Hooks):
        def extra_loss(self, model):  # noqa: ANN001, ANN201
            calls.append("loss")
            return torch.zeros(())

        def after_step(self, model):  # noqa: ANN001, ANN201
            calls.append("step")

        def end_epoch(self, model, epoch):  # noqa: ANN001, ANN201
            calls.append(f"epoch{epoch}")

    shadow = ShadowModel(normalized(ROOT / "sample_models" / "lenet5.onnx"))
    train(shadow, _digits(128), TrainConfig(epochs=2, batch_size=64, quiet=True),
          hooks=[Recorder()])
    assert calls == ["loss", "step", "loss", "step", "epoch0"] * 1 + \
        ["loss", "step", "loss", "step", "epoch1"]


def test_evaluate_accuracy_matches_onnxruntime_predictions() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    data = _digits(300)
    in_ort = evaluate(model, data)
    in_torch = evaluate(ShadowModel(model), data)
    assert in_ort["accuracy"] == pytest.approx(in_torch["accuracy"])
    assert 0.9 < in_ort["accuracy"] <= 1.0 and "top5" in in_ort


def test_bad_config_is_refused() -> None:
    with pytest.raises(UsageError, match="--device"):
        TrainConfig(device="tpu")
    with pytest.raises(UsageError):
        TrainConfig(lr=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_on_cuda_matches_the_onnx_export() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    shadow = ShadowModel(model)
    train(shadow, _digits(256), TrainConfig(epochs=1, device="cuda", quiet=True))
    assert all(shadow.parameter(n).device.type == "cuda" for n in shadow.initializer_names())
    shadow.to("cpu")
    exported = shadow.export()
    data = _digits(64)
    assert evaluate(exported, data)["accuracy"] == pytest.approx(
        evaluate(shadow, data)["accuracy"])
