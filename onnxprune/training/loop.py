"""The one training loop every method uses, its hooks, and evaluation.

Loss: cross-entropy when the data has labels (on the logits when the first output is a final
Softmax / LogSoftmax); without labels the shadow *distils* from a teacher (the original
model), every output with the loss its kind calls for, averaged over the outputs:

- an output made by a final Sigmoid: mean squared error of the values before it (the
  logits). After the Sigmoid a saturated map has no gradient left, and the loss stays flat;
- an output made by a final Softmax / LogSoftmax, or a raw 2-D output with several classes:
  KL divergence between the class distributions softened by a temperature T, computed from
  the logits along the op's axis and scaled by T^2;
- any other output: mean squared error.

Given :class:`~onnxprune.training.features.Feature` s, label-free training also matches the
kept channels of each group's producer outputs to the teacher's (``feature_loss``), added
to the output loss with weight :data:`FEATURE_WEIGHT`.

Methods add to the loss through :class:`Hooks`: an extra loss term, a projection or mask update
after each optimiser step, a decision at the end of each epoch.
:class:`~onnxprune.training.keep_best.KeepBest` is such a hook: it scores held-out data after
every epoch and restores the best epoch.

Scoring lives in :mod:`onnxprune.training.evaluation`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from onnxprune.errors import TrainingError, UsageError
from onnxprune.shadow import ShadowModel
from onnxprune.shadow.module import OutputKind
from onnxprune.training import distributed
from onnxprune.training.checkpoint import Checkpoints, fingerprint
from onnxprune.training.data import Dataset
from onnxprune.training.features import Feature, feature_loss

_SOFTMAXES = ("Softmax", "LogSoftmax")
FEATURE_WEIGHT = 1.0
LABELLED_LR = 0.05  # benchmarks/magnitude_finetune_mnist.py
DISTIL_LR = 3e-4  # benchmarks/distill_fidelity.py


@dataclass(frozen=True)
class TrainConfig:
    """Options of the training loop (SGD with momentum)."""

    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    quiet: bool = False
    batchnorm: bool = True  # train with a BatchNorm after each Conv (ShadowModel.add_batchnorm)
    cosine: bool = False  # decay the learning rate to zero along a cosine over the run
    workers: int = 0  # DataLoader worker processes reading the training batches
    checkpoints: Checkpoints | None = None  # save training's state each epoch; resume a run
    amp: bool = False  # mixed precision: float16 on CUDA (loss scaled), bfloat16 on CPU

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be cpu or cuda, got {self.device}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device on this machine")
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0, got {self.workers}")
        if self.epochs < 0 or self.batch_size < 1:
            raise UsageError("--epochs must be >= 0 and --batch-size >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")

    @classmethod
    def for_data(cls, labelled: bool, *, lr: float | None = None,
                 batchnorm: bool | None = None, **options: Any) -> TrainConfig:
        """The config for labelled data or for distillation; None takes that one's default.

        With labels: lr :data:`LABELLED_LR`, BatchNorm inserted. Distilling without labels:
        lr :data:`DISTIL_LR` and no BatchNorm: a pruned model starts close to its teacher,
        and batch statistics in training mode move it away (on vgg_bn at 0.4 of the FLOPs,
        2 epochs on 512 inputs reached cosine 0.943 with BatchNorm against 0.992 without);
        at lr 0.05, or 0.003 on the MobileNets, distillation diverges.
        """
        return cls(lr=(LABELLED_LR if labelled else DISTIL_LR) if lr is None else lr,
                   batchnorm=labelled if batchnorm is None else batchnorm, **options)


class Hooks:
    """What a method can add to training; every method here is a no-op by default."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to the task loss at every step."""
        return None

    def after_step(self, model: nn.Module) -> None:
        """Runs after every optimiser step (projections, re-applying masks)."""

    def end_epoch(self, model: nn.Module, epoch: int) -> None:
        """Runs after every epoch."""


def train(model: nn.Module, data: Dataset, config: TrainConfig, *,
          teacher: nn.Module | None = None, hooks: Sequence[Hooks] = (),
          features: Sequence[Feature] = ()) -> list[float]:
    """Train ``model`` in place; return the mean loss of each epoch.

    Unlabelled data needs a ``teacher`` to distil from, on its outputs and ``features``.
    """
    if not data.labelled and teacher is None:
        raise UsageError("training on unlabelled data needs the original model to distil from")
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    shard = distributed.world()
    steps = config.epochs * data.batch_count(config.batch_size, shard)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
                if config.cosine else None)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    parts = {"model": model, "optimiser": optimiser, "schedule": schedule, "scaler": scaler,
             **{f"hook{i}": hook for i, hook in enumerate(hooks)}}
    checkpoints, entry, history = config.checkpoints, "", []
    if checkpoints is not None:
        entry = fingerprint(model)
        history = checkpoints.restore(parts, entry) or []
    step = distributed.parallel(_Objective(model, teacher, hooks, features))
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    bar = progress(steps, "training", config.quiet, unit="batch")
    bar.update(len(history) * data.batch_count(config.batch_size, shard))
    for epoch in range(len(history), config.epochs):
        total, count, start = 0.0, 0, time.perf_counter()
        for x, y in data.batches(config.batch_size, shuffle=True, seed=config.seed + epoch,
                                 workers=config.workers, shard=shard):
            with torch.autocast(device.type, dtype=half, enabled=config.amp):
                loss = step(x.to(device), None if y is None else y.to(device))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            if schedule is not None:
                schedule.step()
            for hook in hooks:
                hook.after_step(model)
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}",
                            samples_s=f"{count / (time.perf_counter() - start):.0f}")
        total, count = distributed.total(total, count)
        distributed.share_buffers(model)
        history.append(total / max(count, 1))
        if not math.isfinite(history[-1]):
            raise TrainingError(f"training diverged: the loss is {history[-1]} in epoch "
                                f"{epoch + 1}; try a lower --lr (it is {config.lr})")
        for hook in hooks:
            hook.end_epoch(model, epoch)
        if checkpoints is not None:
            checkpoints.save(parts, history, entry)
    if checkpoints is not None and config.epochs == 0:
        checkpoints.save(parts, history, entry)
    bar.close()
    model.eval()
    return history


