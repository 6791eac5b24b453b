"""The shadow model: parity with onnxruntime, gradients, export, masks, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.parser
import pytest
import torch
from conftest import ROOT, normalized

from onnxprune import modelio
from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import ShadowModel


def _run_shadow(shadow: ShadowModel, feeds: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = shadow(*(torch.from_numpy(v) for v in feeds.values()))
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_onnxruntime(sample: Path, seed: int) -> None:
    """Invariant 1, on the file as exported and on the normalised model."""
    for model in (modelio.load(sample), normalized(sample)):
        feeds = modelio.random_inputs(model, batch=3, seed=seed)
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


def test_frozen_settings_are_parameters_without_gradients() -> None:
    shadow = ShadowModel(normalized(ROOT / "sample_models" / "mobilenetv2.onnx"))
    frozen = [n for n in shadow.initializer_names() if not shadow.parameter(n).requires_grad]
    assert frozen, "the Clip bounds of ReLU6 must not train"
    assert all(shadow.parameter(n).numel() == 1 for n in frozen)


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
