"""DESIGN.md invariants as properties over every sample model and several random plans.

Invariant 2 (zero-channel equivalence) is asserted in the three forms in which it is exact:

* the producer weights *and* biases of the removed channels zeroed: every output matches;
* biases kept wherever no zero padding lies between a group's producers and its consumers
  (FoldRemovedChannelsPass folds their constant activation into the consumers): every output
  matches, and zeroing those biases instead would change the outputs;
* biases kept before a zero-padded Conv (a "border approximation"): that consumer's outputs
  match at every position whose window stays inside the input, and where they differ at the
  border the pass says so.

Which groups are padded is decided here from the graph, not from the pass's own statistics.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx_graphsurgeon as gs
import pytest
from conftest import ROOT, SIZE, at_size, groups_of, max_diff, normalized, random_plan, zeroed

from onnxprune import api, metrics, modelio
from onnxprune.analysis.groups import ChannelGroup, balance_blocks
from onnxprune.errors import UsageError
from onnxprune.methods.budget import rounded_keep
from onnxprune.passes import PruneContext, run_passes
from onnxprune.passes.pipeline import PRUNE
from onnxprune.plan import Plan

SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_zero_channel_equivalence(sample: Path, seed: int) -> None:
    """Zeroing the producers of some channels == removing them (invariant 2)."""
    model = normalized(sample)
    plan = random_plan(groups_of(model), seed)
    assert any(plan.removed(g).size for g in groups_of(model))
    feeds = modelio.random_inputs(model, batch=3, seed=seed)
    silent = zeroed(model, plan, biases=True)
    pruned = api.apply_plan(silent, plan)
    assert max_diff(modelio.run(silent, feeds), modelio.run(pruned, feeds)) <= 1e-5
    assert pruned.ByteSize() < model.ByteSize()


def _reads_padding(node: gs.Node) -> bool:
    """Whether ``node`` can turn a spatially constant input into a non-constant output."""
    if node.op in ("Pad", "ConvTranspose"):
        return True
    return (str(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID")
            or any(int(p) for p in node.attrs.get("pads", ())))


def _padding(model: onnx.ModelProto, group: ChannelGroup) -> tuple[set[str], set[str]]:
    """The padded consumers of ``group``, and the padded nodes between producers and consumers.

    Walks the graph forward from the producers, stopping at the group's consumers.
    """
    graph = modelio.to_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    consumers = {s.node for s in group.consumers}
    todo = [nodes[s.node] for s in group.producers]
    seen: set[str] = set()
    padded_consumers, padded_between = set(), set()
    while todo:
        for tensor in todo.pop().outputs:
            for node in tensor.outputs:
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.name in consumers:
                    if _reads_padding(node):
                        padded_consumers.add(node.name)
                else:
                    todo.append(node)
                    if _reads_padding(node):
                        padded_between.add(node.name)
    return padded_consumers, padded_between


def _pruned(silent: onnx.ModelProto, plan: Plan) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``silent`` after the prune passes, and FoldRemovedChannelsPass's statistics."""
    graph = modelio.to_graph(silent)
    log = dict(run_passes(PRUNE, graph, PruneContext(plan)))
    return modelio.to_model(graph, silent), log["FoldRemovedChannelsPass"].stats


@pytest.mark.parametrize("seed", SEEDS)
def test_removal_with_nonzero_bias_is_exact_away_from_padding(sample: Path, seed: int) -> None:
    """Biases of removed channels kept wherever no padding lies ahead: removal stays exact.

    Removed channels of padded groups get their biases zeroed too (their exact form is
    checked in the interior by the next test), so every output must match everywhere.
    """
    model = normalized(sample)
    groups = groups_of(model)
    plan = random_plan(groups, seed)
    padded = {g.id for g in groups if any(_padding(model, g))}
    silent = zeroed(zeroed(model, plan, biases=False),
                    Plan({k: v for k, v in plan.keep.items() if k in padded}), biases=True)
    feeds = modelio.random_inputs(model, batch=3, seed=seed)
    pruned, fold = _pruned(silent, plan)
    expected = modelio.run(silent, feeds)
    assert fold.get("border_approximations", 0) == 0
    assert max_diff(expected, modelio.run(pruned, feeds)) <= 1e-5
    if any(plan.removed(g).size for g in groups if g.id not in padded and not g.blocked):
        assert fold["consumers_folded"] > 0
        dropped = modelio.run(zeroed(model, plan, biases=True), feeds)
        assert max_diff(expected, dropped) > 1e-4, "the kept biases should matter here"


