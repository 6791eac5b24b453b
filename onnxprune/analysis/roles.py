"""What each ONNX op does to channels: the one table analysis dispatches through.

Each handler reads a node and records, on a
:class:`~onnxprune.analysis.builder.GroupBuilder`, the groups it creates (producers), the
slices that follow them (passengers, consumers), and the channel runs of its output. The
dispatcher (:mod:`onnxprune.analysis.analyzer`) looks ops up in :data:`ROLES`; an op missing
from it blocks every group that reaches it, with a sentence naming the op: analysis never
guesses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis.builder import GroupBuilder
from onnxprune.analysis.common import (
    add_runs,
    attr_or_input,
    channel_span,
    rank,
    run_count,
    run_slice,
    shape_entries,
)
from onnxprune.analysis.groups import Seg, Slice
from onnxprune.analysis.positions import concat, flatten, reshape, slice_, split, transpose
from onnxprune.graph import attr, input_or_none

Handler = Callable[[GroupBuilder, gs.Node], None]


# -- shared steps ---------------------------------------------------------------------------

def _consume(b: GroupBuilder, node: gs.Node, weight: gs.Tensor, axis: int) -> None:
    add_runs(b, b.layout(node.inputs[0]) or [], "consumer", weight, node, axis)


def _produce(b: GroupBuilder, node: gs.Node, size: int,
             slices: list[tuple[gs.Tensor, int, bool]]) -> int:
    gid = b.new_group(node, size)
    for tensor, axis, is_bias in slices:
        b.add(gid, "producer", Slice(tensor.name, node.name, axis, bias=is_bias))
    b.set_layout(node.outputs[0], [Seg(gid, 0, size)])
    return gid


def _pass_through(b: GroupBuilder, node: gs.Node) -> None:
    segs = b.layout(node.inputs[0])
    if segs is not None:
        b.set_layout(node.outputs[0], segs)


def _constant_operand(b: GroupBuilder, node: gs.Node, const: gs.Tensor, segs: list[Seg],
                      out_rank: int | None) -> bool:
    """Record a broadcast constant operand as neutral or as a per-channel passenger.

    A one-element constant (shape ``()``, ``(1,)``, ``(1, 1, 1, 1)``, ...) is neutral whatever
    the ranks. Returns False when the constant neither broadcasts over the channels nor has
    one entry per channel position (or the rank that aligns it is unknown): the caller blocks.
    """
    values = b.constant(const)
    if values is not None and values.size == 1:
        return True
    if values is None or out_rank is None:
        return False
    axis = values.ndim - (out_rank - 1)
    if axis < 0 or values.shape[axis] == 1:
        return True
    if values.shape[axis] != channel_span(segs):
        return False
    add_runs(b, segs, "passenger", const, node, axis)
    return True


# -- producers --------------------------------------------------------------------------------

def conv(b: GroupBuilder, node: gs.Node) -> None:
    """Conv: consumes input channels on weight axis 1, produces output channels on axis 0.

    A depthwise Conv (one filter per input channel) passes its input's group through, with
    its kernel and bias as passengers and its ``group`` attribute counting the channels. A
    Conv of ``G`` groups reads input block ``g`` with filter block ``g`` only: its input
    (one whole group) and its output group each lose channels evenly from ``G`` parts.
    """
    weight, bias = node.inputs[1], input_or_none(node, 2)
    w = b.constant(weight)
    if w is None or (bias is not None and b.constant(bias) is None):
        b.block_inputs(node, f"weights of Conv '{node.name}' are computed at run time")
        return
    groups = int(attr(node, "group", 1))
    segs = b.layout(node.inputs[0])
    if groups > 1 and w.shape[1] == 1 and w.shape[0] == groups and segs is not None \
            and channel_span(segs) == groups:
        add_runs(b, segs, "passenger", weight, node, 0)
        if bias is not None:
            add_runs(b, segs, "passenger", bias, node, 0)
        for s in segs:
            if s.gid is not None:
                b.add_depthwise(s.gid, node)
                b.add_count(s.gid, run_count(s, node, "group", -1))
        b.set_layout(node.outputs[0], segs)
        return
    slices = [(weight, 0, False)] + ([(bias, 0, True)] if bias is not None else [])
    if groups > 1:
        _grouped_input(b, node, segs or [], weight, groups)
        b.require_blocks(_produce(b, node, w.shape[0], slices), groups)
        return
    _consume(b, node, weight, 1)
    _produce(b, node, w.shape[0], slices)


def _grouped_input(b: GroupBuilder, node: gs.Node, segs: list[Seg], weight: gs.Tensor,
                   groups: int) -> None:
    """Record a grouped Conv's read of its input, which must be one whole group."""
    tracked = [s for s in segs if s.gid is not None]
    if not tracked:
        return
    (s, *rest) = segs
    if rest or s.gid is None or s.offset or s.start or s.stride != 1 \
            or s.length != b.size(s.gid):
        b.block(segs, f"grouped Conv '{node.name}' (group={groups}) reads channels that are "
                      "not one whole group")
        return
    b.add(s.gid, "consumer", run_slice(s, weight, node, 1, groups=groups))
    b.require_blocks(s.gid, groups)


