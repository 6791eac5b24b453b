"""Models at opsets 1-8 are upgraded on load by onnx's version converter, or refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

import onnxprune
from onnxprune import modelio
from onnxprune.errors import UnsupportedModelError


def _legacy(opset: int) -> onnx.ModelProto:
    """conv1 -> BatchNorm -> Relu -> conv2 -> Add(bias) -> Relu -> GAP -> Flatten -> Gemm.

    At opset 6 the BatchNorm carries ``is_test`` and the Add and Gemm ``broadcast``, as the
    exporters of the time wrote them; the batch is symbolic and IR is 3 (initializers are
    also graph inputs).
    """
    rng = np.random.default_rng(opset)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return onh.from_array(rng.standard_normal(shape).astype(np.float32), name)

    legacy = opset < 7
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"],
                     **({"is_test": 1} if legacy else {})),
        oh.make_node("Relu", ["n1"], ["r1"]),
        oh.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[1, 1]),
        oh.make_node("Add", ["c2", "bias2"], ["a2"], **({"broadcast": 1} if legacy else {})),
        oh.make_node("Relu", ["a2"], ["r2"]),
        oh.make_node("GlobalAveragePool", ["r2"], ["g"]),
        oh.make_node("Flatten", ["g"], ["f"]),
        oh.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1,
                     **({"broadcast": 1} if legacy else {})),
    ]
    inits = [w("w1", 8, 3, 3, 3), w("s", 8), w("b", 8), w("m", 8),
             onh.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "v"),
             w("w2", 8, 8, 1, 1), w("bias2", 8, 1, 1), w("fc", 10, 8), w("fcb", 10)]
    inputs = [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8]),
              *(oh.make_tensor_value_info(t.name, onnx.TensorProto.FLOAT, list(t.dims))
                for t in inits)]
    graph = oh.make_graph(nodes, "legacy", inputs,
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
                          inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [6, 7, 8])
def test_an_old_opset_is_upgraded_and_pruned_with_its_outputs_kept(tmp_path: Path,
                                                                   opset: int) -> None:
    path = tmp_path / f"opset{opset}.onnx"
    onnx.save(_legacy(opset), str(path))
    loaded = modelio.load(path)
    assert modelio.opset_version(loaded) == modelio.UPGRADE_TO
    assert not any(a.name in ("broadcast", "is_test", "consumed_inputs")
                   for n in loaded.graph.node for a in n.attribute)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    reference = _reference(_legacy(opset), feeds["x"])
    np.testing.assert_allclose(modelio.run(loaded, feeds)[0], reference, rtol=1e-4, atol=1e-4)

    result = onnxprune.prune(path, max_flops=0.6, round_to=1)

    assert result.report["opset"] == {"input": opset, "output": modelio.UPGRADE_TO}
    assert result.report["after"]["flops"] <= 0.6 * result.report["before"]["flops"]
    assert modelio.run(result.model, feeds)[0].shape == (3, 10)


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The legacy model computed by hand in numpy (onnxruntime runs no opset below 7)."""
    w = {t.name: onh.to_array(t) for t in model.graph.initializer}
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(2, 3))
    c1 = np.einsum("nchwij,ocij->nohw", windows, w["w1"])
    s = w["s"] / np.sqrt(w["v"] + 1e-5)
    n1 = (c1 - w["m"][:, None, None]) * s[:, None, None] + w["b"][:, None, None]
    r1 = np.maximum(n1, 0)
    c2 = np.einsum("nchw,oc->nohw", r1, w["w2"][:, :, 0, 0]) + w["bias2"]
    g = np.maximum(c2, 0).mean(axis=(2, 3))
    return g @ w["fc"].T + w["fcb"]


def test_what_the_converter_gets_wrong_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        converted = onnx.version_converter.convert_version(_legacy(8), target)
        converted.graph.node[-1].attribute[0].i = 0  # transB: the Gemm now yields (N, 8) x ...
        return converted

    real = onnx.version_converter.convert_version
    monkeypatch.setattr(onnx.version_converter, "convert_version",
                        lambda m, t: wrong(m, t) if t == modelio.UPGRADE_TO else real(m, t))
    with pytest.raises(UnsupportedModelError, match=r"model: opset 7 is older than 9 and onnx's "
                                                    r"version converter cannot upgrade it"):
        modelio.load(_legacy(7))
