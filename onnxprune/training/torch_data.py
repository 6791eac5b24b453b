"""Python data objects read without holding them whole: map-style datasets and batch streams.

A map-style dataset (``len(dataset)`` and ``dataset[i]``, as torchvision's ``ImageFolder`` or a
user's class giving ``(x, y)`` or ``x`` per item) becomes :class:`Items`, a
:class:`~onnxprune.training.lazy.Lazy` array whose rows are the items' inputs, read when a batch
needs them. Any other iterable of batches (a generator, a DataLoader over an
``IterableDataset``) can be read only once: :func:`spool` writes its inputs to a temporary file
and maps it, so memory holds the labels and the pages in use, not the data set.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    TensorDataset,
    default_collate,
    default_convert,
)

from onnxprune.errors import UsageError
from onnxprune.training.lazy import Lazy

PLURAL = {"batch": "batches", "item": "items"}


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array from an array, a tensor (on any device) or a nested sequence."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    return np.asarray(value)


def parts(value: Any, kind: str, i: int, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs and labels (None when unlabelled) of ``kind`` ("batch" or "item") ``i``.

    ``value`` is ``(x, y)``, ``[x]`` or ``x``; anything else is refused with a UsageError.
    """
    if isinstance(value, tuple | list) and len(value) in (1, 2):
        x, y = value[0], value[1] if len(value) == 2 else None
    elif isinstance(value, np.ndarray | torch.Tensor):
        x, y = value, None
    else:
        raise UsageError(f"{where}: {kind} {i} is a {type(value).__name__}; {PLURAL[kind]} must "
                         "be (x, y) or x, as numpy arrays or torch tensors")
    return to_numpy(x), None if y is None else to_numpy(y)


class Items(Lazy):
    """The inputs of a map-style dataset's items, one ``dataset[i]`` call per row read.

    ``order`` gives the items of the rows (None: row i is item i); ``first`` is the first row's
    inputs, already read, which fix the shape and dtype of every row.
    """

    def __init__(self, dataset: Any, order: np.ndarray | None, first: np.ndarray,
                 where: str) -> None:
        self.dataset, self.order, self.where = dataset, order, where
        count = len(dataset) if order is None else len(order)
        self.shape, self.dtype = (count, *first.shape), first.dtype

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The inputs of the items at rows ``index``, read now and stacked."""
        out = np.empty((len(index), *self.shape[1:]), self.dtype)
        for k, row in enumerate(index):
            item = int(row if self.order is None else self.order[row])
            x, _ = parts(self.dataset[item], "item", item, self.where)
            out[k] = _fits(x, self.shape[1:], item, self.where)
        return out


def _fits(x: np.ndarray, shape: tuple[int, ...], item: int, where: str) -> np.ndarray:
    """``x``, refused unless it has the first item's ``shape``."""
    if x.shape != shape:
        raise UsageError(f"{where}: items do not stack (item {item} has shape {x.shape}, the "
                         f"first {shape})")
    return x


def map_style(source: Any) -> tuple[Any, np.ndarray | None] | None:
    """The map-style dataset ``source`` is or reads, and the items it picks (None: each once).

    A DataLoader over a map-style dataset (default ``collate_fn``) gives its dataset and the
    items its sampler picks, in one pass over the sampler: its batching and shuffling give way
    to training's own, which batches, shuffles and splits by seed. Any other object with
    ``len`` and ``[i]`` is a map-style dataset when it is a torch ``Dataset`` or not iterable
    (lists, tuples and other iterables are batches). None when ``source`` is none of these: its
    batches are read as they come.
    """
    if isinstance(source, DataLoader):
        dataset = source.dataset
        if (isinstance(dataset, IterableDataset) or not _indexable(dataset)
                or source.collate_fn not in (default_collate, default_convert)):
            return None
        picks = (source.sampler if source.batch_sampler is None
                 else itertools.chain.from_iterable(source.batch_sampler))
        try:
            order = np.fromiter(picks, np.int64)
        except (TypeError, ValueError):  # a sampler of keys, not positions
            return None
        every = np.array_equal(np.sort(order), np.arange(len(dataset)))
        return dataset, None if every else order
    if (_indexable(source) and not isinstance(source, IterableDataset)
            and (isinstance(source, torch.utils.data.Dataset) or not isinstance(source, Iterable))):
        return source, None
    return None


def _indexable(source: Any) -> bool:
    """Whether ``source`` has ``len`` and ``[i]``."""
    return hasattr(type(source), "__len__") and hasattr(type(source), "__getitem__")