def conv_transpose(b: GroupBuilder, node: gs.Node) -> None:
    """ConvTranspose: consumes on weight axis 0, produces on axis 1 (group 1 only)."""
    weight, bias = node.inputs[1], input_or_none(node, 2)
    w = b.constant(weight)
    if w is None or int(attr(node, "group", 1)) != 1 or (bias is not None
                                                         and b.constant(bias) is None):
        b.block_inputs(node, f"ConvTranspose '{node.name}' has grouped or run-time weights")
        return
    _consume(b, node, weight, 0)
    _produce(b, node, w.shape[1],
             [(weight, 1, False)] + ([(bias, 0, True)] if bias is not None else []))


def gemm(b: GroupBuilder, node: gs.Node) -> None:
    """Gemm: ``Y = A B + C``; B's axes follow ``transB``, a per-unit C is a producer bias."""
    weight, bias = node.inputs[1], input_or_none(node, 2)
    w = b.constant(weight)
    c = b.constant(bias) if bias is not None else None
    if w is None or attr(node, "transA", 0) or (bias is not None and c is None):
        b.block_inputs(node, f"Gemm '{node.name}' has transA or run-time weights")
        return
    in_axis, out_axis = (1, 0) if attr(node, "transB", 0) else (0, 1)
    units = w.shape[out_axis]
    slices = [(weight, out_axis, False)]
    if c is not None and c.size == units and c.shape[-1] == units:
        slices.append((bias, c.ndim - 1, True))
    elif c is not None and c.size != 1:
        b.block_inputs(node, f"Gemm '{node.name}' has a bias of shape {list(c.shape)}")
        return
    _consume(b, node, weight, in_axis)
    _produce(b, node, units, slices)


def matmul(b: GroupBuilder, node: gs.Node) -> None:
    """MatMul with a constant 2-D right operand on a rank-2 input: a Gemm without bias."""
    weight = node.inputs[1]
    w = b.constant(weight)
    if w is None or w.ndim != 2 or rank(node.inputs[0]) != 2:
        b.block_inputs(node, f"MatMul '{node.name}' is not a rank-2 product with constant weights")
        return
    _consume(b, node, weight, 0)
    _produce(b, node, w.shape[1], [(weight, 1, False)])


# -- channel-wise ops -------------------------------------------------------------------------

