"""Shadow-model ops for the layers: convolutions, Gemm, pools, normalisations, Pad, Resize.

Same contract as :mod:`onnxprune.ops`: positional inputs, keyword attributes with the spec's
names and defaults. These are the hot ops of training, so each calls ``torch.nn.functional``
directly when the ONNX attributes map onto it and falls back to an exact general form when not.

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

Resize maps each output index ``i`` of a resized axis to a source coordinate (half_pixel:
``(i + 0.5) / scale - 0.5``; asymmetric: ``i / scale``; align_corners:
``i (n - 1) / (m - 1)``; ...) in float32 as onnxruntime does, and resamples axis by axis:
nearest picks one source index, linear two (weights ``1 - f, f``), cubic four (Keys kernel with
``cubic_coeff_a``); with ``antialias`` the linear or cubic filter is stretched by ``1 / scale``
and its weights renormalised. Common cases go to ``F.interpolate`` or, for integer nearest
upsampling, to an expand-and-reshape. Like onnxruntime, an output of the input's shape is the
input, and an axis of scale 1 is copied (its roi ignored). Known difference: in nearest mode, a
source coordinate within one float32 ulp of a rounding tie may round the other way than in
onnxruntime (e.g. 7 -> 2 cells, asymmetric, round_prefer_ceil: 1 / (2/7) = 3.4999998).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
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


# -- resize --------------------------------------------------------------------------------
# (coordinate mode, nearest mode) pairs under which an integer upsampling by k reads i // k.
_REPEATS = {("asymmetric", "floor"), ("asymmetric", "simple"), ("tf_half_pixel_for_nn", "floor"),
            *((c, r) for c in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
              for r in ("round_prefer_floor", "round_prefer_ceil"))}
_INTERPOLATE = {(1, "linear"): "linear", (2, "linear"): "bilinear", (3, "linear"): "trilinear",
                (2, "cubic"): "bicubic"}


def resize(x: Tensor, roi: Tensor | None = None, scales: Tensor | None = None,
           sizes: Tensor | None = None, *, antialias: int = 0, axes: Ints | None = None,
           coordinate_transformation_mode: str = "half_pixel", cubic_coeff_a: float = -0.75,
           exclude_outside: int = 0, extrapolation_value: float = 0.0,
           keep_aspect_ratio_policy: str = "stretch", mode: str = "nearest",
           nearest_mode: str = "round_prefer_floor") -> Tensor:
    """Resize from opset 11: by scales or sizes, in every coordinate and nearest mode."""
    axes = [a % x.ndim for a in axes] if axes else list(range(x.ndim))
    by_sizes = sizes is not None and sizes.numel() > 0
    out, factors = _resize_target(list(x.shape), axes, sizes.tolist() if by_sizes else None,
                                  None if by_sizes else scales.tolist(),
                                  keep_aspect_ratio_policy)
    if out == list(x.shape):  # onnxruntime copies then, whatever the scales and roi say
        return x
    fast = _resize_fast(x, out, factors, by_sizes, mode, coordinate_transformation_mode,
                        cubic_coeff_a, exclude_outside, antialias, nearest_mode)
    if fast is not None:
        return fast
    bounds = [(0.0, 1.0)] * x.ndim
    if roi is not None and roi.numel():
        r = roi.tolist()
        for a, lo, hi in zip(axes, r[:len(axes)], r[len(axes):], strict=True):
            bounds[a] = (lo, hi)
    outside = None
    for axis, (n, m, f) in enumerate(zip(list(x.shape), out, factors, strict=True)):
        if f == 1.0:  # an axis of scale 1 is copied, its roi ignored (as onnxruntime does)
            continue
        source = _source(coordinate_transformation_mode, n, m, f, bounds[axis])
        if coordinate_transformation_mode == "tf_crop_and_resize":
            gone = ((source < 0) | (source > n - 1)).view([m if i == axis else 1
                                                             for i in range(x.ndim)])
            outside = gone if outside is None else outside | gone
        x = _gather(x, axis, *_taps(source, n, f, mode, nearest_mode, cubic_coeff_a,
                                    exclude_outside, antialias))
    if outside is None:
        return x
    return torch.where(outside.to(x.device), torch.tensor(extrapolation_value, dtype=x.dtype,
                                                         device=x.device), x)


def _resize_target(shape: list[int], axes: list[int], sizes: list[int] | None,
                   scales: list[float] | None, policy: str) -> tuple[list[int], list[float]]:
    """Output shape and per-axis scale, in float32 arithmetic as onnxruntime does it."""
    out, factors = list(shape), [1.0] * len(shape)
    if sizes is None:
        for a, f in zip(axes, scales or [], strict=True):
            out[a], factors[a] = int(np.float32(f) * np.float32(shape[a])), f
        return out, factors
    wanted = [np.float32(s) / np.float32(shape[a]) for a, s in zip(axes, sizes, strict=True)]
    if policy != "stretch":  # one scale for every axis, the output size rounded
        ratio = min(wanted) if policy == "not_larger" else max(wanted)
        sizes = [int(np.floor(ratio * np.float32(shape[a]) + 0.5)) for a in axes]
        wanted = [ratio] * len(axes)
    for a, s, f in zip(axes, sizes, wanted, strict=True):
        out[a], factors[a] = s, float(f)
    return out, factors


def resize_10(x: Tensor, scales: Tensor, *, mode: str = "nearest") -> Tensor:
    """Resize of opset 10: scales only, asymmetric coordinates."""
    return resize(x, None, scales, mode=mode, coordinate_transformation_mode="asymmetric",
                  nearest_mode="simple")


def upsample(x: Tensor, scales: Tensor, *, mode: str = "nearest") -> Tensor:
    """Upsample of opset 9: the same arithmetic as Resize of opset 10."""
    return resize_10(x, scales, mode=mode)


def _resize_fast(x: Tensor, out: list[int], factors: list[float], by_sizes: bool, mode: str,
                 coordinates: str, cubic_a: float, exclude: int, antialias: int,
                 nearest_mode: str) -> Tensor | None:
    """Resize through torch when the ONNX arithmetic is torch's; None when it is not."""
    triples = list(zip(x.shape, out, factors, strict=True))
    changed = [i for i, (n, m, f) in enumerate(triples) if n != m or f != 1]
    if not changed:
        return None
    if mode == "nearest":
        whole = all(f == int(f) and m == n * int(f) for n, m, f in triples)
        if whole and (coordinates, nearest_mode) in _REPEATS:
            view = [d for n in x.shape for d in (n, 1)]
            grown = [d for n, f in zip(x.shape, factors, strict=True) for d in (n, int(f))]
            return x.reshape(view).expand(grown).reshape(out)
        return None
    torch_mode = _INTERPOLATE.get((x.ndim - 2, mode))
    if torch_mode is None or changed[0] < 2 or (mode == "cubic" and (cubic_a != -0.75
                                                                    or exclude)):
        return None
    if coordinates == "align_corners":
        align = True
    elif coordinates in ("half_pixel", "pytorch_half_pixel") and min(out[2:]) > 1:
        align = False
    else:
        return None
    if antialias:  # torch's antialiasing filters are not onnxruntime's
        return None
    if by_sizes:
        return F.interpolate(x, size=out[2:], mode=torch_mode, align_corners=align)
    if [math.floor(n * f) for n, f in zip(x.shape[2:], factors[2:], strict=True)] != out[2:]:
        return None
    return F.interpolate(x, scale_factor=factors[2:], mode=torch_mode, align_corners=align,
                         recompute_scale_factor=False)


