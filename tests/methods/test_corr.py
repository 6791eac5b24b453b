"""Filter correlation: pair selection, the term, the fold, and whole runs on the samples."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, build, groups_of, max_diff, normalized
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune import api, modelio
from onnxprune.errors import UsageError
from onnxprune.methods.corr import CorrOptions
from onnxprune.methods.correlation import (
    CorrelationTerm,
    apply_folds,
    correlation_matrix,
    fit_folds,
    pair_correlations,
    rank_pairs,
)
from onnxprune.methods.filters import Filters
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel

RESNET = ROOT / "sample_models" / "resnet.onnx"
DIGITS = ROOT / "sample_models" / "digits.npz"
FAST = dict(rounds=1, epochs_per_round=1, finetune_epochs=0, final_epochs=0, pairs=0.2)


def _digits(n: int, labelled: bool = True) -> tuple[np.ndarray, ...]:
    d = np.load(DIGITS)
    pick = np.random.default_rng(0).choice(len(d["x"]), n, replace=False)
    return (d["x"][pick], d["y"][pick]) if labelled else (d["x"][pick],)


# -- pairs -------------------------------------------------------------------------------------
def test_pairs_are_disjoint_and_most_correlated_first() -> None:
    rho = torch.tensor([[1.0, 0.9, 0.1, 0.2, 0.0],
                        [0.9, 1.0, 0.8, 0.3, 0.0],
                        [0.1, 0.8, 1.0, 0.7, 0.6],
                        [0.2, 0.3, 0.7, 1.0, 0.5],
                        [0.0, 0.0, 0.6, 0.5, 1.0]])
    channels = [0, 2, 3, 5, 7]  # the live channels of a group of 8
    got = rank_pairs(rho, channels, 8)
    assert [(a, b) for a, b, _ in got] == [(0, 2), (3, 5)]  # (2, 3) at 0.8 would reuse 2
    assert [c for _, _, c in got] == pytest.approx([0.9, 0.7])
    parts = rank_pairs(rho, channels, 8, parts=2)  # parts {0..3} and {4..7}: pairs stay inside
    assert [(a, b) for a, b, _ in parts] == [(0, 2), (5, 7)]


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31 - 1), st.sampled_from([1, 2]))
def test_greedy_pairs_hold_their_promises(n: int, seed: int, parts: int) -> None:
    size = 2 * n if parts == 2 else n
    rng = np.random.default_rng(seed)
    channels = np.sort(rng.choice(size, n, replace=False))
    m = rng.uniform(0, 1, (n, n))
    rho = torch.from_numpy((m + m.T) / 2)
    got = rank_pairs(rho, channels.tolist(), size, parts)
    used = [c for a, b, _ in got for c in (a, b)]
    assert len(used) == len(set(used)) and set(used) <= set(channels.tolist())
    width = size // parts
    assert all(a // width == b // width for a, b, _ in got)
    for p in range(parts):  # within a part: most correlated first, and nothing left to pair
        mine = [c for a, _, c in got if a // width == p]
        assert mine == sorted(mine, reverse=True)
    if parts == 1:
        left = [c for c in channels.tolist() if c not in used]
        assert len(left) <= 1


def test_pairs_never_leave_their_group() -> None:
    model = normalized(RESNET)
    filters = Filters(groups_of(model))
    values = {n: torch.from_numpy(v) for n, v in ShadowModel(model).snapshot().items()}
    for gid, group in filters.groups.items():
        live = torch.arange(0, group.size, 2)  # every other channel is alive
        rho = correlation_matrix(filters, values, gid, live)
        assert rho.shape == (len(live), len(live))
        assert torch.allclose(torch.diagonal(rho), torch.ones(len(live), dtype=rho.dtype))
        got = rank_pairs(rho, live.tolist(), group.size, group.blocks)
        assert got and {c for a, b, _ in got for c in (a, b)} <= set(live.tolist())


# -- the term ----------------------------------------------------------------------------------
CONV = build("c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)\n"
             "r = Relu (c)\ny = Conv (r, w2, b2)",
             {"w": (8, 4, 3, 3), "b": (8,), "w2": (3, 8, 1, 1), "b2": (3,)},
             outputs="float[N,3,8,8] y")


@pytest.mark.parametrize("form", ["linear", "exp"])
def test_term_gradient_raises_the_chosen_pairs_correlation(form: str) -> None:
    shadow = ShadowModel(CONV)
    filters = Filters(groups_of(CONV))
    (gid,) = [g for g in filters.groups if filters.slices[g][0].initializer == "w"]
    pairs = torch.tensor([[0, 1], [2, 3]])
    others = torch.tensor([[4, 5], [6, 7]])
    values = {n: shadow.parameter(n).detach() for n in filters.names()}
    term = CorrelationTerm(filters, {gid: pairs}, form, strength=1.0, reach=1.0, values=values)
    before = pair_correlations(filters, values, gid, pairs).abs()
    rest = pair_correlations(filters, values, gid, others).abs()
    optimiser = torch.optim.SGD(shadow.parameters(), lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        term.extra_loss(shadow).backward()
        optimiser.step()
    values = {n: shadow.parameter(n).detach() for n in filters.names()}
    after = pair_correlations(filters, values, gid, pairs).abs()
    assert bool((after > before + 0.2).all()), (before, after)
    assert torch.allclose(pair_correlations(filters, values, gid, others).abs(), rest)


# -- the fold ----------------------------------------------------------------------------------
CONSUMERS = {
    "conv": ("y = Conv (c, w2, b2)", {"w2": (3, 4, 1, 1), "b2": (3,)}, "float[N,3,6,6] y"),
    "flatten_gemm": ("f = Flatten (c)\ny = Gemm <transB = 1> (f, w2, b2)",
                     {"w2": (3, 144), "b2": (3,)}, "float[N,3] y"),
}


@pytest.mark.parametrize("consumer", list(CONSUMERS))
def test_fold_of_proportional_filters_is_exact(consumer: str) -> None:
    """Filter 1 = 2.5 x filter 0 (bias shifted): dropping it with the fold costs float error."""
    body, weights, outputs = CONSUMERS[consumer]
    model = build("c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)\n" + body,
                  {"w": (4, 2, 3, 3), "b": (4,), **weights}, inputs="float[N,2,6,6] x",
                  outputs=outputs)
    tensors = {t.name: t for t in model.graph.initializer}
    w = onnx.numpy_helper.to_array(tensors["w"]).copy()
    b = onnx.numpy_helper.to_array(tensors["b"]).copy()
    w[1], b[1] = 2.5 * w[0], 2.5 * b[0] + 0.3
    model = api.normalize(modelio.with_initializers(model, {"w": w, "b": b}))[0]
    graph = modelio.to_graph(model)
    groups = {g.id: g for g in groups_of(model) if not g.blocked}
    (gid,) = [g for g in groups if groups[g].producers[0].initializer == "w"]
    rng = np.random.default_rng(1)
    batches = [torch.from_numpy(rng.standard_normal((8, 2, 6, 6)).astype(np.float32))
               for _ in range(2)]
    feeds = {"x": rng.standard_normal((4, 2, 6, 6)).astype(np.float32)}
    want = modelio.run(model, feeds)
    plan = Plan({gid: (0, 2, 3)})

    def dropped(fold: bool) -> list[np.ndarray]:
        shadow = ShadowModel(model)
        if fold:
            folds, skipped = fit_folds(shadow, graph, groups, {gid: [(0, 1)]}, batches)
            assert len(folds) == 1 and skipped == 0
            assert float(folds[0].s[0]) == pytest.approx(2.5, rel=1e-4)
            apply_folds(shadow, folds)
        pruned = api.apply_plan(shadow.export(), plan)
        return modelio.run(pruned, feeds)

    assert max_diff(want, dropped(fold=True)) <= 1e-4
    assert max_diff(want, dropped(fold=False)) > 1e-2  # the test can fail


def test_fold_leaves_masked_output_channels_of_the_consumer_alone() -> None:
    """A consumer whose output channel 2 is already masked: the fold edits no part of it.

    Its bias is what the masked channel emits; behind a re-inserted BatchNorm whose variance
    collapsed on the constant channel, a change there is amplified by 1/sqrt(eps).
    """
    body, weights, outputs = CONSUMERS["conv"]
    model = build("c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)\n" + body,
                  {"w": (4, 2, 3, 3), "b": (4,), **weights}, inputs="float[N,2,6,6] x",
                  outputs=outputs)
    model = api.normalize(model)[0]
    graph = modelio.to_graph(model)
    groups = {g.id: g for g in groups_of(model) if not g.blocked}
    (gid,) = [g for g in groups if groups[g].producers[0].initializer == "w"]
    shadow = ShadowModel(model)
    mask = torch.ones(3, 4, 1, 1)
    mask[2] = 0
    shadow.set_mask("w2", mask)
    rng = np.random.default_rng(2)
    batches = [torch.from_numpy(rng.standard_normal((8, 2, 6, 6)).astype(np.float32))]
    bias = shadow.parameter("b2").detach().clone()
    folds, _ = fit_folds(shadow, graph, groups, {gid: [(0, 1)]}, batches)
    apply_folds(shadow, folds)
    after = shadow.parameter("b2").detach()
    assert after[2] == bias[2]
    assert not torch.equal(after[:2], bias[:2])  # the live outputs did take the fold


# -- whole runs --------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", ["vgg_bn", "resnet", "mobilenetv2", "inception"])
def test_one_round_keeps_the_graph_core_invariants(sample: str) -> None:
    """Plain, residual, depthwise and Concat groups lose filters; the written model holds."""
    result = onnxprune.prune(ROOT / "sample_models" / f"{sample}.onnx", "corr",
                             data=_digits(300), round_to=1, tolerance=100.0, quiet=True,
                             **{**FAST, "fold": True})
    report = result.report
    (row,) = report["rounds"]
    assert row["removed"] == sum(row["pairs"].values()) > 0
    assert row["folded_consumers"] > 0
    assert row["correlation_after"] > row["correlation_before"]
    assert report["after"]["params"] < report["before"]["params"]
    assert report["parity_max_abs_diff"] <= 1e-4
    assert all(1 <= report["plan"][gid] == w for gid, w in row["widths"].items())
    for gid, n in row["pairs"].items():
        assert row["widths"][gid] == report["original_widths"][gid] - n
    feeds = modelio.random_inputs(result.model, batch=2)
    assert np.isfinite(modelio.run(result.model, feeds)[0]).all()


@pytest.mark.parametrize(("round_to", "rounds"), [(8, 2), (1, 1)])
def test_budget_is_met_and_every_round_changes_the_written_widths(round_to: int,
                                                                   rounds: int) -> None:
    result = onnxprune.prune(RESNET, "corr", data=_digits(300), round_to=round_to,
                             max_flops=0.6, quiet=True, **{**FAST, "rounds": rounds})
    report = result.report
    assert report["budget_met"] is True and report["stopped"] == "budget met"
    assert report["after"]["flops"] <= 0.6 * report["before"]["flops"]
    assert report["method_warnings"] == []
    widths = [dict(report["original_widths"])] + [r["widths"] for r in report["rounds"]]
    for earlier, later in zip(widths, widths[1:], strict=False):
        assert later != earlier  # every round changes what is written
        for gid, w in later.items():
            assert w == report["original_widths"][gid] or w % round_to == 0
    assert report["plan"] == widths[-1]


def test_an_unreachable_budget_is_refused_before_training() -> None:
    with pytest.raises(UsageError, match="the budget cannot be met"):
        onnxprune.prune(ROOT / "sample_models" / "lenet5.onnx", "corr", data=_digits(100),
                        round_to=16, max_flops=0.25, quiet=True)


def test_unlabelled_data_and_a_missed_budget_say_so(tmp_path: Path) -> None:
    """Agreement is the quality; at tolerance 0 a lossy first round leaves the original."""
    np.savez(tmp_path / "x.npz", x=_digits(300, labelled=False)[0])
    result = onnxprune.prune(RESNET, "corr", tolerance=0.0, max_flops=0.5, round_to=1,
                             data=tmp_path / "x.npz", quiet=True, **{**FAST, "fold": False})
    report = result.report
    assert report["tolerance_on"] == "agreement" and "agreement" in report["rounds"][0]
    assert report["rounds"][0]["flops_kept"] <= 0.5  # the only round cut to the budget
    why = "round 1 fell more than 0.0 points"
    assert report["stopped"] == why and report["budget_met"] is False
    assert report["method_warnings"] == [
        f"corr did not meet the budget: the model kept 1.000 of the FLOPs and 1.000 of the "
        f"parameters ({why})", f"corr removed no filter ({why})",
        "the tolerance of 0.0 points is 0 of the 30 validation samples: too few to judge it "
        "on; give a larger --val-data"]
    assert report["after"]["params"] == report["before"]["params"]


def test_refuses_without_data_and_bad_options() -> None:
    with pytest.raises(UsageError, match="needs --data"):
        onnxprune.prune(RESNET, "corr", quiet=True)
    for bad in ({"pairs": 0.0}, {"pairs": 1.5}, {"term": "cubic"}, {"tolerance": -1.0},
                {"rounds": 0}, {"strength": float("nan")}):
        with pytest.raises(UsageError):
            CorrOptions(**bad)


def test_cli_writes_the_model_report_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    exe = Path(sys.executable).parent / "onnxprune"
    np.savez(tmp_path / "d.npz", **dict(zip(("x", "y"), _digits(300), strict=True)))
    out, report, curve = tmp_path / "small.onnx", tmp_path / "r.json", tmp_path / "c.png"
    done = subprocess.run([str(exe), str(RESNET), "--method", "corr", "--tolerance", "0",
                           "--data", str(tmp_path / "d.npz"), "--rounds", "1", "--pairs", "2",
                           "--finetune-epochs", "0", "--no-fold", "--round-to", "1",
                           "--out", str(out), "--report", str(report), "--plot", str(curve),
                           "--quiet"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    written = json.loads(report.read_text())
    assert written["fold"] is False and written["rounds"][0]["pairs"]
    assert set(written["rounds"][0]["pairs"].values()) == {2}
    assert written["budget_met"] is None and written["stopped"].startswith("round 1 fell")
    assert "warning: corr removed no filter" in done.stderr  # a lossy round is not silent
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    modelio.session(modelio.load(out))


def test_cli_help_states_the_real_defaults() -> None:
    exe = Path(sys.executable).parent / "onnxprune"
    text = " ".join(subprocess.run([str(exe), "prune", "--help"], capture_output=True,
                                   text=True, check=True).stdout.split())
    for field in fields(CorrOptions):
        if field.name in ("final_epochs", "tolerance", "fold"):  # API only / said in words
            continue
        flag = f"--{field.name.replace('_', '-')}"
        section = text[text.index(flag):].split(" --", 1)[0]
        assert "corr: " in section and f"(default {field.default})" in section, section
    assert "corr: fold each dropped filter" in text and "0.5 without a budget" in text
