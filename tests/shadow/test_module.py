"""The shadow model: parity with onnxruntime, gradients, export, masks, refusals."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import pytest
import torch
from conftest import ROOT, at_size, normalized

from onnxprune import modelio
from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import ShadowModel
from onnxprune.training.data import Dataset
from onnxprune.training.loop import TrainConfig, train


def _run_shadow(shadow: ShadowModel, feeds: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = shadow(*(torch.from_numpy(v) for v in feeds.values()))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_onnxruntime(sample: Path, seed: int) -> None:
    """Invariant 1, on the file as exported and on the normalised model."""
    for model in (modelio.load(sample), normalized(sample)):
        feeds = modelio.random_inputs(at_size(model), batch=3, seed=seed)
        expected = modelio.run(model, feeds)
        got = _run_shadow(ShadowModel(model).eval(), feeds)
        for e, g in zip(expected, got, strict=True):
            assert e.shape == g.shape
            assert np.abs(e - g).max() <= 1e-4


def test_backward_reaches_every_trainable_initializer(sample: Path) -> None:
    shadow = ShadowModel(normalized(sample))
    x = torch.from_numpy(next(iter(modelio.random_inputs(normalized(sample), batch=2).values())))
    out = shadow(x)
    (out if not isinstance(out, tuple) else out[0]).square().sum().backward()
    trainable = [n for n in shadow.initializer_names() if shadow.parameter(n).requires_grad]
    assert trainable
    missing = [n for n in trainable if shadow.parameter(n).grad is None]
    assert not missing
    assert all(shadow.parameter(n).grad.abs().sum() > 0 for n in trainable
               if shadow.parameter(n).ndim > 1)


def test_export_writes_current_values_into_the_same_graph() -> None:
    model = normalized(ROOT / "sample_models" / "resnet.onnx")
    shadow = ShadowModel(model)
    untouched = shadow.export()
    assert [n.op_type for n in untouched.graph.node] == [n.op_type for n in model.graph.node]
    for a, b in zip(untouched.graph.initializer, model.graph.initializer, strict=True):
        assert a.name == b.name and a.raw_data == b.raw_data or a == b
    name = next(n for n in shadow.initializer_names() if shadow.parameter(n).ndim == 4)
    with torch.no_grad():
        shadow.parameter(name).mul_(0.5)
    changed = shadow.export()
    feeds = modelio.random_inputs(model, batch=2)
    assert np.abs(modelio.run(changed, feeds)[0] - _run_shadow(shadow, feeds)[0]).max() <= 1e-4
    assert np.abs(modelio.run(changed, feeds)[0] - modelio.run(model, feeds)[0]).max() > 1e-3


def test_masks_apply_in_forward_and_export() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    shadow = ShadowModel(model)
    name = next(n for n in shadow.initializer_names() if shadow.parameter(n).ndim == 2)
    weight = shadow.parameter(name)
    mask = (torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    shadow.set_mask(name, mask)
    exported = shadow.export()
    values = {t.name: onnx.numpy_helper.to_array(t) for t in exported.graph.initializer}
    assert (values[name][mask.numpy() == 0] == 0).all()
    feeds = modelio.random_inputs(model, batch=2)
    assert np.abs(modelio.run(exported, feeds)[0] - _run_shadow(shadow, feeds)[0]).max() <= 1e-4
    out = shadow(torch.from_numpy(feeds[shadow.input_names[0]]))
    out.sum().backward()
    assert (weight.grad[mask == 0] == 0).all()
    shadow.set_mask(name, None)
    assert shadow.mask(name) is None
    with pytest.raises(ValueError, match="mask of shape"):
        shadow.set_mask(name, torch.ones(3))


def test_unknown_op_is_refused_at_construction_naming_the_node() -> None:
    node = onnx.helper.make_node("Hardmax", ["x"], ["h"], name="the_hardmax", domain="custom.ops")
    graph = onnx.helper.make_graph(
        [node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, [2, 3])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("custom.ops", 1)])
    with pytest.raises(UnsupportedModelError, match="Hardmax.*custom.ops.*the_hardmax"):
        ShadowModel(model)


def test_clip_bounds_are_buffers_outside_the_optimiser() -> None:
    shadow = ShadowModel(normalized(ROOT / "sample_models" / "mobilenetv2.onnx"))
    frozen = [n for n in shadow.initializer_names() if not shadow.parameter(n).requires_grad]
    assert frozen, "the Clip bounds of ReLU6 must not train"
    assert all(shadow.parameter(n).numel() == 1 for n in frozen)
    trained = {id(p) for p in shadow.parameters()}
    assert not any(id(shadow.parameter(n)) in trained for n in frozen)


def test_split_without_sizes_and_constant_nodes_run() -> None:
    """Split into as many parts as outputs (before opset 18), and a Constant node's value."""
    text = """<ir_version: 8, opset_import: ["": 13]> g (float[N,6] x) => (float[N,3] y) {
      c = Constant<value = float[3] {1, 2, 3}>()
      a, b = Split<axis=1>(x)
      s = Add(a, b)
      y = Mul(s, c)
    }"""
    model = modelio.load(onnx.parser.parse_model(text))
    feeds = modelio.random_inputs(model, batch=2)
    shadow = ShadowModel(model)
    assert np.abs(modelio.run(model, feeds)[0] - _run_shadow(shadow, feeds)[0]).max() <= 1e-6
    assert any(name.startswith("attr_") for name, _ in shadow.named_buffers())


