"""Shared fixtures: the sample models and helpers to build plans and zeroed references."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.parser
import pytest

from onnxprune import api, modelio
from onnxprune.analysis import analyze
from onnxprune.analysis.groups import ChannelGroup, balance_blocks
from onnxprune.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "sample_models"
SAMPLES = sorted(SAMPLE_DIR.glob("*.onnx"))
MNIST = ROOT.parent / "shared" / "data" / "mnist"


HEADER = '<ir_version: 8, opset_import: ["": 13]>'


def build(body: str, weights: dict[str, tuple[int, ...]], inputs: str = "float[N,4,8,8] x",
          outputs: str = "float[N,?] y") -> onnx.ModelProto:
    """A model written in ONNX text syntax, with seeded random float weights of these shapes."""
    rng = np.random.default_rng(0)
    inits = ", ".join(f"float[{','.join(map(str, shape))}] {name} = {{"
                      + ",".join(f"{v:.3f}" for v in rng.standard_normal(int(np.prod(shape))))
                      + "}" for name, shape in weights.items())
    text = f"{HEADER} g ({inputs}) => ({outputs}) <{inits}> {{\n{body}\n}}"
    return modelio.load(onnx.parser.parse_model(text))


def computed_weight_model(weight_node: onnx.NodeProto,
                          initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    """x (N, 2, 6, 6) -> conv1 (3x3, pad 1, 4 filters) -> Relu -> conv2 (1x1, 3 filters) -> y.

    conv1's weight ``w1`` is the output of ``weight_node`` (a Constant, a Cast, ...), which
    reads from ``initializers``; conv2's weight ``w2`` is a seeded random initializer.
    """
    make = onnx.helper.make_node
    w2 = onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((3, 4, 1, 1)).astype(np.float32), "w2")
    graph = onnx.helper.make_graph(
        [weight_node,
         make("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
         make("Relu", ["c1"], ["r1"]),
         make("Conv", ["r1", "w2"], ["y"], kernel_shape=[1, 1], name="conv2")],
        "computed_weight",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [*initializers, w2])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


SIZE = (28, 28)  # the detector-style samples declare (batch, 1, height, width)


def at_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with symbolic input height and width fixed at :data:`SIZE`, shapes known."""
    dims = {name: [shape[1], *SIZE] for name, shape in modelio.open_dims(model).items()}
    return modelio.observe_shapes(modelio.with_input_dims(model, dims)) if dims else model


@cache
def normalized(path: Path) -> onnx.ModelProto:
    """The normalised sample model at :data:`SIZE` (cached: tests must not modify it)."""
    return at_size(api.normalize(path)[0])


def groups_of(model: onnx.ModelProto) -> list[ChannelGroup]:
    """The channel groups of a normalised model."""
    return analyze(modelio.to_graph(model))


def random_plan(groups: list[ChannelGroup], seed: int, keep_fraction: float = 0.5) -> Plan:
    """Keep a random subset (at least one channel) of every prunable group."""
    rng = np.random.default_rng(seed)
    keep = {}
    for g in groups:
        if g.blocked:
            continue
        k = max(1, int(round(g.size * rng.uniform(0.2, 1.0) * keep_fraction * 2)))
        chosen = rng.choice(g.size, min(k, g.size), replace=False)
        keep[g.id] = balance_blocks(chosen, g.size, g.blocks)  # grouped Convs lose evenly
    return Plan(keep)


def zeroed(model: onnx.ModelProto, plan: Plan, *, biases: bool) -> onnx.ModelProto:
    """The model with the producer weights (and biases, if asked) of removed channels zeroed."""
    graph = modelio.to_graph(model)
    tensors = graph.tensors()
    for g in analyze(graph):
        gone = plan.removed(g)
        for s in g.producers:
            if gone.size and (biases or not s.bias):
                values = np.moveaxis(np.array(tensors[s.initializer].values), s.axis, 0)
                values[s.positions(gone)] = 0
                tensors[s.initializer].values = np.moveaxis(values, 0, s.axis)
    return modelio.to_model(graph, model)


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest absolute difference over corresponding outputs, scaled by max(1, |a|)."""
    return max(float(np.abs(x - y).max() / max(1.0, np.abs(x).max()))
               for x, y in zip(a, b, strict=True))


@pytest.fixture(params=SAMPLES, ids=[p.stem for p in SAMPLES])
def sample(request: pytest.FixtureRequest) -> Path:
    """Each sample model's path."""
    return request.param


# -- the console script, driven as a user types it --------------------------------------------
def _console_script() -> Path | None:
    beside = Path(sys.executable).parent / "onnxprune"
    if beside.exists():
        return beside
    found = shutil.which("onnxprune")
    return Path(found) if found else None


EXE = _console_script()
NEEDS_EXE = pytest.mark.skipif(EXE is None, reason="the onnxprune console script is not installed")


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``onnxprune ARGS`` in ``cwd`` and return the finished process."""
    return subprocess.run([str(EXE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with its sha256."""
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


