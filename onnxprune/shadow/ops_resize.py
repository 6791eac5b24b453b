"""Shadow-model Resize and Upsample: every coordinate and interpolation mode of the spec.

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
