"""The admm method: projection, ADMM convergence, progressive stages, sparse output, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, normalized
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune import modelio
from onnxprune.analysis.groups import ChannelGroup, Slice
from onnxprune.errors import UsageError
from onnxprune.methods.admm import (
    AdmmPenalty,
    project,
    project_filters,
    project_global,
    stage_densities,
)
from onnxprune.methods.filters import Filters
from onnxprune.shadow import ShadowModel
from onnxprune.training import data as datasets
from onnxprune.training.loop import TrainConfig, train

LENET = ROOT / "sample_models" / "lenet5.onnx"
DIGITS = ROOT / "sample_models" / "digits.npz"
FAST = dict(iterations=1, retrain_epochs=1, epochs_per_iteration=1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40), st.integers(0, 45))
def test_projection_keeps_the_k_largest_magnitudes(values: list[int], keep: int) -> None:
    w = torch.tensor(values, dtype=torch.float32)
    z = project(w, keep)
    kept = z != 0
    assert int(kept.sum()) <= keep
    assert torch.equal(z[kept], w[kept])  # kept entries are unchanged
    best = torch.sort(w.abs(), descending=True).values[:keep].square().sum()
    assert torch.isclose(z.square().sum(), best)  # no other choice keeps more energy


def test_projection_breaks_ties_by_position() -> None:
    w = torch.tensor([1.0, -2.0, 2.0, 1.0, -1.0])
    assert project(w, 2).tolist() == [0.0, -2.0, 2.0, 0.0, 0.0]
    assert project(w, 3).tolist() == [1.0, -2.0, 2.0, 0.0, 0.0]
    assert torch.equal(project(w, 9), w)


def test_stages_halve_the_density_down_to_the_target() -> None:
    assert stage_densities(0.1) == [0.5, 0.25, 0.125, 0.1]
    assert stage_densities(0.6) == [0.6]
    assert stage_densities(0.01)[-1] == 0.01 and len(stage_densities(0.01)) == 7


def test_admm_drives_weights_onto_the_sparse_set() -> None:
    model = normalized(LENET)
    shadow = ShadowModel(model)
    data = datasets.load_data(DIGITS, datasets.input_spec(model)).subset(np.arange(512))
    names = [n for n in shadow.initializer_names() if shadow.parameter(n).ndim >= 2]
    keep = {n: shadow.parameter(n).numel() // 10 for n in names}
    with torch.no_grad():
        z = {n: project(shadow.parameter(n), k) for n, k in keep.items()}
        u = {n: torch.zeros_like(v) for n, v in z.items()}
    gaps, rho = [], 1.0
    config = TrainConfig(epochs=1, lr=1e-2, quiet=True)
    for _ in range(6):
        train(shadow, data, config, hooks=[AdmmPenalty(z, u, rho)])
        with torch.no_grad():
            for n, k in keep.items():
                w = shadow.parameter(n)
                z[n] = project(w + u[n], k)
                u[n] += w - z[n]
            gaps.append(sum(float((shadow.parameter(n) - z[n]).norm()) for n in names))
        rho *= 1.2
    assert gaps[-1] < gaps[0] * 0.5  # the residual is not monotone, but it falls
    assert np.mean(gaps[3:]) < np.mean(gaps[:3])


def test_weight_level_output_is_sparse_smaller_and_matches_the_shadow(tmp_path: Path) -> None:
    result = onnxprune.prune(LENET, "admm", sparsity=0.8, data=DIGITS, quiet=True, **FAST)
    report = result.report
    assert report["after"]["nonzero_weights"] <= 0.3 * report["before"]["nonzero_weights"]
    assert [s["stage"] for s in report["stages"]] == [1, 2, 3]
    assert report["stages"][-1]["sparsity"] >= 0.7 and "accuracy" in report["stages"][-1]
    assert report["parity_max_abs_diff"] <= 1e-4
    result.save(tmp_path / "small.onnx")
    saved = onnx.load(str(tmp_path / "small.onnx"))
    assert _sparsely_stored(saved) >= 2 and report["storage"]["formats"]["compact"] >= 2
    # 80 % sparse at about 5 bytes per non-zero; first and last layers are kept 3x denser
    assert (tmp_path / "small.onnx").stat().st_size < 0.7 * LENET.stat().st_size
    feeds = modelio.random_inputs(result.model, batch=3)
    opened = [modelio.session(m, optimize=True) for m in (saved, result.model)]  # weights folded
    np.testing.assert_allclose(*(modelio.run_session(o, feeds)[0] for o in opened),
                               rtol=0, atol=1e-6)
    shadow = ShadowModel(result.model).eval()
    with torch.no_grad():
        expected = shadow(torch.from_numpy(feeds["input"])).numpy()
    assert np.abs(modelio.run(saved, feeds)[0] - expected).max() <= 1e-4


def _sparsely_stored(model: onnx.ModelProto) -> int:
    """How many weights ``model`` stores sparsely: ONNX sparse or compact (a ScatterElements)."""
    return len(model.graph.sparse_initializer) + sum(n.op_type == "ScatterElements"
                                                     for n in model.graph.node)


def test_tolerance_stops_the_progression() -> None:
    result = onnxprune.prune(LENET, "admm", sparsity=0.99, data=DIGITS, tolerance=0.0,
                             quiet=True, **FAST)
    stages = result.report["stages"]
    assert stages[-1].get("kept") is False
    kept = [s for s in stages if s.get("kept", True)]
    assert result.report["after"]["nonzero_weights"] > 0.01 * result.report["before"][
        "nonzero_weights"] or not kept


@pytest.mark.parametrize(("suffix", "dump"), [
    (".json", json.dumps), (".yaml", lambda m: "".join(f"{k}: {v}\n" for k, v in m.items()))])
def test_layer_sparsity_map(tmp_path: Path, suffix: str, dump) -> None:
    shadow = ShadowModel(normalized(LENET))
    name = [n for n in shadow.initializer_names() if shadow.parameter(n).ndim >= 2][1]
    mapping = tmp_path / f"layers{suffix}"
    mapping.write_text(dump({name: 0.5}))
    result = onnxprune.prune(LENET, "admm", sparsity=0.9, layer_sparsity=mapping, data=DIGITS,
                             quiet=True, **FAST)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert 0.45 <= float(np.count_nonzero(weights[name])) / weights[name].size <= 0.55
    mapping.write_text(dump({"no_such_weight": 0.5}))
    with pytest.raises(UsageError, match="no_such_weight"):
        onnxprune.prune(LENET, "admm", layer_sparsity=mapping, data=DIGITS, quiet=True, **FAST)


@pytest.mark.parametrize("text", ["- 0.5\n- 0.9\n", "{a: [1, 2]}", "{: oops"])
def test_layer_sparsity_file_that_is_not_a_map_is_refused(tmp_path: Path, text: str) -> None:
    mapping = tmp_path / "layers.yaml"
    mapping.write_text(text)
    with pytest.raises(UsageError, match="layers.yaml: --layer-sparsity needs"):
        onnxprune.prune(LENET, "admm", layer_sparsity=mapping, data=DIGITS, quiet=True, **FAST)
    with pytest.raises(UsageError, match="--layer-sparsity needs"):
        onnxprune.prune(LENET, "admm", layer_sparsity="unifrom", data=DIGITS, quiet=True,
                        **FAST)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=12), min_size=1,
                max_size=4), st.integers(0, 50))
def test_global_projection_keeps_the_largest_over_all_layers(layers, keep: int) -> None:
    values = {f"w{i}": torch.tensor(v) for i, v in enumerate(layers)}
    out = project_global(values, keep)
    flat, z = torch.cat(list(values.values())), torch.cat([out[n] for n in values])
    assert int((z != 0).sum()) <= keep
    assert all(torch.equal(out[n][out[n] != 0], values[n][out[n] != 0]) for n in values)
    dropped = flat[(z == 0) & (flat != 0)].abs()
    if dropped.numel() and (z != 0).any():
        assert float(dropped.max()) <= float(z[z != 0].abs().min())  # one threshold for all


def test_global_rule_reaches_the_overall_sparsity_with_uneven_layers() -> None:
    result = onnxprune.prune(LENET, "admm", sparsity=0.9, layer_sparsity="global", data=DIGITS,
                             quiet=True, **FAST)
    weights = [onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer]
    weights = [w for w in weights if w.ndim >= 2]
    total, nonzero = sum(w.size for w in weights), sum(np.count_nonzero(w) for w in weights)
    assert nonzero <= 0.1 * total + 1
    densities = [np.count_nonzero(w) / w.size for w in weights]
    assert max(densities) > 2 * min(densities)  # the ranking, not a uniform rate, decided


def test_filter_projection_keeps_whole_channels_across_a_group() -> None:
    a = torch.tensor([[3.0, 0.0], [0.1, 0.1], [1.0, 1.0]])  # channels on axis 0
    b = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 1.0, 0.0]]).T  # channels on axis 1
    group = ChannelGroup("g", 3, (Slice("a", "n1", 0), Slice("b", "n2", 1),
                                  Slice("bias", "n1", 0, bias=True)))
    out = project_filters({"a": a, "b": b}, Filters([group]), {"g": 2})
    # channel norms across both: 3, 5.01, 1.73 -> channels 0 and 1 stay, in both tensors
    assert torch.equal(out["a"], torch.tensor([[3.0, 0.0], [0.1, 0.1], [0.0, 0.0]]))
    assert torch.equal(out["b"][:, 2], torch.zeros(3)) and torch.equal(out["b"][:, :2], b[:, :2])


@pytest.mark.parametrize("round_to", [8, 16])
def test_filter_level_rounds_whole_blocks_and_a_missed_budget_says_why(round_to: int) -> None:
    resnet = ROOT / "sample_models" / "resnet.onnx"
    met = onnxprune.prune(resnet, "admm", granularity="filter", max_flops=0.5,
                          round_to=round_to, data=DIGITS, quiet=True, **FAST).report
    assert met["budget_met"] is True and met["stopped"] == "all 3 stages ran"
    sizes = {g.id: g.size for g in onnxprune.api.inspect(resnet).groups}
    assert met["plan"] and any(kept < sizes[gid] for gid, kept in met["plan"].items())
    for gid, kept in met["plan"].items():
        assert kept % round_to == 0 or kept == sizes[gid], (gid, kept)
    missed = onnxprune.prune(resnet, "admm", granularity="filter", max_flops=0.3, tolerance=0.0,
                             round_to=round_to, data=DIGITS, quiet=True, **FAST).report
    kept = missed["after"]["flops"] / missed["before"]["flops"]
    assert missed["budget_met"] is False and kept > 0.3
    assert missed["method_warnings"][0] == (
        f"admm did not meet the budget: the model kept {kept:.3f} of the FLOPs and "
        f"{missed['after']['params'] / missed['before']['params']:.3f} of the parameters "
        f"({missed['stopped']})") and missed["stopped"].endswith("fell more than 0.0 points")


def test_filter_level_removes_channels_within_the_budget(tmp_path: Path) -> None:
    result = onnxprune.prune(ROOT / "sample_models" / "resnet.onnx", "admm",
                             granularity="filter", max_flops=0.5, round_to=8, data=DIGITS,
                             quiet=True, **FAST)
    report = result.report
    assert report["after"]["flops"] <= 0.5 * report["before"]["flops"]
    assert [s["stage"] for s in report["stages"]] == [1, 2, 3]
    assert report["stages"][-1]["flops_kept"] == pytest.approx(
        report["after"]["flops"] / report["before"]["flops"], abs=1e-3)
    assert report["after"]["accuracy"] == pytest.approx(report["stages"][-1]["accuracy"],
                                                        abs=0.02)
    assert report["parity_max_abs_diff"] <= 1e-4
    assert all(v % 8 == 0 for v in report["plan"].values())


def test_bad_options() -> None:
    with pytest.raises(UsageError, match="granularity"):
        onnxprune.prune(LENET, "admm", granularity="channel", quiet=True)
    with pytest.raises(UsageError, match="--max-flops"):
        onnxprune.prune(LENET, "admm", granularity="filter", data=DIGITS, quiet=True)
    with pytest.raises(UsageError, match="sparsity"):
        onnxprune.prune(LENET, "admm", sparsity=1.5, quiet=True)


def test_cli_command_as_typed_without_data(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "onnxprune"
    out = tmp_path / "small.onnx"
    done = subprocess.run([str(exe), str(LENET), "--method", "admm", "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr and "synthetic" in done.stderr
    assert out.stat().st_size < 0.5 * LENET.stat().st_size
    assert _sparsely_stored(onnx.load(str(out)))
    modelio.session(onnx.load(str(out)))



def test_plot_draws_the_stages(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from onnxprune.plot import plot_stages

    stages = [{"stage": 1, "compression": 2.0, "accuracy": 0.97},
              {"stage": 2, "compression": 4.1, "accuracy": 0.95}]
    plot_stages(stages, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UsageError, match="no validation data"):
        plot_stages([{"stage": 1, "compression": 2.0}], tmp_path / "none.png")


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxprune.plot import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"pip install 'onnxprune\[plot\]'"):
        require_matplotlib()


def test_cli_layer_sparsity_rules_and_a_bad_one(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "onnxprune"
    out = tmp_path / "small.onnx"
    args = [str(exe), str(LENET), "--method", "admm", "--sparsity", "0.9", "--data", str(DIGITS),
            "--quiet", "--out", str(out)]
    done = subprocess.run([*args, "--layer-sparsity", "global"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    loaded = modelio.load(out)  # sparse initializers come back dense
    weights = [w for w in map(onnx.numpy_helper.to_array, loaded.graph.initializer) if w.ndim >= 2]
    assert sum(np.count_nonzero(w) for w in weights) <= 0.1 * sum(w.size for w in weights) + 1
    out.unlink()
    done = subprocess.run([*args, "--layer-sparsity", "unifrom"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and "unifrom: --layer-sparsity needs" in done.stderr
    assert done.stderr.count("\n") == 1 and not out.exists()
