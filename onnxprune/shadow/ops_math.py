"""The shadow model's op table: one small PyTorch function per ONNX op, mirroring the spec.

Each function takes the op's inputs positionally, in spec order, as torch tensors (a missing
optional input is ``None``), and its attributes as keywords with the spec's names and defaults.
It returns a tensor, or a tuple for ops with several outputs. Inputs that ONNX defines as shapes,
axes or indices arrive as int64 tensors and are read with ``.tolist()``; float data never is, so
everything differentiable in ONNX is differentiable here.

Where an op's meaning changed between opsets, each meaning is its own function and
:func:`resolve` picks the one in force at the model's opset: Softmax before 13 flattens the input
to 2-D at ``axis`` (``y = softmax(x.reshape(prod(shape[:axis]), -1), 1)``) where from 13 it
works along ``axis``; axes, split sizes, pads, clip bounds and dropout ratios move from attributes
to inputs. The layer ops live in
:mod:`onnxprune.shadow.ops_nn` and :mod:`onnxprune.shadow.ops_resize`, the shape and layout ops
in :mod:`onnxprune.shadow.ops_shape`, and the table of them all in
:mod:`onnxprune.shadow.op_table`.

Integer semantics follow ONNX: Shape gives int64, Div truncates integers toward zero, Mod without
``fmod`` takes the divisor's sign, Cast truncates floats toward zero.

One op needs more than its node's inputs and attributes: a Split without split sizes before
opset 18 cuts into as many parts as the node has outputs, so the caller passes
``num_outputs=len(node.outputs)`` (the attribute opset 18 introduced for the same thing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from onnxprune.errors import UnsupportedModelError

Tensor = torch.Tensor
Ints = Sequence[int]
Op = Callable[..., Any]

FLT_MAX = 3.4028234663852886e38


# -- elementwise ---------------------------------------------------------------------------
def identity(x: Tensor) -> Tensor:
    """Identity."""
    return x


def div(a: Tensor, b: Tensor) -> Tensor:
    """Div: true division of floats, integers truncated toward zero."""
    return torch.div(a, b) if a.is_floating_point() else torch.div(a, b, rounding_mode="trunc")


def pow_(x: Tensor, y: Tensor) -> Tensor:
    """Pow: the result has the base's type."""
    return torch.pow(x, y).to(x.dtype)


def mod(a: Tensor, b: Tensor, *, fmod: int = 0) -> Tensor:
    """Mod: C fmod (sign of the dividend) or Python's % (sign of the divisor)."""
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def sum_(*inputs: Tensor) -> Tensor:
    """Sum of any number of broadcast inputs."""
    return functools.reduce(torch.add, inputs)


def mean(*inputs: Tensor) -> Tensor:
    """Mean of any number of broadcast inputs."""
    return sum_(*inputs) / len(inputs)


def max_(*inputs: Tensor) -> Tensor:
    """Max of any number of broadcast inputs."""
    return functools.reduce(torch.maximum, inputs)


def min_(*inputs: Tensor) -> Tensor:
    """Min of any number of broadcast inputs."""
    return functools.reduce(torch.minimum, inputs)


def clip(x: Tensor, min: Tensor | None = None, max: Tensor | None = None) -> Tensor:
    """Clip from opset 11: bounds as optional inputs.

    Fixed scalar bounds (ReLU6) take F.hardtanh, about 5x faster than clamp with tensor bounds
    for forward and backward on the CPU.
    """
    if min is None and max is None:
        return x
    if x.is_floating_point() and all(b is None or (b.ndim == 0 and not b.requires_grad)
                                     for b in (min, max)):
        return clip_6(x, min=-FLT_MAX if min is None else float(min),
                      max=FLT_MAX if max is None else float(max))
    return torch.clamp(x, min, max)


def clip_6(x: Tensor, *, max: float = FLT_MAX, min: float = -FLT_MAX) -> Tensor:
    """Clip before opset 11: bounds as attributes."""
    if x.is_floating_point() and min <= max:
        return F.hardtanh(x, min, max)
    return torch.clamp(x, min, max)


def leaky_relu(x: Tensor, *, alpha: float = 0.01) -> Tensor:
    """LeakyRelu."""
    return F.leaky_relu(x, alpha)


def prelu(x: Tensor, slope: Tensor) -> Tensor:
    """PRelu with a slope broadcast to x (F.prelu when it is per channel or scalar)."""
    per_channel = x.ndim >= 2 and slope.shape == (x.shape[1],) + (1,) * (x.ndim - 2)
    if slope.numel() == 1 or per_channel:
        return F.prelu(x, slope.reshape(-1))
    return torch.where(x < 0, x * slope, x)


