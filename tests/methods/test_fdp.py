"""Frequency-domain dynamic pruning: the DCT, the parametrization, the masks, whole runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ROOT, max_diff, normalized
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune import modelio, sparse
from onnxprune.errors import UsageError
from onnxprune.methods.dct import (
    Coefficients,
    bands,
    dct_matrix,
    to_coefficients,
    to_weights,
)
from onnxprune.methods.fdp import DynamicMasks, band_densities
from onnxprune.plot import draw
from onnxprune.shadow import ShadowModel

DIGITS = ROOT / "sample_models" / "digits.npz"
SAMPLES = ["lenet5", "resnet", "vgg_bn", "mobilenetv2"]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_dct_matrix_is_orthonormal(n: int) -> None:
    d = dct_matrix(n)
    assert torch.allclose(d @ d.T, torch.eye(n, dtype=d.dtype), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 7), st.integers(1, 7),
       st.integers(0, 2**31 - 1))
def test_dct_round_trip_is_exact(o: int, i: int, kh: int, kw: int, seed: int) -> None:
    w = torch.from_numpy(np.random.default_rng(seed).standard_normal((o, i, kh, kw)))
    c = to_coefficients(w)
    assert torch.allclose(to_weights(c), w, atol=1e-12)
    assert float(c.square().sum()) == pytest.approx(float(w.square().sum()))  # Parseval
    smooth = torch.ones(kh, kw, dtype=torch.float64)  # a constant kernel: only the mean is left
    assert int((to_coefficients(smooth).abs() > 1e-12).sum()) == 1


def test_bands_grow_with_frequency() -> None:
    assert bands(3, 3).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=7), st.floats(0.01, 0.99),
       st.floats(0.05, 1.0))
def test_band_densities_keep_the_share_asked_and_favour_low_bands(
        counts: list[int], density: float, ratio: float) -> None:
    got = band_densities(np.array(counts), density, ratio)
    assert float((got * counts).sum()) == pytest.approx(density * sum(counts), rel=1e-6)
    assert np.all(np.diff(got) <= 1e-12) and np.all(got <= 1)
    if ratio == 1.0:
        assert np.allclose(got, density)


@pytest.mark.parametrize("sample", SAMPLES)
def test_coefficients_compute_the_same_forward(sample: str) -> None:
    """Every weight trained as coefficients (masks all ones): the outputs do not move."""
    shadow = ShadowModel(normalized(ROOT / "sample_models" / f"{sample}.onnx"))
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (2, *shadow_input_shape(shadow))).astype(np.float32))
    want = shadow(x).detach().numpy()
    names = [n for n in shadow.initializer_names() if shadow.parameter(n).ndim >= 2
             and shadow.parameter(n).requires_grad]
    for name in names:
        shadow.parametrize(name, Coefficients(shadow.parameter(name).shape))
    assert max_diff([want], [shadow(x).detach().numpy()]) <= 1e-5
    frequency = [n for n in names if shadow.parametrization(n).frequency]
    assert frequency  # every sample has kernels larger than 1x1
    for name in names:
        shadow.parametrize(name, None)
        assert isinstance(shadow.parameter(name), torch.nn.Parameter)
    assert max_diff([want], [shadow(x).detach().numpy()]) <= 1e-5


def shadow_input_shape(shadow: ShadowModel) -> tuple[int, ...]:
    """The (C, H, W) of the sample's input, read from the source graph."""
    graph = modelio.to_graph(shadow.export())
    return tuple(int(d) for d in graph.inputs[0].shape[1:])


def _one_kernel() -> tuple[ShadowModel, str]:
    model = normalized(ROOT / "sample_models" / "lenet5.onnx")
    shadow = ShadowModel(model)
    name = next(n for n in shadow.initializer_names() if shadow.parameter(n).ndim == 4)
    shadow.parametrize(name, Coefficients(shadow.parameter(name).shape))
    return shadow, name


def test_masked_coefficients_keep_their_gradient_and_come_back() -> None:
    shadow, name = _one_kernel()
    shape = shadow.parameter(name).shape
    band, _ = bands(*shape[-2:]), None
    target = torch.full((int(band.max()) + 1,), 0.5, dtype=torch.float64)
    masks = DynamicMasks(shadow, {name: target}, {name: band}, steps=10, seed=0)
    masks.update(1.0, exact=True)
    mask = shadow.parametrization(name).mask
    assert 0.45 < float(mask.mean()) < 0.55
    off = tuple(int(i) for i in torch.nonzero(mask == 0)[0])
    c = shadow.original(name)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (2, *shadow_input_shape(shadow))).astype(np.float32))
    shadow(x).square().sum().backward()
    assert float(c.grad[off]) != 0.0  # straight-through: the masked coefficient still learns
    with torch.no_grad():
        c[off] = 10 * c.abs().max()  # it grows back above 1.1 t
    masks.update(1.0)
    assert float(mask[off]) == 1.0
    with torch.no_grad():  # and the forward uses it again
        assert float(to_coefficients(shadow.parameter(name).double())[off]) == pytest.approx(
            float(c[off]), rel=1e-4)


def _digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(DIGITS)
    pick = np.random.default_rng(0).choice(len(d["x"]), n, replace=False)
    return d["x"][pick], d["y"][pick]