def _source(mode: str, n: int, m: int, scale: float, roi: tuple[float, float]) -> Tensor:
    """Source coordinates (float32, as onnxruntime computes them) of ``m`` output cells."""
    i = torch.arange(m, dtype=torch.float32)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and m > 1):
        return (i + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = np.float32(n) / 2 * (1 - np.float32(m) / (np.float32(scale) * np.float32(n)))
        return float(offset) + (i + 0.5) / scale - 0.5
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if mode == "align_corners" and m > 1:
        return i * (n - 1) / (m - 1)
    if mode in ("align_corners", "pytorch_half_pixel"):  # one output cell reads the first
        return i * 0
    if mode == "tf_crop_and_resize":
        lo, hi = roi
        if m == 1:
            return torch.full((1,), 0.5 * (lo + hi) * (n - 1))
        return lo * (n - 1) + i * (hi - lo) * (n - 1) / (m - 1)
    raise UnsupportedModelError(f"op 'Resize' with coordinate_transformation_mode '{mode}' is "
                                "not supported by the shadow model")


def _nearest(source: Tensor, mode: str, down: bool) -> Tensor:
    """Round source coordinates to an index by ``nearest_mode``."""
    if mode == "round_prefer_floor":
        return torch.ceil(source - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(source + 0.5)
    if mode == "floor" or (mode == "simple" and not down):
        return torch.floor(source)
    if mode in ("ceil", "simple"):
        return torch.ceil(source)
    raise UnsupportedModelError(f"op 'Resize' with nearest_mode '{mode}' is not supported by "
                                "the shadow model")


def _taps(source: Tensor, n: int, scale: float, mode: str, nearest_mode: str, a: float,
          exclude: int, antialias: int) -> tuple[Tensor, Tensor | None]:
    """Source indices ``(m,)`` or ``(m, taps)`` and their weights (None for nearest)."""
    if mode == "nearest":
        return _nearest(source, nearest_mode, scale < 1).clamp(0, n - 1).long(), None
    if mode not in ("linear", "cubic"):
        raise UnsupportedModelError(f"op 'Resize' with mode '{mode}' is not supported by the "
                                    "shadow model")
    if antialias:
        return _stretched_taps(source, n, min(scale, 1.0), mode, a, exclude)
    if mode == "linear":
        source = source.clamp(0, n - 1)
    low = source.floor()
    frac = source - low
    if mode == "linear":
        return torch.stack([low, low + 1], 1).long().clamp(max=n - 1), \
            torch.stack([1 - frac, frac], 1)
    taps = low.long()[:, None] + torch.arange(-1, 3)
    w = _keys(torch.stack([frac + 1, frac, 1 - frac, 2 - frac], 1), a)
    if exclude:
        w = w * ((taps >= 0) & (taps < n))
        w = w / w.sum(1, keepdim=True)
    return taps.clamp(0, n - 1), w


def _keys(d: Tensor, a: float) -> Tensor:
    """The cubic convolution kernel at distances ``0 <= d <= 2`` with coefficient ``a``."""
    return torch.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                       ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)


def _stretched_taps(source: Tensor, n: int, s: float, mode: str, a: float,
                    exclude: int) -> tuple[Tensor, Tensor]:
    """Antialiasing taps: the filter stretched by ``1 / s``, its weights summing to 1."""
    reach = math.ceil((1 if mode == "linear" else 2) / s)
    taps = source.floor().long()[:, None] + torch.arange(-reach, reach + 2)
    d = ((taps - source[:, None]) * s).abs()
    w = (1 - d).clamp(min=0) if mode == "linear" else torch.where(d < 2, _keys(d, a), 0.0)
    if exclude:
        w = w * ((taps >= 0) & (taps < n))
    return taps.clamp(0, n - 1), w / w.sum(1, keepdim=True)


def _gather(x: Tensor, axis: int, taps: Tensor, weights: Tensor | None) -> Tensor:
    """Resample ``axis`` of ``x``: pick ``taps`` and sum them with ``weights``."""
    taps = taps.to(x.device)
    if weights is None:
        return x.index_select(axis, taps)
    y = x.index_select(axis, taps.flatten()).unflatten(axis, tuple(taps.shape))
    shape = [1] * y.ndim
    shape[axis], shape[axis + 1] = taps.shape
    return (y * weights.to(x.device, x.dtype).view(shape)).sum(axis + 1)
