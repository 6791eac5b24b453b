"""The README's two set-up commands: CI runs the same ones, and the main job works as typed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```\n(.*?)```", section, re.S)]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_them() -> None:
    install, tests = _setup_commands()
    assert install.startswith("pip install torch==2.13.0 && pip install -e \".[dev]\"")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install.split(" && onnxprune ")[0] in ci
    assert tests in ci


def test_readme_main_command_prunes_the_sample(tmp_path: Path) -> None:
    install, _ = _setup_commands()
    job = shlex.split(install.split(" && ")[-1])
    assert job[0] == "onnxprune"
    out = tmp_path / Path(job[job.index("--out") + 1]).name
    job[job.index("--out") + 1] = str(out)
    job[1] = str(ROOT / job[1])
    exe = Path(sys.executable).parent / "onnxprune"
    done = subprocess.run([str(exe), *job[1:]], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size < (ROOT / "sample_models" / "vgg_bn.onnx").stat().st_size
    assert "FLOPs" in done.stdout