def read_dataset(dataset: Any, order: np.ndarray | None,
                 where: str) -> tuple[np.ndarray | Items, np.ndarray | None]:
    """Inputs and labels of a map-style dataset's items ``order`` (None: every item once).

    The inputs are :class:`Items`, read as batches need them; item 0 is read now for their
    shape and dtype. Labels are the dataset's ``targets`` (torchvision's convention) when it
    has one integer label per item and no ``target_transform`` to change them; otherwise one
    pass reads every item once and keeps only its label. A ``TensorDataset`` already holds its
    tensors in memory: they are used as they are.

    Raises:
        UsageError: The dataset has no items, or an item is not ``(x, y)`` or ``x``, or the
            items disagree on having labels or on their inputs' shape.
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) in (1, 2):
        arrays = [to_numpy(t) if order is None else to_numpy(t)[order] for t in dataset.tensors]
        return arrays[0], arrays[1] if len(arrays) == 2 else None
    items = np.arange(len(dataset)) if order is None else order
    if not len(items):
        raise UsageError(f"{where}: gave no samples")
    first, label = parts(dataset[int(items[0])], "item", int(items[0]), where)
    x = Items(dataset, order, first, where)
    if label is None:
        return x, None
    targets = _targets(dataset)
    if targets is not None:
        return x, targets[items]
    labels = [label]
    for item in items[1:]:  # the inputs are read, checked and dropped: only the labels stay
        inputs, label = parts(dataset[int(item)], "item", int(item), where)
        _fits(inputs, first.shape, int(item), where)
        if label is None:
            raise UsageError(f"{where}: some items have labels y and some do not")
        labels.append(label)
    try:
        return x, np.stack(labels)
    except ValueError as e:
        raise UsageError(f"{where}: item labels do not stack ({e})") from e


def _targets(dataset: Any) -> np.ndarray | None:
    """The dataset's ``targets``, when they are its items' labels: one integer per item."""
    targets = getattr(dataset, "targets", None)
    if targets is None or getattr(dataset, "target_transform", None) is not None:
        return None
    try:
        labels = to_numpy(targets)
    except (TypeError, ValueError):
        return None
    return labels if labels.shape == (len(dataset),) and labels.dtype.kind in "iu" else None


def spool(batches: Iterable, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs of ``(x, y)``, ``[x]`` or ``x`` batches, mapped read-only from a temporary file.

    The batches are read once, one at a time: each one's inputs are appended to a file in the
    temporary folder (``TMPDIR``: a disk, not memory, for data sets larger than memory) and its
    labels kept in memory. The file is unlinked as soon as it is mapped: the map outlives its
    name (POSIX), so nothing is left behind however the process ends. Batches after the first
    are cast to its dtype.

    Raises:
        UsageError: No batches, a batch that is not ``(x, y)`` or ``x``, inputs that are not
            numbers, batches that disagree on having labels or do not stack, or a file that
            cannot be written.
    """
    descriptor, name = tempfile.mkstemp(prefix="onnxprune-", suffix=".x")
    try:
        with os.fdopen(descriptor, "wb") as file:
            first, count, labels = _write(batches, file, name, where)
        shape = (count, *first.shape[1:])
        x = (np.memmap(name, first.dtype, mode="r", shape=shape)
             if np.prod(shape) else np.empty(shape, first.dtype))
    finally:
        os.unlink(name)
    if labels is None:
        return x, None
    try:
        return x, np.concatenate(labels)
    except ValueError as e:
        raise UsageError(f"{where}: batches do not stack ({e})") from e


def _write(batches: Iterable, file: Any, name: str,
           where: str) -> tuple[np.ndarray, int, list[np.ndarray] | None]:
    """Append every batch's inputs to ``file`` (at ``name``): batch 0, the rows, the labels."""
    first, labelled, count, labels = None, False, 0, []
    for i, batch in enumerate(batches):
        x, y = parts(batch, "batch", i, where)
        if first is None:
            if x.dtype.kind not in "fiu":
                raise UsageError(f"{where}: inputs x must be numbers, got {x.dtype}")
            first, labelled = x, y is not None
        if (y is not None) != labelled:
            raise UsageError(f"{where}: some batches have labels y and some do not")
        if x.ndim == 0 or x.shape[1:] != first.shape[1:]:
            raise UsageError(f"{where}: batches do not stack (batch {i} has shape {x.shape}, "
                             f"batch 0 {first.shape})")
        if not np.can_cast(x.dtype, first.dtype, "same_kind"):
            raise UsageError(f"{where}: batches do not stack (batch {i} holds {x.dtype}, "
                             f"batch 0 {first.dtype})")
        try:
            file.write(np.ascontiguousarray(x, first.dtype).data)
            file.flush()
        except OSError as e:  # a full disk, most likely
            raise UsageError(f"{where}: cannot write its batches to {name} ({e})") from e
        count += len(x)
        if y is not None:
            labels.append(y)
    if first is None:
        raise UsageError(f"{where}: gave no batches")
    return first, count, labels if labelled else None
