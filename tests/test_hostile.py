"""Hostile and careless input, as a user types it: one table, one promise.

Every row runs the ``onnxprune`` console script on inputs written to an ``in`` folder, with
outputs aimed at an ``out`` folder (or, for the rows about overwriting, at an input). Each must
exit with code 2, print exactly one line on stderr and no traceback, write nothing, and leave
every input file byte-identical. The rows carry the number of the hardening issue's case they
reproduce; the cases that must succeed instead follow the table.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import NEEDS_EXE, SAMPLE_DIR, cli, sha256
from hostile_models import (
    write_custom_op,
    write_external,
    write_external_missing,
    write_external_outside,
    write_huge_constant_of_shape,
    write_huge_npz,
    write_if_reads_one_group,
    write_if_reads_only_group,
    write_inconsistent_if,
    write_integer_input,
    write_lenet,
    write_nonfinite_output,
    write_npz,
    write_quantized,
    write_single,
    write_symbolic_hw,
    write_two_inputs,
    write_zero_channel_conv,
)

import onnxprune
from onnxprune import modelio
from onnxprune.cli import _exit_on_signal
from onnxprune.report import to_json

pytestmark = NEEDS_EXE


def _sys_writable() -> bool:
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Row:
    """Write the inputs into ``in`` and return the arguments; stderr must match ``pattern``.

    ``{in}`` in the pattern stands for the input folder.
    """

    case: str
    setup: Callable[[Path, Path], list[object]]
    pattern: str


def _prune(*args: object) -> Callable[[Path, Path], list[object]]:
    """LeNet-5 pruned to half its FLOPs, rounding off, with ``args``; --out in ``out``."""
    def setup(i: Path, o: Path) -> list[object]:
        return [write_lenet(i), "--max-flops", "0.5", "--round-to", "1", *args,
                "--out", o / "small.onnx"]
    return setup


def _model(write: Callable[[Path], Path], *args: object) -> Callable[[Path, Path], list[object]]:
    """Prune the model ``write`` makes, rounding off, with ``args``; --out in ``out``."""
    def setup(i: Path, o: Path) -> list[object]:
        return [write(i), "--round-to", "1", *args, "--out", o / "small.onnx"]
    return setup


def _with_data(make: Callable[[Path, Path, Path], list[object]],
               **npz: object) -> Callable[[Path, Path], list[object]]:
    """LeNet-5 and a d.npz of MNIST-shaped data; ``make(model, data, out)`` gives the args."""
    def setup(i: Path, o: Path) -> list[object]:
        return make(write_lenet(i), write_npz(i, **npz), o)
    return setup


def _out_on(*args: object) -> Callable[[Path, Path], list[object]]:
    """LeNet-5 with external data, d.npz and map.json; ``in:NAME`` in ``args`` names them."""
    def setup(i: Path, o: Path) -> list[object]:
        model = write_external(i)
        write_npz(i)
        (i / "map.json").write_text('{"conv1.weight": 0.5}')
        return [model, "--max-flops", "0.5", "--round-to", "1", "--data", i / "d.npz",
                *[i / a[3:] if isinstance(a, str) and a.startswith("in:") else a for a in args],
                *(["--out", o / "small.onnx"] if "--out" not in args else [])]
    return setup


def _text_file(i: Path) -> Path:
    path = i / "notes.onnx"
    path.write_text("this is a text file, not a model\n")
    return path


def _empty_file(i: Path) -> Path:
    path = i / "empty.onnx"
    path.write_bytes(b"")
    return path


def _truncated_file(i: Path) -> Path:
    path = i / "half.onnx"
    data = (SAMPLE_DIR / "vgg_bn.onnx").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _folder(i: Path) -> Path:
    path = i / "dir.onnx"
    path.mkdir()
    return path


def _fifo_out(i: Path, o: Path) -> list[object]:
    os.mkfifo(o / "small.onnx")
    return [write_lenet(i), "--max-flops", "0.5", "--round-to", "1", "--out", o / "small.onnx"]


def _symlink_out(i: Path, o: Path) -> list[object]:
    model = write_lenet(i)
    (o / "link.onnx").symlink_to(model)
    return [model, "--max-flops", "0.5", "--round-to", "1", "--out", o / "link.onnx"]


def _eval(*args: object, **npz: object) -> Callable[[Path, Path], list[object]]:
    def setup(i: Path, o: Path) -> list[object]:
        return ["eval", write_lenet(i), "--data", write_npz(i, **npz), *args]
    return setup


def _bench(write: Callable[[Path], Path], *args: object) -> Callable[[Path, Path], list[object]]:
    def setup(i: Path, o: Path) -> list[object]:
        return ["bench", write(i), *args]
    return setup


HALF = ("--max-flops", "0.5")
READS = r"is a file the run reads"

ROWS = [
    # the basics: missing, unreadable, nothing to prune, bad options
    Row("missing", lambda i, o: [i / "missing.onnx", *HALF, "--out", o / "s.onnx"],
        r"{in}/missing\.onnx: no such file"),
    Row("text", _model(_text_file, *HALF), r"{in}/notes\.onnx: not (a readable|an) ONNX"),
    Row("empty", _model(_empty_file, *HALF), r"{in}/empty\.onnx: not (a readable|an) ONNX"),
    Row("truncated", _model(_truncated_file, *HALF), r"{in}/half\.onnx: not (a readable|an) ONNX"),
    Row("folder", _model(_folder, *HALF), r"{in}/dir\.onnx: not a file"),
    Row("gemm_only", _model(lambda i: write_single(i, "Gemm"), *HALF),
        r"{in}/gemm\.onnx: nothing to prune"),
    Row("matmul_only", _model(lambda i: write_single(i, "MatMul"), *HALF),
        r"{in}/matmul\.onnx: nothing to prune"),
    Row("unknown_method", _prune("--method", "nope"), r"unknown method 'nope'"),
    Row("max_flops_0", _model(write_lenet, "--max-flops", "0"),
        r"{in}/model\.onnx: --max-flops must be in \(0, 1\], got 0"),
    Row("max_flops_neg", _model(write_lenet, "--max-flops", "-0.5"),
        r"--max-flops must be in \(0, 1\], got -0\.5"),
    Row("max_flops_nan", _model(write_lenet, "--max-flops", "nan"),
        r"--max-flops must be in \(0, 1\], got nan"),
    Row("max_params_2", _model(write_lenet, "--max-params", "2"),
        r"--max-params must be in \(0, 1\], got 2"),
    Row("no_budget", _model(write_lenet), r"needs a target: give --max-flops"),
    Row("budget_unreachable", lambda i, o: [write_lenet(i), *HALF, "--round-to", "16", "--out",
                                            o / "s.onnx"],
        r"the budget cannot be met.*\(100\.0% of the FLOPs are in layers whose channels can "
        r"be pruned"),
    Row("report_folder_missing", lambda i, o: [*_prune()(i, o), "--report", o / "no" / "r.json"],
        r"no/r\.json: the folder .*no does not exist"),
    # 1: no output lands on a file the run reads
    Row("1_out_is_input", lambda i, o: [write_lenet(i), *HALF, "--out", i / "model.onnx"],
        r"{in}/model\.onnx: --out " + READS),
    Row("1_report_is_input", lambda i, o: [*_prune()(i, o), "--report", i / "model.onnx"],
        r"--report " + READS),
    Row("1_out_is_external_data", _out_on("--out", "in:model.onnx.data"),
        r"model\.onnx\.data: --out " + READS),
    Row("1_report_is_external_data", _out_on("--report", "in:model.onnx.data"),
        r"model\.onnx\.data: --report " + READS),
    Row("1_out_is_data", _out_on("--out", "in:d.npz"), r"d\.npz: --out " + READS),
    Row("1_report_is_data", _out_on("--report", "in:d.npz"), r"d\.npz: --report " + READS),
    Row("1_plot_is_data", _out_on("--method", "admm", "--granularity", "filter", "--plot",
                                  "in:d.npz"), r"d\.npz: --plot " + READS),
    Row("1_out_is_val_data", _out_on("--val-data", "in:d.npz", "--out", "in:d.npz"),
        r"d\.npz: --out " + READS),
    Row("1_out_is_layer_sparsity", _out_on("--method", "admm", "--sparsity", "0.5",
                                           "--layer-sparsity", "in:map.json", "--out",
                                           "in:map.json"), r"map\.json: --out " + READS),
    Row("1_out_links_to_input", _symlink_out, r"link\.onnx: --out " + READS),
    Row("1_report_is_out", lambda i, o: [*_prune()(i, o), "--report", o / "small.onnx"],
        r"--report and --out are the same file"),
    # 2: only a regular file or a new path is written
    Row("2_out_is_fifo", _fifo_out, r"small\.onnx: --out is not a regular file"),
    Row("2_out_is_folder", lambda i, o: [write_lenet(i), *HALF, "--out", o],
        r"--out is a folder"),
    # 3: a tensor an If branch reads is a consumer analysis cannot follow
    Row("3_if_branch_reads_the_only_group", _model(write_if_reads_only_group, *HALF),
        r"{in}/branch\.onnx: nothing to prune"),
    # 4: NaN and infinities in options and data
    Row("4_lr_nan", _prune("--epochs", "1", "--lr", "nan"), r"--lr must be a positive number"),
    Row("4_std_nan", _with_data(lambda m, d, o: [m, *HALF, "--round-to", "1", "--data", d,
                                                 "--std", "nan", "--out", o / "s.onnx"]),
        r"--std must be positive finite numbers"),
    Row("4_mean_inf", _with_data(lambda m, d, o: [m, *HALF, "--round-to", "1", "--data", d,
                                                  "--mean", "inf", "--out", o / "s.onnx"]),
        r"--mean must be finite numbers"),
    Row("4_nan_pixel", _with_data(lambda m, d, o: [m, *HALF, "--round-to", "1", "--data", d,
                                                   "--epochs", "1", "--out", o / "s.onnx"],
                                  nan=True),
        r"{in}/d\.npz: 1 of 40 inputs hold NaN or infinite values \(the first is sample 3\)"),
    Row("4_tolerance_nan", _with_data(lambda m, d, o: [m, "--method", "pp", "--data", d,
                                                       "--tolerance", "nan", "--out",
                                                       o / "s.onnx"]),
        r"--tolerance must be a finite number"),
    # 5: size claims are refused before anything is allocated
    Row("5_constant_of_shape_claims_tib", _model(write_huge_constant_of_shape, *HALF),
        r"{in}/big\.onnx: .*ConstantOfShape node 'claim_node': claims a tensor of shape "
        r"\(1048576, 1, 1024, 900\) \(3\.5 TiB\)"),
    Row("5_npz_header_claims_tib", lambda i, o: [write_lenet(i), *HALF, "--round-to", "1",
                                                 "--data", write_huge_npz(i), "--epochs", "1",
                                                 "--out", o / "s.onnx"],
        r"huge\.npz: array 'x': claims a tensor .*3\.5 TiB"),
    Row("5_bench_batch_1e8", _bench(write_lenet, "--batch", "100000000"),
        r"{in}/model\.onnx: random inputs for 'input' at batch 100000000: claims a tensor"),
    # 6: every output is checked before the work starts
    Row("6_plot_without_stages", _prune("--plot", "p.png"),
        r"--plot: method 'magnitude' records no stages or rounds"),
    # 8: external data missing or outside the model's folder
    Row("8_external_data_missing", _model(write_external_missing, *HALF),
        r"{in}/model\.onnx: its external data file .*model\.onnx\.data is missing"),
    Row("8_external_data_outside", _model(write_external_outside, *HALF),
        r"{in}/model\.onnx: its external data '.*outside\.data' lies outside the model's folder"),
    # 9: onnxruntime's own failures
    Row("9_custom_domain_op", _model(write_custom_op, *HALF),
        r"{in}/custom\.onnx: .*onnxruntime cannot load the model"),
    Row("9_inconsistent_if_branch", _model(write_inconsistent_if, *HALF),
        r"{in}/if\.onnx: .*onnxruntime cannot run the model"),
    # 10: mistakes that ended in a traceback
    Row("10_labels_out_of_range", _with_data(
        lambda m, d, o: [m, *HALF, "--round-to", "1", "--data", d, "--epochs", "1", "--out",
                         o / "s.onnx"], top_label=12),
        r"{in}/d\.npz: labels run from 0 to 12, but the model scores 10 classes"),
    Row("10_eval_labels_out_of_range", _eval(top_label=10),
        r"labels run from 0 to 10, but the model scores 10 classes"),
    Row("10_seed_negative", _prune("--epochs", "1", "--seed", "-1"),
        r"{in}/model\.onnx: --seed must be >= 0, got -1"),
    Row("10_val_data_without_data", lambda i, o: [*_prune()(i, o), "--val-data", write_npz(i)],
        r"{in}/model\.onnx: --val-data .*give --data too"),
    Row("10_eval_no_samples", _eval(n=0), r"d\.npz: holds no samples"),
    Row("10_zero_channel_conv", _model(write_zero_channel_conv, *HALF),
        r"{in}/zero\.onnx: Conv node 'conv1' has an empty weight \(0, 1, 3, 3\)"),
    Row("10_bench_symbolic_hw", _bench(write_symbolic_hw),
        r"{in}/sym\.onnx: input 'input' has shape .*'H', 'W'.*give --input-size HxW"),
    # 11: messages that named no file or the wrong problem
    Row("11_symbolic_size_names_the_file_and_option", _model(write_symbolic_hw, *HALF),
        r"{in}/sym\.onnx: input 'input' has shape \(batch, 1, H, W\): give --input-size"),
    Row("11_quantized", _model(write_quantized, *HALF),
        r"{in}/qdq\.onnx: a quantized model \(QuantizeLinear node"),
    # 12: a budget the method cannot meet is refused, not ignored
    Row("12_admm_weight_max_flops", _prune("--method", "admm"),
        r"admm at weight level .* cannot meet --max-flops"),
]
if not _sys_writable():  # /sys refuses new files even to root
    ROWS += [
        Row("6_report_unwritable", lambda i, o: [*_prune()(i, o), "--report", "/sys/r.json"],
            r"/sys/r\.json: cannot write in /sys"),
        Row("10_out_unwritable", lambda i, o: [write_lenet(i), *HALF, "--out", "/sys/s.onnx"],
            r"/sys/s\.onnx: cannot write in /sys"),
    ]


def _entries(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: a file's sha256, else its kind (folder, FIFO, link)."""
    found = {}
    for p in sorted(folder.rglob("*")):
        mode = p.lstat().st_mode
        found[str(p.relative_to(folder))] = (sha256(p) if stat.S_ISREG(mode)
                                             else stat.filemode(mode)[0])
    return found


