"""Data and retraining around a prune, and what the written model does.

Which data to train and validate on, fine-tuning the pruned model through its shadow, and
measuring the result.

With labels the quality is accuracy; without labels it is agreement with the original model
(top-1 match and output error). Without data, training uses synthetic inputs distilled from
the original, and the report says the accuracy was not validated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from onnxprune import data as datasets
from onnxprune import model as modelio
from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import ShadowModel
from onnxprune.train import TrainConfig, evaluate, train

SYNTHETIC_WARNING = ("no --data: training distils from the original model on synthetic inputs; "
                     "the accuracy is not validated")


@dataclass(frozen=True)
class DataOptions:
    """Where the data comes from (see :func:`onnxprune.data.load_data` for the forms)."""

    data: Any = None
    val_data: Any = None
    input_size: tuple[int, int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class Prepared:
    """The train and validation sets of a run, and what the report should say about them."""

    train: datasets.Dataset | None
    val: datasets.Dataset | None
    synthetic: bool = False
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The report's ``data`` entry."""
        return {"train": len(self.train) if self.train is not None else 0,
                "val": len(self.val) if self.val is not None else 0,
                "labelled": bool(self.val is not None and self.val.labelled),
                "synthetic": self.synthetic}


def prepare(model: onnx.ModelProto, options: DataOptions, *, needs_training: bool) -> Prepared:
    """Load, check and split the data for ``model``; synthetic inputs when there is none."""
    spec = datasets.input_spec(model)
    if options.data is None:
        if options.val_data is not None:
            val = _load(options.val_data, spec, options)
            return Prepared(None, val)
        if not needs_training:
            return Prepared(None, None)
        train_set, val = datasets.split(datasets.synthetic(spec))
        return Prepared(train_set, val, synthetic=True, warnings=[SYNTHETIC_WARNING])
    data = _load(options.data, spec, options)
    if options.val_data is not None:
        return Prepared(data, _load(options.val_data, spec, options))
    train_set, val = datasets.split(data)
    return Prepared(train_set, val)


def _load(source: Any, spec: datasets.InputSpec, options: DataOptions) -> datasets.Dataset:
    data = datasets.load_data(source, spec, input_size=options.input_size, mean=options.mean,
                              std=options.std)
    datasets.check(data, spec)
    return data


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


def parity(model: onnx.ModelProto, val: datasets.Dataset | None) -> float | None:
    """Max abs difference between the shadow and onnxruntime on ``model``'s outputs.

    None when the shadow cannot run the model (an op outside its table); that only matters,
    and is only raised, when training was asked for.
    """
    try:
        shadow = ShadowModel(model).eval()
    except UnsupportedModelError:
        return None
    if val is not None and len(val):
        x = next(val.batches(min(len(val), 64)))[0]
        feeds = {shadow.input_names[0]: x.numpy()}
    else:
        feeds = modelio.random_inputs(model, batch=4)
    expected = modelio.run(model, feeds)
    with torch.no_grad():
        got = shadow(*(torch.from_numpy(v) for v in feeds.values()))
    got = got if isinstance(got, tuple) else (got,)
    return float(max(np.abs(e - g.numpy()).max() for e, g in zip(expected, got, strict=True)))
