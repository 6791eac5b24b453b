"""Data for retraining: one in-memory :class:`Dataset`, whatever the source.

:func:`load_data` reads a ``.npz`` file (array ``x`` of N samples, optional ``y`` of N integer
labels), a folder of images with one subfolder per class (class index = sorted folder name),
``"module:function"`` or ``"path/to/file.py:function"`` (the function returns what the Python
API accepts), and from Python a :class:`Dataset`, an ``(x, y)`` tuple, an array, a
``DataLoader`` or any iterable of ``(x, y)`` or ``x`` batches.

Inputs are cast to the model input's float dtype and never rescaled, except image pixels,
which are divided by 255. With ``mean`` and ``std`` every source is then normalised per channel
(axis 1): ``x[:, c] = (x[:, c] - mean[c]) / std[c]``, a single value serving all channels.

:func:`input_spec` reads what the model expects, :func:`check` compares the data with it before
training, :func:`split` holds out a seeded validation set, and :func:`synthetic` draws
standard-normal inputs to distil from when there is no data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from onnxprune import modelio
from onnxprune.errors import UsageError
from onnxprune.training import lazy, sources

CHECK_ROWS = 256  # rows :func:`check` reads at a time


@dataclass(frozen=True)
class InputSpec:
    """What the model expects for its single input.

    Attributes:
        name: The graph input's name.
        shape: Its dims, symbolic ones as strings, e.g. ``("N", 1, 28, 28)``.
        dtype: Its numpy dtype.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype


