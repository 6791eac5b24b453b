"""Checkpoints of a run's training, and resuming a run that was stopped.

Every method trains through :func:`onnxprune.training.loop.train`, and everything else a
method does (pruning decisions, projections, scores) is a deterministic function of the
weights training leaves (CPU runs repeat exactly with the same seed). So the state to keep is
what each training call leaves: after call ``k`` the model's state (weights, masks, inserted
BatchNorms, parametrizations), the hooks' state (the best epoch kept, fdp's masks schedule),
torch's RNG and the losses go to ``train-{k}.pt`` in the folder, written atomically. A resumed
run (``--resume``) repeats the method from the start; each training call that has a
checkpoint loads it instead of training, after checking that the model it starts from is the
one the checkpoint started from, so the run goes on exactly where it stopped and ends with the
uninterrupted run's model. A run killed at any moment loses at most the training call it was
in (an epoch block: an ADMM iteration, a pp or corr round, the final fine-tuning).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onnxprune.errors import UsageError

PATTERN = "train-*.pt"


class Checkpoints:
    """The checkpoints of one run in ``folder``; ``resume`` replays those it holds."""

    def __init__(self, folder: str | os.PathLike, *, resume: bool = False) -> None:
        self.folder, self.resume = Path(folder), resume
        self.calls = self.restored = 0
        if self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.folder}: --checkpoint-dir must be a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        held = sorted(self.folder.glob(PATTERN))
        if held and not resume:
            raise UsageError(f"{self.folder}: holds the checkpoints of an earlier run; give "
                             "--resume to continue it, or an empty --checkpoint-dir")
        if resume and not held:
            raise UsageError(f"{self.folder}: --resume found no checkpoint to continue from")

    def restore(self, model: nn.Module, hooks: Sequence[Any],
                entry: str) -> list[float] | None:
        """The next training call's losses, its state loaded into ``model`` and ``hooks``.

        ``entry`` is the :func:`fingerprint` of the model the call starts from. None when the
        call has no checkpoint (it trains, and so do all after it).
        """
        self.calls += 1
        path = self._path(self.calls)
        if not self.resume or not path.exists():
            self.resume = False
            return None
        state = torch.load(path, map_location=next(model.parameters()).device,
                           weights_only=False)
        if state["start"] != entry:
            raise UsageError(f"{path}: does not continue this run (the model differs at "
                             f"training call {self.calls}); resume with the same model, data "
                             "and options, or start again in an empty --checkpoint-dir")
        model.load_state_dict(state["model"])
        for hook, saved in zip(hooks, state["hooks"], strict=True):
            if saved is not None:
                hook.load_state_dict(saved)
        torch.set_rng_state(state["rng"])
        self.restored += 1
        return state["history"]

    def save(self, model: nn.Module, hooks: Sequence[Any], history: list[float],
             start: str) -> None:
        """Write the state the current training call leaves, atomically."""
        state = {"start": start, "model": model.state_dict(), "history": history,
                 "hooks": [hook.state_dict() if hasattr(hook, "state_dict") else None
                           for hook in hooks],
                 "rng": torch.get_rng_state()}
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
