"""Shadow-model ops for the layers: convolutions, Gemm, pools, normalisations, Pad.

Same contract as :mod:`onnxprune.shadow.ops_math`: positional inputs, keyword attributes with
the spec's names and defaults. These are the hot ops of training, so each calls
``torch.nn.functional`` directly when the ONNX attributes map onto it and falls back to an
exact general form when not.

The pad arithmetic shared by Conv and the pools, per spatial axis of size ``n`` with kernel
``k``, stride ``s``, dilation ``d`` (reach ``r = (k - 1) d + 1``):

* ``SAME_UPPER`` / ``SAME_LOWER``: ``total = max(0, (ceil(n / s) - 1) s + r - n)``, the odd one
  at the end (UPPER) or at the start (LOWER);
* output length ``floor((n + begin + end - r) / s) + 1`` (``ceil`` when ``ceil_mode``, dropping
  the last window when it would start past ``n + begin``).

Asymmetric pads are applied with ``F.pad`` (zeros for Conv, -inf for MaxPool); an AveragePool
that torch cannot express is a depthwise convolution with a ones kernel divided by the count of
counted cells, so ``count_include_pad`` and ``ceil_mode`` windows are exact. ConvTranspose crops
its full output by ``pads`` and extends it by ``output_padding``, then adds the bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from onnxprune.errors import UnsupportedModelError

Tensor = torch.Tensor
Ints = Sequence[int]

_CONV = (F.conv1d, F.conv2d, F.conv3d)
_CONV_T = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
_MAX_POOL = (F.max_pool1d, F.max_pool2d, F.max_pool3d)
_AVG_POOL = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


# -- pad arithmetic ------------------------------------------------------------------------
def _pad_pairs(begin: Ints, end: Ints) -> list[int]:
    """ONNX-ordered begins and ends as F.pad's (last axis first) pairs."""
    return [p for b, e in zip(reversed(begin), reversed(end), strict=True) for p in (b, e)]


def _padding(spatial: Ints, kernel: Ints, strides: Ints, dilations: Ints, pads: Ints | None,
             auto_pad: str) -> tuple[list[int], list[int]]:
    """Begin and end pads per spatial axis, from ``pads`` or ``auto_pad``."""
    rank = len(spatial)
    if auto_pad in ("NOTSET", ""):
        pads = list(pads) if pads else [0] * 2 * rank
        return pads[:rank], pads[rank:]
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    begin, end = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        end.append(total - begin[-1])
    return begin, end


def _pool_tails(spatial: Ints, kernel: Ints, strides: Ints, dilations: Ints, begin: Ints,
                end: Ints, ceil_mode: int) -> list[int]:
    """End pads that make a floor-mode pool give ONNX's output length (may crop: negative)."""
    tails = []
    for n, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begin, end, strict=True):
        reach = (k - 1) * d + 1
        span = n + b + e - reach
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= n + b:
            out -= 1
        tails.append((out - 1) * s + reach - n - b)
    return tails


def _ones(n: int, default: Ints | None) -> list[int]:
    """An attribute list, or ``n`` ones when absent."""
    return list(default) if default else [1] * n


# -- convolution and Gemm ------------------------------------------------------------------
def conv(x: Tensor, w: Tensor, b: Tensor | None = None, *, auto_pad: str = "NOTSET",
         dilations: Ints | None = None, group: int = 1, kernel_shape: Ints | None = None,
         pads: Ints | None = None, strides: Ints | None = None) -> Tensor:
    """Conv: 1-D, 2-D or 3-D by the input's rank; asymmetric pads through F.pad."""
    rank = x.ndim - 2
    strides, dilations = _ones(rank, strides), _ones(rank, dilations)
    begin, end = _padding(x.shape[2:], w.shape[2:], strides, dilations, pads, auto_pad)
    if begin != end:
        x, begin = F.pad(x, _pad_pairs(begin, end)), [0] * rank
    return _CONV[rank - 1](x, w, b, strides, begin, dilations, group)


