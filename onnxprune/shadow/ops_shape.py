"""Shape and layout ops of the shadow model's op table (see :mod:`onnxprune.shadow.op_table`).

Shapes, axes, indices and sizes arrive as int64 tensors and are read with ``.tolist()``; the
data they move stays a tensor, so gradients flow through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from onnxprune.errors import UnsupportedModelError

Tensor = torch.Tensor
Ints = Sequence[int]


def reshape(data: Tensor, shape: Tensor, *, allowzero: int = 0) -> Tensor:
    """Reshape: -1 is inferred; 0 copies the input's dimension unless ``allowzero``."""
    dims = shape.tolist()
    if not allowzero:
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return data.reshape(dims)


def flatten(x: Tensor, *, axis: int = 1) -> Tensor:
    """Flatten to 2-D at ``axis``."""
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def transpose(x: Tensor, *, perm: Ints | None = None) -> Tensor:
    """Transpose (reverses the axes without ``perm``)."""
    return x.permute(*(perm if perm is not None else range(x.ndim - 1, -1, -1)))


def concat(*inputs: Tensor, axis: int) -> Tensor:
    """Concat along ``axis``."""
    return torch.cat(inputs, axis)


def _split(x: Tensor, sizes: Ints | None, axis: int, parts: int | None) -> tuple[Tensor, ...]:
    """Split into ``sizes``, or into ``parts`` equal parts (the last one smaller)."""
    if sizes:
        return torch.split(x, list(sizes), axis)
    if parts is None:
        raise UnsupportedModelError("op 'Split' without split sizes needs num_outputs (the "
                                    "node's output count) in the shadow model")
    return torch.split(x, -(-x.shape[axis] // parts), axis)


def split_(x: Tensor, split: Tensor | None = None, *, axis: int = 0,
             num_outputs: int | None = None) -> tuple[Tensor, ...]:
    """Split from opset 13: sizes as an input, or ``num_outputs`` (opset 18) equal parts."""
    return _split(x, None if split is None else split.tolist(), axis, num_outputs)


def split_2(x: Tensor, *, axis: int = 0, split: Ints | None = None,
            num_outputs: int | None = None) -> tuple[Tensor, ...]:
    """Split before opset 13: sizes as an attribute."""
    return _split(x, split, axis, num_outputs)


def _slice(x: Tensor, starts: Ints, ends: Ints, axes: Ints | None, steps: Ints | None) -> Tensor:
    """Slice with ONNX's clamping; negative steps flip the axis (torch has none)."""
    index: list[slice] = [slice(None)] * x.ndim
    flips = []
    for start, end, axis, step in zip(starts, ends, axes or range(len(starts)),
                                      steps or [1] * len(starts), strict=True):
        axis %= x.ndim
        n = x.shape[axis]
        start, end = start + n if start < 0 else start, end + n if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), n), min(max(end, 0), n), step)
            continue
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
        flips.append(axis)
        index[axis] = slice(n - 1 - start, n - 1 - end, -step) if start > end else slice(0, 0)
    return (x.flip(flips) if flips else x)[tuple(index)]


def slice_(data: Tensor, starts: Tensor, ends: Tensor, axes: Tensor | None = None,
           steps: Tensor | None = None) -> Tensor:
    """Slice from opset 10: starts, ends, axes and steps as inputs."""
    return _slice(data, starts.tolist(), ends.tolist(), None if axes is None else axes.tolist(),
                  None if steps is None else steps.tolist())


def slice_1(data: Tensor, *, axes: Ints | None = None, ends: Ints, starts: Ints) -> Tensor:
    """Slice before opset 10: starts, ends and axes as attributes."""
    return _slice(data, starts, ends, axes, None)


def squeeze(data: Tensor, axes: Tensor | None = None) -> Tensor:
    """Squeeze from opset 13: axes as an optional input (all size-1 axes without it)."""
    return squeeze_1(data, axes=None if axes is None else axes.tolist())


def squeeze_1(data: Tensor, *, axes: Ints | None = None) -> Tensor:
    """Squeeze before opset 13: axes as an attribute."""
    return data.squeeze(tuple(axes)) if axes else data.squeeze()


def unsqueeze(data: Tensor, axes: Tensor) -> Tensor:
    """Unsqueeze from opset 13: axes as an input."""
    return unsqueeze_1(data, axes=axes.tolist())


def unsqueeze_1(data: Tensor, *, axes: Ints) -> Tensor:
    """Unsqueeze before opset 13: axes (of the output) as an attribute."""
    rank = data.ndim + len(axes)
    dims = list(data.shape)
    for a in sorted(a % rank for a in axes):
        dims.insert(a, 1)
    return data.reshape(dims)


def gather(data: Tensor, indices: Tensor, *, axis: int = 0) -> Tensor:
    """Gather along ``axis``; negative indices count from the end."""
    return data[(slice(None),) * (axis % data.ndim) + (indices.long(),)]


def gather_elements(data: Tensor, indices: Tensor, *, axis: int = 0) -> Tensor:
    """GatherElements along ``axis``; negative indices count from the end."""
    indices = indices.long()
    return torch.gather(data, axis, torch.where(indices < 0, indices + data.shape[axis], indices))


def expand(x: Tensor, shape: Tensor) -> Tensor:
    """Expand: broadcast ``x`` and ``shape`` both ways (a view)."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(shape.tolist())))


def tile(x: Tensor, repeats: Tensor) -> Tensor:
    """Tile."""
    return x.repeat(repeats.tolist())


def depth_to_space(x: Tensor, *, blocksize: int, mode: str = "DCR") -> Tensor:
    """DepthToSpace in DCR or CRD order."""
    if mode == "CRD":
        return F.pixel_shuffle(x, blocksize)
    n, c, h, w = x.shape
    k = blocksize
    y = x.reshape(n, k, k, c // (k * k), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (k * k), h * k, w * k)


def space_to_depth(x: Tensor, *, blocksize: int, mode: str = "DCR") -> Tensor:
    """SpaceToDepth in DCR or (opset 28) CRD order."""
    if mode == "CRD":
        return F.pixel_unshuffle(x, blocksize)
    n, c, h, w = x.shape
    k = blocksize
    y = x.reshape(n, c, h // k, k, w // k, k).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * k * k, h // k, w // k)


def trilu(x: Tensor, k: Tensor | None = None, *, upper: int = 1) -> Tensor:
    """Trilu: the upper or lower triangle from diagonal ``k``."""
    diagonal = 0 if k is None else int(k)
    return torch.triu(x, diagonal) if upper else torch.tril(x, diagonal)


def einsum(*inputs: Tensor, equation: str) -> Tensor:
    """Einsum."""
    return torch.einsum(equation, *inputs)


def non_zero(x: Tensor) -> Tensor:
    """NonZero: int64 indices, one row per axis."""
    return torch.nonzero(x).t()