def elu(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Elu."""
    return F.elu(x, alpha)


def selu(x: Tensor, *, alpha: float = 1.67326319217681884765625,
         gamma: float = 1.05070102214813232421875) -> Tensor:
    """Selu."""
    return gamma * F.elu(x, alpha)


def celu(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """Celu."""
    return F.celu(x, alpha)


def thresholded_relu(x: Tensor, *, alpha: float = 1.0) -> Tensor:
    """ThresholdedRelu."""
    return torch.where(x > alpha, x, torch.zeros_like(x))


def hard_sigmoid(x: Tensor, *, alpha: float = 0.2, beta: float = 0.5) -> Tensor:
    """HardSigmoid: ``clamp(alpha x + beta, 0, 1)``."""
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def shrink(x: Tensor, *, bias: float = 0.0, lambd: float = 0.5) -> Tensor:
    """Shrink."""
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, x * 0))


def gelu(x: Tensor, *, approximate: str = "none") -> Tensor:
    """Gelu (opset 20), exact or tanh-approximated."""
    return F.gelu(x, approximate=approximate)


def is_inf(x: Tensor, *, detect_negative: int = 1, detect_positive: int = 1) -> Tensor:
    """IsInf."""
    positive, negative = torch.isposinf(x), torch.isneginf(x)
    return (positive & bool(detect_positive)) | (negative & bool(detect_negative))


def softmax(x: Tensor, *, axis: int = -1) -> Tensor:
    """Softmax from opset 13: along ``axis``."""
    return torch.softmax(x, axis)


def softmax_1(x: Tensor, *, axis: int = 1) -> Tensor:
    """Softmax before opset 13: over the input flattened to 2-D at ``axis``."""
    return torch.softmax(x.flatten(axis), -1).reshape(x.shape)


def log_softmax(x: Tensor, *, axis: int = -1) -> Tensor:
    """LogSoftmax from opset 13: along ``axis``."""
    return torch.log_softmax(x, axis)


def log_softmax_1(x: Tensor, *, axis: int = 1) -> Tensor:
    """LogSoftmax before opset 13: over the input flattened to 2-D at ``axis``."""
    return torch.log_softmax(x.flatten(axis), -1).reshape(x.shape)


def dropout(data: Tensor, ratio: Tensor | None = None, training_mode: Tensor | None = None, *,
            seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Dropout from opset 12: identity (and an all-true mask) unless training_mode is true."""
    if training_mode is not None and bool(training_mode):
        p = 0.5 if ratio is None else float(ratio)
        mask = torch.rand_like(data) >= p
        return data * mask / (1 - p), mask
    return data, torch.ones((), dtype=torch.bool, device=data.device).expand(data.shape)


def dropout_7(data: Tensor, *, ratio: float = 0.5) -> tuple[Tensor, Tensor]:
    """Dropout of opsets 7 to 9 at inference: identity, and zeros for the mask (as onnxruntime)."""
    return data, torch.zeros((), dtype=data.dtype, device=data.device).expand(data.shape)


def dropout_10(data: Tensor, *, ratio: float = 0.5) -> tuple[Tensor, Tensor]:
    """Dropout of opsets 10 and 11 at inference: identity, an all-false mask (as onnxruntime)."""
    return data, torch.zeros((), dtype=torch.bool, device=data.device).expand(data.shape)


# -- types and constants -------------------------------------------------------------------
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
           16: torch.bfloat16}
_DTYPES.update({k: getattr(torch, name) for k, name in
                ((4, "uint16"), (12, "uint32"), (13, "uint64"), (17, "float8_e4m3fn"),
                 (18, "float8_e4m3fnuz"), (19, "float8_e5m2"), (20, "float8_e5m2fnuz"))
                if hasattr(torch, name)})


def cast(x: Tensor, *, to: int, saturate: int = 1, round_mode: str = "up") -> Tensor:
    """Cast to the torch dtype of an ONNX TensorProto data type."""
    if to not in _DTYPES:
        raise UnsupportedModelError(f"op 'Cast' to ONNX data type {to} is not supported by the "
                                    "shadow model")
    return x.to(_DTYPES[to])


def cast_like(x: Tensor, target: Tensor, *, saturate: int = 1, round_mode: str = "up") -> Tensor:
    """CastLike: cast to the dtype of ``target``."""
    return x.to(target.dtype)


def constant(*, value: Tensor | None = None, value_float: float | None = None,
             value_floats: list[float] | None = None, value_int: int | None = None,
             value_ints: list[int] | None = None, value_string: str | None = None,
             value_strings: list[str] | None = None, sparse_value: Any = None) -> Tensor:
    """Constant: the one value attribute that is set, as a tensor."""
    if value is not None:
        return value
    for v, dtype in ((value_float, torch.float32), (value_floats, torch.float32),
                     (value_int, torch.int64), (value_ints, torch.int64)):
        if v is not None:
            return torch.tensor(v, dtype=dtype)
    raise UnsupportedModelError("op 'Constant' with a string or sparse value is not supported "
                                "by the shadow model")


def constant_of_shape(shape: Tensor, *, value: Tensor | None = None) -> Tensor:
    """ConstantOfShape: a tensor of ``shape`` filled with ``value`` (float32 0 by default)."""
    if value is None:
        return torch.zeros(shape.tolist(), dtype=torch.float32, device=shape.device)
    return torch.full(shape.tolist(), value.reshape(-1)[0].item(), dtype=value.dtype,
                      device=shape.device)


