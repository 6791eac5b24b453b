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
from onnxprune.analysis.groups import Seg, ShapeEdit, Slice, scale, shift
from onnxprune.graph import attr, input_or_none

Handler = Callable[[GroupBuilder, gs.Node], None]


# -- shared steps ---------------------------------------------------------------------------

def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _dims_after_channel(tensor: gs.Tensor) -> int | None:
    """Product of the static dimensions after axis 1, or None when any is unknown."""
    if tensor.shape is None or len(tensor.shape) < 2:
        return None
    size = 1
    for d in tensor.shape[2:]:
        if not isinstance(d, int) or d <= 0:
            return None
        size *= d
    return size


def _consume(b: GroupBuilder, node: gs.Node, weight: gs.Tensor, axis: int) -> None:
    for s in b.layout(node.inputs[0]) or []:
        if s.gid is not None:
            b.add(s.gid, "consumer", Slice(weight.name, node.name, axis, s.offset, s.stride))


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


def _attr_or_input(b: GroupBuilder, node: gs.Node, name: str) -> np.ndarray | None:
    """An operand given as attribute ``name`` (old opsets) or as constant input 1 (new)."""
    value = attr(node, name)
    if value is None and len(node.inputs) > 1:
        value = b.constant(node.inputs[1])
    return None if value is None else np.ravel(value)


def _channel_span(segs: list[Seg]) -> int:
    return sum(s.span for s in segs)


def _constant_operand(b: GroupBuilder, node: gs.Node, const: gs.Tensor, segs: list[Seg],
                      out_rank: int | None) -> bool:
    """Record a broadcast constant operand as neutral or as a per-channel passenger.

    Returns False when the constant neither broadcasts over the channels nor has one entry per
    channel position, in which case the caller blocks.
    """
    values = b.constant(const)
    if values is None or out_rank is None:
        return False
    axis = values.ndim - (out_rank - 1)
    if axis < 0 or values.shape[axis] == 1:
        return True
    if values.shape[axis] != _channel_span(segs):
        return False
    for s in segs:
        if s.gid is not None:
            b.add(s.gid, "passenger", Slice(const.name, node.name, axis, s.offset, s.stride))
    return True


# -- producers --------------------------------------------------------------------------------

def conv(b: GroupBuilder, node: gs.Node) -> None:
    """Conv: consumes input channels on weight axis 1, produces output channels on axis 0.

    A depthwise Conv (one filter per input channel) passes its input's group through, with
    its kernel and bias as passengers. Any other grouped Conv blocks.
    """
    weight, bias = node.inputs[1], input_or_none(node, 2)
    w = b.constant(weight)
    if w is None or (bias is not None and b.constant(bias) is None):
        b.block_inputs(node, f"weights of Conv '{node.name}' are computed at run time")
        return
    groups = int(attr(node, "group", 1))
    segs = b.layout(node.inputs[0])
    if groups > 1 and w.shape[1] == 1 and w.shape[0] == groups and segs is not None \
            and _channel_span(segs) == groups:
        for s in segs:
            if s.gid is not None:
                b.add(s.gid, "passenger", Slice(weight.name, node.name, 0, s.offset, s.stride))
                if bias is not None:
                    b.add(s.gid, "passenger", Slice(bias.name, node.name, 0, s.offset, s.stride))
                b.add_depthwise(s.gid, node)
        b.set_layout(node.outputs[0], segs)
        return
    slices = [(weight, 0, False)] + ([(bias, 0, True)] if bias is not None else [])
    if groups > 1:
        reason = f"grouped Conv '{node.name}' (group={groups}) ties channels in blocks"
        b.block_inputs(node, reason)
        b.block([Seg(_produce(b, node, w.shape[0], slices), 0, w.shape[0])], reason)
        return
    _consume(b, node, weight, 1)
    _produce(b, node, w.shape[0], slices)


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
    if w is None or w.ndim != 2 or _rank(node.inputs[0]) != 2:
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
        for s in segs:
            if s.gid is not None:
                b.add(s.gid, "passenger", Slice(t.name, node.name, 0, s.offset, s.stride))
    b.set_layout(node.outputs[0], segs)


