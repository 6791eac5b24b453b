"""The ``onnxprune`` console script, driven as a user types it (a subprocess per command).

Exit codes, stderr and the files left behind are what a user sees, so they are what these tests
check: a good run writes a model that onnxruntime loads and a report whose numbers match the
files; a bad input exits with 2, prints one line naming the problem (and the file), writes
nothing and leaves the input's bytes as they were.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from conftest import EXE, NEEDS_EXE, SAMPLE_DIR, cli, sha256

pytestmark = NEEDS_EXE


def op_nodes(path: Path, ops: tuple[str, ...] = ("Conv", "Gemm")) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in ops]


# --------------------------------------------------------------------------- the main command


@pytest.mark.parametrize(("name", "extra"), [
    ("lenet5", ["--round-to", "1"]),      # 6 and 16 channels: too narrow to round to a block
    ("vgg_bn", ["--round-to", "8"]),
    ("inception", ["--round-to", "8"]),
], ids=["lenet5", "vgg_bn", "inception"])
def test_prune_as_typed_writes_model_and_consistent_report(tmp_path: Path, name: str,
                                                           extra: list[str]) -> None:
    model = tmp_path / f"{name}.onnx"
    shutil.copyfile(SAMPLE_DIR / f"{name}.onnx", model)
    before_hash = sha256(model)
    out, report_path = tmp_path / "small.onnx", tmp_path / "r.json"

    proc = cli(model, "--method", "magnitude", "--max-flops", "0.5", *extra, "--out", out,
               "--report", report_path, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert out.is_file()
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)

    report = json.loads(report_path.read_text())
    assert {"method", "input", "output", "before", "after", "groups"} <= set(report)
    assert report["method"] == "magnitude"
    assert report["input"] == str(model)
    assert report["output"] == str(out)
    for side in ("before", "after"):
        assert set(report[side]) >= {"params", "flops", "bytes"}
    assert set(report["groups"]) >= {"total", "pruned", "blocked"}
    assert report["groups"]["pruned"] >= 1
    assert report["groups"]["total"] >= report["groups"]["pruned"] + report["groups"]["blocked"]

    before, after = report["before"], report["after"]
    assert 0 < after["flops"] <= 0.5 * before["flops"]
    assert 0 < after["params"] < before["params"]
    assert before["bytes"] == model.stat().st_size
    assert after["bytes"] == out.stat().st_size
    assert sha256(model) == before_hash
    assert f"wrote {out}" in proc.stdout
    # nothing but the input, the output and the report in the folder: no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [model.name, out.name, report_path.name])


def test_model_named_like_a_subcommand_is_pruned(tmp_path: Path) -> None:
    shutil.copyfile(SAMPLE_DIR / "lenet5.onnx", tmp_path / "inspect")

    proc = cli("./inspect", "--max-flops", "0.5", "--round-to", "1", "--out", "x.onnx",
               "--report", "r.json", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert not proc.stdout.startswith("layer")  # not inspect's table
    assert "wrote x.onnx" in proc.stdout
    ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input"] == "inspect"
    assert report["after"]["flops"] <= 0.5 * report["before"]["flops"]


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    shutil.copyfile(SAMPLE_DIR / "lenet5.onnx", tmp_path / "m.onnx")
    args = ["m.onnx", "--max-flops", "0.5", "--round-to", "1", "--out", "o.onnx", "--report",
            "r.json", "--quiet"]

    proc = subprocess.run([str(EXE), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False, preexec_fn=lambda: os.umask(0o022))

    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "o.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- inspect and bench


@pytest.mark.parametrize("name", ["lenet5", "resnet", "inception"])
def test_inspect_table_lists_layers_and_the_blocked_output_group(tmp_path: Path,
                                                                 name: str) -> None:
    path = SAMPLE_DIR / f"{name}.onnx"
    graph = onnx.load(str(path)).graph
    (last,) = [n for n in graph.node if graph.output[0].name in n.output]

    proc = cli("inspect", path, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for layer in op_nodes(path):
        assert any(line.startswith(layer + " ") for line in lines), layer
    group_table = lines[next(i for i, line in enumerate(lines) if line.startswith("group")):]
    (output_row,) = [line for line in group_table if line.startswith(last.name + " ")]
    assert "prunable" not in output_row
    assert "blocked" in output_row or f"graph output '{graph.output[0].name}'" in output_row
    assert any(line.rstrip().endswith("prunable") for line in group_table)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_inspect_json_totals_are_the_sum_of_its_layers(tmp_path: Path, name: str) -> None:
    path = SAMPLE_DIR / f"{name}.onnx"

    proc = cli("inspect", "--json", path, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["flops"] == sum(layer["flops"] for layer in data["layers"]) > 0
    assert {layer["name"] for layer in data["layers"]} == set(op_nodes(path))
    assert data["groups"]
    for group in data["groups"]:
        assert {"id", "channels", "blocked"} <= set(group)
        assert isinstance(group["channels"], int) and group["channels"] >= 1
        assert group["blocked"] is None or (isinstance(group["blocked"], str)
                                            and group["blocked"])
    assert any(g["blocked"] is None for g in data["groups"])
    assert any(g["blocked"] for g in data["groups"])  # the group reaching the logits


def test_inspect_json_stdout_is_only_json(tmp_path: Path) -> None:
    w1 = np.zeros((4, 1, 3, 3), np.float32)
    w1[:, :, 1, 1] = 1
    flat = w1.reshape(-1)
    nonzero = np.flatnonzero(flat)
    sparse = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(flat[nonzero], "values"),
        onnx.numpy_helper.from_array(nonzero.astype(np.int64), "indices"), list(w1.shape))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Constant", [], ["w1"], sparse_value=sparse),
         onnx.helper.make_node("Conv", ["input", "w1"], ["c1"], kernel_shape=[3, 3], name="c1"),
         onnx.helper.make_node("Relu", ["c1"], ["logits"])],
        "sparse_weight",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "sparse.onnx"))

    proc = cli("inspect", "--json", "sparse.onnx", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    json.loads(proc.stdout)


def test_bench_prints_speedup_against_the_first_model(tmp_path: Path) -> None:
    a, b = SAMPLE_DIR / "lenet5.onnx", SAMPLE_DIR / "vgg_bn.onnx"

    proc = cli("bench", a, b, "--runs", "3", "--warmup", "1", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[-1] == "speedup"
    rows = [line for line in lines[2:] if line.startswith(str(SAMPLE_DIR))]
    assert [row.split()[0] for row in rows] == [str(a), str(b)]
    assert rows[0].split()[-1] == "1.00x"
    assert re.fullmatch(r"\d+\.\d\dx", rows[1].split()[-1])
    assert "3 runs" in proc.stdout


def test_version_is_the_installed_distribution() -> None:
    proc = subprocess.run([str(EXE), "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0
    assert importlib.metadata.version("onnxprune") in proc.stdout


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_provider_onnxruntime_lacks_is_refused_in_one_line(tmp_path: Path,
                                                             command: str) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime here has the CUDA provider")
    data = ("--data", SAMPLE_DIR / "digits.npz") if command == "eval" else ()
    proc = cli(command, SAMPLE_DIR / "lenet5.onnx", *data, "--provider", "cuda", cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "no CUDAExecutionProvider" in proc.stderr and "onnxruntime-gpu" in proc.stderr


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime here has no CUDA provider")
def test_eval_on_the_cuda_provider_scores_as_on_the_cpu(tmp_path: Path) -> None:
    scores = {}
    for provider in ("cpu", "cuda"):
        proc = cli("eval", SAMPLE_DIR / "lenet5.onnx", "--data", SAMPLE_DIR / "digits.npz",
                   "--provider", provider, "--json", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        scores[provider] = json.loads(proc.stdout)
    assert abs(scores["cuda"]["accuracy"] - scores["cpu"]["accuracy"]) <= 1 / 1797
