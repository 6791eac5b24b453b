"""The mutable state of one analysis run, and the only code that grows channel groups.

Handlers in :mod:`onnxprune.analysis.roles` read nodes and call a :class:`GroupBuilder`'s
methods to record producers, passengers, consumers, merges and blocks; :meth:`groups` then
freezes the drafts into :class:`~onnxprune.analysis.groups.ChannelGroup` values, after the
graph-wide checks that no single handler can make: channels that reach a graph output, an
initializer shared outside its group, or a tensor that an If/Loop/Scan subgraph reads from the
enclosing scope (:func:`subgraph_reads`; analysis does not follow channels into subgraphs).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis.groups import ChannelGroup, CountEdit, Seg, Slice, lcm
from onnxprune.graph import constant_value


@dataclass
class _Draft:
    """A group while analysis still grows it."""

    size: int
    first_node: str
    order: int
    slices: dict[str, list[Slice]] = field(default_factory=lambda: defaultdict(list))
    depthwise: list[str] = field(default_factory=list)
    counts: list[CountEdit] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    blocks: int = 1


class GroupBuilder:
    """The mutable state of one analysis run: channel runs per tensor and draft groups.

    Handlers in :mod:`onnxprune.analysis.roles` call its methods; nothing else mutates it.
    """

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.layouts: dict[str, list[Seg]] = {}
        self._drafts: list[_Draft] = []
        self._parent: list[int] = []

    # groups
    def new_group(self, node: gs.Node, size: int) -> int:
        """Start a group of ``size`` channels created by ``node``."""
        self._drafts.append(_Draft(size, node.name or node.outputs[0].name, len(self._drafts)))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def find(self, gid: int) -> int:
        """Return the representative of ``gid`` after merges."""
        while self._parent[gid] != gid:
            self._parent[gid] = self._parent[self._parent[gid]]
            gid = self._parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        """Merge two groups (a residual Add): their channels are removed together."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._drafts[rb].order < self._drafts[ra].order:
            ra, rb = rb, ra
        keep, gone = self._drafts[ra], self._drafts[rb]
        if keep.size != gone.size:
            keep.blocked.append(f"merges groups of {keep.size} and {gone.size} channels")
        for role, items in gone.slices.items():
            keep.slices[role].extend(items)
        keep.depthwise.extend(gone.depthwise)
        keep.counts.extend(gone.counts)
        keep.blocked.extend(gone.blocked)
        keep.blocks = lcm(keep.blocks, gone.blocks)
        self._parent[rb] = ra

    def add(self, gid: int, role: str, item: Slice) -> None:
        """Record a producer, passenger or consumer slice of group ``gid``."""
        self._drafts[self.find(gid)].slices[role].append(item)

    def add_depthwise(self, gid: int, node: gs.Node) -> None:
        """Record a depthwise Conv whose ``group`` attribute counts this group's channels."""
        self._drafts[self.find(gid)].depthwise.append(node.name)

    def add_count(self, gid: int, edit: CountEdit) -> None:
        """Record an operand entry (a shape, size, bound or ``group``) that counts channels."""
        self._drafts[self.find(gid)].counts.append(edit)

    def require_blocks(self, gid: int, blocks: int) -> None:
        """Require group ``gid`` to lose channels evenly from each of ``blocks`` equal parts."""
        draft = self._drafts[self.find(gid)]
        draft.blocks = lcm(draft.blocks, blocks)

    def size(self, gid: int) -> int:
        """Return the number of channels of group ``gid``."""
        return self._drafts[self.find(gid)].size

    def block(self, segs: list[Seg] | None, reason: str) -> None:
        """Block every group with channels in ``segs``, saying why."""
        for s in segs or []:
            if s.gid is not None:
                self._drafts[self.find(s.gid)].blocked.append(reason)

    def block_inputs(self, node: gs.Node, reason: str) -> None:
        """Block every group that reaches any input of ``node``."""
        for t in node.inputs:
            self.block(self.layouts.get(t.name), reason)

    # tensors
    def layout(self, tensor: gs.Tensor) -> list[Seg] | None:
        """Return the channel runs of ``tensor``, or None when it carries no tracked channels."""
        return self.layouts.get(tensor.name)

    def set_layout(self, tensor: gs.Tensor, segs: list[Seg]) -> None:
        """Record the channel runs of ``tensor``."""
        self.layouts[tensor.name] = segs

    def constant(self, tensor: gs.Tensor) -> np.ndarray | None:
        """Return the value of ``tensor`` when it is an initializer."""
        return constant_value(tensor)

    # result
    def groups(self) -> list[ChannelGroup]:
        """Freeze the drafts into groups, applying the graph-wide checks."""
        self._block_graph_outputs()
        self._block_subgraph_reads()
        self._block_shared_initializers()
        groups = []
        for gid, draft in enumerate(self._drafts):
            if self.find(gid) != gid:
                continue
            if draft.size % draft.blocks:
                draft.blocked.append(f"grouped Convs need {draft.blocks} equal parts of "
                                     f"{draft.size} channels")
            reasons = list(dict.fromkeys(draft.blocked))
            groups.append(ChannelGroup(
                id=draft.first_node,
                size=draft.size,
                producers=tuple(draft.slices["producer"]),
                passengers=tuple(draft.slices["passenger"]),
                consumers=tuple(draft.slices["consumer"]),
                depthwise=tuple(draft.depthwise),
                counts=tuple(draft.counts),
                blocked="; ".join(reasons) if reasons else None,
                blocks=draft.blocks,
            ))
        return groups

    def _block_graph_outputs(self) -> None:
        for out in self.graph.outputs:
            self.block(self.layouts.get(out.name), f"reaches the graph output '{out.name}'")

    def _block_subgraph_reads(self) -> None:
        for node in self.graph.nodes:
            for name in sorted(subgraph_reads(node)):
                self.block(self.layouts.get(name),
                           f"{node.op} node '{node.name}' reads '{name}' inside its subgraph, "
                           "where channels cannot be followed")

    def _block_shared_initializers(self) -> None:
        users: dict[str, set[int]] = defaultdict(set)
        for gid, draft in enumerate(self._drafts):
            for items in draft.slices.values():
                for s in items:
                    users[s.initializer].add(self.find(gid))
        tensors = self.graph.tensors()
        for name, gids in users.items():
            readers = sorted({n.name for n in tensors[name].outputs})
            if len(readers) > 1:
                for gid in gids:
                    self._drafts[gid].blocked.append(
                        f"initializer '{name}' is shared by nodes {', '.join(readers)}")


