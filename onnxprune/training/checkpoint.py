"""Checkpoints of a run's training, and resuming a run that was stopped.

Every method trains through :func:`onnxprune.training.loop.train`, and everything else a
method does (pruning decisions, projections, scores) is a deterministic function of the
weights training leaves (CPU runs repeat exactly with the same seed). So the state to keep is
training's: after every epoch of training call ``k``, the state of each part of it (the
model's weights, masks, inserted BatchNorms and parametrizations; the optimiser's momentum,
the learning-rate schedule, the loss scaler; the hooks': the best epoch kept, fdp's masks
schedule), torch's RNG and the losses so far go to ``train-{k}.pt`` in the folder, written
atomically. A resumed run (``--resume``) repeats the method from the start; a training call
with a checkpoint loads it instead of training the epochs it holds, after checking that the
model it starts from is the one the checkpoint started from, and trains the epochs left, so
the run goes on exactly where it stopped and ends with the uninterrupted run's model. A run
killed at any moment loses at most the epoch it was in.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnxprune.errors import UsageError
from onnxprune.training import distributed

PATTERN = "train-*.pt"


class Checkpoints:
    """The checkpoints of one run in ``folder``; ``resume`` replays those it holds."""

    def __init__(self, folder: str | os.PathLike, *, resume: bool = False) -> None:
        self.folder, self.resume = Path(folder), resume
        self.calls = self.restored = 0
        if not distributed.writes():
            return  # rank 0 checks and writes the folder, which other machines may not see
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.folder}: --checkpoint-dir must be a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        held = sorted(self.folder.glob(PATTERN))
        if held and not resume:
            raise UsageError(f"{self.folder}: holds the checkpoints of an earlier run; give "
                             "--resume to continue it, or an empty --checkpoint-dir")
        if resume and not held:
            raise UsageError(f"{self.folder}: --resume found no checkpoint to continue from")

    def restore(self, parts: Mapping[str, Any], entry: str) -> list[float] | None:
        """The losses of the epochs the next training call has done, its state loaded.

        ``parts`` name what holds training state (each with ``state_dict`` and
        ``load_state_dict``; None for a part the call does not use); ``entry`` is the
        :func:`fingerprint` of the model the call starts from. None when the call has no
        checkpoint (it trains, and so do all after it). Rank 0 reads the file; the other
        processes of a torchrun get what it read.
        """
        self.calls += 1
        path = self._path(self.calls)
        if not self.resume:
            return None
        state = distributed.from_rank_0(
            lambda: torch.load(path, map_location="cpu", weights_only=False)
            if path.exists() else None)
        if state is None:
            self.resume = False
            return None
        if state["start"] != entry:
            raise UsageError(f"{path}: does not continue this run (the model differs at "
                             f"training call {self.calls}); resume with the same model, data "
                             "and options, or start again in an empty --checkpoint-dir")
        for name, part in parts.items():
            if state["parts"].get(name) is not None and part is not None:
                part.load_state_dict(state["parts"][name])
        torch.set_rng_state(state["rng"])
        self.restored += 1
        return state["history"]

    def save(self, parts: Mapping[str, Any], history: list[float], start: str) -> None:
        """Write the state the current training call has reached, atomically (rank 0 only)."""
        if not distributed.writes():
            return
        state = {"start": start, "history": history, "rng": torch.get_rng_state(),
                 "parts": {name: part.state_dict() for name, part in parts.items()
                           if part is not None and hasattr(part, "state_dict")}}
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as f:
                torch.save(state, f)
            os.replace(temporary, self._path(self.calls))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _path(self, call: int) -> Path:
        return self.folder / f"train-{call:04d}.pt"


def fingerprint(model: nn.Module) -> str:
    """A digest of ``model``'s state (names, shapes and values)."""
    digest = hashlib.sha1()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        data = value.detach().cpu().contiguous()
        digest.update(str(tuple(data.shape)).encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