def elementwise(b: GroupBuilder, node: gs.Node) -> None:
    """Add, Mul, Sum, ... : channel inputs are merged; constants broadcast or follow channels."""
    tracked = [b.layout(t) for t in node.inputs if b.layout(t) is not None]
    if not tracked:
        return
    base = tracked[0]
    out_rank = _rank(node.outputs[0]) or _rank(node.inputs[0])
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
        elif x.gid is not None and y.gid is not None:
            b.union(x.gid, y.gid)
    return True


def concat(b: GroupBuilder, node: gs.Node) -> None:
    """Concat on the channel axis: each input's channels land at an offset of the output."""
    if not any(b.layout(t) for t in node.inputs):
        return
    rank = _rank(node.outputs[0])
    axis = int(attr(node, "axis", 1))
    if rank is None or axis % rank != 1:
        b.block_inputs(node, f"Concat '{node.name}' joins along axis {axis}, not the channels")
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
        offset += _channel_span(own)
    b.set_layout(node.outputs[0], segs)


def flatten(b: GroupBuilder, node: gs.Node) -> None:
    """Flatten at axis 1: channel c of a (N, C, H, W) input becomes columns c*HW ... (c+1)*HW-1."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    inner = _dims_after_channel(node.inputs[0])
    if int(attr(node, "axis", 1)) != 1 or inner is None:
        b.block(segs, f"Flatten '{node.name}' does not flatten from the channel axis "
                      "of a static shape")
        return
    b.set_layout(node.outputs[0], scale(segs, inner))


def reshape(b: GroupBuilder, node: gs.Node) -> None:
    """Reshape to (batch, -1 or C*H*W): a Flatten whose shape constant may need editing."""
    segs = b.layout(node.inputs[0])
    if segs is None:
        return
    target = b.constant(node.inputs[1])
    inner = _dims_after_channel(node.inputs[0])
    if target is None or inner is None or not _flattens(node, target, _channel_span(segs) * inner):
        b.block(segs, f"Reshape '{node.name}' mixes channels with other axes")
        return
    flat = scale(segs, inner)
    if int(target[1]) != -1:
        for s in flat:
            if s.gid is not None:
                b.add_reshape(s.gid, ShapeEdit(node.inputs[1].name, node.name, 1, s.stride))
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
    rank, axes = _rank(node.inputs[0]), _attr_or_input(b, node, "axes")
    return rank is not None and axes is not None and not {int(a) % rank for a in axes} & {0, 1}


def _squeezes_spatial_axes(b: GroupBuilder, node: gs.Node) -> bool:
    """Squeeze / Unsqueeze of axes after the channel axis keep channels apart."""
    rank = _rank(node.outputs[0] if node.op == "Unsqueeze" else node.inputs[0])
    axes = _attr_or_input(b, node, "axes")
    return rank is not None and axes is not None and min(int(a) % rank for a in axes) >= 2


def _resizes_spatial_axes(b: GroupBuilder, node: gs.Node) -> bool:
    """Resize / Upsample with constant scales of 1 on batch and channels."""
    scales = [v for t in node.inputs[1:] if t.name and (v := b.constant(t)) is not None
              and v.dtype.kind == "f" and v.size]
    return bool(scales) and input_or_none(node, 3) is None and np.allclose(scales[0][:2], 1.0)


def _pads_spatial_axes(b: GroupBuilder, node: gs.Node) -> bool:
    """Pad with constant pads of 0 on batch and channels."""
    pads, rank = _attr_or_input(b, node, "pads"), _rank(node.inputs[0])
    if pads is None or rank is None or len(node.inputs) >= 4:
        return False
    return not pads.reshape(2, rank)[:, :2].any()


def _softmax_off_channels(b: GroupBuilder, node: gs.Node) -> bool:
    """Softmax over an axis after the channels (the default axis is -1 from opset 13, 1 before)."""
    rank = _rank(node.inputs[0])
    axis = int(attr(node, "axis", -1 if b.graph.opset >= 13 else 1))
    return rank is not None and axis % rank > 1


def shape_reader(b: GroupBuilder, node: gs.Node) -> None:
    """Shape reads sizes at run time, so it follows any pruning by itself."""


reduce = _keeps_channels_if(_reduces_spatial_axes, "{op} '{name}' reduces over the channel axis")
squeeze = _keeps_channels_if(_squeezes_spatial_axes, "{op} '{name}' moves the channel axis")
resize = _keeps_channels_if(_resizes_spatial_axes, "{op} '{name}' may resize the channel axis")
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
