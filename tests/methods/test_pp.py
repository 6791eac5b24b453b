"""Play and Prune: the rate controller alone, and whole runs on a sample model with digits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import onnxprune
from onnxprune import modelio
from onnxprune.errors import BudgetError, UsageError
from onnxprune.methods.pp import Controller

RESNET = ROOT / "sample_models" / "resnet.onnx"
DIGITS = ROOT / "sample_models" / "digits.npz"
# strong pruning and a wide tolerance, so that two short rounds on digits both cut and recover
FAST = dict(rounds=2, epochs_per_round=1, final_epochs=1, strength=3.0, threshold=0.3,
            candidates=0.3)


def _digits(n: int, labelled: bool = True) -> tuple[np.ndarray, ...]:
    d = np.load(DIGITS)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(d["x"]), n, replace=False)
    return (d["x"][pick], d["y"][pick]) if labelled else (d["x"][pick],)


def test_controller_follows_a_scripted_accuracy_sequence() -> None:
    c = Controller(tolerance=0.01, strength=2.0, threshold=0.4, patience=2)
    first = c.first()
    assert first.prune and (first.strength, first.threshold) == (2.0, 0.4)
    half = c.step(0.005)  # half the tolerance left: half as hard
    assert half.prune and half.strength == pytest.approx(1.0)
    assert half.threshold == pytest.approx(0.2)
    edge = c.step(0.0099)  # almost none left: a quarter, not a stall
    assert edge.prune and edge.strength == pytest.approx(0.5)
    better = c.step(-0.01)  # accuracy above the original: full strength again, not more
    assert better.strength == pytest.approx(2.0)
    for _ in range(2):  # past the tolerance: pause pruning and recover
        pause = c.step(0.02)
        assert not pause.prune and not pause.stop and pause.strength == 0.0
    resumed = c.step(0.008)  # recovered within the tolerance: pruning resumes, patience resets
    assert resumed.prune and c.recovering == 0
    decisions = [c.step(0.03) for _ in range(3)]
    assert [d.stop for d in decisions] == [False, False, True]  # recovery failed: stop


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 0.05), st.floats(-0.05, 0.1), st.floats(-0.05, 0.1))
def test_controller_pushes_less_as_the_tolerance_runs_out(tolerance: float, a: float,
                                                           b: float) -> None:
    low, high = sorted((a, b))
    x = Controller(tolerance, 1.0, 0.5, patience=1).step(low)
    y = Controller(tolerance, 1.0, 0.5, patience=1).step(high)
    assert x.strength >= y.strength and x.threshold >= y.threshold
    assert x.prune == (low <= tolerance) and y.prune == (high <= tolerance)
    assert 0 <= y.strength <= x.strength <= 1.0


@pytest.mark.parametrize("round_to", [1, 4])
def test_run_stays_within_the_tolerance_and_cuts_flops(round_to: int) -> None:
    tolerance = 10.0
    result = onnxprune.prune(RESNET, "pp", tolerance=tolerance, data=_digits(1200),
                             round_to=round_to, quiet=True, margin=0.0, **FAST)
    report = result.report
    assert report["after"]["accuracy"] >= report["before"]["accuracy"] - tolerance / 100
    assert report["after"]["flops"] < report["before"]["flops"]
    assert report["tolerance_on"] == "accuracy"
    assert report["parity_max_abs_diff"] <= 1e-4
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1)) and rounds
    assert {"flops_kept", "accuracy", "strength", "threshold", "widths", "seconds"} <= set(
        rounds[0])
    for gid, kept in report["plan"].items():  # every group keeps a rounded count
        size = report["original_widths"][gid]
        assert 1 <= kept <= size and (kept % round_to == 0 or kept == size)
    within = [r["flops_kept"] for r in rounds
              if report["baseline"]["accuracy"] - r["accuracy"] <= tolerance / 100]
    assert report["final"]["flops_kept"] == min(within, default=1.0)  # the smallest within


def test_budget_stops_the_rounds_early() -> None:
    result = onnxprune.prune(RESNET, "pp", tolerance=50.0, max_flops=0.9, data=_digits(600),
                             round_to=1, quiet=True, **{**FAST, "rounds": 6,
                                                        "final_epochs": 0})
    report = result.report
    base = report["baseline"]["accuracy"]
    done = [r["flops_kept"] <= 0.9 and r["drop_judged"] <= 0.5 for r in report["rounds"]]
    assert all(r["drop_judged"] <= base - r["accuracy"] for r in report["rounds"])  # margin 1
    assert done[-1] and not any(done[:-1]) and len(done) < 6  # stopped once it was met
    assert report["stopped"] == "budget met" and report["budget_met"] is True
    assert report["after"]["flops"] <= 0.9 * report["before"]["flops"]


@pytest.mark.parametrize(("sample", "round_to", "max_flops"), [
    ("resnet", 8, 0.5), ("resnet", 16, 0.6), ("vgg_bn", 16, 0.4), ("resnext", 4, 0.5)])
def test_every_pruning_round_changes_the_written_widths(sample: str, round_to: int,
                                                        max_flops: float) -> None:
    """Whole blocks: each round's widths are writable, differ from the last, and end in plan."""
    result = onnxprune.prune(ROOT / "sample_models" / f"{sample}.onnx", "pp", data=_digits(300),
                             round_to=round_to, max_flops=max_flops, quiet=True,
                             **{**FAST, "rounds": 4, "budget_rounds": 2, "final_epochs": 0})
    report = result.report
    widths = [dict(report["original_widths"])] + [r["widths"] for r in report["rounds"]]
    for earlier, later, row in zip(widths[:-1], widths[1:], report["rounds"], strict=True):
        assert (later != earlier) == (row["state"] == "prune")
        for gid, w in later.items():
            assert w == report["original_widths"][gid] or w % round_to == 0, (gid, w)
    assert report["plan"] == widths[-1]
    assert report["tolerance"] is None and report["stopped"] == "budget met"
    assert report["budget_met"] is True and report["method_warnings"] == []
    assert report["after"]["flops"] <= max_flops * report["before"]["flops"]
    assert len(report["rounds"]) <= 2  # the budget's share is cut every round


