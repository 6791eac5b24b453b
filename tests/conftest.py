"""Shared fixtures: the sample models and helpers to build plans and zeroed references."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxprune import api
from onnxprune import model as modelio
from onnxprune.analysis import analyze
from onnxprune.groups import ChannelGroup
from onnxprune.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "sample_models").glob("*.onnx"))
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


@cache
def normalized(path: Path) -> onnx.ModelProto:
    """The normalised sample model (cached: tests must not modify it)."""
    return api.normalize(path)[0]


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
        keep[g.id] = tuple(sorted(int(i) for i in rng.choice(g.size, min(k, g.size),
                                                             replace=False)))
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