def range_(start: Tensor, limit: Tensor, delta: Tensor, *, stash_type: int = 1) -> Tensor:
    """Range: ``start, start + delta, ...`` below ``limit``."""
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype,
                        device=start.device)


def shape(data: Tensor, *, end: int | None = None, start: int = 0) -> Tensor:
    """Shape as int64, sliced by ``start``/``end`` (opset 15)."""
    return torch.tensor(data.shape[start:end], dtype=torch.int64, device=data.device)


def size(data: Tensor) -> Tensor:
    """Size: the number of elements, an int64 scalar."""
    return torch.tensor(data.numel(), dtype=torch.int64, device=data.device)


# -- reductions ----------------------------------------------------------------------------
def _reduce(kernel: Callable[[Tensor, tuple[int, ...], bool], Tensor], data: Tensor,
            axes: Ints | None, keepdims: int, noop_with_empty_axes: int) -> Tensor:
    """Reduce ``axes`` (all axes when empty, unless ``noop_with_empty_axes``)."""
    if not axes and noop_with_empty_axes:
        return data
    dims = tuple(a % data.ndim for a in axes) if axes else tuple(range(data.ndim))
    return kernel(data, dims, bool(keepdims))


def _prod(x: Tensor, dims: tuple[int, ...], keep: bool) -> Tensor:
    """Product over several axes (torch.prod takes one)."""
    for d in sorted(dims, reverse=True):
        x = x.prod(d, keepdim=keep)
    return x


REDUCERS: dict[str, Callable[[Tensor, tuple[int, ...], bool], Tensor]] = {
    "ReduceSum": torch.sum,
    "ReduceMean": torch.mean,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
    "ReduceProd": _prod,
    "ReduceL1": lambda x, dims, keep: x.abs().sum(dims, keep),
    "ReduceL2": lambda x, dims, keep: torch.linalg.vector_norm(x, 2, dims, keep),
    "ReduceLogSum": lambda x, dims, keep: x.sum(dims, keep).log(),
    "ReduceLogSumExp": torch.logsumexp,
    "ReduceSumSquare": lambda x, dims, keep: x.square().sum(dims, keep),
}


def reduce_ops(op_type: str) -> tuple[Op, Op]:
    """The attribute-axes and input-axes functions of a Reduce* op."""
    kernel = REDUCERS[op_type]

    def with_attribute(data: Tensor, *, axes: Ints | None = None, keepdims: int = 1) -> Tensor:
        return _reduce(kernel, data, axes, keepdims, 0)

    def with_input(data: Tensor, axes: Tensor | None = None, *, keepdims: int = 1,
                   noop_with_empty_axes: int = 0) -> Tensor:
        return _reduce(kernel, data, None if axes is None else axes.tolist(), keepdims,
                       noop_with_empty_axes)

    with_attribute.__doc__ = f"{op_type} with axes as an attribute."
    with_input.__doc__ = f"{op_type} with axes as an optional input."
    return with_attribute, with_input


def argmax(data: Tensor, *, axis: int = 0, keepdims: int = 1,
           select_last_index: int = 0) -> Tensor:
    """ArgMax: the first (or last) index of the maximum along ``axis``."""
    if select_last_index:
        return data.shape[axis] - 1 - torch.argmax(data.flip(axis), axis, bool(keepdims))
    return torch.argmax(data, axis, bool(keepdims))


def argmin(data: Tensor, *, axis: int = 0, keepdims: int = 1,
           select_last_index: int = 0) -> Tensor:
    """ArgMin: the first (or last) index of the minimum along ``axis``."""
    if select_last_index:
        return data.shape[axis] - 1 - torch.argmin(data.flip(axis), axis, bool(keepdims))
    return torch.argmin(data, axis, bool(keepdims))


def topk(x: Tensor, k: Tensor, *, axis: int = -1, largest: int = 1,
         sorted: int = 1) -> tuple[Tensor, Tensor]:
    """TopK from opset 10: k as an input; values and int64 indices."""
    values, indices = torch.topk(x, int(k.reshape(-1)[0]), axis, bool(largest), bool(sorted))
    return values, indices


def topk_1(x: Tensor, *, axis: int = -1, k: int) -> tuple[Tensor, Tensor]:
    """TopK before opset 10: k as an attribute."""
    return topk(x, torch.tensor([k]), axis=axis)


def cumsum(x: Tensor, axis: Tensor, *, exclusive: int = 0, reverse: int = 0) -> Tensor:
    """CumSum along ``axis``, optionally exclusive and/or reversed."""
    a = int(axis)
    y = torch.cumsum(x.flip(a) if reverse else x, a)
    if exclusive:
        y = torch.cat([torch.zeros_like(y.narrow(a, 0, 1)), y.narrow(a, 0, y.shape[a] - 1)], a)
    return y.flip(a) if reverse else y