def test_a_budget_the_tolerance_stops_short_of_says_so(tmp_path: Path) -> None:
    """At tolerance 0 the first lossy round ends the run above the budget: warned, or --strict."""
    options = dict(tolerance=0.0, max_flops=0.3, data=_digits(300), round_to=1, quiet=True,
                   margin=0.0, **{**FAST, "final_epochs": 0, "patience": 0})
    report = onnxprune.prune(RESNET, "pp", **options).report
    assert report["budget_met"] is False and report["stopped"].startswith("round 1 fell")
    kept = report["after"]["flops"] / report["before"]["flops"]
    assert kept > 0.3 and report["method_warnings"][0].startswith(
        f"pp did not meet the budget: the model kept {kept:.3f} of the FLOPs")
    assert "(round 1 fell more than 0.0 points" in report["method_warnings"][0]
    assert report["method_warnings"][-1].startswith(  # 30 samples: the tolerance is noise
        "the tolerance of 0.0 points is 0 of the 30 validation samples, on which the "
        "original scores 100.00 % (0 missed): it has likely seen them")
    with pytest.raises(BudgetError, match="did not meet the budget.*--strict"):
        onnxprune.prune(RESNET, "pp", strict=True, **options)
    exe = Path(sys.executable).parent / "onnxprune"
    np.savez(tmp_path / "d.npz", **dict(zip(("x", "y"), _digits(300), strict=True)))
    for strict, code in ((False, 0), (True, 3)):
        out, said = tmp_path / f"{strict}.onnx", tmp_path / f"{strict}.json"
        done = subprocess.run(
            [str(exe), str(RESNET), "--method", "pp", "--tolerance", "0", "--max-flops", "0.3",
             "--data", str(tmp_path / "d.npz"), "--round-to", "1", "--rounds", "2", "--quiet",
             "--strength", "3", "--candidates", "0.3", "--margin", "0", "--out", str(out),
             "--report", str(said),
             *(["--strict"] if strict else [])], capture_output=True, text=True, check=False)
        assert done.returncode == code, done.stderr
        assert out.exists() != strict and json.loads(said.read_text())["budget_met"] is False
        lines = done.stderr.strip().splitlines()
        assert "did not meet the budget" in lines[0] and (len(lines) == 1) == strict
        assert all(line.startswith("onnxprune: warning: ") for line in lines) != strict


def test_a_margin_forgives_standard_errors_of_the_drop() -> None:
    """Round 1 is the same run either way; the margin only lowers the drop it is judged on."""
    rows = [onnxprune.prune(RESNET, "pp", tolerance=1.0, margin=margin, data=_digits(400),
                            round_to=1, quiet=True, **{**FAST, "rounds": 1, "final_epochs": 0}
                            ).report for margin in (0.0, 2.0)]
    plain, forgiven = (r["rounds"][0] for r in rows)
    assert plain["widths"] == forgiven["widths"] and plain["accuracy"] == forgiven["accuracy"]
    assert plain["drop_judged"] == pytest.approx(rows[0]["baseline"]["accuracy"]
                                                 - plain["accuracy"], abs=1e-6)
    n = 40  # the validation split of 400 samples
    gap = plain["drop_judged"] - forgiven["drop_judged"]
    assert gap >= 0 and (gap * n / 2) ** 2 == pytest.approx(round((gap * n / 2) ** 2), abs=1e-3)