class _Objective(nn.Module):
    """The training loss of ``model`` on a batch, as a module DistributedDataParallel can wrap.

    The loss is cross-entropy with labels, distillation from ``teacher`` without, plus each
    hook's extra term, all computed in ``forward`` so that the gradient averaging sees every
    weight the loss reads. The teacher, hooks and features are held outside the module's
    registry: they are not trained.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module | None, hooks: Sequence[Hooks],
                 features: Sequence[Feature]) -> None:
        super().__init__()
        self.model = model
        self.rest = (teacher, tuple(hooks), tuple(features))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        teacher, hooks, features = self.rest
        if y is not None:
            loss = F.cross_entropy(_class_scores(self.model, x).float(), y)
        else:
            assert teacher is not None
            loss = distil(self.model, teacher, x, features)
        for hook in hooks:
            extra = hook.extra_loss(self.model)
            if extra is not None:
                loss = loss + extra
        return loss


def progress(total: int, desc: str, quiet: bool, unit: str = "it") -> tqdm:
    """A progress bar on stderr; silent when ``quiet`` or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit,
                disable=quiet or not sys.stderr.isatty() or not distributed.writes())


def distil(student: nn.Module, teacher: nn.Module, x: torch.Tensor,
           features: Sequence[Feature] = ()) -> torch.Tensor:
    """The distillation loss of ``student`` against ``teacher`` on ``x``, over every output.

    Two shadows compare the logits of their squashed outputs (:meth:`ShadowModel.forward_logits`)
    with each output's loss, plus ``features`` (weighted by :data:`FEATURE_WEIGHT`); other
    modules compare what they return. Integer outputs are left out; the losses of the others
    are averaged.
    """
    kinds: tuple[OutputKind | None, ...]
    if isinstance(student, ShadowModel) and isinstance(teacher, ShadowModel):
        names = [kind.logits for kind in student.output_kinds] + [f.name for f in features]
        got = student.tensors((x,), names)
        with torch.no_grad():
            want = teacher.tensors((x,), names)
        kinds, n = student.output_kinds, len(student.output_kinds)
        outputs, targets = got[:n], want[:n]
        hint = feature_loss(got[n:], want[n:], features) if features else None
    else:
        outputs = _tuple(student(x))
        with torch.no_grad():
            targets = _tuple(teacher(x))
        kinds, hint = (None,) * len(outputs), None
    if len(outputs) != len(targets):
        raise UsageError(f"the model has {len(outputs)} outputs and the model it distils from "
                         f"{len(targets)}")
    losses = [distillation_loss(o, t, kind=k) for o, t, k in zip(outputs, targets, kinds,
                                                                  strict=True)
              if o.is_floating_point()]
    if not losses:
        raise UsageError("the model has no float output to distil")
    loss = torch.stack(losses).mean()
    return loss if hint is None else loss + FEATURE_WEIGHT * hint


def distillation_loss(output: torch.Tensor, target: torch.Tensor, temperature: float = 2.0,
                      kind: OutputKind | None = None) -> torch.Tensor:
    """The loss between one output of the student and the teacher, chosen by ``kind``.

    ``output`` and ``target`` are logits when ``kind`` names a final Softmax / LogSoftmax
    (KL divergence at ``temperature`` along its axis) or Sigmoid (MSE); without a kind, a 2-D
    output with several classes is taken for class logits (KL), any other for values (MSE).
    """
    activation = kind.activation if kind is not None else None
    if kind is not None and activation in _SOFTMAXES:
        axis = kind.axis % max(output.ndim, 1)
        if kind.flatten:
            output, target = output.flatten(axis), target.flatten(axis)
        classes = output.shape[axis]
        return _soft_kl(output.movedim(axis, -1).reshape(-1, classes),
                        target.movedim(axis, -1).reshape(-1, classes), temperature)
    if activation is None and output.ndim == 2 and output.shape[1] > 1:
        return _soft_kl(output, target, temperature)
    return F.mse_loss(output, target)


def _soft_kl(output: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    """KL(target || output) of the rows' softmax at temperature ``t``, times t^2."""
    return F.kl_div(F.log_softmax(output / t, 1), F.log_softmax(target / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def _class_scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What cross-entropy reads: the first output, or its logits when a Softmax made it."""
    if isinstance(model, ShadowModel) and model.output_kinds[0].activation in _SOFTMAXES:
        return model.tensors((x,), [model.output_kinds[0].logits])[0]
    return _tuple(model(x))[0]


def _tuple(output: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return output if isinstance(output, tuple) else (output,)
