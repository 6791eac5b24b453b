"""Where a run may write: never over a file it reads, never a half-checked path.

A run reads the model, the model's external-data files, and the files its options name
(``--data``, ``--val-data``, a ``--layer-sparsity`` map, a ``file.py:function``). Every output
(``--out``, ``--report``, ``--plot``, :meth:`onnxprune.PruneResult.save`) is checked against
them before any work starts: a path that is, or resolves to, one of them is refused, and so is
an existing path that is not a regular file (a folder, a FIFO, a device), two outputs on one
path, and a folder that is missing or cannot be written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxprune import modelio
from onnxprune.errors import UsageError


def files_read(model: Any, *sources: Any) -> tuple[Path, ...]:
    """The files a run on ``model`` with options ``sources`` reads, resolved.

    ``model`` contributes itself and its external-data files; each source contributes the
    file it names (a path, or the ``.py`` file of ``file.py:function``), when there is one.
    """
    found = []
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        found.append(path)
        found.extend(modelio.external_files(path))
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            text = os.fspath(source)
            found.append(Path(text))
            if ":" in text and text.rsplit(":", 1)[0].endswith(".py"):
                found.append(Path(text.rsplit(":", 1)[0]))
    return tuple(dict.fromkeys(p.resolve() for p in found if p.is_file()))


def check_outputs(outputs: Mapping[str, str | os.PathLike | None],
                  reads: Iterable[Path]) -> None:
    """Refuse any output that would overwrite an input or cannot be written, before any work.

    ``outputs`` maps an option name (``--out``) to its path (None when not given).
    """
    reads = {p.resolve(): p for p in reads}
    taken: dict[Path, str] = {}
    for option, given in outputs.items():
        if given is None:
            continue
        path = Path(given)
        target = path.resolve()
        if target in reads:
            raise UsageError(f"{path}: {option} is a file the run reads ({reads[target]}); "
                             "choose another path")
        if target in taken:
            raise UsageError(f"{path}: {option} and {taken[target]} are the same file")
        taken[target] = option
        check_writable(path, option)


def check_writable(path: Path, option: str) -> None:
    """Refuse ``path`` unless it is new or a regular file, in a folder we can write to."""
    if path.is_symlink() and not path.resolve().is_file() or (
            path.exists() and not path.resolve().is_file()):
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise UsageError(f"{path}: {option} is {kind}; give a new path or a regular file")
    folder = path.resolve().parent
    if not folder.is_dir():
        raise UsageError(f"{path}: the folder {path.parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"{path}: cannot write in {path.parent} ({e.strerror})") from e
