"""The one training loop every method uses, its hooks, and evaluation.

Loss: cross-entropy when the data has labels; without labels the shadow *distils* from a
teacher (the original model): KL divergence between softened class distributions for
classifier outputs (2-D, several classes), mean squared error for any other output. Methods
add to it through :class:`Hooks`: an extra loss term, a projection or mask update after each
optimiser step, a decision at the end of each epoch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from onnxprune import modelio
from onnxprune.errors import TrainingError, UsageError
from onnxprune.training.data import Dataset


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

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"--device must be cpu or cuda, got {self.device}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("--device cuda: torch sees no CUDA device on this machine")
        if self.epochs < 0 or self.batch_size < 1:
            raise UsageError("--epochs must be >= 0 and --batch-size >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")


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
          teacher: nn.Module | None = None, hooks: Sequence[Hooks] = ()) -> list[float]:
    """Train ``model`` in place; return the mean loss of each epoch.

    Unlabelled data needs a ``teacher`` to distil from.
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
    steps = config.epochs * -(-len(data) // config.batch_size)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(steps, 1))
                if config.cosine else None)
    bar = progress(steps, "training", config.quiet, unit="batch")
    history = []
    for epoch in range(config.epochs):
        total, count, start = 0.0, 0, time.perf_counter()
        for x, y in data.batches(config.batch_size, shuffle=True, seed=config.seed + epoch):
            x = x.to(device)
            output = _first(model(x))
            if y is not None:
                loss = F.cross_entropy(output, y.to(device))
            else:
                with torch.no_grad():
                    target = _first(teacher(x))
                loss = distillation_loss(output, target)
            for hook in hooks:
                extra = hook.extra_loss(model)
                if extra is not None:
                    loss = loss + extra
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            for hook in hooks:
                hook.after_step(model)
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}",
                            samples_s=f"{count / (time.perf_counter() - start):.0f}")
        history.append(total / max(count, 1))
        if not math.isfinite(history[-1]):
            raise TrainingError(f"training diverged: the loss is {history[-1]} in epoch "
                                f"{epoch + 1}; try a lower --lr (it is {config.lr})")
        for hook in hooks:
            hook.end_epoch(model, epoch)
    bar.close()
    model.eval()
    return history


def progress(total: int, desc: str, quiet: bool, unit: str = "it") -> tqdm:
    """A progress bar on stderr; silent when ``quiet`` or when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet or not sys.stderr.isatty())


def distillation_loss(output: torch.Tensor, target: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """KL divergence of softened class distributions for classifiers, else MSE."""
    if output.ndim == 2 and output.shape[1] > 1:
        t = temperature
        return F.kl_div(F.log_softmax(output / t, 1), F.log_softmax(target / t, 1),
                        reduction="batchmean", log_target=True) * t * t
    return F.mse_loss(output, target)


def predict(model: nn.Module | onnx.ModelProto, data: Dataset,
            batch_size: int = 256) -> np.ndarray:
    """First output of ``model`` (a shadow or an ONNX model run in onnxruntime) on ``data``."""
    outputs = []
    if isinstance(model, onnx.ModelProto):
        session = modelio.session(model, optimize=True)
        name = session.get_inputs()[0].name
        for x, _ in data.batches(batch_size):
            outputs.append(modelio.run_session(session, {name: x.numpy()})[0])
    else:
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            for x, _ in data.batches(batch_size):
                outputs.append(_first(model(x.to(device))).cpu().numpy())
    return np.concatenate(outputs)


def evaluate(model: nn.Module | onnx.ModelProto, data: Dataset, *,
             reference: nn.Module | onnx.ModelProto | None = None) -> dict[str, float]:
    """Score ``model`` on ``data``.

    Labelled data and no reference: top-1 accuracy (and top-5 over more than 5 classes).
    Otherwise agreement with ``reference``: top-1 match and the max abs output difference.
    """
    out = predict(model, data)
    result: dict[str, float] = {}
    if data.labelled and reference is None:
        result["accuracy"] = float((out.argmax(1) == data.y).mean())
        if out.shape[1] > 5:
            top5 = np.argsort(-out, axis=1)[:, :5]
            result["top5"] = float((top5 == data.y[:, None]).any(1).mean())
        return result
    if reference is None:
        raise UsageError("unlabelled data: give a reference model to compare with")
    ref = predict(reference, data)
    if out.ndim == 2 and out.shape[1] > 1:
        result["agreement"] = float((out.argmax(1) == ref.argmax(1)).mean())
    result["output_error"] = float(np.abs(out - ref).max())
    return result


def _first(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output
