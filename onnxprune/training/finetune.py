"""Retraining around a prune: fine-tuning a model through its shadow, and measuring it.

With labels the quality is accuracy; without labels it is agreement with the original model
(top-1 match and output error), and fine-tuning distils from the original.
"""

from __future__ import annotations

import time
from typing import Any

import onnx
import torch

from onnxprune.shadow import ShadowModel
from onnxprune.training import data as datasets
from onnxprune.training.loop import TrainConfig, evaluate, train


def finetune(pruned: onnx.ModelProto, original: onnx.ModelProto, data: datasets.Dataset,
             config: TrainConfig) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Train ``pruned`` through its shadow; return the trained model and a training summary."""
    shadow = trainable_shadow(pruned, data, config)
    teacher = None if data.labelled else ShadowModel(original)
    start = time.perf_counter()
    history = train(shadow, data, config, teacher=teacher)
    shadow.to("cpu")
    trained = shadow.export()
    return trained, {"epochs": config.epochs, "loss": history,
                     "batchnorms_inserted": len(shadow.batchnorms),
                     "seconds": round(time.perf_counter() - start, 2)}


def trainable_shadow(model: onnx.ModelProto, data: datasets.Dataset | None,
                     config: TrainConfig) -> ShadowModel:
    """The shadow of ``model`` on ``config.device``, ready to train.

    With ``config.batchnorm`` a BatchNorm follows each Conv, calibrated on a seeded batch of
    ``data`` so the function is unchanged.
    """
    shadow = ShadowModel(model).to(torch.device(config.device))
    if config.batchnorm and data is not None and len(data):
        x = next(data.batches(min(len(data), 256), shuffle=True, seed=config.seed))[0]
        shadow.add_batchnorm(x.to(torch.device(config.device)))
    return shadow


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