@pytest.mark.parametrize("name", ["vgg_bn", "resnet", "mobilenetv2", "inception"])
def test_inserted_batchnorm_keeps_the_function_and_folds_back_on_export(name: str) -> None:
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    shadow = ShadowModel(model)
    x = torch.from_numpy(np.load(ROOT / "sample_models" / "digits.npz")["x"][:128])
    before = shadow(x).detach()
    assert shadow.add_batchnorm(x) > 0
    shadow.train()
    assert (shadow(x).detach() - before).abs().max() <= 1e-3  # batch statistics = calibration
    shadow.eval()
    assert (shadow(x).detach() - before).abs().max() <= 1e-3
    optimiser = torch.optim.SGD(shadow.parameters(), lr=0.01)
    shadow.train()
    for _ in range(3):
        optimiser.zero_grad()
        shadow(x).square().mean().backward()
        optimiser.step()
    shadow.eval()
    exported = shadow.export()
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in model.graph.node]
    with torch.no_grad():
        expected = shadow(x).numpy()
    assert np.abs(modelio.run(exported, {shadow.input_names[0]: x.numpy()})[0]
                  - expected).max() <= 1e-3


# -- which constants train ------------------------------------------------------------------
_CONV = "y = Conv<pads = [1, 1, 1, 1]>"
_RNG = np.random.default_rng(0)
# name -> (ONNX text body reading x[N,3,6,6] and writing y, constants, trainable names)
_ROLES = {
    "baked_in_normalisation": (
        f"s = Sub(x, mean)\n d = Div(s, std)\n {_CONV}(d, w, b)",
        {"mean": [[[[0.485]], [[0.456]], [[0.406]]]], "std": [[[[0.229]], [[0.224]], [[0.225]]]]},
        {"w", "b"}),
    "hardswish_add3_clip_div6": (
        f"{_CONV.replace('y =', 'c =')}(x, w, b)\n a = Add(c, three)\n r = Clip(a, zero, six)\n"
        " m = Mul(c, r)\n y = Div(m, six)", {"three": 3.0, "zero": 0.0, "six": 6.0}, {"w", "b"}),
    "gelu_with_erf": (
        f"{_CONV.replace('y =', 'c =')}(x, w, b)\n h = Mul(c, rsqrt2)\n e = Erf(h)\n"
        " p = Add(e, one)\n m = Mul(c, p)\n y = Mul(m, half)",
        {"rsqrt2": 2 ** -0.5, "one": 1.0, "half": 0.5}, {"w", "b"}),
    "prelu_and_normalisations": (
        f"{_CONV.replace('y =', 'c =')}(x, w)\n n = BatchNormalization(c, gamma, beta, mu, var)\n"
        " p = PRelu(n, slope)\n y = InstanceNormalization(p, iscale, ibias)",
        {"gamma": _RNG.uniform(0.5, 2, 4), "beta": _RNG.standard_normal(4),
         "mu": _RNG.standard_normal(4), "var": _RNG.uniform(0.5, 2, 4),
         "slope": _RNG.uniform(0.1, 0.3, (4, 1, 1)), "iscale": _RNG.uniform(0.5, 2, 4),
         "ibias": _RNG.standard_normal(4)},
        {"w", "gamma", "beta", "slope", "iscale", "ibias"}),
    "handwritten_batchnorm_and_pow": (
        f"{_CONV.replace('y =', 'c =')}(x, w)\n m = Mul(c, g)\n a = Add(m, h)\n r = Relu(a)\n"
        " y = Pow(r, two)", {"g": _RNG.uniform(0.5, 2, (1, 4, 1, 1)),
                             "h": _RNG.standard_normal((1, 4, 1, 1)), "two": 2.0}, {"w"}),
    "resize_scales": (
        f"{_CONV.replace('y =', 'c =')}(x, w, b)\n y = Resize<mode = \"nearest\">(c, roi, scales)",
        {"roi": np.zeros(0), "scales": [1.0, 1.0, 2.0, 2.0]}, {"w", "b"}),
    "gemm_bias_shared_with_add_and_matmul": (
        "f = Flatten(x)\n g = Gemm(f, fc, bias)\n a = Add(g, bias)\n m = MatMul(a, v)\n"
        " y = Div(m, t)", {"fc": _RNG.standard_normal((108, 5)) * 0.1, "t": 4.0,
                           "bias": _RNG.standard_normal(5), "v": _RNG.standard_normal((5, 5))},
        {"fc", "bias", "v"}),
    "biases_written_as_add": (
        f"{_CONV.replace('y =', 'c =')}(x, w)\n a = Add(c, cb)\n f = Flatten(a)\n"
        " m = MatMul(f, fc)\n y = Add(m, lb)", {"cb": _RNG.standard_normal((1, 4, 1, 1)),
                                              "fc": _RNG.standard_normal((144, 5)) * 0.1,
                                              "lb": _RNG.standard_normal(5)},
        {"w", "cb", "fc", "lb"}),
}


