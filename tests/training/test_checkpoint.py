"""Checkpoints and resume: a run stopped after a training call ends as the uninterrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx.numpy_helper
import pytest
from conftest import ROOT

import onnxprune
from onnxprune.errors import UsageError

LENET = ROOT / "sample_models" / "lenet5.onnx"
DIGITS = ROOT / "sample_models" / "digits.npz"
RUNS = {  # method, options: each trains in one or more calls, with hooks that keep state
    "admm": dict(sparsity=0.8, iterations=2, retrain_epochs=1),
    "magnitude": dict(max_flops=0.6, epochs=2, round_to=1),  # fine-tuning keeps the best epoch
    "fdp": dict(sparsity=0.8, prune_epochs=2, retrain_epochs=1),  # masks and their schedule
}


def _digits(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(DIGITS)
    return d["x"][:n], d["y"][:n]


def _weights(result: onnxprune.api.PruneResult) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}


@pytest.mark.parametrize(("method", "kept"), [("admm", 1), ("admm", 4), ("magnitude", 1),
                                             ("fdp", 1), ("fdp", 2)])
def test_a_run_resumed_after_a_training_call_ends_as_the_uninterrupted_one(
        tmp_path: Path, method: str, kept: int) -> None:
    whole = onnxprune.prune(LENET, method, data=_digits(), quiet=True,
                            checkpoint_dir=tmp_path / "a", **RUNS[method])
    calls = whole.report["checkpoints"]["training_calls"]
    assert calls >= kept and len(list((tmp_path / "a").glob("train-*.pt"))) == calls
    (tmp_path / "b").mkdir()  # killed after call `kept`: only its checkpoints are there
    for k in range(1, kept + 1):
        shutil.copy(tmp_path / "a" / f"train-{k:04d}.pt", tmp_path / "b")
    resumed = onnxprune.prune(LENET, method, data=_digits(), quiet=True,
                              checkpoint_dir=tmp_path / "b", resume=True, **RUNS[method])
    assert resumed.report["checkpoints"] == {"training_calls": calls, "restored": kept}
    want, got = _weights(whole), _weights(resumed)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_checkpoints_refuse_what_would_mix_runs(tmp_path: Path) -> None:
    options = dict(data=_digits(), quiet=True, **RUNS["admm"])
    onnxprune.prune(LENET, "admm", checkpoint_dir=tmp_path / "a", **options)
    with pytest.raises(UsageError, match="earlier run; give --resume"):
        onnxprune.prune(LENET, "admm", checkpoint_dir=tmp_path / "a", **options)
    with pytest.raises(UsageError, match="found no checkpoint"):
        onnxprune.prune(LENET, "admm", checkpoint_dir=tmp_path / "empty", resume=True, **options)
    with pytest.raises(UsageError, match="give the folder"):
        onnxprune.prune(LENET, "admm", resume=True, **options)
    with pytest.raises(UsageError, match="does not continue this run"):
        onnxprune.prune(LENET, "admm", checkpoint_dir=tmp_path / "a", resume=True, seed=1,
                        **{**options, "data": _digits(200)})
