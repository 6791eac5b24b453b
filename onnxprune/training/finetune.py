"""Retraining around a prune: fine-tuning a model through its shadow, and measuring it.

With labels the quality is accuracy; without labels it is agreement with the original model
(top-1 match and output error), and fine-tuning distils from the original. Given held-out
data, fine-tuning scores it after every epoch and returns the best epoch (see
:class:`onnxprune.training.keep_best.KeepBest`), so more epochs never leave a worse model.

With labels the learning rate decays to zero along a cosine over the run (see
:func:`finetune_config`); label-free distillation keeps it constant.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import onnx
import torch

from onnxprune.shadow import ShadowModel
from onnxprune.training import data as datasets
from onnxprune.training.evaluation import evaluate
from onnxprune.training.features import Feature
from onnxprune.training.keep_best import KeepBest
from onnxprune.training.loop import TrainConfig, train

CALIBRATION_SAMPLES = 256  # inputs that calibrate the inserted BatchNorms, a batch at a time


def finetune(pruned: onnx.ModelProto, original: onnx.ModelProto, data: datasets.Dataset,
             config: TrainConfig, val: datasets.Dataset | None = None,
             features: Sequence[Feature] = ()) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Train ``pruned`` through its shadow; return the trained model and a training summary.

    Unlabelled ``data`` distils from ``original``. With ``val`` each epoch is scored on it
    (accuracy when labelled, else the relative L2 error to ``original``) and the best one,
    the untrained weights included (epoch 0), is returned; the summary's ``validation`` says
    which. ``features`` (label-free only) are distilled on beside the outputs.
    """
    features = () if data.labelled else features
    config = finetune_config(config, data.labelled)
    shadow = trainable_shadow(pruned, data, config)
    teacher = None if data.labelled else ShadowModel(original)
    keeper = None
    if val is not None and len(val) and config.epochs > 0:
        keeper = KeepBest(val, None if val.labelled else original,
                          batch_size=config.batch_size)
        keeper.start(shadow)
    start = time.perf_counter()
    history = train(shadow, data, config, teacher=teacher,
                    hooks=[keeper] if keeper is not None else (), features=features)
    if keeper is not None:
        keeper.restore(shadow)
    shadow.to("cpu")
    trained = shadow.export()
    return trained, {"epochs": config.epochs, "loss": history,
                     "validation": keeper.summary() if keeper is not None else None,
                     "batchnorms_inserted": len(shadow.batchnorms),
                     "features_distilled": len(features),
                     "seconds": round(time.perf_counter() - start, 2),
                     "lr_schedule": "cosine" if config.cosine else "constant"}


def finetune_config(config: TrainConfig, labelled: bool) -> TrainConfig:
    """The options :func:`finetune` trains with: with labels, a cosine decay of the learning rate.

    From ``benchmarks/peer_torch_pruning.py`` (magnitude to 0.25 of the FLOPs, 3 epochs on the
    MNIST split, lr 0.05): the decay took test accuracy from 0.9375 to 0.9805 on vgg_bn and from
    0.9365 to 0.9825 on resnet (seed 1: 0.9825, 0.9845), ahead of or level with Torch-Pruning
    fine-tuned the same way; at a constant rate the last epochs end noisy. Label-free
    distillation keeps its constant rate: at its lr 3e-4 the decay made no difference
    (``benchmarks/distill_fidelity.py`` setup, 2 epochs: cosine 0.990 against 0.993 on vgg_bn
    at 0.4 of the FLOPs, 0.991 against 0.990 on resnet, 0.955 against 0.959 on dbnet at 0.6).
    Not in :class:`TrainConfig` itself: methods that train in several short runs (ADMM's
    W-steps) would decay to zero in each.
    """
    return replace(config, cosine=True) if labelled else config


def trainable_shadow(model: onnx.ModelProto, data: datasets.Dataset | None,
                     config: TrainConfig) -> ShadowModel:
    """The shadow of ``model`` on ``config.device``, ready to train.

    With ``config.batchnorm`` a BatchNorm follows each Conv, calibrated on a seeded draw of
    up to :data:`CALIBRATION_SAMPLES` inputs of ``data``, streamed in batches of
    ``config.batch_size``, so that the function is unchanged.
    """
    device = torch.device(config.device)
    shadow = ShadowModel(model).to(device)
    if config.batchnorm and data is not None and len(data):
        shadow.add_batchnorm(calibration_batches(data, config, device))
    return shadow


def calibration_batches(data: datasets.Dataset, config: TrainConfig,
                         device: torch.device) -> Iterator[torch.Tensor]:
    """Seeded batches of ``data`` on ``device`` until :data:`CALIBRATION_SAMPLES` are out."""
    left = CALIBRATION_SAMPLES
    for x, _ in data.batches(min(config.batch_size, left), shuffle=True, seed=config.seed):
        yield x[:left].to(device)
        left -= len(x)
        if left <= 0:
            return


def quality(model: onnx.ModelProto | torch.nn.Module, original: onnx.ModelProto | torch.nn.Module,
            val: datasets.Dataset | None) -> dict[str, float]:
    """Accuracy on labelled ``val``, else agreement with ``original``; {} without data.

    Either model may be an ONNX model (run in onnxruntime) or a shadow.
    """
    if val is None:
        return {}
    return evaluate(model, val, reference=None if val.labelled else original)


def quality_drop(baseline: dict[str, float], current: dict[str, float]) -> float:
    """How much of the baseline's accuracy (or agreement) ``current`` lost, as a fraction."""
    key = "accuracy" if "accuracy" in baseline else "agreement"
    return baseline.get(key, 1.0) - current.get(key, 1.0)