@pytest.mark.parametrize("row", ROWS, ids=[r.case for r in ROWS])
def test_hostile_input_exits_2_with_one_line_and_touches_nothing(tmp_path: Path,
                                                                 row: Row) -> None:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    out_dir.mkdir()
    args = row.setup(in_dir, out_dir)
    before = {"in": _entries(in_dir), "out": _entries(out_dir), "all": _entries(tmp_path)}

    proc = cli(*args, cwd=tmp_path)

    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("onnxprune: error: ")
    pattern = row.pattern.replace("{in}", re.escape(str(in_dir)))
    assert re.search(pattern, lines[0]), lines[0]
    assert _entries(in_dir) == before["in"]  # every input byte-identical
    assert _entries(out_dir) == before["out"]  # nothing written, no temporary file
    assert _entries(tmp_path) == before["all"]


# -- what must succeed instead ----------------------------------------------------------------


def test_eval_without_json_prints_its_table(tmp_path: Path) -> None:  # case 7
    proc = cli("eval", write_lenet(tmp_path), "--data", write_npz(tmp_path), cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(maxsplit=1) for line in proc.stdout.splitlines()[2:])
    assert rows["model"] == str(tmp_path / "model.onnx") and rows["samples"] == "40"
    assert 0 <= float(rows["accuracy"]) <= 1 and 0 <= float(rows["top5"]) <= 1