def conv_transpose(x: Tensor, w: Tensor, b: Tensor | None = None, *, auto_pad: str = "NOTSET",
                   dilations: Ints | None = None, group: int = 1,
                   kernel_shape: Ints | None = None, output_padding: Ints | None = None,
                   output_shape: Ints | None = None, pads: Ints | None = None,
                   strides: Ints | None = None) -> Tensor:
    """ConvTranspose: pads from ``pads``, ``output_shape`` or ``auto_pad``."""
    rank = x.ndim - 2
    strides, dilations = _ones(rank, strides), _ones(rank, dilations)
    extra = list(output_padding) if output_padding else [0] * rank
    full = [(n - 1) * s + (k - 1) * d + 1 + e for n, k, s, d, e in
            zip(x.shape[2:], w.shape[2:], strides, dilations, extra, strict=True)]
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-rank:] if output_shape else \
            [n * s for n, s in zip(x.shape[2:], strides, strict=True)]
        totals = [f - t for f, t in zip(full, target, strict=True)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        end = [t - p for t, p in zip(totals, begin, strict=True)]
    elif auto_pad == "VALID":
        begin, end = [0] * rank, [0] * rank
    else:
        begin, end = _padding(x.shape[2:], w.shape[2:], strides, dilations, pads, "NOTSET")
    small = all(e < max(s, d) for e, s, d in zip(extra, strides, dilations, strict=True))
    if begin == end and small:
        return _CONV_T[rank - 1](x, w, b, strides, begin, extra, group, dilations)
    y = _CONV_T[rank - 1](x, w, None, strides, 0, 0, group, dilations)
    y = F.pad(y, _pad_pairs([-p for p in begin], [e - p for e, p in zip(extra, end, strict=True)]))
    return y if b is None else y + b.view(-1, *[1] * rank)


def gemm(a: Tensor, b: Tensor, c: Tensor | None = None, *, alpha: float = 1.0,
         beta: float = 1.0, transA: int = 0, transB: int = 0) -> Tensor:
    """Gemm: ``alpha * A' B' + beta * C`` with C broadcast."""
    a, b = (a.t() if transA else a), (b.t() if transB else b)
    if c is None:
        return torch.mm(a, b) if alpha == 1.0 else torch.mm(a, b) * alpha
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)


# -- pools ---------------------------------------------------------------------------------
def max_pool(x: Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: Ints | None = None, kernel_shape: Ints, pads: Ints | None = None,
             storage_order: int = 0, strides: Ints | None = None) -> Tensor:
    """MaxPool (output Y only): padding cells are -inf."""
    rank = x.ndim - 2
    strides, dilations = _ones(rank, strides), _ones(rank, dilations)
    begin, end = _padding(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad)
    pool = _MAX_POOL[rank - 1]
    if begin == end and all(2 * p <= k for p, k in zip(begin, kernel_shape, strict=True)):
        return pool(x, kernel_shape, strides, begin, dilations, bool(ceil_mode))
    tails = _pool_tails(x.shape[2:], kernel_shape, strides, dilations, begin, end, ceil_mode)
    x = F.pad(x, _pad_pairs(begin, tails), value=-math.inf)
    return pool(x, kernel_shape, strides, 0, dilations)


def average_pool(x: Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 count_include_pad: int = 0, dilations: Ints | None = None,
                 kernel_shape: Ints, pads: Ints | None = None,
                 strides: Ints | None = None) -> Tensor:
    """AveragePool, through F.avg_pool when torch can express it, else a ones convolution."""
    rank = x.ndim - 2
    strides, dilations = _ones(rank, strides), _ones(rank, dilations)
    begin, end = _padding(x.shape[2:], kernel_shape, strides, dilations, pads, auto_pad)
    fits = all(2 * p <= k <= n for p, k, n in zip(begin, kernel_shape, x.shape[2:], strict=True))
    if begin == end and set(dilations) == {1} and fits:
        return _AVG_POOL[rank - 1](x, kernel_shape, strides, begin, bool(ceil_mode),
                                   bool(count_include_pad))
    tails = _pool_tails(x.shape[2:], kernel_shape, strides, dilations, begin, end, ceil_mode)
    ones = x.new_ones((x.shape[1], 1, *kernel_shape))
    conv_nd = _CONV[rank - 1]
    total = conv_nd(F.pad(x, _pad_pairs(begin, tails)), ones, None, strides, 0, dilations,
                    x.shape[1])
    cells = x.new_ones((1, 1, *x.shape[2:]))
    if count_include_pad:
        cells = F.pad(F.pad(cells, _pad_pairs(begin, end), value=1.0),
                      _pad_pairs([0] * rank, [t - e for t, e in zip(tails, end, strict=True)]))
    else:
        cells = F.pad(cells, _pad_pairs(begin, tails))
    return total / conv_nd(cells, ones[:1], None, strides, 0, dilations)


def global_average_pool(x: Tensor) -> Tensor:
    """GlobalAveragePool: mean over the spatial axes, kept."""
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


def global_max_pool(x: Tensor) -> Tensor:
    """GlobalMaxPool: max over the spatial axes, kept."""
    return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


