"""The ``onnxprune`` console script, driven as a user types it (a subprocess per command).

Exit codes, stderr and the files left behind are what a user sees, so they are what these tests
check: a good run writes a model that onnxruntime loads and a report whose numbers match the
files; a bad input exits with 2, prints one line naming the problem (and the file), writes
nothing and leaves the input's bytes as they were.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _console_script() -> Path | None:
    beside = Path(sys.executable).parent / "onnxprune"
    if beside.exists():
        return beside
    found = shutil.which("onnxprune")
    return Path(found) if found else None


EXE = _console_script()
pytestmark = pytest.mark.skipif(EXE is None, reason="the onnxprune console script is not installed")


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``onnxprune ARGS`` in ``cwd`` and return the finished process."""
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with its sha256."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


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
    shutil.copyfile(SAMPLES / f"{name}.onnx", model)
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
    shutil.copyfile(SAMPLES / "lenet5.onnx", tmp_path / "inspect")

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
    shutil.copyfile(SAMPLES / "lenet5.onnx", tmp_path / "m.onnx")
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
    path = SAMPLES / f"{name}.onnx"
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
    path = SAMPLES / f"{name}.onnx"

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
    a, b = SAMPLES / "lenet5.onnx", SAMPLES / "vgg_bn.onnx"

    proc = cli("bench", a, b, "--runs", "3", "--warmup", "1", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0].split()
    assert header[-1] == "speedup"
    rows = [line for line in lines[2:] if line.startswith(str(SAMPLES))]
    assert [row.split()[0] for row in rows] == [str(a), str(b)]
    assert rows[0].split()[-1] == "1.00x"
    assert re.fullmatch(r"\d+\.\d\dx", rows[1].split()[-1])
    assert "3 runs" in proc.stdout


# --------------------------------------------------------------------------- bad input


def _nothing_prunable(op: str) -> onnx.ModelProto:
    """A single Gemm / MatMul from the input to the output: its only group is the output's."""
    rng = np.random.default_rng(0)
    if op == "Gemm":
        weight = rng.standard_normal((10, 784)).astype(np.float32)
        node = onnx.helper.make_node("Gemm", ["input", "W"], ["logits"], transB=1)
    else:
        weight = rng.standard_normal((784, 10)).astype(np.float32)
        node = onnx.helper.make_node("MatMul", ["input", "W"], ["logits"])
    graph = onnx.helper.make_graph(
        [node], "single",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 784])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(weight, "W")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _copy_sample(folder: Path) -> Path:
    path = folder / "model.onnx"
    shutil.copyfile(SAMPLES / "lenet5.onnx", path)
    return path


def _missing(folder: Path) -> Path:
    return folder / "missing.onnx"


def _text(folder: Path) -> Path:
    path = folder / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    return path


def _empty(folder: Path) -> Path:
    path = folder / "empty.onnx"
    path.write_bytes(b"")
    return path


def _truncated(folder: Path) -> Path:
    path = folder / "half.onnx"
    data = (SAMPLES / "vgg_bn.onnx").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _folder(folder: Path) -> Path:
    path = folder / "dir.onnx"
    path.mkdir()
    return path


def _gemm_only(folder: Path) -> Path:
    path = folder / "gemm.onnx"
    onnx.save(_nothing_prunable("Gemm"), str(path))
    return path


def _matmul_only(folder: Path) -> Path:
    path = folder / "matmul.onnx"
    onnx.save(_nothing_prunable("MatMul"), str(path))
    return path


HALF = ["--max-flops", "0.5"]

# case: (make the input in a folder, arguments besides MODEL and --out, whether --out is the
# input itself, a pattern stderr must match: {path} is the input path as given)
BAD: dict[str, tuple[Callable[[Path], Path], list[str], bool, str]] = {
    "missing": (_missing, HALF, False, r"{path}: no such file"),
    "text": (_text, HALF, False, r"{path}: not (a readable|an) ONNX model"),
    "empty": (_empty, HALF, False, r"{path}: not (a readable|an) ONNX model"),
    "truncated": (_truncated, HALF, False, r"{path}: not (a readable|an) ONNX model"),
    "folder": (_folder, HALF, False, r"{path}: not a file"),
    "gemm_only": (_gemm_only, HALF, False, r"{path}: nothing to prune"),
    "matmul_only": (_matmul_only, HALF, False, r"{path}: nothing to prune"),
    "out_is_input": (_copy_sample, HALF, True, r"{path}: --out is the input model"),
    "unknown_method": (_copy_sample, [*HALF, "--method", "nope"], False,
                       r"unknown method 'nope'"),
    "max_flops_0": (_copy_sample, ["--max-flops", "0"], False, r"--max-flops must be in \(0, 1\]"),
    "max_flops_neg": (_copy_sample, ["--max-flops", "-0.5"], False,
                      r"--max-flops must be in \(0, 1\], got -0\.5"),
    "max_flops_1.5": (_copy_sample, ["--max-flops", "1.5"], False,
                      r"--max-flops must be in \(0, 1\], got 1\.5"),
    "max_flops_nan": (_copy_sample, ["--max-flops", "nan"], False,
                      r"--max-flops must be in \(0, 1\], got nan"),
    "max_params_2": (_copy_sample, ["--max-params", "2"], False,
                     r"--max-params must be in \(0, 1\], got 2"),
    "no_budget": (_copy_sample, [], False, r"needs a target: give --max-flops"),
    "budget_unreachable": (_copy_sample, ["--max-flops", "0.5", "--round-to", "16"], False,
                           r"the budget cannot be met"),
    "report_folder_missing": (_copy_sample, [*HALF, "--report", "{out_dir}/nowhere/r.json"],
                              False, r"nowhere/r\.json: the folder .*nowhere does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    make, args, out_is_input, pattern = BAD[case]
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    model = make(in_dir)
    out = model if out_is_input else out_dir / "small.onnx"
    inputs_before, outputs_before = snapshot(in_dir), snapshot(out_dir)
    args = [a.replace("{out_dir}", str(out_dir)) for a in args]
    round_to = [] if "--round-to" in args else ["--round-to", "1"]

    proc = cli(model, *round_to, *args, "--out", out, cwd=tmp_path)

    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("onnxprune: error: ")
    assert re.search(pattern.replace("{path}", re.escape(str(model))), lines[0]), lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert snapshot(in_dir) == inputs_before  # the input's bytes are unchanged
    assert snapshot(out_dir) == outputs_before  # nothing written, no temporary files
    if not out_is_input:
        assert not out.exists()


def test_report_path_equal_to_the_input_is_refused(tmp_path: Path) -> None:
    model = _copy_sample(tmp_path)
    before = sha256(model)

    proc = cli(model, "--max-flops", "0.5", "--round-to", "1", "--out", tmp_path / "o.onnx",
               "--report", model, cwd=tmp_path)

    assert sha256(model) == before
    assert proc.returncode == 2
    assert len(proc.stderr.rstrip("\n").split("\n")) == 1


def test_report_path_equal_to_out_is_refused(tmp_path: Path) -> None:
    model = _copy_sample(tmp_path)
    out = tmp_path / "o.onnx"

    proc = cli(model, "--max-flops", "0.5", "--round-to", "1", "--out", out, "--report", out,
               cwd=tmp_path)

    assert proc.returncode == 2
    assert not out.exists()


def test_version_is_the_installed_distribution() -> None:
    proc = subprocess.run([str(EXE), "--version"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0
    assert importlib.metadata.version("onnxprune") in proc.stdout
