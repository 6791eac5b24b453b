"""KeepBest: the training hook that keeps the best epoch's weights, scored on held-out data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from onnxprune.errors import UsageError
from onnxprune.fidelity import Tally, input_batches, runner
from onnxprune.training import distributed
from onnxprune.training.data import Dataset
from onnxprune.training.evaluation import evaluate
from onnxprune.training.loop import Hooks


class KeepBest(Hooks):
    """Score ``val`` after every epoch and give back the best epoch's weights.

    The score is top-1 accuracy when ``val`` is labelled and there is no ``reference``
    (higher is better), else the relative L2 error of the outputs to ``reference`` (an ONNX
    model or a module), averaged over the outputs (lower is better). Call :meth:`start`
    before training (epoch 0: the weights as they were), and :meth:`restore` after it.
    """

    def __init__(self, val: Dataset, reference: nn.Module | onnx.ModelProto | None = None, *,
                 batch_size: int = 64) -> None:
        if not val.labelled and reference is None:
            raise UsageError("keeping the best epoch on unlabelled data needs a reference model")
        self.val, self.reference, self.batch_size = val, reference, batch_size
        self.metric = "accuracy" if val.labelled and reference is None else "rel_l2"
        self.scores: list[float] = []
        self.best_epoch = 0
        self._best_score = math.nan
        self._best: dict[str, torch.Tensor] | None = None

    def start(self, model: nn.Module) -> None:
        """Score the weights before training, as epoch 0."""
        self._record(model, 0)

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Score epoch ``epoch + 1``; keep its weights when it is the best so far."""
        self._record(model, epoch + 1)

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model``."""
        if self._best is not None:
            model.load_state_dict(self._best)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of it: the scores and the best epoch's weights."""
        return {"scores": self.scores, "best_epoch": self.best_epoch,
                "best_score": self._best_score, "best": self._best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave."""
        self.scores, self.best_epoch = list(state["scores"]), state["best_epoch"]
        self._best_score, self._best = state["best_score"], state["best"]

    def summary(self) -> dict[str, object]:
        """The metric, its value per epoch (0 = before training) and the epoch kept."""
        return {"metric": self.metric, "scores": self.scores, "best_epoch": self.best_epoch}

    def _record(self, model: nn.Module, epoch: int) -> None:
        was_training = model.training
        model.eval()
        score = self.score(model)
        model.train(was_training)
        self.scores.append(score)
        best = self._best_score
        better = score > best if self.metric == "accuracy" else score < best
        if self._best is None or better:
            self.best_epoch, self._best_score = epoch, score
            self._best = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def score(self, model: nn.Module) -> float:
        """The metric of ``model`` on the validation data."""
        if self.metric == "accuracy":
            return evaluate(model, self.val)["accuracy"]
        run, ref = runner(model), runner(self.reference)  # type: ignore[arg-type]
        tallies: list[Tally] = []
        for feeds in input_batches(model, distributed.share(self.val),
                                   batch_size=self.batch_size):
            got, want = run(feeds), ref(feeds)
            tallies = tallies or [Tally() for _ in want]
            for tally, a, b in zip(tallies, got, want, strict=True):
                tally.add(a, b)
        tallies += [Tally() for _ in range(int(distributed.maximum(len(tallies))) - len(tallies))]
        for tally in tallies:  # the sums over every process's share
            samples, tally.diff_sq, tally.ref_sq = distributed.total(
                tally.samples, tally.diff_sq, tally.ref_sq)
            tally.samples = int(samples)
        errors = [t.result().get("rel_l2", math.inf) for t in tallies]
        value = float(np.mean(errors)) if errors else math.inf
        return value if math.isfinite(value) else math.inf
