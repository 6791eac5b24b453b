"""Models with symbolic input sizes: pruned at the size they run at, written back symbolic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import NEEDS_EXE, SAMPLE_DIR, cli

import onnxprune
from onnxprune import metrics, modelio
from onnxprune.errors import UsageError

GAP_SAMPLES = ["vgg_bn", "resnet", "mobilenetv2", "inception"]  # any input size works


def symbolic(name: str, folder: Path) -> Path:
    """The sample ``name`` with its input declared (batch, 1, H, W), as detectors declare it."""
    model = onnx.load(str(SAMPLE_DIR / f"{name}.onnx"))
    for dim, label in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], "HW",
                          strict=True):
        dim.Clear()
        dim.dim_param = label
    del model.graph.value_info[:]
    path = folder / f"{name}_hw.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", GAP_SAMPLES)
def test_a_symbolic_model_prunes_at_its_input_size_and_is_written_symbolic(
        tmp_path: Path, name: str) -> None:
    path = symbolic(name, tmp_path)
    fixed = onnxprune.prune(SAMPLE_DIR / f"{name}.onnx", max_flops=0.5, round_to=1)

    result = onnxprune.prune(path, max_flops=0.5, round_to=1, input_size=(28, 28))

    report = result.report
    assert report["input_shapes"] == {"input": ["batch", 1, 28, 28]}
    assert report["written_input_shapes"] == {"input": ["batch", 1, "H", "W"]}
    assert report["before"]["flops"] == fixed.report["before"]["flops"]  # counted at 28 x 28
    assert report["after"]["flops"] == fixed.report["after"]["flops"]
    assert report["after"]["flops"] <= 0.5 * report["before"]["flops"]
    onnx.checker.check_model(result.model, full_check=True)
    original = modelio.load(path)
    for size in (28, 40, 17):
        x = np.random.default_rng(size).random((2, 1, size, size), dtype=np.float32)
        assert modelio.run(result.model, {"input": x})[0].shape == (2, 10)
        if size == 28:  # at the run size it is the fixed-size prune, exactly
            np.testing.assert_allclose(modelio.run(result.model, {"input": x})[0],
                                       modelio.run(fixed.model, {"input": x})[0], atol=1e-5)
        assert modelio.run(original, {"input": x})[0].shape == (2, 10)


def test_the_size_comes_from_the_data_without_input_size(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((30, 1, 32, 32), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 10)

    result = onnxprune.prune(symbolic("resnet", tmp_path), max_flops=0.5, round_to=1,
                             data=tmp_path / "d.npz")

    assert result.report["input_shapes"] == {"input": ["batch", 1, 32, 32]}


def test_without_a_size_the_run_is_refused_naming_the_option(tmp_path: Path) -> None:
    path = symbolic("resnet", tmp_path)
    with pytest.raises(UsageError, match=rf"^{path}: input 'input' has shape \(batch, 1, H, W\): "
                                         r"give --input-size HxW \(or --data\)"):
        onnxprune.prune(path, max_flops=0.5)


def test_input_size_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    path = symbolic("resnet", tmp_path)
    with pytest.raises(UsageError, match=r"--input-size takes two positive numbers HxW"):
        onnxprune.prune(path, max_flops=0.5, input_size=(28,))  # type: ignore[arg-type]
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 28  # only W is open
    onnx.save(model, str(path))
    with pytest.raises(UsageError, match=r"--input-size 30x30 does not fit input 'input' of "
                                         r"shape \(batch, 1, 28, W\)"):
        onnxprune.prune(path, max_flops=0.5, input_size=(30, 30))
    result = onnxprune.prune(path, max_flops=0.5, round_to=1, input_size=(28, 36))
    assert result.report["written_input_shapes"] == {"input": ["batch", 1, 28, "W"]}


@pytest.mark.parametrize("name", GAP_SAMPLES)
def test_flops_of_unknown_sizes_are_unknown_never_counted_as_one(tmp_path: Path,
                                                                 name: str) -> None:
    info = onnxprune.inspect(symbolic(name, tmp_path))
    assert info.flops is None
    assert any(layer.flops is None for layer in info.layers)
    sized = onnxprune.inspect(symbolic(name, tmp_path), input_size=(28, 28))
    assert sized.flops == onnxprune.inspect(SAMPLE_DIR / f"{name}.onnx").flops
    assert sized.input_shapes == {"input": ["batch", 1, 28, 28]}


def test_prunable_share_counts_the_layers_of_unblocked_groups() -> None:
    """conv_a's group is prunable (conv_b reads it); conv_b's is blocked by LRN; conv_c's by
    the output: conv_a and conv_b can get cheaper, conv_c cannot."""
    text = """<ir_version: 8, opset_import: ["": 13]>
    g (float[N,2,8,8] x) => (float[N,3,8,8] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, wa)
        ra = Relu (a)
        b = Conv (ra, wb)
        n = LRN <size = 3> (b)
        y = Conv (n, wc)
    }"""
    model = onnx.parser.parse_model(text)
    shapes = {"wa": (4, 2, 3, 3), "wb": (6, 4, 1, 1), "wc": (3, 6, 1, 1)}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(
        np.ones(s, np.float32), n) for n, s in shapes.items())
    info = onnxprune.inspect(model)
    flops = {n: int(np.prod(s)) * 64 for n, s in shapes.items()}  # 8 x 8 positions each
    assert info.flops == sum(flops.values())
    assert info.prunable_share == pytest.approx((flops["wa"] + flops["wb"]) / info.flops)
    graph = modelio.to_graph(modelio.load(model))
    assert metrics.prunable_share(graph, []) == 0.0
    # a depthwise Conv carries its group's channels (its kernel is a passenger): it counts
    mobile = onnxprune.inspect(SAMPLE_DIR / "mobilenetv2.onnx")
    depthwise = {n for g in mobile.groups if not g.blocked for n in g.depthwise}
    assert depthwise and mobile.prunable_share == 1.0


@NEEDS_EXE
def test_cli_inspect_and_bench_take_input_size(tmp_path: Path) -> None:
    path = symbolic("resnet", tmp_path)
    unknown = cli("inspect", path, cwd=tmp_path)
    assert unknown.returncode == 0 and "FLOPs unknown at input ('batch', 1, 'H', 'W')" in \
        unknown.stdout
    sized = cli("inspect", path, "--input-size", "28x28", "--json", cwd=tmp_path)
    data = json.loads(sized.stdout)
    assert data["flops"] == onnxprune.inspect(SAMPLE_DIR / "resnet.onnx").flops
    assert data["prunable_flops_share"] == 1.0
    refused = cli("bench", path, cwd=tmp_path)
    assert refused.returncode == 2 and "give --input-size HxW" in refused.stderr
    timed = cli("bench", path, SAMPLE_DIR / "resnet.onnx", "--input-size", "28x28", "--runs",
                "3", cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    assert "speedup" in timed.stdout