def _roles_model(case: str) -> tuple[onnx.ModelProto, set[str]]:
    """The model of ``_ROLES[case]`` (a 4->3 Conv's w and b added) and its trainable names."""
    body, consts, trainable = _ROLES[case]
    rng = np.random.default_rng(2)
    consts = {"w": rng.standard_normal((4, 3, 3, 3)) * 0.3, "b": rng.standard_normal(4), **consts}
    used = set(re.findall(r"\w+", body))
    model = onnx.parser.parse_model('<ir_version: 8, opset_import: ["": 13]> '
                                    f"g (float[N,3,6,6] x) => (float y) {{\n {body}\n}}")
    model.graph.initializer.extend(
        onnx.numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in consts.items()
        if n in used)
    return modelio.load(model), trainable


@pytest.mark.parametrize("case", sorted(_ROLES))
def test_only_weights_and_biases_are_parameters(case: str) -> None:
    model, expected = _roles_model(case)
    shadow = ShadowModel(model)
    feeds = modelio.random_inputs(model, batch=2)
    assert np.abs(modelio.run(model, feeds)[0] - _run_shadow(shadow, feeds)[0]).max() <= 1e-4
    assert set(shadow.initializer_names()) == {t.name for t in model.graph.initializer}
    trainable = {n for n in shadow.initializer_names() if shadow.parameter(n).requires_grad}
    assert trainable == expected
    assert {id(p) for p in shadow.parameters()} == {id(shadow.parameter(n)) for n in expected}
    buffers = {id(b) for b in shadow.buffers()}
    assert all(id(shadow.parameter(n)) in buffers for n in set(shadow.initializer_names())
               - expected)


@pytest.mark.parametrize("case", sorted(_ROLES))
def test_weight_decay_moves_weights_and_leaves_other_constants_bit_identical(case: str) -> None:
    model, expected = _roles_model(case)
    teacher, student = ShadowModel(model), ShadowModel(model)
    data = Dataset(np.random.default_rng(1).standard_normal((32, 3, 6, 6)).astype(np.float32))
    train(student, data, TrainConfig(epochs=2, lr=0.05, weight_decay=0.1, batch_size=8,
                                     quiet=True), teacher=teacher)
    before = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in student.export().graph.initializer}
    assert after.keys() == before.keys()
    for name, value in before.items():
        if name in expected:
            assert not np.array_equal(after[name], value), f"{name} should have trained"
        else:
            assert after[name].dtype == value.dtype
            assert after[name].tobytes() == value.tobytes(), f"{name} should not have moved"