# -- normalisations ------------------------------------------------------------------------
def batch_normalization(x: Tensor, scale: Tensor, b: Tensor, input_mean: Tensor,
                        input_var: Tensor, *, epsilon: float = 1e-5, momentum: float = 0.9,
                        training_mode: int = 0) -> Tensor:
    """BatchNormalization, inference form (Y only); differentiable in all five inputs."""
    if training_mode:
        raise UnsupportedModelError("op 'BatchNormalization' with training_mode=1 is not "
                                    "supported by the shadow model")
    if not (torch.is_grad_enabled() and (input_mean.requires_grad or input_var.requires_grad)):
        return F.batch_norm(x, input_mean, input_var, scale, b, False, 0.0, epsilon)
    w = scale * torch.rsqrt(input_var + epsilon)  # x w + (b - mean w): mean and var get grads
    shape = (-1,) + (1,) * (x.ndim - 2)
    return torch.addcmul((b - input_mean * w).view(shape), x, w.view(shape))


def instance_normalization(x: Tensor, scale: Tensor, b: Tensor, *,
                           epsilon: float = 1e-5) -> Tensor:
    """InstanceNormalization."""
    return F.instance_norm(x, weight=scale, bias=b, eps=epsilon)


def layer_normalization(x: Tensor, scale: Tensor, b: Tensor | None = None, *, axis: int = -1,
                        epsilon: float = 1e-5, stash_type: int = 1) -> Tensor:
    """LayerNormalization (output Y only)."""
    shape = x.shape[axis % x.ndim:]
    return F.layer_norm(x, shape, scale.expand(shape), None if b is None else b.expand(shape),
                        epsilon)


def group_normalization(x: Tensor, scale: Tensor, bias: Tensor, *, epsilon: float = 1e-5,
                        num_groups: int, stash_type: int = 1) -> Tensor:
    """GroupNormalization from opset 21: scale and bias per channel."""
    return F.group_norm(x, num_groups, scale, bias, epsilon)


def group_normalization_18(x: Tensor, scale: Tensor, bias: Tensor, *, epsilon: float = 1e-5,
                           num_groups: int) -> Tensor:
    """GroupNormalization of opset 18: scale and bias per group."""
    per = x.shape[1] // num_groups
    return F.group_norm(x, num_groups, scale.repeat_interleave(per),
                        bias.repeat_interleave(per), epsilon)


def lrn(x: Tensor, *, alpha: float = 0.0001, beta: float = 0.75, bias: float = 1.0,
        size: int) -> Tensor:
    """LRN over channels: window ``[c - (size-1)//2, c + ceil((size-1)/2)]``."""
    front = (size - 1) // 2
    squares = F.pad(x.square().movedim(1, -1), (front, size - 1 - front))
    total = squares.unfold(-1, size, 1).sum(-1).movedim(-1, 1)
    return x / (bias + alpha / size * total) ** beta


# -- layout --------------------------------------------------------------------------------
def _pad(x: Tensor, pads: Ints, axes: Ints, mode: str, value: float) -> Tensor:
    """Pad ``axes`` of ``x`` by ONNX-ordered ``pads`` (negative pads crop)."""
    begin, end = [0] * x.ndim, [0] * x.ndim
    for a, p, q in zip(axes, pads[:len(axes)], pads[len(axes):], strict=True):
        begin[a % x.ndim], end[a % x.ndim] = p, q
    if mode == "constant":
        pairs = _pad_pairs(begin, end)
        return F.pad(x, pairs, value=value) if any(pairs) else x
    for axis, (n, b, e) in enumerate(zip(x.shape, begin, end, strict=True)):
        if b or e:  # read each output cell's source index: any axis, any rank
            x = x.index_select(axis, _pad_source(torch.arange(-b, n + e, device=x.device), n,
                                                 mode))
    return x


def _pad_source(i: Tensor, n: int, mode: str) -> Tensor:
    """The source index of padded position ``i`` (``0 <= i < n`` inside) for ``mode``."""
    if mode == "edge":
        return i.clamp(0, n - 1)
    if mode == "wrap":
        return i % n
    if mode == "reflect":
        i = i % max(2 * n - 2, 1)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise UnsupportedModelError(f"op 'Pad' with mode '{mode}' is not supported by the shadow "
                                "model")


def pad(data: Tensor, pads: Tensor, constant_value: Tensor | None = None,
        axes: Tensor | None = None, *, mode: str = "constant") -> Tensor:
    """Pad from opset 11: pads (and opset 18's axes) as inputs."""
    value = 0.0 if constant_value is None or not constant_value.numel() \
        else constant_value.item()
    axes_list = range(data.ndim) if axes is None else axes.tolist()
    return _pad(data, pads.tolist(), list(axes_list), mode, value)


def pad_2(data: Tensor, *, mode: str = "constant", pads: Ints, value: float = 0.0) -> Tensor:
    """Pad before opset 11: pads as an attribute."""
    return _pad(data, list(pads), list(range(data.ndim)), mode, value)
