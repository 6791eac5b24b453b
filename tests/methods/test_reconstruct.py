"""Layer reconstruction: exact where the kept channels can express the removed ones; streaming."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest
import torch
from conftest import groups_of, max_diff

from onnxprune import api, modelio
from onnxprune.methods import reconstruct as rc
from onnxprune.plan import Plan


def _two_layers(consumer: str) -> onnx.ModelProto:
    """x -> layer 1 (8 channels; 6 = 0 + 1, 7 = 2 * 2 - 3, biases alike) -> consumer -> y."""
    rng = np.random.default_rng(0)
    make = onnx.helper.make_node
    conv = consumer != "gemm"
    w1 = rng.standard_normal((8, 4, 1, 1) if conv else (8, 4)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    for w in (w1, b1):
        w[6] = w[0] + w[1]
        w[7] = 2 * w[2] - w[3]
    k = 3 if consumer == "conv3x3" else 1
    w2 = rng.standard_normal((5, 8, k, k) if conv else (5, 8)).astype(np.float32)
    b2 = rng.standard_normal(5).astype(np.float32)
    if conv:
        nodes = [make("Conv", ["x", "w1", "b1"], ["h"], kernel_shape=[1, 1], name="layer1"),
                 make("Conv", ["h", "w2", "b2"], ["y"], kernel_shape=[k, k],
                      pads=[k // 2] * 4, name="layer2")]
        shapes = (["N", 4, 6, 6], ["N", 5, 6, 6])
    else:
        nodes = [make("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="layer1"),
                 make("Gemm", ["h", "w2", "b2"], ["y"], transB=1, alpha=0.5, beta=2.0,
                      name="layer2")]
        shapes = (["N", 4], ["N", 5])
    inits = [onnx.numpy_helper.from_array(v, n) for n, v in
             (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = onnx.helper.make_graph(
        nodes, "two_layers",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shapes[0])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shapes[1])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return modelio.observe_shapes(modelio.with_input_dims(
        api.normalize(model)[0], {"x": [4, 6, 6] if conv else [4]}))


@pytest.mark.parametrize("consumer", ["conv1x1", "conv3x3", "gemm"])
def test_reconstruction_is_exact_when_kept_channels_span_the_removed(consumer: str) -> None:
    model = _two_layers(consumer)
    groups = groups_of(model)
    (group,) = [g for g in groups if not g.blocked]
    plan = Plan({group.id: (0, 1, 2, 3, 4, 5)})
    x = np.random.default_rng(1).standard_normal(
        (64, *modelio.input_specs(model)[0][1][1:])).astype(np.float32)

    def batches():
        for start in range(0, len(x), 16):
            yield torch.from_numpy(x[start:start + 16])

    weights = rc.reconstruct(model, groups, plan, batches, ridge=1e-9)
    assert set(weights) == {"w2", "b2"}
    refit = api.apply_plan(modelio.with_initializers(model, weights), plan)
    plain = api.apply_plan(model, plan)
    test = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    (want,) = modelio.run(model, {"x": test})
    (got,) = modelio.run(refit, {"x": test})
    (before,) = modelio.run(plain, {"x": test})
    assert max_diff([want], [got]) <= 1e-4  # scaled by max(1, |output|), as everywhere
    assert max_diff([want], [before]) > 1e-2


@pytest.mark.parametrize("consumer", ["conv3x3", "gemm"])
def test_the_ridge_pulls_towards_the_original_weights(consumer: str) -> None:
    """A huge ridge gives back the kept columns' original weights and bias; a small one moves."""
    model = _two_layers(consumer)
    groups = groups_of(model)
    (group,) = [g for g in groups if not g.blocked]
    plan = Plan({group.id: (0, 1, 2, 3, 4, 5)})
    x = np.random.default_rng(1).standard_normal(
        (32, *modelio.input_specs(model)[0][1][1:])).astype(np.float32)
    original = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}

    def refit(ridge: float) -> dict[str, np.ndarray]:
        return rc.reconstruct(model, groups, plan, lambda: [torch.from_numpy(x)], ridge=ridge)

    stiff, loose = refit(1e9), refit(1e-6)
    np.testing.assert_allclose(stiff["w2"], original["w2"], atol=1e-5)
    np.testing.assert_allclose(stiff["b2"], original["b2"], atol=1e-5)
    assert np.abs(loose["w2"][:, :6] - original["w2"][:, :6]).max() > 1e-2


def test_im2col_rows_match_the_convolution() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4, 3, 2)).astype(np.float32)
    layer = rc.Layer("c", "Conv", "x", "w", None, np.arange(4), np.array([], int),
                     {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]})
    x = torch.from_numpy(rng.standard_normal((2, 4, 7, 9)).astype(np.float32))
    padded = torch.nn.functional.pad(x, (0, 1, 1, 2))
    want = torch.nn.functional.conv2d(padded, torch.from_numpy(w), stride=(2, 1),
                                      dilation=(1, 2))
    count = rc.output_positions(layer, x, (3, 2))
    assert count == want.shape[2] * want.shape[3]
    got = rc.rows(layer, x, (3, 2), None) @ torch.from_numpy(rc.as_matrix(layer, w)).double()
    np.testing.assert_allclose(got.reshape(2, -1, 3).permute(0, 2, 1).reshape(want.shape),
                               want.double(), atol=1e-4)
    pick = torch.tensor([0, 5, count - 1])
    picked = rc.rows(layer, x, (3, 2), pick).reshape(2, 3, -1)
    np.testing.assert_allclose(picked, rc.rows(layer, x, (3, 2), None).reshape(2, count, -1)
                               [:, pick], atol=0)


def test_calibration_streams_through_fixed_size_accumulators(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch is folded into (columns + 1)^2 normal equations before the next is read."""
    model = _two_layers("conv3x3")
    groups = groups_of(model)
    (group,) = [g for g in groups if not g.blocked]
    plan = Plan({group.id: (0, 1, 2, 3, 4, 5)})
    yielded = []
    added: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
    add = rc.Normal.add

    def spying(self: rc.Normal, z: torch.Tensor, y: torch.Tensor) -> None:
        add(self, z, y)
        added.append((len(yielded), tuple(self.zz.shape), tuple(self.zy.shape)))
    monkeypatch.setattr(rc.Normal, "add", spying)

    def batches():
        for i in range(50):
            yielded.append(i)
            yield torch.randn(8, 4, 6, 6)
    rc.reconstruct(model, groups, plan, batches, positions=16)
    # one consumer refit: 6 kept channels x 9 taps + the bias column, 5 outputs
    assert added == [(i + 1, (55, 55), (55, 5)) for i in range(50)]