def test_an_existing_out_keeps_its_mode(tmp_path: Path) -> None:  # case 2
    out = tmp_path / "small.onnx"
    out.write_bytes(b"old")
    out.chmod(0o640)

    proc = cli(write_lenet(tmp_path), *HALF, "--round-to", "1", "--out", out, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_a_branch_reading_a_prunable_tensor_keeps_it_and_runs(tmp_path: Path) -> None:  # case 3
    out = tmp_path / "small.onnx"

    proc = cli(write_if_reads_one_group(tmp_path), "--max-flops", "0.8", "--round-to", "1",
               "--report",
               tmp_path / "r.json", "--out", out, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert any("If node" in b["reason"] and "'r1'" in b["reason"] for b in report["blocked"])
    assert report["groups"]["pruned"] == 1  # conv2's group, read by no branch
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    for cond in (True, False):
        y, z = session.run(None, {"x": x, "cond": np.array(cond)})
        assert y.shape == (2, 2, 8, 8) and np.isfinite(z).all()


@pytest.mark.parametrize("write", [write_two_inputs, write_integer_input],
                         ids=["two_inputs", "integer_input"])
def test_models_onnxprune_cannot_train_still_prune_without_training(
        tmp_path: Path, write: Callable[[Path], Path]) -> None:  # case 11
    out = tmp_path / "small.onnx"

    proc = cli(write(tmp_path), *HALF, "--round-to", "1", "--out", out, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    feeds = modelio.random_inputs(onnx.load(str(out)), batch=2)
    assert all(np.isfinite(o).all() for o in modelio.run(onnx.load(str(out)), feeds))


def test_a_model_whose_own_output_is_not_finite_still_prunes(tmp_path: Path) -> None:  # case 11
    model = write_nonfinite_output(tmp_path)
    feeds = modelio.random_inputs(onnx.load(str(model)), batch=2)
    assert np.isnan(modelio.run(onnx.load(str(model)), feeds)[0]).any()  # Log of negatives

    proc = cli(model, *HALF, "--round-to", "1", "--out", tmp_path / "s.onnx", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("target", ["model.onnx", "model.onnx.data", "d.npz"])
def test_prune_result_save_refuses_the_files_the_run_read(tmp_path: Path, target: str) -> None:
    model = write_external(tmp_path)
    data = write_npz(tmp_path)
    before = _entries(tmp_path)
    result = onnxprune.prune(model, max_flops=0.5, round_to=1, data=data)

    with pytest.raises(onnxprune.UsageError, match="is a file the run reads"):
        result.save(tmp_path / target)

    assert _entries(tmp_path) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_signal_during_a_save_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int) -> None:  # case 6
    rename = os.replace

    def interrupted(src: str, dst: str) -> None:
        os.kill(os.getpid(), signum)  # arrives between writing the bytes and renaming them
        rename(src, dst)

    previous = signal.signal(signum, _exit_on_signal)  # as the console script installs it
    monkeypatch.setattr(os, "replace", interrupted)
    try:
        with pytest.raises(SystemExit) as stop:
            modelio.save(onnx.load(str(SAMPLE_DIR / "lenet5.onnx")), tmp_path / "s.onnx")
    finally:
        signal.signal(signum, previous)
    assert stop.value.code == 128 + signum
    assert list(tmp_path.iterdir()) == []


def test_report_json_is_strict_json_with_null_for_nan_and_infinities() -> None:  # case 4
    text = to_json({"a": float("nan"), "b": [1.5, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": {"d": None}}
    assert "NaN" not in text and "Infinity" not in text
