"""PruneChannelsPass: physically remove the channels a plan drops, from every group member."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis import ChannelGroup, analyze
from onnxprune.errors import PassError
from onnxprune.graph import clear_inner_shapes, constant_value, input_or_none, set_values
from onnxprune.passes._base import Pass, PassResult

Entry = tuple[str, int | str, int]  # node, operand, index


class PruneChannelsPass(Pass):
    """Slice every producer, passenger and consumer of each group down to the kept channels.

    Rules:
      1. Groups are found afresh on the graph it receives, so slices added by earlier passes
         (a bias created by folding) are sliced too; ``ctx.plan`` names groups by id.
      2. A plan that removes channels of a blocked group, names an unknown group, keeps no
         channel of a group, or keeps unequal counts in the equal parts of a group that a
         grouped Conv reads or writes, is refused before anything changes.
      3. All slices of one initializer axis are cut at once, in original coordinates (a
         Concat consumer is cut for several groups at different offsets). A grouped Conv's
         weight is first cut on its input axis block by block (each block of filters loses
         the columns of its own input block), then on its output axis; ``group`` stays.
      4. Integer operands that count channel positions lose the removed positions they count
         (:class:`~onnxprune.analysis.groups.CountEdit`): a depthwise Conv's ``group``, a
         Reshape's shape entry, a Split's sizes (equal parts become explicit sizes: an
         attribute before opset 13, an int64 input from 13), a Slice's starts and ends, a
         Resize's sizes. A constant that other nodes also read is copied, not edited.
      5. Inner shapes are cleared, to be inferred again when the model is written.
    """

    def requires(self, graph: gs.Graph, ctx: Any) -> None:
        """Refuse plans that do not fit the graph (rule 2); nodes need unique names."""
        names = [n.name for n in graph.nodes]
        if not all(names) or len(set(names)) != len(names):
            raise PassError("nodes need unique names (run NameNodesPass first)")
        groups = {g.id: g for g in analyze(graph)}
        for gid, kept in ctx.plan.keep.items():
            group = groups.get(gid)
            if group is None:
                raise PassError(f"the plan names group '{gid}', which the model does not have")
            if not len(kept):
                raise PassError(f"the plan keeps no channel of group '{gid}'")
            if min(kept) < 0 or max(kept) >= group.size:
                raise PassError(f"the plan keeps channels outside group '{gid}' "
                                f"of {group.size} channels")
            if group.blocked and len(set(kept)) < group.size:
                raise PassError(f"the plan prunes group '{gid}', which is blocked: "
                                f"{group.blocked}")
            parts = group.part_counts(sorted(set(kept)))
            if len(set(parts)) > 1:
                raise PassError(f"the plan keeps {parts} channels of the {group.blocks} equal "
                                f"parts of group '{gid}', which a grouped Conv needs equal")

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Slice in place."""
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        keep_masks: dict[tuple[str, int], np.ndarray] = {}
        block_masks: dict[tuple[str, int], np.ndarray] = {}
        deltas: dict[Entry, int] = defaultdict(int)
        defaults: dict[tuple[str, int | str], tuple[int, ...]] = {}
        bases: dict[Entry, int] = {}
        removed_total = 0
        for group in analyze(graph):  # rule 1
            gone = ctx.plan.removed(group)
            if not gone.size:
                continue
            removed_total += gone.size
            _mark(group, gone, tensors, keep_masks, block_masks)
            for e in group.counts:  # rule 4
                deltas[(e.node, e.operand, e.index)] += e.delta(gone)
                defaults[(e.node, e.operand)] = e.default
                if e.base is not None:
                    bases[(e.node, e.operand, e.index)] = e.base
        for (name, axis), mask in block_masks.items():  # rule 3: grouped input axes first
            values = constant_value(tensors[name])
            rows = np.split(values, mask.shape[0], axis=0)
            set_values(tensors[name], np.concatenate(
                [np.compress(m, r, axis=axis) for m, r in zip(mask, rows, strict=True)]))
        for (name, axis), mask in keep_masks.items():
            set_values(tensors[name], np.compress(mask, constant_value(tensors[name]), axis=axis))
        _edit_counts(graph, nodes, deltas, defaults, bases)
        if removed_total:
            clear_inner_shapes(graph)  # rule 5
        return PassResult(graph, removed_total > 0, {"channels_removed": int(removed_total)})


def _mark(group: ChannelGroup, gone: np.ndarray, tensors: dict[str, gs.Tensor],
          keep_masks: dict[tuple[str, int], np.ndarray],
          block_masks: dict[tuple[str, int], np.ndarray]) -> None:
    """Clear the positions of ``gone`` channels in each slice's keep mask (rule 3)."""
    for s in group.slices:
        width = tensors[s.initializer].shape[s.axis]
        p = s.positions(gone)
        if s.groups > 1:
            mask = block_masks.setdefault((s.initializer, s.axis),
                                          np.ones((s.groups, width), bool))
            mask[p // width, p % width] = False
        else:
            keep_masks.setdefault((s.initializer, s.axis), np.ones(width, bool))[p] = False


def _edit_counts(graph: gs.Graph, nodes: dict[str, gs.Node], deltas: dict[Entry, int],
                 defaults: dict[tuple[str, int | str], tuple[int, ...]],
                 bases: dict[Entry, int]) -> None:
    """Subtract each entry's removed positions from its operand (rule 4)."""
    by_operand: dict[tuple[str, int | str], dict[int, int]] = defaultdict(dict)
    for (name, operand, index), delta in deltas.items():
        by_operand[(name, operand)][index] = delta
    taken = set(graph.tensors())
    for (name, operand), entries in by_operand.items():
        node = nodes[name]
        default = defaults[(name, operand)]
        tensor = input_or_none(node, operand) if isinstance(operand, int) else None
        if isinstance(operand, str):
            current = node.attrs.get(operand, list(default))
        else:
            current = default if tensor is None else constant_value(tensor)
        values = np.array(current, dtype=np.int64).reshape(-1)
        for i, delta in entries.items():
            values[max(i, 0)] = bases.get((name, operand, i), values[max(i, 0)]) - delta
        if isinstance(operand, str):
            node.attrs[operand] = int(values[0]) if -1 in entries else values.tolist()
        elif tensor is not None and [n.name for n in tensor.outputs] == [name] \
                and tensor not in graph.inputs:
            set_values(tensor, values.astype(constant_value(tensor).dtype))
        else:
            _set_private_input(node, operand, values, taken)
        if node.op == "Split":
            node.attrs.pop("num_outputs", None)


def _set_private_input(node: gs.Node, index: int, values: np.ndarray, taken: set[str]) -> None:
    """Give ``node`` a constant input ``index`` of its own holding ``values``."""
    name, n = f"{node.name}_in{index}", 0
    while name in taken:
        n += 1
        name = f"{node.name}_in{index}_{n}"
    taken.add(name)
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = gs.Constant(name, np.ascontiguousarray(values))
