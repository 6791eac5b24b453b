"""Reading data sources into arrays, held in memory or read on demand.

.npz files, image folders, ``module:function``, Python objects and batches;
:mod:`onnxprune.training.data` checks and normalises what they give.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from onnxprune.errors import UsageError
from onnxprune.limits import check_tensor
from onnxprune.training.lazy import IMAGE_MODES, Images, Lazy, npz_member
from onnxprune.training.torch_data import map_style, read_dataset, spool, to_numpy

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
__all__ = ["IMAGE_EXTENSIONS", "IMAGE_MODES", "read_images", "read_npz", "read_path"]


def read_path(source: str | os.PathLike) -> tuple[np.ndarray | Lazy, np.ndarray | None]:
    """Arrays from a ``.npz`` file or a ``module:function`` string."""
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise UsageError(f"{path}: unsupported data file; give a .npz file, a folder of "
                             "images with one subfolder per class, or module:function")
        return read_npz(path)
    if isinstance(source, str) and ":" in source:
        return read_object(call_function(source), source)
    raise UsageError(f"{path}: no such file or directory")


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Array ``x`` and, when present, ``y`` of a ``.npz`` file.

    ``x`` is mapped from the file when ``np.savez`` stored it uncompressed (read whole from
    ``np.savez_compressed``); ``y`` is read.
    """
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not an .npz archive (np.savez writes one)")
    try:
        with np.load(path) as arrays:
            if "x" not in arrays.files:
                raise UsageError(f"{path}: no array 'x' (it holds: "
                                 f"{', '.join(arrays.files) or 'nothing'})")
            names = ["x", "y"] if "y" in arrays.files else ["x"]
            for name in names:
                shape, dtype = _npy_header(arrays.zip, f"{name}.npy")
                check_tensor(shape, dtype, f"{path}: array '{name}'")
            x = npz_member(path, arrays.zip, "x.npy")
            return (arrays["x"] if x is None else x,
                    arrays["y"] if "y" in arrays.files else None)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path}: not a readable .npz file ({e})") from e


def _npy_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype an ``.npy`` member of an archive claims, read from its header alone."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(f)
    return shape, dtype


def read_images(folder: Path, channels: int, height: int,
                width: int) -> tuple[Images, np.ndarray]:
    """Pixels (N, channels, height, width) decoded when read; labels by sorted class folder.

    Every file's header is read now: one that is no image is refused before any work.
    """
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UsageError(f"{folder}: no class subfolders; an image folder holds one subfolder "
                         "of images per class")
    files = [(f, label) for label, c in enumerate(classes) for f in sorted(c.rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class "
                         "subfolders")
    for file, _ in files:  # headers only, so that a stray file is refused before any work
        try:
            with Image.open(file):
                pass
        except (OSError, ValueError) as e:
            raise UsageError(f"{file}: not a readable image ({e})") from e
    return (Images([f for f, _ in files], channels, height, width),
            np.array([label for _, label in files], np.int64))


def call_function(text: str) -> object:
    """Call the function named by ``module:function`` or ``path/to/file.py:function``."""
    module_name, _, function_name = text.rpartition(":")
    if not module_name or not function_name:
        raise UsageError(f"{text}: expected module:function or path/to/file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"{text}: no such file {path}")
        module_spec = importlib.util.spec_from_file_location(f"_onnxprune_data_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or not (module_name + ".").startswith(e.name + "."):
                raise  # the module exists but fails to import one of its own dependencies
            raise UsageError(f"{text}: cannot import module {module_name} ({e})") from e
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UsageError(f"{text}: module {module_name} has no function {function_name}")
    return function()


def read_object(source: object, where: str) -> tuple[np.ndarray | Lazy, np.ndarray | None]:
    """Arrays from a Python object: (x, y), an array, a dataset or an iterable of batches.

    ``(x, y)`` and arrays are used as they are. A map-style dataset, or a DataLoader over one
    (its sampler's choice of items kept, its batching and shuffling left to training), reads
    its items as batches need them; any other iterable of batches (a generator, a DataLoader
    over an ``IterableDataset``) is read once into a temporary file that is then mapped
    (:mod:`onnxprune.training.torch_data`). Memory does not grow with the data set.
    """
    if isinstance(source, tuple) and len(source) == 2:
        return to_numpy(source[0]), None if source[1] is None else to_numpy(source[1])
    if isinstance(source, np.ndarray | torch.Tensor):
        return to_numpy(source), None
    found = map_style(source)
    if found is not None:
        return read_dataset(*found, where)
    if isinstance(source, Iterable) and not isinstance(source, str | bytes | Mapping):
        return spool(source, where)
    raise UsageError(f"cannot load data from {where}; give a .npz file, an image folder, "
                     "module:function, arrays, a Dataset, a DataLoader or an iterable of batches")
