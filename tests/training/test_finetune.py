"""Pruning with retraining through the API and the CLI, and `onnxprune eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, normalized

import onnxprune
from onnxprune import modelio
from onnxprune.training import data as datasets
from onnxprune.training.evaluation import evaluate
from onnxprune.training.finetune import finetune
from onnxprune.training.loop import TrainConfig
from onnxprune.training.prepare import SYNTHETIC_WARNING

DIGITS = ROOT / "sample_models" / "digits.npz"
LENET = ROOT / "sample_models" / "lenet5.onnx"
EXE = Path(sys.executable).parent / "onnxprune"


def test_magnitude_with_finetuning_reports_accuracy_and_parity() -> None:
    result = onnxprune.prune(LENET, "magnitude", max_flops=0.5, round_to=1, data=DIGITS,
                             epochs=2, lr=0.02, quiet=True)
    report = result.report
    assert report["data"]["train"] + report["data"]["val"] == 1797
    assert report["data"]["val"] in (179, 180) and report["data"]["labelled"]
    assert 0.9 <= report["before"]["accuracy"] <= 1.0
    assert report["after"]["accuracy"] > 0.8  # ten classes: chance is 0.1
    assert report["training"]["batchnorms_inserted"] == 2  # LeNet's two convolutions
    assert report["parity_max_abs_diff"] <= 1e-4
    assert len(report["training"]["loss"]) == 2
    assert report["after"]["flops"] <= 0.5 * report["before"]["flops"]
    assert not report["warnings"]


def test_finetuning_recovers_accuracy_lost_by_pruning() -> None:
    """Without the calibration refit the one-shot model loses accuracy; training recovers it
    (and, keeping its best epoch, never ends below where it started)."""
    kwargs = dict(max_flops=0.2, round_to=1, data=DIGITS, quiet=True, reconstruction=False)
    untrained = onnxprune.prune(LENET, "magnitude", **kwargs).report["after"]["accuracy"]
    trained = onnxprune.prune(LENET, "magnitude", epochs=3, lr=0.02,
                              **kwargs).report["after"]["accuracy"]
    assert trained > untrained


def test_unlabelled_data_reports_agreement(tmp_path: Path) -> None:
    x = np.load(DIGITS)["x"][:400]
    result = onnxprune.prune(LENET, "magnitude", max_flops=0.5, round_to=1, data=x, epochs=1,
                             quiet=True)
    after = result.report["after"]
    assert "accuracy" not in after and 0 <= after["agreement"] <= 1
    assert result.report["before"]["agreement"] == 1.0
    assert result.report["data"]["labelled"] is False


def test_no_data_trains_on_synthetic_inputs_and_warns() -> None:
    result = onnxprune.prune(LENET, "magnitude", max_flops=0.5, round_to=1, epochs=1,
                             quiet=True)
    assert result.report["warnings"] == [SYNTHETIC_WARNING]
    assert result.report["data"]["synthetic"] is True


def test_dataloader_input() -> None:
    arrays = np.load(DIGITS)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.from_numpy(arrays["x"][:256]), torch.from_numpy(arrays["y"][:256])), batch_size=32)
    result = onnxprune.prune(LENET, "magnitude", max_flops=0.5, round_to=1, data=loader,
                             epochs=1, quiet=True)
    assert result.report["data"]["train"] + result.report["data"]["val"] == 256


def test_cli_prune_with_data_and_eval(tmp_path: Path) -> None:
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    done = subprocess.run([str(EXE), str(LENET), "--max-flops", "0.5", "--round-to", "1",
                           "--data", str(DIGITS), "--epochs", "1", "--out", str(out),
                           "--report", str(report)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    written = json.loads(report.read_text())
    assert {"accuracy"} <= set(written["after"]) and written["parity_max_abs_diff"] <= 1e-4
    scored = subprocess.run([str(EXE), "eval", str(out), "--data", str(DIGITS), "--json"],
                            capture_output=True, text=True, check=False)
    assert scored.returncode == 0, scored.stderr
    scores = json.loads(scored.stdout)
    arrays = np.load(DIGITS)
    logits = modelio.run(modelio.load(out), {"input": arrays["x"]})[0]
    assert scores["accuracy"] == pytest.approx(float((logits.argmax(1) == arrays["y"]).mean()))
    assert scores["samples"] == 1797 and "top5" in scores
    agreed = subprocess.run([str(EXE), "eval", str(out), "--data", str(DIGITS), "--reference",
                             str(out), "--json"], capture_output=True, text=True, check=False)
    assert json.loads(agreed.stdout)["agreement"] == 1.0


def test_cli_eval_without_labels_or_reference_fails_cleanly(tmp_path: Path) -> None:
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=np.load(DIGITS)["x"][:10])
    done = subprocess.run([str(EXE), "eval", str(LENET), "--data", str(unlabelled)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "--reference" in done.stderr


def test_finetune_returns_the_best_epoch_when_training_makes_it_worse() -> None:
    model = normalized(LENET)
    digits = datasets.load_data(DIGITS, datasets.input_spec(model))
    data, val = digits.subset(np.arange(256)), digits.subset(np.arange(1500, 1797))
    untouched = evaluate(model, val)["accuracy"]
    config = TrainConfig(epochs=2, lr=0.3, batch_size=32, quiet=True)  # far too large a step
    trained, summary = finetune(model, model, data, config, val=val)
    validation = summary["validation"]
    assert validation["metric"] == "accuracy" and len(validation["scores"]) == 3
    assert max(validation["scores"][1:]) < untouched - 0.3  # both epochs ruined it
    assert validation["best_epoch"] == 0
    assert validation["scores"][0] == pytest.approx(untouched, abs=0.01)  # BatchNorms inserted
    assert evaluate(trained, val)["accuracy"] == pytest.approx(validation["scores"][0])
    _, plain = finetune(model, model, data, replace(config, lr=0.01))
    assert plain["validation"] is None and len(plain["loss"]) == 2
