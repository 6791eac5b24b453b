"""Training in 2 processes (torchrun, gloo): same weights and plans on both, rank 0 writes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from conftest import ROOT

from onnxprune import modelio

LENET = ROOT / "sample_models" / "lenet5.onnx"
DIGITS = ROOT / "sample_models" / "digits.npz"
SCRIPT = """
import json, sys
import numpy as np
import onnx.numpy_helper
import torch.distributed as dist
import onnxprune

method, options, folder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
d = np.load(sys.argv[4])
result = onnxprune.prune(sys.argv[5], method, data=(d["x"][:320], d["y"][:320]), quiet=True,
                         **options)
rank = dist.get_rank()
np.savez(f"{folder}/rank{rank}.npz", **{t.name: onnx.numpy_helper.to_array(t)
                                        for t in result.model.graph.initializer})
with open(f"{folder}/plan{rank}.json", "w") as f:
    json.dump({"keep": {k: list(map(int, v)) for k, v in result.plan.keep.items()},
               "world_size": result.report["world_size"]}, f)
result.save(f"{folder}/small.onnx")
"""
RUNS = {
    "magnitude": {"max_flops": 0.6, "epochs": 2, "round_to": 1},
    "admm": {"sparsity": 0.8, "iterations": 1, "retrain_epochs": 1},
    "pp": {"max_flops": 0.6, "rounds": 2, "final_epochs": 1, "round_to": 1, "tolerance": 100.0},
}


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2", *args], capture_output=True, text=True,
                          check=False, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                          timeout=600)


@pytest.mark.parametrize("method", list(RUNS))
def test_two_processes_train_the_same_model_and_rank_0_writes(tmp_path: Path,
                                                              method: str) -> None:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    done = _torchrun(str(script), method, json.dumps(RUNS[method]), str(tmp_path), str(DIGITS),
                     str(LENET))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    plans = [json.loads((tmp_path / f"plan{r}.json").read_text()) for r in (0, 1)]
    assert plans[0] == plans[1] and plans[0]["world_size"] == 2
    written = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".onnx")
    assert written == ["small.onnx"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "small.onnx")), full_check=True)


def test_the_cli_under_torchrun_writes_once_and_reports_the_world_size(tmp_path: Path) -> None:
    d = np.load(DIGITS)
    np.savez(tmp_path / "d.npz", x=d["x"][:256], y=d["y"][:256])
    exe = Path(sys.executable).parent / "onnxprune"
    done = _torchrun(str(exe), str(LENET), "--max-flops", "0.6", "--data",
                     str(tmp_path / "d.npz"), "--epochs", "1", "--round-to", "1", "--out",
                     str(tmp_path / "small.onnx"), "--report", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "r.json").read_text())["world_size"] == 2
    assert done.stdout.count("FLOPs") == 1  # one summary, from rank 0
    modelio.session(modelio.load(tmp_path / "small.onnx"))


def _two_machines(tmp_path: Path, run: str, *options: str) -> list[subprocess.Popen[str]]:
    """Two torchrun 'machines' of one process each, meeting at a static rendezvous.

    Each has its own checkpoint folder, as machines without a shared disk would.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "onnxprune", str(LENET), "--method", "pp", "--data", str(tmp_path / "d.npz"),
         "--max-flops", "0.6", "--rounds", "2", "--round-to", "1", "--tolerance", "100",
         "--epochs", "1", "--quiet",
         "--checkpoint-dir", str(tmp_path / f"{run}-disk{node}"), "--out",
         str(tmp_path / f"{run}.onnx"), "--report", str(tmp_path / f"{run}.json"), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}) for node in (0, 1)]


def _finish(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]


def test_two_machines_resume_from_the_checkpoints_rank_0_kept(tmp_path: Path) -> None:
    d = np.load(DIGITS)
    np.savez(tmp_path / "d.npz", x=d["x"][:256], y=d["y"][:256])
    _finish(_two_machines(tmp_path, "whole"))
    assert not (tmp_path / "whole-disk1").exists()  # only rank 0 writes
    held = sorted((tmp_path / "whole-disk0").glob("train-*.pt"))
    assert len(held) == json.loads((tmp_path / "whole.json").read_text())[
        "checkpoints"]["training_calls"] >= 2
    (tmp_path / "again-disk0").mkdir()  # stopped after the first training call
    shutil.copy(held[0], tmp_path / "again-disk0")
    _finish(_two_machines(tmp_path, "again", "--resume"))
    report = json.loads((tmp_path / "again.json").read_text())
    assert report["checkpoints"]["restored"] == 1 and report["world_size"] == 2
    want, got = (modelio.load(tmp_path / f"{run}.onnx") for run in ("whole", "again"))
    for a, b in zip(want.graph.initializer, got.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a),
                                      onnx.numpy_helper.to_array(b), err_msg=a.name)
