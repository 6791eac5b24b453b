"""Inputs read when a batch needs them, so that memory does not grow with the data set.

A :class:`Lazy` array has a ``shape`` and a ``dtype`` and reads rows only when indexed; the
:class:`~onnxprune.training.data.Dataset` indexes its inputs a batch at a time, so a training
epoch over an image folder decodes one batch of images at a time, and a subset (the seeded
validation split, a calibration draw) is a list of positions, not a copy.

Sources: :func:`npz_member` maps an uncompressed ``.npz`` member (``np.savez``) straight from
the file (``np.load`` cannot: it reads members whole); :class:`Images` decodes image files;
:class:`Indexed` selects rows of another array; :class:`Mapped` applies a row-wise function
(the cast to the model's dtype, ``--mean`` / ``--std``) as rows are read;
:class:`~onnxprune.training.torch_data.Items` reads the items of a map-style dataset.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from onnxprune.errors import UsageError

IMAGE_MODES = {1: "L", 3: "RGB"}  # channels of the model input -> Pillow mode


class Lazy:
    """A read-only array of ``shape`` and ``dtype`` whose rows are read when indexed.

    ``finite`` says that every value is finite by construction (pixels / 255), so checking
    the data need not read it all.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    finite: bool = False

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        """The rows at ``index`` (an int, a slice, integer positions or a boolean mask).

        A tuple indexes the rows by its first item and the rows read by the rest.
        """
        if isinstance(index, tuple):
            first = self[index[0]]
            rest = index[1:] if np.ndim(np.arange(len(self))[index[0]]) == 0 else (
                slice(None), *index[1:])
            return first[rest]
        rows = np.arange(len(self))[index]
        if np.ndim(rows) == 0:
            return self.rows(np.array([rows]))[0]
        return self.rows(np.asarray(rows, dtype=np.int64))

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The rows at the integer positions ``index``, as a new array."""
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Every row, read now (``np.asarray``): for small data and tests only."""
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def astype(self, dtype: Any, copy: bool = False) -> Lazy:
        """This array with its rows cast to ``dtype`` as they are read."""
        dtype = np.dtype(dtype)
        return self if dtype == self.dtype else Mapped(self, lambda a: a.astype(dtype), dtype)


def is_lazy(x: Any) -> bool:
    """Whether ``x`` reads its rows on demand (a :class:`Lazy` array or a memory map)."""
    return isinstance(x, Lazy | np.memmap)


class Indexed(Lazy):
    """The rows ``index`` of ``base``, in that order."""

    def __init__(self, base: Any, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape, self.dtype = (len(self.index), *base.shape[1:]), base.dtype
        self.finite = getattr(base, "finite", False)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The base's rows at ``self.index[index]``."""
        return np.asarray(self.base[self.index[index]])


class Mapped(Lazy):
    """``fn`` applied to the rows of ``base`` as they are read; it gives ``dtype``."""

    def __init__(self, base: Any, fn: Callable[[np.ndarray], np.ndarray], dtype: np.dtype, *,
                 finite: bool = False) -> None:
        self.base, self.fn, self.finite = base, fn, finite
        self.shape, self.dtype = tuple(base.shape), np.dtype(dtype)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """``fn`` of the base's rows at ``index``."""
        return self.fn(np.asarray(self.base[index]))


class Images(Lazy):
    """Image files decoded, converted and resized to uint8 (channels, height, width) on read.

    ``decoded`` counts the files decoded so far (a test observes that a folder is not read
    whole).
    """

    def __init__(self, files: Sequence[Path], channels: int, height: int, width: int) -> None:
        self.files = [os.fspath(f) for f in files]  # strings: a Path holds several times more
        self.mode, self.size = IMAGE_MODES[channels], (width, height)
        self.shape, self.dtype = (len(self.files), channels, height, width), np.dtype(np.uint8)
        self.decoded = 0

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The images at ``index``, decoded now."""
        out = np.empty((len(index), *self.shape[1:]), np.uint8)
        for k, i in enumerate(index):
            file = self.files[int(i)]
            try:
                with Image.open(file) as image:
                    resized = image.convert(self.mode).resize(self.size,
                                                              Image.Resampling.BILINEAR)
            except (OSError, ValueError) as e:
                raise UsageError(f"{file}: not a readable image ({e})") from e
            out[k] = np.asarray(resized).reshape(*self.size[::-1], -1).transpose(2, 0, 1)
            self.decoded += 1
        return out


def npz_member(path: Path, archive: zipfile.ZipFile, member: str) -> np.ndarray | None:
    """Member ``member`` of the ``.npz`` at ``path`` mapped from the file, read-only.

    None when the member is compressed (``np.savez_compressed``) or holds objects: the caller
    reads it whole.
    """
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject or not np.prod(shape):
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")
