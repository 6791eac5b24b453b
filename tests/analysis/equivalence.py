"""Shared checks for the analysis tests: models in ONNX text at any opset, exact removal."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx.parser
from conftest import max_diff, zeroed

from onnxprune import api, modelio
from onnxprune.analysis import ChannelGroup, analyze, balance_blocks
from onnxprune.plan import Plan


def text_model(body: str, weights: dict[str, tuple[int, ...]], *, opset: int = 13,
               inputs: str = "float[N,4,8,8] x", outputs: str = "float[N,?,?,?] y",
               seed: int = 0) -> onnx.ModelProto:
    """A model in ONNX text syntax at ``opset``, with seeded random float weights."""
    rng = np.random.default_rng(seed)
    inits = ", ".join(f"float[{','.join(map(str, shape))}] {name} = {{"
                      + ",".join(f"{v:.3f}" for v in rng.standard_normal(int(np.prod(shape))))
                      + "}" for name, shape in weights.items())
    header = f'<ir_version: 8, opset_import: ["": {opset}]>'
    text = f"{header} g ({inputs}) => ({outputs}) <{inits}> {{\n{body}\n}}"
    return modelio.load(onnx.parser.parse_model(text))


def groups_by_producer(model: onnx.ModelProto) -> dict[str, ChannelGroup]:
    """The groups of the normalised ``model``, by the initializer of each producer."""
    groups = analyze(modelio.to_graph(api.normalize(model)[0]))
    return {s.initializer: g for g in groups for s in g.producers}


def random_valid_plan(groups: Iterable[ChannelGroup], seed: int) -> Plan:
    """Keep a random, block-balanced subset (at least one per part) of every prunable group."""
    rng = np.random.default_rng(seed)
    keep = {}
    for g in groups:
        if g.blocked or g.size == g.blocks:
            continue
        per = int(rng.integers(1, g.size // g.blocks))  # at least one channel goes per part
        order = [int(i) for i in rng.permutation(g.size)]
        keep[g.id] = balance_blocks(order[:per], g.size, g.blocks, order, per)
    return Plan(keep)


def assert_removal_exact(model: onnx.ModelProto, seeds: Iterable[int] = range(4), *,
                         biases: bool = True) -> list[onnx.ModelProto]:
    """Zeroing removed channels' producers == removing them, <= 1e-5, for random plans.

    ``biases=False`` keeps the producer biases of removed channels in the reference (the
    prune passes must fold their constant activation). Returns the pruned models, each
    passed through ``onnx.checker`` with ``full_check``.
    """
    normalized = api.normalize(model)[0]
    groups = analyze(modelio.to_graph(normalized))
    pruned_models = []
    for seed in seeds:
        plan = random_valid_plan(groups, seed)
        assert any(plan.removed(g).size for g in groups), "nothing to remove"
        silent = zeroed(normalized, plan, biases=True)
        if not biases:
            silent = zeroed(normalized, plan, biases=False)
        pruned = api.apply_plan(silent, plan)
        onnx.checker.check_model(pruned, full_check=True)
        feeds = modelio.random_inputs(normalized, batch=2, seed=seed)
        expected, got = modelio.run(silent, feeds), modelio.run(pruned, feeds)
        assert [e.shape for e in expected] == [g.shape for g in got]
        assert max_diff(expected, got) <= 1e-5, f"seed {seed}"
        assert _float_weights(pruned) < _float_weights(normalized)
        pruned_models.append(pruned)
    return pruned_models


def _float_weights(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)
