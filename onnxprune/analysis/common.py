"""Steps that several channel roles share: ranks, widths, operands, slices and edits of runs."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis.builder import GroupBuilder
from onnxprune.analysis.groups import CountEdit, Seg, Slice
from onnxprune.graph import attr


def rank(*tensors: gs.Tensor) -> int | None:
    """The rank of the first of ``tensors`` whose shape is known (dimensions may be symbolic)."""
    for t in tensors:
        if t.shape is not None:
            return len(t.shape)
    return None


def dims_after_channel(tensor: gs.Tensor) -> int | None:
    """Product of the static dimensions after axis 1, or None when any is unknown."""
    if tensor.shape is None or len(tensor.shape) < 2:
        return None
    size = 1
    for d in tensor.shape[2:]:
        if not isinstance(d, int) or d <= 0:
            return None
        size *= d
    return size


def channel_span(segs: list[Seg]) -> int:
    """The number of channel-axis positions the runs cover."""
    return sum(s.span for s in segs)


def attr_or_input(b: GroupBuilder, node: gs.Node, name: str,
                  index: int = 1) -> np.ndarray | None:
    """An operand given as attribute ``name`` (old opsets) or as constant input ``index``."""
    value = attr(node, name)
    if value is None and len(node.inputs) > index and node.inputs[index].name:
        value = b.constant(node.inputs[index])
    return None if value is None else np.ravel(value)


def run_slice(s: Seg, tensor: gs.Tensor, node: gs.Node, axis: int, **kw: object) -> Slice:
    """The slice of ``tensor``'s ``axis`` that the channel run ``s`` occupies."""
    return Slice(tensor.name, node.name, axis, s.offset, s.stride, start=s.start,
                 length=s.length, **kw)  # type: ignore[arg-type]


def run_count(s: Seg, node: gs.Node, operand: int | str, index: int,
              **kw: object) -> CountEdit:
    """An edit of ``node``'s ``operand`` entry ``index`` that counts the run ``s``."""
    return CountEdit(node.name, operand, index, s.offset, s.stride, s.start, s.length,
                     **kw)  # type: ignore[arg-type]


def add_runs(b: GroupBuilder, segs: list[Seg], role: str, tensor: gs.Tensor, node: gs.Node,
             axis: int) -> None:
    """Record ``tensor``'s ``axis`` as a ``role`` slice of every tracked run of ``segs``."""
    for s in segs:
        if s.gid is not None:
            b.add(s.gid, role, run_slice(s, tensor, node, axis))


Entry = tuple[str, int] | None  # (tensor, axis) of a Shape entry, None for any other value


def shape_entries(b: GroupBuilder, tensor: gs.Tensor, depth: int = 8) -> list[Entry] | None:
    """The entries of a 1-D value computed at run time from ``Shape`` nodes.

    Each entry is ``(name, axis)`` when it is dimension ``axis`` of tensor ``name``, read by a
    ``Shape`` (through Slice, Gather, Unsqueeze, Squeeze, Cast, Identity and Concat on axis
    0), else None. Returns None when the number of entries cannot be read. Example: an
    exporter's ``sizes`` of a Resize to the height and width of ``y``, ``Concat(Slice(Shape(x),
    [0], [2]), Cast(Concat(Unsqueeze(Gather(Shape(y), 2)), Unsqueeze(Gather(Shape(y), 3)))))``,
    gives ``[("x", 0), ("x", 1), ("y", 2), ("y", 3)]``.
    """
    value = b.constant(tensor)
    if value is not None:
        return [None] * max(1, value.size) if value.ndim <= 1 else None
    node = tensor.inputs[0] if len(tensor.inputs) == 1 and depth > 0 else None
    if node is None:
        return None
    source = node.inputs[0] if node.inputs else None
    if node.op == "Shape":
        r = rank(source)
        if r is None:
            return None
        start, end = int(attr(node, "start", 0)), int(attr(node, "end", r))
        return [(source.name, a) for a in range(r)][slice(start, end)]
    if node.op == "Concat" and int(attr(node, "axis", 0)) in (0, -1):
        parts = [shape_entries(b, t, depth - 1) for t in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    inner = shape_entries(b, source, depth - 1) if source is not None else None
    if inner is None:
        return None
    if node.op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
        return inner
    if node.op == "Gather" and int(attr(node, "axis", 0)) == 0:
        indices = b.constant(node.inputs[1])
        if indices is None or not all(-len(inner) <= int(i) < len(inner) for i in indices.flat):
            return None
        return [inner[int(i)] for i in indices.flat]
    if node.op == "Slice":  # opset 10 on: inputs; before: attributes
        starts, ends, axes, steps = (attr_or_input(b, node, name, i) for i, name in
                                     enumerate(("starts", "ends", "axes", "steps"), 1))
        if starts is None or ends is None or len(starts) != 1 or \
                (axes is not None and list(axes) not in ([0], [-1])) or \
                (steps is not None and list(steps) != [1]):
            return None
        return inner[slice(int(starts[0]), int(ends[0]))]
    return None