def test_unlabelled_data_measures_agreement(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=_digits(600, labelled=False)[0])
    result = onnxprune.prune(RESNET, "pp", tolerance=5.0, data=tmp_path / "x.npz", round_to=1,
                             quiet=True, rounds=1, final_epochs=0)
    assert result.report["tolerance_on"] == "agreement"
    assert "agreement" in result.report["rounds"][0]
    assert result.report["after"]["agreement"] >= 0.95


def test_refuses_without_data_and_bad_options() -> None:
    with pytest.raises(UsageError, match="needs --data"):
        onnxprune.prune(RESNET, "pp", quiet=True)
    for bad in ({"candidates": 0.0}, {"tolerance": -1.0}, {"rounds": 0}):
        with pytest.raises(UsageError):
            onnxprune.prune(RESNET, "pp", data=_digits(100), quiet=True, **bad)


def test_cli_writes_the_model_report_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    exe = Path(sys.executable).parent / "onnxprune"
    np.savez(tmp_path / "d.npz", **dict(zip(("x", "y"), _digits(500), strict=True)))
    out, report, curve = tmp_path / "small.onnx", tmp_path / "r.json", tmp_path / "c.png"
    done = subprocess.run([str(exe), str(RESNET), "--method", "pp", "--tolerance", "3",
                           "--data", str(tmp_path / "d.npz"), "--rounds", "1",
                           "--round-to", "1", "--out", str(out), "--report", str(report),
                           "--plot", str(curve), "--quiet"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(report.read_text())["rounds"][0]["round"] == 1
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    modelio.session(modelio.load(out))
    missing = tmp_path / "none.onnx"
    done = subprocess.run([str(exe), str(RESNET), "--method", "pp", "--out", str(missing)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "needs --data" in done.stderr and not missing.exists()
    assert done.stderr.count("\n") == 1


def test_plot_rounds_needs_quality_to_draw(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from onnxprune.plot import plot_rounds

    report = {"rounds": [{"round": i, "accuracy": 0.98 - 0.01 * i, "flops_kept": 1 - 0.1 * i}
                         for i in (1, 2, 3)],
              "baseline": {"accuracy": 0.99}, "tolerance": 0.5,
              "original_widths": {"a": 32, "b": 64}, "plan": {"a": 16}}
    plot_rounds(report, tmp_path / "rounds.png")
    assert (tmp_path / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for r in report["rounds"]:
        del r["accuracy"]
    with pytest.raises(UsageError, match="no validation data"):
        plot_rounds(report, tmp_path / "none.png")


@pytest.mark.parametrize(("sample", "digits"), [
    ("vgg_bn", 300), ("mobilenetv2", 300), ("inception", 300), ("mlp", 1500)])
def test_one_round_prunes_every_kind_of_group(sample: str, digits: int) -> None:
    """Depthwise, Concat and fully connected groups lose filters and the graph core holds."""
    path = ROOT / "sample_models" / f"{sample}.onnx"
    result = onnxprune.prune(path, "pp", tolerance=100.0, data=_digits(digits), round_to=1,
                             quiet=True, **{**FAST, "rounds": 1, "final_epochs": 0})
    report = result.report
    assert report["rounds"][0]["removed"] > 0
    assert report["after"]["params"] < report["before"]["params"]
    assert report["parity_max_abs_diff"] <= 1e-4
    widths = report["rounds"][0]["widths"]
    assert all(1 <= report["plan"][gid] == w for gid, w in widths.items())
    feeds = modelio.random_inputs(result.model, batch=2)
    assert np.isfinite(modelio.run(result.model, feeds)[0]).all()


def test_cli_help_states_the_real_defaults() -> None:
    """Each controller option is on the command line, its help quoting PpOptions' default."""
    from dataclasses import fields

    from onnxprune.methods.pp import PpOptions

    exe = Path(sys.executable).parent / "onnxprune"
    text = " ".join(subprocess.run([str(exe), "prune", "--help"], capture_output=True,
                                   text=True, check=True).stdout.split())
    for field in fields(PpOptions):
        if field.name in ("patience", "final_epochs", "tolerance", "strength"):  # in words
            assert field.name != "strength" or "(default 1.0 to a tolerance, 3.0 to a " \
                "budget)" in text
            continue
        flag = f"--{field.name.replace('_', '-')}"
        assert flag in text
        section = text[text.index(flag):].split(" --", 1)[0]
        assert f"default {field.default})" in section, (flag, section)