class Dataset:
    """Inputs ``x`` (a float array, N samples first) and optional N int64 labels ``y``.

    ``x`` may read its rows on demand (:mod:`onnxprune.training.lazy`: a memory-mapped
    ``.npz``, an image folder): batches read a batch of rows, and a subset of it is a list of
    positions, so memory does not grow with the data set.

    ``source`` says where the data came from, for messages. Raises UsageError when ``x`` is
    not a float array or ``y`` is not N integer labels.
    """

    def __init__(self, x: np.ndarray | lazy.Lazy, y: np.ndarray | None = None, *,
                 source: str = "data") -> None:
        if not isinstance(x, np.ndarray | lazy.Lazy) or x.ndim == 0 or x.dtype.kind != "f":
            raise UsageError(f"{source}: inputs x must be a float array with samples first, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {np.shape(x)}")
        if y is not None:
            y = np.asarray(y)
            if y.dtype.kind not in "iu":
                raise UsageError(f"{source}: labels y must be integer class indices, got {y.dtype}")
            if y.shape != (len(x),):
                raise UsageError(f"{source}: {len(x)} inputs x but labels y have shape {y.shape}")
            y = y.astype(np.int64, copy=False)
        self.x = x
        self.y = y
        self.source = source

    @property
    def labelled(self) -> bool:
        """Whether the data has labels."""
        return self.y is not None

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The samples at ``indices`` (integer positions or a boolean mask), in that order."""
        index = np.asarray(indices)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        x = lazy.Indexed(self.x, index) if lazy.is_lazy(self.x) else self.x[index]
        return Dataset(x, None if self.y is None else self.y[index], source=self.source)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, workers: int = 0, shard: tuple[int, int] = (0, 1),
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Every sample once, as ``(x, y)`` tensors (``y`` is None when unlabelled).

        With ``shuffle`` the order is a permutation drawn from ``seed``, so runs repeat;
        ``drop_last`` leaves out a last batch smaller than ``batch_size``. ``workers`` > 0
        reads the batches in that many DataLoader worker processes (decoding images while
        the model trains), in the same order. ``shard`` ``(rank, size)`` keeps the share of the
        samples a ``DistributedSampler`` gives process ``rank`` of ``size`` (as many for
        every process: the last ``len % size`` of the order are left out), shuffled by
        ``seed`` alike in every process, for training in several processes.
        """
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        rank, size = shard
        if size > 1:
            order = np.fromiter(torch.utils.data.DistributedSampler(
                range(len(self)), size, rank, shuffle=shuffle, seed=seed, drop_last=True),
                np.int64)
        else:
            order = (np.random.default_rng(seed).permutation(len(self)) if shuffle
                     else np.arange(len(self)))
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        chunks = [order[start:start + batch_size] for start in range(0, stop, batch_size)]
        if workers > 0:
            return iter(torch.utils.data.DataLoader(self, batch_size=None, sampler=chunks,
                                                    num_workers=workers))
        return map(self.__getitem__, chunks)

    def batch_count(self, batch_size: int, shard: tuple[int, int] = (0, 1)) -> int:
        """How many batches :meth:`batches` gives each of ``shard[1]`` processes."""
        return -(-(len(self) // shard[1]) // batch_size)

    def __getitem__(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch at positions ``index``, as ``(x, y)`` tensors."""
        return (torch.from_numpy(np.asarray(self.x[index])),
                None if self.y is None else torch.from_numpy(self.y[index]))


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """The model's input, the first (and only) graph input that is not an initializer.

    Raises:
        UsageError: The model has no such input or several.
    """
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [spec for spec in modelio.input_specs(model) if spec[0] not in initializers]
    if len(inputs) != 1:
        names = ", ".join(name for name, _, _ in inputs) or "none"
        raise UsageError(f"onnxprune trains models with one input; this model has {len(inputs)}: "
                         f"{names}")
    name, shape, dtype = inputs[0]
    return InputSpec(name, tuple(shape), dtype)


def class_count(model: onnx.ModelProto) -> int | None:
    """The classes a classifier scores: its first output's static dim 1, when 2-D."""
    _, shape, _ = modelio.output_specs(model)[0]
    return shape[1] if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0 else None


def load_data(source: Any, spec: InputSpec, *, input_size: tuple[int, int] | None = None,
              mean: list[float] | None = None, std: list[float] | None = None) -> Dataset:
    """Load ``source`` into a Dataset whose inputs have the dtype of the model input ``spec``.

    Args:
        source: A ``.npz`` path, an image folder, ``"module:function"``,
            ``"file.py:function"``, a Dataset (returned as is when there is nothing to change),
            an ``(x, y)`` tuple, an array, a DataLoader or an iterable of batches.
        spec: The model input (:func:`input_spec`).
        input_size: (H, W) to resize images to; by default the spec's static H and W.
        mean: Per-channel (or single) values subtracted from the inputs; default 0.
        std: Per-channel (or single) values the inputs are then divided by; default 1.

    Raises:
        UsageError: The source is missing, unreadable or of an unknown kind, its arrays
            disagree, or an option does not fit it.
    """
    dtype = _float_dtype(spec)
    if (isinstance(source, Dataset) and source.x.dtype == dtype
            and input_size is None and mean is None and std is None):
        return source
    where = _label(source)
    folder = isinstance(source, str | os.PathLike) and Path(source).is_dir()
    if folder:
        x, y = _read_images(Path(source), spec, _size(input_size))
    elif isinstance(source, str | os.PathLike):
        x, y = sources.read_path(source)
    elif isinstance(source, Dataset):
        x, y = source.x, source.y
    else:
        x, y = sources.read_object(source, where)
    if x.dtype.kind not in "fiu":
        raise UsageError(f"{where}: inputs x must be numbers, got {x.dtype}")
    if lazy.is_lazy(x):
        if mean is not None or std is not None:  # refuse a misfit now, not in training
            _normalise(np.asarray(x[:1]).astype(dtype), mean, std, where)
        if mean is not None or std is not None or x.dtype != dtype:
            x = lazy.Mapped(x, lambda a: _normalise(a.astype(dtype, copy=False), mean, std,
                                                    where), dtype,
                            finite=getattr(x, "finite", False))
    else:
        x = _normalise(x.astype(dtype, copy=False), mean, std, where)
    return Dataset(x, y, source=where)


def split(data: Dataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split ``data`` into (train, validation) by a permutation drawn from ``seed``.

    The validation set takes ``round(N * val_fraction)`` samples (at least one, and at least one
    is left to train); both keep the original order of their samples.

    Raises:
        UsageError: ``val_fraction`` is not in (0, 1) or there are fewer than 2 samples.
    """
    if not 0 < val_fraction < 1:
        raise UsageError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    if len(data) < 2:
        raise UsageError(f"{data.source}: {len(data)} sample(s) cannot be split into train and "
                         "validation sets")
    n_val = min(max(round(len(data) * val_fraction), 1), len(data) - 1)
    order = np.random.default_rng(seed).permutation(len(data))
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


def synthetic(spec: InputSpec, n: int = 512, seed: int = 0, *,
              input_size: tuple[int, int] | None = None) -> Dataset:
    """``n`` unlabelled standard-normal inputs of the model's shape, drawn from ``seed``.

    The first dim is the batch and becomes ``n``; ``input_size`` (H, W) fills symbolic H and W
    of an NCHW input. Raises UsageError when a non-batch dim stays symbolic.
    """
    dtype = _float_dtype(spec)
    if n < 1:
        raise UsageError(f"synthetic inputs need at least 1 sample, got {n}")
    dims = list(spec.shape[1:])
    if input_size is not None:
        size = _size(input_size)
        clash = any(isinstance(d, int) and d != s for d, s in zip(dims[1:], size, strict=False))
        if len(dims) != 3 or clash:
            raise UsageError(f"--input-size {size[0]} {size[1]} does not fit model input "
                             f"'{spec.name}' {_shape_text(spec.shape)}")
        dims[1:] = size
    if not spec.shape or not all(isinstance(d, int) and d > 0 for d in dims):
        raise UsageError(f"model input '{spec.name}' has shape {_shape_text(spec.shape)}; "
                         "synthetic inputs need fixed non-batch dims: give --input-size H W")
    x = np.random.default_rng(seed).standard_normal((n, *dims), dtype=np.float32)
    return Dataset(x.astype(dtype, copy=False), None, source="synthetic inputs")


def check(data: Dataset, spec: InputSpec, classes: int | None = None) -> None:
    """Check that ``data`` fits the model input ``spec`` (and its ``classes``) before use.

    The model input must be float (a Dataset's inputs are float by construction), the data
    must hold at least one sample, every input value must be finite, the data must match every
    non-batch dim the spec fixes, and labels must lie in ``[0, classes)`` when that is known.

    Raises:
        UsageError: One line naming the data and what is wrong with it.
    """
    _float_dtype(spec)
    if not len(data):
        raise UsageError(f"{data.source}: holds no samples")
    finite = np.ones(len(data), bool) if getattr(data.x, "finite", False) else np.concatenate([
        np.isfinite(np.asarray(data.x[start:start + CHECK_ROWS])).reshape(
            min(CHECK_ROWS, len(data) - start), -1).all(axis=1)
        for start in range(0, len(data), CHECK_ROWS)])
    if not finite.all():
        raise UsageError(f"{data.source}: {int((~finite).sum())} of {len(data)} inputs hold NaN "
                         f"or infinite values (the first is sample {int(np.argmin(finite))})")
    if data.y is not None and classes is not None and len(data.y):
        low, high = int(data.y.min()), int(data.y.max())
        if low < 0 or high >= classes:
            raise UsageError(f"{data.source}: labels run from {low} to {high}, but the model "
                             f"scores {classes} classes (labels 0 to {classes - 1})")
    actual, expected = data.x.shape, spec.shape
    if expected and (len(actual) != len(expected) or any(
            isinstance(e, int) and e != a for e, a in zip(expected[1:], actual[1:], strict=True))):
        raise UsageError(f"{data.source}: inputs have shape {_shape_text(('N', *actual[1:]))} "
                         f"but model input '{spec.name}' expects "
                         f"{_shape_text(('N', *expected[1:]))}")


def _float_dtype(spec: InputSpec) -> np.dtype:
    if np.dtype(spec.dtype).kind != "f":
        raise UsageError(f"model input '{spec.name}' is {spec.dtype}; onnxprune trains models "
                         "with a float input")
    return np.dtype(spec.dtype)


def _label(source: Any) -> str:
    """How messages name a source."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, Dataset):
        return source.source
    if isinstance(source, tuple):
        return "(x, y) arrays"
    if isinstance(source, np.ndarray | torch.Tensor):
        return "array x"
    return type(source).__name__


def _size(input_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise UsageError(f"--input-size takes two positive numbers H W, got {input_size}")
    return None if input_size is None else (int(input_size[0]), int(input_size[1]))


def _shape_text(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _read_images(folder: Path, spec: InputSpec,
                 input_size: tuple[int, int] | None) -> tuple[lazy.Lazy, np.ndarray]:
    """Images resized to (H, W), in the spec's dtype / 255, labelled by sorted class folder.

    Decoded as batches read them (image folders are always finite: :func:`check` skips them).
    """
    channels = spec.shape[1] if len(spec.shape) == 4 else None
    if channels not in sources.IMAGE_MODES:
        raise UsageError(f"{folder}: image folders need a model input of shape (N, 1 or 3, H, W); "
                         f"'{spec.name}' expects {_shape_text(spec.shape)}")
    height, width = input_size or spec.shape[2:]
    if not (isinstance(height, int) and isinstance(width, int)):
        raise UsageError(f"{folder}: model input '{spec.name}' has shape "
                         f"{_shape_text(spec.shape)}; give --input-size H W to resize images to")
    pixels, labels = sources.read_images(folder, channels, height, width)
    dtype = _float_dtype(spec)
    return lazy.Mapped(pixels, lambda a: a.astype(dtype) / dtype.type(255), dtype,
                       finite=True), labels


def _normalise(x: np.ndarray, mean: list[float] | None, std: list[float] | None,
               where: str) -> np.ndarray:
    """``(x - mean) / std`` per channel (axis 1); unchanged when neither is given."""
    if mean is None and std is None:
        return x
    if x.ndim < 2:
        raise UsageError(f"{where}: --mean/--std apply per channel (axis 1), but inputs have "
                         f"shape {x.shape}")
    stats = []
    for option, values, default in (("--mean", mean, 0.0), ("--std", std, 1.0)):
        v = np.asarray(default if values is None else values, dtype=x.dtype).reshape(-1)
        if len(v) not in (1, x.shape[1]):
            raise UsageError(f"{option} has {len(v)} values but {where} has {x.shape[1]} "
                             "channels (axis 1)")
        stats.append(v.reshape((1, -1) + (1,) * (x.ndim - 2)))
    if not np.isfinite(stats[0]).all():
        raise UsageError(f"--mean must be finite numbers, got {mean}")
    if not (np.isfinite(stats[1]) & (stats[1] > 0)).all():
        raise UsageError(f"--std must be positive finite numbers, got {std}")
    return (x - stats[0]) / stats[1]


