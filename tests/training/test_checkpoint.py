"""Checkpoints and resume: a run stopped after a training call ends as the uninterrupted one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx.numpy_helper
import pytest
import torch
from conftest import ROOT, normalized

import onnxprune
from onnxprune.errors import UsageError
from onnxprune.shadow import ShadowModel
from onnxprune.training.checkpoint import Checkpoints
from onnxprune.training.data import Dataset
from onnxprune.training.keep_best import KeepBest
from onnxprune.training.loop import Hooks, TrainConfig, train

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


class _Stop(Hooks):
    """Interrupts training at step ``at`` (counted over the call), as a kill would."""

    def __init__(self, at: int) -> None:
        self.at, self.steps = at, 0

    def after_step(self, model: torch.nn.Module) -> None:
        self.steps += 1
        if self.steps == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("cosine", "stop"), [(False, 5), (True, 9), (True, 14)])
def test_a_call_killed_mid_epoch_loses_only_that_epoch_and_resumes_exactly(
        tmp_path: Path, cosine: bool, stop: int) -> None:
    x, y = _digits(256)
    data = Dataset(x, y)
    config = dict(epochs=4, lr=0.02, batch_size=64, quiet=True, cosine=cosine)  # 4 steps/epoch
    whole = ShadowModel(normalized(LENET))
    keep = KeepBest(data.subset(np.arange(64)))
    keep.start(whole)
    want = train(whole, data, TrainConfig(**config), hooks=[keep])

    killed = ShadowModel(normalized(LENET))
    keep = KeepBest(data.subset(np.arange(64)))
    keep.start(killed)
    with pytest.raises(KeyboardInterrupt):
        train(killed, data, TrainConfig(**config, checkpoints=Checkpoints(tmp_path)),
              hooks=[keep, _Stop(stop)])
    saved = torch.load(tmp_path / "train-0001.pt", weights_only=False)
    assert len(saved["history"]) == (stop - 1) // 4  # every finished epoch is kept

    resumed = ShadowModel(normalized(LENET))
    keep = KeepBest(data.subset(np.arange(64)))
    keep.start(resumed)
    got = train(resumed, data, TrainConfig(
        **config, checkpoints=Checkpoints(tmp_path, resume=True)), hooks=[keep, _Stop(0)])
    assert got == want
    keep.restore(resumed)
    keep.restore(whole)  # the restored hook state picks the same best epoch
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