def _run_for(model: onnx.ModelProto, names: list[str],
             feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The values of the named tensors of ``model`` (made extra graph outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, None))
    values = modelio.run(probe, feeds)[len(model.graph.output):]
    return dict(zip(names, values, strict=True))


def _interior(conv: gs.Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """The output positions of a Conv whose window lies wholly inside its (unpadded) input."""
    kernel = conv.inputs[1].shape[2:]
    rank = len(kernel)
    strides = conv.attrs.get("strides", [1] * rank)
    dilations = conv.attrs.get("dilations", [1] * rank)
    begins = conv.attrs.get("pads", [0] * 2 * rank)[:rank]
    mask = np.ones((), dtype=bool)
    for size, n_out, k, s, d, p in zip(in_shape[2:], out_shape[2:], kernel, strides,
                                       dilations, begins, strict=True):
        first = np.arange(n_out) * s - p
        inside = (first >= 0) & (first + (k - 1) * d < size)
        mask = np.logical_and.outer(mask, inside)
    return np.broadcast_to(mask, out_shape)


def _feeds_itself(model: onnx.ModelProto, group: ChannelGroup) -> bool:
    """Whether a consumer of ``group`` reaches one of its producers (a residual block).

    Then a border difference at that consumer flows back into the group's own channels and
    spreads further at the next consumers, so only the first consumers could be compared.
    """
    graph = modelio.to_graph(model)
    producers = {s.node for s in group.producers}
    todo = [n for n in graph.nodes if n.name in {s.node for s in group.consumers}]
    seen: set[str] = set()
    while todo:
        for tensor in todo.pop().outputs:
            for node in tensor.outputs:
                if node.name in producers:
                    return True
                if node.name not in seen:
                    seen.add(node.name)
                    todo.append(node)
    return False


PADDED_SAMPLES = ["inception", "resnet", "vgg_bn", "vgg_bn_unfolded"]


@pytest.mark.parametrize("name", PADDED_SAMPLES)
def test_removal_before_padded_conv_is_exact_in_the_interior(name: str) -> None:
    """One group at a time, biases kept: each consumer matches away from its padded border.

    Groups whose only padding is at Conv consumers, and whose consumers do not feed their own
    producers, are checked; the zero-bias form of the rest is checked above.
    """
    model = normalized(ROOT / "sample_models" / f"{name}.onnx")
    graph = modelio.to_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    groups = groups_of(model)
    plan = random_plan(groups, 0)
    feeds = modelio.random_inputs(model, batch=3, seed=0)
    checked = border_differs = 0
    for group in groups:
        padded_consumers, padded_between = _padding(model, group)
        if (group.blocked or not padded_consumers or padded_between
                or _feeds_itself(model, group)):
            continue
        assert all(nodes[c].op == "Conv" for c in padded_consumers)
        single = Plan({group.id: plan.keep[group.id]})
        silent = zeroed(model, single, biases=False)
        pruned, fold = _pruned(silent, single)
        consumers = sorted({s.node for s in group.consumers})
        outs = [nodes[c].outputs[0].name for c in consumers]
        ins = [nodes[c].inputs[0].name for c in consumers]
        expected = _run_for(silent, outs + ins, feeds)
        got = _run_for(pruned, outs, feeds)
        differs = False
        for consumer, out, inp in zip(consumers, outs, ins, strict=True):
            want, have = expected[out], got[out]
            mask = (_interior(nodes[consumer], expected[inp].shape, want.shape)
                    if consumer in padded_consumers else np.ones(want.shape, dtype=bool))
            assert mask.any()
            scale = max(1.0, float(np.abs(want).max()))
            assert np.abs(want - have)[mask].max(initial=0.0) / scale <= 1e-5, consumer
            differs |= bool(np.abs(want - have)[~mask].max(initial=0.0) / scale > 1e-5)
        if differs:
            assert fold["border_approximations"] > 0, "an approximation the pass did not report"
        checked += 1
        border_differs += differs
    assert checked > 0 and border_differs > 0


@cache
def _floor_flops(path: Path, round_to: int) -> float:
    """The FLOPs fraction left when every prunable group keeps ``round_to`` channels."""
    model = normalized(path)
    plan = Plan({g.id: balance_blocks([], g.size, g.blocks,
                                      per_block=rounded_keep(1, g.size, round_to, g.blocks)
                                      // g.blocks)
                 for g in groups_of(model) if not g.blocked})
    pruned = modelio.observe_shapes(api.apply_plan(model, plan))
    return metrics.count(modelio.to_graph(pruned))[1] / metrics.count(modelio.to_graph(model))[1]


def _check_pruned(result: api.PruneResult, fraction: float) -> None:
    """The budget holds, and the model passes the full checker and runs (invariant 4)."""
    before, after = result.report["before"], result.report["after"]
    assert after["flops"] <= fraction * before["flops"]
    onnx.checker.check_model(result.model, full_check=True)
    modelio.session(result.model)
    feeds = modelio.random_inputs(at_size(result.model), batch=2)
    assert np.isfinite(modelio.run(result.model, feeds)[0]).all()


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.8])
@pytest.mark.parametrize("round_to", [1, 8])
def test_magnitude_meets_flops_budget_and_writes_checked_models(
        sample: Path, fraction: float, round_to: int) -> None:
    """FLOPs after <= F x FLOPs before; every output passes the full checker (invariant 4).

    A budget below the floor (every group at ``round_to`` channels, measured on the pruned
    model) must be refused; the floor itself, rounded up, must then be met.
    """
    floor = _floor_flops(sample, round_to)
    assert abs(floor - fraction) > 1e-6, "a budget on the floor tests neither branch"
    if floor > fraction:
        with pytest.raises(UsageError, match=f"cannot be met.* {floor:.3f} of the FLOPs"):
            api.prune(sample, "magnitude", max_flops=fraction, round_to=round_to,
                      input_size=SIZE)
        fraction = float(np.ceil(floor * 1000) / 1000)
    _check_pruned(api.prune(sample, "magnitude", max_flops=fraction, round_to=round_to,
                            input_size=SIZE), fraction)


def test_keep_everything_plan_gives_same_outputs(sample: Path) -> None:
    """A plan that keeps every channel writes a model with the same outputs (invariant 3)."""
    original = at_size(modelio.load(sample))
    model = normalized(sample)
    plan = Plan({g.id: tuple(range(g.size)) for g in groups_of(model) if not g.blocked})
    pruned = api.apply_plan(model, plan)
    feeds = modelio.random_inputs(original, batch=4, seed=7)
    assert max_diff(modelio.run(original, feeds), modelio.run(pruned, feeds)) <= 1e-4
    assert max_diff(modelio.run(model, feeds), modelio.run(pruned, feeds)) <= 1e-6


def test_input_file_is_never_modified(sample: Path, tmp_path: Path) -> None:
    """Invariant 5: the input file's bytes are the same after pruning and saving."""
    before = sample.read_bytes()
    result = api.prune(sample, "magnitude", max_flops=0.5, round_to=1, input_size=SIZE)
    result.save(tmp_path / "out.onnx")
    assert sample.read_bytes() == before
    assert (tmp_path / "out.onnx").stat().st_size == result.report["after"]["bytes"]
