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