def test_export_writes_the_current_value_of_a_fixed_constant() -> None:
    model, _ = _roles_model("baked_in_normalisation")
    shadow = ShadowModel(model)
    with torch.no_grad():
        shadow.parameter("std").mul_(2.0)
    assert "std" in shadow.snapshot()
    exported = {t.name: onnx.numpy_helper.to_array(t) for t in shadow.export().graph.initializer}
    original = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(exported["std"], 2 * original["std"])
    feeds = modelio.random_inputs(model, batch=2)
    assert np.abs(modelio.run(shadow.export(), feeds)[0]
                  - _run_shadow(shadow, feeds)[0]).max() <= 1e-4


@pytest.mark.parametrize("op, opset, axis, flatten", [
    ("Sigmoid", 13, -1, False), ("Softmax", 13, -1, False), ("LogSoftmax", 13, -1, False),
    ("Softmax", 11, 1, True), ("Relu", 13, -1, False)])
def test_forward_logits_returns_the_values_before_a_final_squashing_op(
        op: str, opset: int, axis: int, flatten: bool) -> None:
    text = (f'<ir_version: 7, opset_import: ["": {opset}]> g (float[N,6] x) => '
            f'(float[N,3] y, float[N,3] z) <float[6,3] w = {{{",".join(["0.5"] * 18)}}}> '
            f'{{ h = MatMul(x, w)\n y = {op}(h)\n z = Identity(h) }}')
    model = modelio.load(onnx.parser.parse_model(text))
    shadow = ShadowModel(model)
    squashed = op != "Relu"
    kind = shadow.output_kinds[0]
    assert (kind.activation, kind.logits) == ((op, "h") if squashed else (None, "y"))
    assert (kind.axis, kind.flatten) == ((axis, flatten) if squashed else (-1, False))
    assert shadow.output_kinds[1].activation is None
    x = torch.randn(4, 6)
    logits, other = shadow.forward_logits(x)
    y, z = shadow(x)
    torch.testing.assert_close(logits, z if squashed else y)
    torch.testing.assert_close(other, z)


def test_batchnorm_calibration_streams_batches_to_the_same_statistics() -> None:
    model = normalized(ROOT / "sample_models" / "resnet.onnx")
    x = torch.from_numpy(np.load(ROOT / "sample_models" / "digits.npz")["x"][:96])
    whole, streamed = ShadowModel(model), ShadowModel(model)
    assert whole.add_batchnorm(x) == streamed.add_batchnorm(iter(x.split(20))) > 0
    for key, bn in whole.batchnorms.items():
        other = streamed.batchnorms[key]
        torch.testing.assert_close(other.running_mean, bn.running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(other.running_var, bn.running_var, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # eval mode: the running statistics; the function is unchanged
        torch.testing.assert_close(streamed.eval()(x), ShadowModel(model)(x), rtol=0,
                                   atol=1e-3)


def test_tensors_returns_intermediate_values_and_frees_the_rest() -> None:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    shadow = ShadowModel(model).eval()
    x = torch.from_numpy(np.load(ROOT / "sample_models" / "digits.npz")["x"][:4])
    with torch.no_grad():
        env = shadow._run((x,))
        kept = shadow._run((x,), keep=frozenset(shadow.output_names))
        names = [n for n, v in env.items() if isinstance(v, torch.Tensor) and n not in
                 dict(shadow.values()) and n != shadow.input_names[0]][:3]
        got = shadow.tensors((x,), names)
    for name, value in zip(names, got, strict=True):
        torch.testing.assert_close(value, env[name])
    computed = {n for n in env if n and n not in dict(shadow.values())}
    assert {n for n in kept if n and n not in dict(shadow.values())} == set(shadow.output_names)
    assert len(computed) > len(shadow.output_names) + 2
