"""Ops that move channels to other positions of the channel axis, or away from it.

``Concat`` on axis 1 shifts each input's channel runs by an offset; ``Flatten`` (and a
``Reshape`` that flattens) folds the positions after the channel axis into each channel.

``Split`` and ``Slice`` on axis 1 keep a range ``[lo, hi)`` of channel positions: each output
holds the channel runs that fall in its range (:func:`~onnxprune.analysis.groups.crop`), and
the sizes and bounds that name positions become
:class:`~onnxprune.analysis.groups.CountEdit` values, so removing channels rewrites them:
a Split output's new size is the number of kept positions in its range, a Slice's new start
(end) the number of kept positions before the old one (a negative one, counted from the end,
is first made the position it names).

A channel shuffle, ``Reshape (N, G, K, H, W) -> Transpose [0, 2, 1, 3, 4] -> Reshape
(N, G*K, H, W)``, moves position ``i*K + j`` to ``j*G + i``. When each of the ``G`` blocks of
``K`` positions is one whole group (ShuffleNet v2: a Concat of two branches), the shuffle
interleaves them, so channel ``j`` of every block must go together: the groups merge and the
output holds the merged group at stride ``G``. Any other shuffle blocks.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis.builder import GroupBuilder
from onnxprune.analysis.common import (
    attr_or_input,
    channel_span,
    dims_after_channel,
    rank,
    run_count,
)
from onnxprune.analysis.groups import Seg, crop, scale, shift
from onnxprune.graph import attr


def _channel_axis(axes: list[int], r: int | None) -> int | None:
    """The index in ``axes`` of axis 1, -2 when unknown (negative axes, unknown rank)."""
    if r is None and any(a < 0 for a in axes):
        return -2
    for j, a in enumerate(axes):
        if (a % r if r is not None else a) == 1:
            return j
    return None


def split(b: GroupBuilder, node: gs.Node) -> None:
    """Split: on axis 1 each output keeps its range of channel runs; else channels pass."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    j = _channel_axis([int(attr(node, "axis", 0))], rank(node.inputs[0], *node.outputs))
    if j is None:
        for out in node.outputs:
            b.set_layout(out, segs)
        return
    width, n = channel_span(segs), len(node.outputs)
    old = b.graph.opset < 13
    operand: int | str = "split" if old else 1
    sizes = attr_or_input(b, node, "split", 1)
    default: tuple[int, ...] = ()
    if j == -2 or (sizes is None and not old and len(node.inputs) > 1 and node.inputs[1].name):
        b.block(segs, f"Split '{node.name}' splits channels at sizes known only at run time")
        return
    if sizes is None:
        part = -(-width // n) if b.graph.opset >= 18 else width // n
        default = tuple(min(part, width - k * part) for k in range(n))
        sizes = np.asarray(default)
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    if bounds[-1] != width or (sizes <= 0).any():
        b.block(segs, f"Split '{node.name}' sizes {list(sizes)} do not cover {width} channels")
        return
    outs = [crop(segs, int(lo), int(hi)) for lo, hi in zip(bounds, bounds[1:], strict=False)]
    if any(o is None for o in outs):
        b.block(segs, f"Split '{node.name}' cuts through the positions of one channel")
        return
    for k, (out, lo, hi) in enumerate(zip(outs, bounds, bounds[1:], strict=False)):
        b.set_layout(node.outputs[k], out or [])
        for s in segs:
            if s.gid is not None:
                b.add_count(s.gid, run_count(s, node, operand, k, lo=int(lo), hi=int(hi),
                                             default=default))


def slice_(b: GroupBuilder, node: gs.Node) -> None:
    """Slice: a constant step-1 range of axis 1 keeps its channel runs; other axes pass."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    old = b.graph.opset < 10
    starts, ends = attr_or_input(b, node, "starts", 1), attr_or_input(b, node, "ends", 2)
    axes = attr_or_input(b, node, "axes", 3)
    steps = None if old else attr_or_input(b, node, "steps", 4)
    if starts is None or ends is None or any(
            node.inputs[i].name and b.constant(node.inputs[i]) is None
            for i in range(3, len(node.inputs)) if not old):
        b.block(segs, f"Slice '{node.name}' has bounds known only at run time")
        return
    axes_list = [int(a) for a in (axes if axes is not None else range(len(starts)))]
    j = _channel_axis(axes_list, rank(node.inputs[0], node.outputs[0]))
    if j is None:
        b.set_layout(node.outputs[0], segs)
        return
    if j == -2:
        b.block(segs, f"Slice '{node.name}' names negative axes of a tensor of unknown rank")
        return
    step = int(steps[j]) if steps is not None else 1
    if step != 1:
        b.block(segs, f"Slice '{node.name}' steps by {step} over the channel axis")
        return
    width = channel_span(segs)
    lo, hi = (int(np.clip(v + width if v < 0 else v, 0, width)) for v in (starts[j], ends[j]))
    out = crop(segs, lo, hi) if hi > lo else None
    if not out:
        b.block(segs, f"Slice '{node.name}' keeps no channel or cuts through one channel")
        return
    b.set_layout(node.outputs[0], out)
    for which, value in ((1, int(starts[j])), (2, int(ends[j]))):
        operand: int | str = ("starts", "ends")[which - 1] if old else which
        if value >= width or value <= -width or value == 0:
            continue  # clamped to an end of the axis either way
        bound = dict(hi=value) if value > 0 else dict(hi=width + value, base=width + value)
        for s in segs:
            if s.gid is not None:
                b.add_count(s.gid, run_count(s, node, operand, j, **bound))


def transpose(b: GroupBuilder, node: gs.Node) -> None:
    """Transpose: a permutation of the spatial axes keeps channels; any other moves them."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    r = rank(node.inputs[0], node.outputs[0])
    perm = attr(node, "perm", None if r is None else list(range(r))[::-1])
    if perm is None or list(perm[:2]) != [0, 1]:
        where = "an unknown axis" if perm is None else f"axis {list(perm).index(1)}"
        b.block(segs, f"Transpose '{node.name}' moves the channel axis to {where}")
        return
    b.set_layout(node.outputs[0], segs)


def _only_reader(t: gs.Tensor, op: str, graph: gs.Graph) -> gs.Node | None:
    if len(t.outputs) != 1 or t.outputs[0].op != op or any(o is t for o in graph.outputs):
        return None
    return t.outputs[0]


def channel_shuffle(b: GroupBuilder, node: gs.Node, segs: list[Seg]) -> bool:
    """Follow a channel shuffle starting at Reshape ``node``; False when it is not one.

    Returns True when it recorded the shuffle (or blocked it with a reason).
    """
    first = b.constant(node.inputs[1])
    if first is None or first.shape != (5,) or rank(node.inputs[0]) != 4:
        return False
    tr = _only_reader(node.outputs[0], "Transpose", b.graph)
    back = _only_reader(tr.outputs[0], "Reshape", b.graph) if tr is not None else None
    if tr is None or back is None or list(attr(tr, "perm", [])) != [0, 2, 1, 3, 4]:
        return False
    second = b.constant(back.inputs[1])
    width = channel_span(segs)
    groups, k = int(first[1]), int(first[2])
    groups, k = (width // k, k) if groups == -1 else (groups, width // groups if k == -1 else k)
    if second is None or second.shape != (4,) or groups * k != width \
            or int(second[1]) not in (width, -1) or -1 in (*first[3:], *second[2:]):
        b.block(segs, f"Reshape '{node.name}' starts a channel shuffle of shapes that "
                      "cannot be read")
        return True
    blocks = [crop(segs, i * k, (i + 1) * k) for i in range(groups)]
    whole = [c[0] for c in blocks if c and len(c) == 1 and c[0].gid is not None
             and c[0].stride == 1 and c[0].start == 0 and b.size(c[0].gid) == k]
    if len(whole) != groups:
        b.block(segs, f"channel shuffle at Reshape '{node.name}' interleaves {groups} blocks "
                      f"of {k} positions that are not each one whole group of {k} channels")
        return True
    gid = whole[0].gid
    for s in whole[1:]:
        b.union(gid, s.gid)  # type: ignore[arg-type]
    run = Seg(gid, 0, k)
    if int(first[2]) != -1:
        b.add_count(gid, run_count(run, node, 1, 2))  # type: ignore[arg-type]
    if int(second[1]) != -1:
        b.add_count(gid, run_count(Seg(gid, 0, k, groups), back, 1, 1))  # type: ignore[arg-type]
    b.set_layout(back.outputs[0], [Seg(gid, 0, k, groups)])
    return True


def concat(b: GroupBuilder, node: gs.Node) -> None:
    """Concat on the channel axis: each input's channels land at an offset of the output."""
    if not any(b.layout(t) for t in node.inputs):
        return
    r = rank(node.outputs[0], *node.inputs)
    axis = int(attr(node, "axis", 1))
    if r is None and axis < 0:
        b.block_inputs(node, f"Concat '{node.name}' joins along axis {axis} of a tensor of "
                             "unknown rank")
        return
    if (axis % r if r is not None else axis) != 1:
        b.block_inputs(node, f"Concat '{node.name}' joins along axis {axis} of rank {r}, "
                             "not the channel axis 1")
        return
    segs: list[Seg] = []
    offset = 0
    for t in node.inputs:
        own = b.layout(t)
        if own is None:
            width = t.shape[1] if t.shape is not None and len(t.shape) > 1 else None
            if not isinstance(width, int):
                b.block_inputs(node, f"Concat '{node.name}' has an input of unknown width")
                return
            own = [Seg(None, 0, width)]
        segs.extend(shift(own, offset))
        offset += channel_span(own)
    b.set_layout(node.outputs[0], segs)


def flatten(b: GroupBuilder, node: gs.Node) -> None:
    """Flatten at axis 1: channel c of a (N, C, H, W) input becomes columns c*HW ... (c+1)*HW-1."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    inner = dims_after_channel(node.inputs[0])
    if int(attr(node, "axis", 1)) != 1 or inner is None:
        b.block(segs, f"Flatten '{node.name}' does not flatten from the channel axis "
                      "of a static shape")
        return
    b.set_layout(node.outputs[0], scale(segs, inner))


def reshape(b: GroupBuilder, node: gs.Node) -> None:
    """Reshape to (batch, -1 or C*H*W): a Flatten whose shape constant may need editing.

    Reshape to (N, G, C/G, H, W) may start a channel shuffle (:mod:`positions`).
    """
    segs = b.layout(node.inputs[0])
    if segs is None or channel_shuffle(b, node, segs):
        return
    target = b.constant(node.inputs[1])
    inner = dims_after_channel(node.inputs[0])
    if target is None or inner is None or not _flattens(node, target, channel_span(segs) * inner):
        b.block(segs, f"Reshape '{node.name}' mixes channels with other axes")
        return
    flat = scale(segs, inner)
    if int(target[1]) != -1:
        for s in flat:
            if s.gid is not None:
                b.add_count(s.gid, run_count(s, node, 1, 1))
    b.set_layout(node.outputs[0], flat)


def _flattens(node: gs.Node, target: np.ndarray, width: int) -> bool:
    """Whether a Reshape to ``target`` keeps the batch and folds everything else into axis 1."""
    if target.shape != (2,):
        return False
    batch, rest = int(target[0]), int(target[1])
    static_batch = [d for d in node.inputs[0].shape[:1] if isinstance(d, int)]
    zero_is_literal = bool(attr(node, "allowzero", 0))
    batch_ok = batch == -1 or batch in static_batch or (batch == 0 and not zero_is_literal)
    return batch_ok and rest in (-1, width) and not batch == rest == -1