@pytest.mark.parametrize(("sample", "sparsity", "bands_on"),
                         [("lenet5", 0.9, True), ("resnet", 0.8, True), ("lenet5", 0.75, False)])
def test_a_run_reaches_the_sparsity_in_the_dct_domain(sample: str, sparsity: float,
                                                       bands_on: bool) -> None:
    result = onnxprune.prune(ROOT / "sample_models" / f"{sample}.onnx", "fdp",
                             sparsity=sparsity, data=_digits(300), quiet=True, bands=bands_on,
                             prune_epochs=1, retrain_epochs=0)
    report = result.report
    weights = report["weights"]
    kept = sum(w["kept"] for w in weights.values())
    total = sum(w["size"] for w in weights.values())
    assert report["compression"] == pytest.approx(total / kept, abs=0.006)
    assert report["sparsity"] >= sparsity - 0.05  # first and last layers are kept denser
    values = {t.name: onnx_array(t) for t in result.model.graph.initializer}
    for name, w in weights.items():
        value = torch.from_numpy(values[name].copy()).double()
        coefficients = to_coefficients(value) if w["domain"] == "dct" else value
        nonzero = int((coefficients.abs() > 1e-5 * float(coefficients.abs().max())).sum())
        assert nonzero <= w["kept"]  # the written kernel has no more than the kept coefficients
        assert sum(w["kept_per_band"]) == w["kept"]
        if bands_on and w["domain"] == "dct" and w["kept"] < w["size"]:
            per = np.array(w["kept_per_band"]) / np.bincount(bands(*value.shape[-2:]).reshape(-1)
                                                             .numpy())
            assert per[0] >= per[-1]  # low frequencies keep more
    assert 1 < report["theoretical_speedup"]


def onnx_array(tensor: object) -> np.ndarray:
    import onnx.numpy_helper
    return onnx.numpy_helper.to_array(tensor)


def test_refuses_a_flops_budget_and_missing_data() -> None:
    with pytest.raises(UsageError, match="--sparsity"):
        onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", "fdp", max_flops=0.5,
                        data=_digits(64), quiet=True)
    with pytest.raises(UsageError, match="needs --data"):
        onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", "fdp", quiet=True)
    with pytest.raises(UsageError, match="leave --epochs out"):  # it would fill the zeros in
        onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", "fdp", data=_digits(64),
                        epochs=1, quiet=True)
    with pytest.raises(UsageError, match="--band-ratio"):
        onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", "fdp", data=_digits(64),
                        band_ratio=0.0, quiet=True)


def test_plot_draws_the_band_densities(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", "fdp", sparsity=0.8,
                             data=_digits(200), quiet=True, prune_epochs=1, retrain_epochs=0)
    draw(result.report, tmp_path / "bands.png")
    assert (tmp_path / "bands.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_written_file_rebuilds_the_trained_weights(tmp_path: Path) -> None:
    """Saved with DCT storage: onnxruntime gives the trained model's outputs, the file shrinks,
    and loading gives back the trained weights."""
    result = onnxprune.prune(ROOT / "sample_models" / "resnet.onnx", "fdp", sparsity=0.9,
                             data=_digits(300), quiet=True, prune_epochs=1, retrain_epochs=0)
    path = tmp_path / "small.onnx"
    result.save(path)
    stored = onnx.load(str(path))
    formats = {s.name: s.format for s in sparse.describe(result.model)}
    dct_weights = [n for n, w in result.report["weights"].items() if w["domain"] == "dct"]
    assert dct_weights and all(formats[n] == "dct" for n in dct_weights)
    assert path.stat().st_size < 0.5 * len(result.model.SerializeToString())
    x = np.random.default_rng(3).random((4, 1, 28, 28)).astype(np.float32)
    want = ShadowModel(result.model)(torch.from_numpy(x)).detach().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert max_diff([want], [got]) <= 1e-4
    trained = {t.name: onnx_array(t) for t in result.model.graph.initializer}
    loaded = {t.name: onnx_array(t) for t in modelio.load(path).graph.initializer}
    for name in dct_weights:
        scale = float(np.abs(trained[name]).max())
        assert float(np.abs(loaded[name] - trained[name]).max()) <= 1e-5 * scale
    assert sum(n.op_type == "MatMul" for n in stored.graph.node) >= 2 * len(dct_weights)


def test_cli_as_typed_writes_a_smaller_file_and_its_report(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "onnxprune"
    x, y = _digits(300)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    lenet = ROOT / "sample_models" / "lenet5.onnx"
    done = subprocess.run([str(exe), str(lenet), "--method", "fdp", "--sparsity", "0.9",
                           "--data", str(tmp_path / "d.npz"), "--prune-epochs", "1",
                           "--band-ratio", "0.5", "--out", str(out), "--report", str(report),
                           "--quiet"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    written = json.loads(report.read_text())
    assert written["compression"] > 5 and written["storage"]["formats"]["dct"] >= 1
    assert written["storage"]["bytes_per_kept_weight"] <= 6
    assert out.stat().st_size < 0.25 * lenet.stat().st_size
    modelio.session(modelio.load(out))