def normalization(b: GroupBuilder, node: gs.Node) -> None:
    """BatchNormalization / InstanceNormalization: parameters are per-channel passengers."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    params = [t for t in node.inputs[1:] if t.name]
    if any(b.constant(t) is None for t in params) or len([o for o in node.outputs if o.name]) > 1:
        b.block(segs, f"{node.op} '{node.name}' has run-time parameters or training outputs")
        return
    for t in params:
        add_runs(b, segs, "passenger", t, node, 0)
    b.set_layout(node.outputs[0], segs)


def elementwise(b: GroupBuilder, node: gs.Node) -> None:
    """Add, Mul, Sum, ... : channel inputs are merged; constants broadcast or follow channels."""
    tracked = [b.layout(t) for t in node.inputs if b.layout(t) is not None]
    if not tracked:
        return
    base = tracked[0]
    out_rank = rank(node.outputs[0], *[t for t in node.inputs if b.layout(t) is not None])
    for t in node.inputs:
        segs = b.layout(t)
        if segs is None:
            if not _constant_operand(b, node, t, base, out_rank):
                b.block_inputs(node, f"{node.op} '{node.name}' combines channels with "
                                     f"'{t.name}', whose channels cannot be followed")
                return
        elif not _merge(b, base, segs):
            b.block_inputs(node, f"{node.op} '{node.name}' combines inputs whose channels "
                                 "do not line up")
            return
    b.set_layout(node.outputs[0], base)


def _merge(b: GroupBuilder, a: list[Seg], c: list[Seg]) -> bool:
    if [(s.offset, s.span, s.stride) for s in a] != [(s.offset, s.span, s.stride) for s in c]:
        return False
    for x, y in zip(a, c, strict=True):
        if (x.gid is None) != (y.gid is None):
            b.block([x, y], "is added to channels that cannot be pruned")
        elif x.gid is not None and y.gid is not None and x.start != y.start:
            b.block([x, y], f"adds channels from {x.start} of one group to channels from "
                            f"{y.start} of another (a part of a group is not merged)")
        elif x.gid is not None and y.gid is not None:
            b.union(x.gid, y.gid)
    return True


def _keeps_channels_if(test: Callable[[GroupBuilder, gs.Node], bool], reason: str) -> Handler:
    """A handler that passes channels through when ``test`` holds and blocks them otherwise.

    ``reason`` may name ``{op}`` and ``{name}``.
    """
    def handler(b: GroupBuilder, node: gs.Node) -> None:
        segs = b.layout(node.inputs[0])
        if segs is None:
            return
        if test(b, node):
            b.set_layout(node.outputs[0], segs)
        else:
            b.block(segs, reason.format(op=node.op, name=node.name))
    handler.__doc__ = test.__doc__
    return handler


def _reduces_spatial_axes(b: GroupBuilder, node: gs.Node) -> bool:
    """Reductions over spatial axes only keep channels apart."""
    r, axes = rank(node.inputs[0]), attr_or_input(b, node, "axes")
    return r is not None and axes is not None and not {int(a) % r for a in axes} & {0, 1}


def _squeezes_spatial_axes(b: GroupBuilder, node: gs.Node) -> bool:
    """Squeeze / Unsqueeze of axes after the channel axis keep channels apart."""
    r = rank(node.outputs[0] if node.op == "Unsqueeze" else node.inputs[0])
    axes = attr_or_input(b, node, "axes")
    return r is not None and axes is not None and min(int(a) % r for a in axes) >= 2


def resize(b: GroupBuilder, node: gs.Node) -> None:
    """Resize / Upsample: constant scales of 1 on batch and channels keep channels apart.

    Constant ``sizes`` (input 3) whose channel entry is the channel count keep them too,
    and that entry counts the channels (it shrinks with them); so do ``sizes`` computed at
    run time whose batch and channel entries are the resized tensor's own, read by ``Shape``
    (:func:`~onnxprune.analysis.common.shape_entries`), as exports of FPNs that upsample to
    the size of the next level compute them. Resize's ``axes`` (opset 18)
    that leave out batch and channels keep them as well.
    """
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    sizes_input = input_or_none(node, 3) if node.op == "Resize" else None
    sizes = b.constant(sizes_input) if sizes_input is not None else None
    axes, r = attr(node, "axes"), rank(node.inputs[0], node.outputs[0])
    scales = [v for t in node.inputs[1:] if t.name and (v := b.constant(t)) is not None
              and v.dtype.kind == "f" and v.size]
    if axes is not None:
        ok = r is not None and not {int(a) % r for a in axes} & {0, 1}  # type: ignore[attr-defined]
    elif sizes is not None:
        ok = sizes.size >= 2 and int(sizes[1]) == channel_span(segs)
        for s in segs if ok else []:
            if s.gid is not None:
                b.add_count(s.gid, run_count(s, node, 3, 1))
    elif sizes_input is not None:  # computed at run time: batch and channels read by Shape
        entries = shape_entries(b, sizes_input)
        ok = entries is not None and entries[:2] == [(node.inputs[0].name, 0),
                                                     (node.inputs[0].name, 1)]
    else:
        ok = bool(scales) and np.allclose(scales[0][:2], 1.0)
    if ok:
        b.set_layout(node.outputs[0], segs)
    else:
        b.block(segs, f"{node.op} '{node.name}' may resize the channel axis")


def _pads_spatial_axes(b: GroupBuilder, node: gs.Node) -> bool:
    """Pad with constant pads of 0 on batch and channels."""
    pads, r = attr_or_input(b, node, "pads"), rank(node.inputs[0])
    if pads is None or r is None or len(node.inputs) >= 4:
        return False
    return not pads.reshape(2, r)[:, :2].any()


def _softmax_off_channels(b: GroupBuilder, node: gs.Node) -> bool:
    """Softmax over an axis after the channels (the default axis is -1 from opset 13, 1 before)."""
    r = rank(node.inputs[0])
    axis = int(attr(node, "axis", -1 if b.graph.opset >= 13 else 1))
    return r is not None and axis % r > 1


def shape_reader(b: GroupBuilder, node: gs.Node) -> None:
    """Shape reads sizes at run time, so it follows any pruning by itself."""


reduce = _keeps_channels_if(_reduces_spatial_axes, "{op} '{name}' reduces over the channel axis")
squeeze = _keeps_channels_if(_squeezes_spatial_axes, "{op} '{name}' moves the channel axis")
pad = _keeps_channels_if(_pads_spatial_axes, "Pad '{name}' pads the batch or channel axis")
softmax = _keeps_channels_if(_softmax_off_channels, "{op} '{name}' mixes channels")


_PASS_THROUGH = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast", "Identity", "Dropout", "Clip",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
)
_ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu")

ROLES: dict[str, Handler] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": normalization,
    "InstanceNormalization": normalization,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Transpose": transpose,
    "Flatten": flatten,
    "Reshape": reshape,
    "Squeeze": squeeze,
    "Unsqueeze": squeeze,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
    "Shape": shape_reader,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    **{op: reduce for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2")},
    **dict.fromkeys(_PASS_THROUGH, _pass_through),
    **dict.fromkeys(_ELEMENTWISE, elementwise),
}
