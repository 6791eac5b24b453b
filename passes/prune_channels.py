"""PruneChannelsPass: physically remove the channels a plan drops, from every group member."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis import analyze
from onnxprune.errors import PassError
from onnxprune.graph import clear_inner_shapes, constant_value, set_values
from onnxprune.passes._base import Pass, PassResult


class PruneChannelsPass(Pass):
    """Slice every producer, passenger and consumer of each group down to the kept channels.

    Rules:
      1. Groups are found afresh on the graph it receives, so slices added by earlier passes
         (a bias created by folding) are sliced too; ``ctx.plan`` names groups by id.
      2. A plan that removes channels of a blocked group, names an unknown group, or keeps no
         channel of a group is refused before anything changes.
      3. All slices of one initializer axis are cut at once, in original coordinates (a
         Concat consumer is cut for several groups at different offsets).
      4. A depthwise Conv's ``group`` attribute becomes the kept count; a Reshape's shape
         entry shrinks by the removed positions.
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

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Slice in place."""
        tensors = graph.tensors()
        nodes = {n.name: n for n in graph.nodes}
        keep_masks: dict[tuple[str, int], np.ndarray] = {}
        shape_edits: dict[tuple[str, int], int] = defaultdict(int)
        removed_total = 0
        for group in analyze(graph):  # rule 1
            gone = ctx.plan.removed(group)
            if not gone.size:
                continue
            removed_total += gone.size
            for s in group.slices:  # rule 3
                length = tensors[s.initializer].shape[s.axis]
                mask = keep_masks.setdefault((s.initializer, s.axis), np.ones(length, bool))
                mask[s.positions(gone)] = False
            for name in group.depthwise:  # rule 4
                nodes[name].attrs["group"] = group.size - gone.size
            for e in group.reshapes:
                shape_edits[(e.initializer, e.index)] += gone.size * e.stride
        for (name, axis), mask in keep_masks.items():
            set_values(tensors[name], np.compress(mask, constant_value(tensors[name]), axis=axis))
        for (name, index), delta in shape_edits.items():
            values = constant_value(tensors[name]).copy()
            values[index] -= delta
            set_values(tensors[name], values)
        if removed_total:
            clear_inner_shapes(graph)  # rule 5
        return PassResult(graph, removed_total > 0, {"channels_removed": int(removed_total)})