def _subgraphs(node: gs.Node) -> list[gs.Graph]:
    """The graph attributes of ``node`` (If's branches, Loop's and Scan's body, lists of them)."""
    found: list[gs.Graph] = []
    for value in node.attrs.values():
        items = value if isinstance(value, list | tuple) else [value]
        found.extend(v for v in items if isinstance(v, gs.Graph))
    return found


def _outer_reads(graph: gs.Graph) -> set[str]:
    """Names that ``graph``'s nodes, or its nested subgraphs, read from enclosing scopes.

    A name is local when a node of ``graph`` produces it, or it is an input or a constant
    (initializer) of ``graph``. Names, not Tensor objects, are compared: graphsurgeon shares the
    outer Tensor with the subgraph on import, but a graph built by hand may hold a copy. Like
    graphsurgeon, every constant a subgraph uses counts as its own; an outer initializer read
    inside is still seen by the shared-initializer check, through the shared Tensor's readers.
    """
    local = {t.name for t in graph.inputs}
    local |= {t.name for n in graph.nodes for t in n.outputs}
    local |= {t.name for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    reads: set[str] = set()
    for n in graph.nodes:
        reads |= {t.name for t in n.inputs}
        for sub in _subgraphs(n):
            reads |= _outer_reads(sub)
    return reads - local - {""}


def subgraph_reads(node: gs.Node) -> set[str]:
    """Names that the subgraphs of ``node`` read from the scope ``node`` lives in.

    Example: ``If(cond)`` whose then-branch computes ``ReduceMean(relu1)`` reads ``{"relu1"}``;
    a Loop body's own inputs (iteration count, condition, carried values) are not reads. A node
    without graph attributes reads nothing this way (its explicit inputs are ``node.inputs``).
    """
    reads: set[str] = set()
    for sub in _subgraphs(node):
        reads |= _outer_reads(sub)
    return reads
