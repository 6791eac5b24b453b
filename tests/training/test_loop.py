"""The training loop: labels, distillation, reproducibility, hooks; evaluation."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest
import torch
from conftest import ROOT, normalized

from onnxprune import api, modelio
from onnxprune.errors import UsageError
from onnxprune.shadow import ShadowModel
from onnxprune.shadow.module import OutputKind
from onnxprune.training import data as datasets
from onnxprune.training.evaluation import evaluate
from onnxprune.training.keep_best import KeepBest
from onnxprune.training.loop import Hooks, TrainConfig, distillation_loss, train

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


def _detector() -> onnx.ModelProto:
    """x (N, 2, 8, 8) -> Conv 3x3 -> Relu -> Conv 1x1 -> Sigmoid: a saturated (N, 1, 8, 8) map."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((8, 2, 3, 3)) * 0.4, "b1": rng.standard_normal(8) * 0.1,
               "w2": rng.standard_normal((1, 8, 1, 1)) * 1.5, "b2": np.array([-2.0])}
    make = onnx.helper.make_node
    graph = onnx.helper.make_graph(
        [make("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         make("Relu", ["c1"], ["r1"]),
         make("Conv", ["r1", "w2", "b2"], ["logit"], kernel_shape=[1, 1]),
         make("Sigmoid", ["logit"], ["map"])], "detector",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 8, 8])],
        [onnx.helper.make_tensor_value_info("map", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return modelio.load(onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 13)]))


def _perturbed(model: onnx.ModelProto) -> ShadowModel:
    shadow, g = ShadowModel(model), torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in shadow.initializer_names():
            p = shadow.parameter(name)
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))
    return shadow


def test_distilling_before_the_sigmoid_recovers_a_saturated_map() -> None:
    model = _detector()
    teacher = ShadowModel(model)
    x = np.random.default_rng(1).standard_normal((64, 2, 8, 8)).astype(np.float32)
    held_out = torch.from_numpy(np.random.default_rng(2).standard_normal(
        (32, 2, 8, 8)).astype(np.float32))
    assert teacher.output_kinds[0].activation == "Sigmoid"
    with torch.no_grad():
        target = teacher.forward_logits(held_out)[0]
    assert target.abs().mean() > 3  # saturated: most of the map is near 0 or 1

    def logit_error(student: ShadowModel) -> float:
        with torch.no_grad():
            return float((student.forward_logits(held_out)[0] - target).norm() / target.norm())

    config = TrainConfig(epochs=5, lr=0.03, batch_size=16, weight_decay=0, quiet=True)
    before_logits, after_sigmoid = _perturbed(model), _perturbed(model)
    start = logit_error(before_logits)
    train(before_logits, datasets.Dataset(x), config, teacher=teacher)
    # a teacher that is not a shadow gives only its outputs: MSE after the Sigmoid, as before
    train(after_sigmoid, datasets.Dataset(x), config, teacher=torch.nn.Sequential(teacher))
    gained_before, gained_after = start - logit_error(before_logits), start - logit_error(
        after_sigmoid)
    assert logit_error(before_logits) < 0.5 * logit_error(after_sigmoid)
    assert gained_before > 5 * max(gained_after, 0.0) and gained_before > 0.5 * start


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_outputs_distil_on_logits_along_their_axis(opset: int) -> None:
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    kind = OutputKind("Softmax", "z", axis=1, flatten=opset < 13)
    loss = distillation_loss(student, teacher, temperature=2.0, kind=kind)
    if opset < 13:  # one distribution per sample over all of (3, 4, 5)
        rows = student.reshape(2, -1), teacher.reshape(2, -1)
    else:  # one distribution over the 3 channels at each of the 2 x 4 x 5 places
        rows = (student.movedim(1, -1).reshape(-1, 3), teacher.movedim(1, -1).reshape(-1, 3))
    p, q = torch.softmax(rows[1] / 2, 1), torch.log_softmax(rows[0] / 2, 1)
    expected = (p * (p.log() - q)).sum(1).mean() * 4
    torch.testing.assert_close(loss, expected)
    sigmoid = distillation_loss(student, teacher, kind=OutputKind("Sigmoid", "z"))
    torch.testing.assert_close(sigmoid, ((student - teacher) ** 2).mean())


def test_keep_best_restores_the_best_epoch_when_a_later_one_is_worse() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    digits = _digits(812)
    data, val = datasets.Dataset(digits.x[:512]), datasets.Dataset(digits.x[512:])
    student = ShadowModel(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # start away from the teacher, so that epoch 1 improves on epoch 0
        for name in student.initializer_names():
            p = student.parameter(name)
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=g))

    class Sabotage(Hooks):  # epoch 2 ends with ruined weights; epoch 3 cannot repair them
        def end_epoch(self, model, epoch):  # noqa: ANN001, ANN201
            if epoch == 1:
                with torch.no_grad():
                    for name in model.initializer_names():
                        model.parameter(name).mul_(-0.3)

    keeper = KeepBest(val, model)
    keeper.start(student)
    train(student, data, TrainConfig(epochs=3, lr=0.01, batch_size=32, quiet=True),
          teacher=ShadowModel(model), hooks=[Sabotage(), keeper])
    summary = keeper.summary()
    scores = summary["scores"]
    assert summary["metric"] == "rel_l2" and len(scores) == 4
    assert scores[1] < scores[0] and min(scores[2:]) > 5 * scores[1]
    assert summary["best_epoch"] == 1
    keeper.restore(student)
    assert keeper.score(student) == pytest.approx(scores[1], rel=1e-6)


def test_evaluate_streams_in_batches_and_scores_the_same() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    data = _digits(300)
    whole = evaluate(model, data, batch_size=300)
    assert evaluate(model, data, batch_size=7) == pytest.approx(whole)
    logits = modelio.run(model, {"input": data.x})[0]
    assert whole["accuracy"] == pytest.approx(float((logits.argmax(1) == data.y).mean()))
    damaged = ShadowModel(model)
    with torch.no_grad():
        damaged.parameter(damaged.initializer_names()[0]).mul_(0.5)
    streamed = evaluate(damaged, datasets.Dataset(data.x, None), reference=model, batch_size=9)
    with torch.no_grad():
        ours = damaged(torch.from_numpy(data.x)).numpy()
    assert streamed["output_error"] == pytest.approx(float(np.abs(ours - logits).max()), rel=1e-5)
    assert streamed["agreement"] == pytest.approx(float(np.mean(ours.argmax(1)
                                                                 == logits.argmax(1))))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_mixed_precision_trains_as_well_in_float32_weights(device: str) -> None:
    data = _digits(600)
    train_set, val = datasets.split(data)
    runs = {}
    for amp in (False, True):
        model = ShadowModel(api.normalize(ROOT / "sample_models" / "lenet5.onnx")[0])
        train(model, train_set, TrainConfig(epochs=2, lr=0.01, quiet=True, device=device,
                                            amp=amp))
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[amp] = (evaluate(model.to("cpu"), val)["accuracy"],
                     [p.detach().clone() for p in model.parameters()])
    assert abs(runs[True][0] - runs[False][0]) <= 0.03
    assert runs[True][0] >= 0.9
    assert any(not torch.equal(a, b) for a, b in zip(runs[True][1], runs[False][1],
                                                      strict=True))  # autocast did run
