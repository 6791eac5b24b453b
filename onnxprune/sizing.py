"""The size a model runs at, for models whose inputs declare symbolic sizes (N x 3 x H x W).

Analysis, FLOPs and verification need fixed sizes. They come from ``--input-size HxW``
(``input_size=``: H and W of an N x C x H x W input), else from the data's samples, else the run
is refused. The model is pruned at that size and written back with its symbolic inputs
(:func:`onnxprune.modelio.restore_input_dims`), then checked at a second size, twice the
first in every symbolic dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from onnxprune import modelio
from onnxprune.errors import UsageError
from onnxprune.training.prepare import DataOptions, Prepared, prepare

Dims = dict[str, list[int]]


def at_run_size(normalized: onnx.ModelProto, options: DataOptions, *,
                needs_training: bool) -> tuple[onnx.ModelProto, Dims | None, Prepared]:
    """The model at the size it runs at, the dims fixed (None when none were open), the data."""
    open_dims = modelio.open_dims(normalized)
    if not open_dims:
        return normalized, None, prepare(normalized, options, needs_training=needs_training)
    if options.input_size is not None:
        dims = {name: _with_size(name, shape, options.input_size)
                for name, shape in open_dims.items()}
        work = _sized(normalized, dims)
        return work, dims, prepare(work, options, needs_training=needs_training)
    name, shape = next(iter(open_dims.items()))
    if options.data is None:
        raise UsageError(f"input '{name}' has shape {_text(shape)}: give --input-size HxW (or "
                         "--data), the size to analyse, count and verify the model at")
    prepared = prepare(normalized, options, needs_training=needs_training)
    dims = {name: list(prepared.train.x.shape[1:])}
    return _sized(normalized, dims), dims, prepared


def _sized(model: onnx.ModelProto, dims: Dims) -> onnx.ModelProto:
    """``model`` with its inputs at ``dims``, every tensor shaped (inferred, else observed)."""
    return modelio.observe_shapes(modelio.with_input_dims(model, dims))


def second_size(normalized: onnx.ModelProto, dims: Dims) -> Dims:
    """Twice ``dims`` in every dim the model leaves symbolic: where to check it again."""
    open_dims = modelio.open_dims(normalized)
    return {name: [size if isinstance(declared, int) and declared > 0 else 2 * size
                   for size, declared in zip(sizes, open_dims[name][1:], strict=True)]
            for name, sizes in dims.items()}


def _with_size(name: str, shape: Sequence[int | str], size: tuple[int, int]) -> list[int]:
    """The dims after the batch of an N x C x H x W input run at H x W = ``size``."""
    if len(shape) != 4 or not isinstance(shape[1], int) or shape[1] <= 0:
        raise UsageError(f"--input-size fills H and W of an N x C x H x W input; '{name}' has "
                         f"shape {_text(shape)}")
    if len(size) != 2 or min(size) < 1:
        raise UsageError(f"--input-size takes two positive numbers HxW, got {size}")
    for declared, given in zip(shape[2:], size, strict=True):
        if isinstance(declared, int) and declared > 0 and declared != given:
            raise UsageError(f"--input-size {size[0]}x{size[1]} does not fit input '{name}' of "
                             f"shape {_text(shape)}")
    return [shape[1], int(size[0]), int(size[1])]


def _text(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
