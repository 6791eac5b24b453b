"""The public entry points: ``prune`` (load, normalise, plan, rewrite, verify) and ``inspect``.

Data flows one way: load -> normalise -> analyse -> method -> prune passes -> cleanup ->
verify -> report. Each step is one call below; no step reaches back into an earlier one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import methods, metrics, retrain
from onnxprune import model as modelio
from onnxprune.analysis import analyze
from onnxprune.budget import Budget
from onnxprune.errors import NothingToPruneError, UsageError, VerificationError
from onnxprune.groups import ChannelGroup
from onnxprune.passes import run_passes
from onnxprune.passes.pipeline import CLEANUP, NORMALIZE, PRUNE
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.train import TrainConfig
from onnxprune.train import evaluate as train_evaluate


@dataclass(frozen=True)
class PruneContext:
    """What the prune passes read."""

    plan: Plan


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and the report (the same dict as the JSON)."""

    model: onnx.ModelProto
    plan: Plan
    report: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically, sparse weights stored sparsely; record path and size."""
        size = modelio.save(modelio.store_sparse(self.model), path)
        self.report["output"] = str(path)
        self.report["after"]["bytes"] = size


def normalize(source: modelio.ModelLike) -> tuple[onnx.ModelProto, gs.Graph]:
    """Load ``source`` and run the normalising passes; return the normalised model and graph."""
    original = modelio.load(source)
    graph = modelio.to_graph(original)
    run_passes(NORMALIZE, graph)
    normalized = modelio.to_model(graph, original)
    return normalized, modelio.to_graph(normalized)


def apply_plan(normalized: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Rewrite ``normalized`` by ``plan`` and return the checked result."""
    graph = modelio.to_graph(normalized)
    run_passes(PRUNE + CLEANUP, graph, PruneContext(plan))
    return _checked(modelio.to_model(graph, normalized))


def _checked(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, once it passes the full checker and opens in onnxruntime."""
    try:
        modelio.check(model)
    except Exception as e:  # the checker and onnxruntime raise several types
        raise VerificationError(f"the pruned model fails the checker: {e}") from e
    return model


def prune(model: modelio.ModelLike, method: str = "magnitude", *,
          max_flops: float | None = None, max_params: float | None = None,
          round_to: int | None = None, data: Any = None, val_data: Any = None,
          input_size: tuple[int, int] | None = None, mean: list[float] | None = None,
          std: list[float] | None = None, epochs: int = 0, lr: float = 0.05,
          batch_size: int = 64, device: str = "cpu", seed: int = 0, quiet: bool = False,
          train_batchnorm: bool = True, **options: Any) -> PruneResult:
    """Prune ``model`` (a path or ModelProto) with ``method`` and return the result.

    ``max_flops`` / ``max_params`` are the fractions of the original to keep; ``round_to``
    rounds kept channel counts (default: this CPU's channel block, 1 disables). ``data``
    (an .npz path, an image folder, ``"module:function"``, arrays or a DataLoader) with
    ``epochs > 0`` fine-tunes the pruned model; ``val_data`` (default: a seeded 10 % of
    ``data``) measures it. The input is never modified. Raises
    :class:`onnxprune.OnnxPruneError` subclasses with a one-line reason.
    ``train_batchnorm`` fine-tunes with a BatchNorm after each Conv, folded back on export.
    """
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, device=device, seed=seed,
                         quiet=quiet, batchnorm=train_batchnorm)
    budget = Budget(max_flops, max_params)
    chosen = methods.create(method)
    unknown = sorted(set(options) - set(chosen.options))
    if unknown:
        raise UsageError(f"method '{method}' takes no option {', '.join(unknown)}")
    if getattr(chosen, "needs_data", False) and data is None:
        raise UsageError(f"{_where(model)}: method '{method}' needs --data (labelled, for "
                         "accuracy): a tolerance cannot be checked on synthetic inputs")
    normalized, graph = normalize(model)
    if epochs > 0:
        ShadowModel(normalized)  # refuses an op the shadow cannot run, before any work
    groups = tuple(analyze(graph))
    if not any(not g.blocked for g in groups):
        raise NothingToPruneError(f"{_where(model)}: nothing to prune: every channel group is "
                                  "blocked (run `onnxprune inspect` to see why)")
    try:
        prepared = retrain.prepare(normalized, retrain.DataOptions(data, val_data, input_size,
                                                                   mean, std),
                                   needs_training=epochs > 0 or getattr(chosen, "trains", False))
        ctx = methods.Context(graph, groups, budget,
                              metrics.cpu_channel_block() if round_to is None else round_to,
                              options, prepared.train, prepared.val, config, normalized)
        plan = chosen.run(ctx)
    except UsageError as e:
        raise UsageError(f"{_where(model)}: {e}") from e
    pruned = apply_plan(modelio.with_initializers(normalized, plan.weights), plan)
    _check_runs(normalized, pruned)
    training = None
    if epochs > 0:
        pruned, training = retrain.finetune(pruned, normalized, prepared.train, config)
        _checked(pruned)
    report = {
        "method": method,
        "input": _where(model),
        "output": None,
        "options": {"max_flops": max_flops, "max_params": max_params,
                    "round_to": ctx.round_to, "epochs": epochs, "lr": lr,
                    "batch_size": batch_size, "device": device, "seed": seed,
                    "train_batchnorm": train_batchnorm, **options},
        "data": prepared.describe(),
        "warnings": prepared.warnings,
        "before": {**_summary(normalized, model),
                   **retrain.quality(normalized, normalized, prepared.val)},
        "after": {**_summary(pruned), **retrain.quality(pruned, normalized, prepared.val)},
        **plan.log,
        "training": training,
        "parity_max_abs_diff": retrain.parity(pruned, prepared.val),
        "groups": {"total": len(groups), "pruned": sum(plan.removed(g).size > 0 for g in groups),
                   "blocked": sum(g.blocked is not None for g in groups)},
        "blocked": [{"group": g.id, "reason": g.blocked} for g in groups if g.blocked],
        "plan": {gid: len(kept) for gid, kept in plan.keep.items()},
    }
    return PruneResult(pruned, plan, report)


@dataclass(frozen=True)
class Inspection:
    """What ``onnxprune inspect`` shows: per-layer costs and the channel groups."""

    layers: list[metrics.Layer]
    groups: list[ChannelGroup]
    params: int
    flops: int


def inspect(model: modelio.ModelLike) -> Inspection:
    """Return per-layer parameters, FLOPs and channels, and the channel groups of ``model``."""
    _, graph = normalize(model)
    params, flops = metrics.count(graph)
    return Inspection(metrics.layers(graph), analyze(graph), params, flops)


def evaluate(model: modelio.ModelLike, data: Any, *, reference: modelio.ModelLike | None = None,
             val_data: Any = None, input_size: tuple[int, int] | None = None,
             mean: list[float] | None = None, std: list[float] | None = None) -> dict[str, Any]:
    """Score ``model`` in onnxruntime on all of ``data`` (``val_data`` is not split off).

    Accuracy (top-1, and top-5 over more than 5 classes) with labels; with ``reference``, or
    on unlabelled data, agreement with the reference (top-1 match and output error).
    """
    loaded = modelio.load(model)
    ref = modelio.load(reference) if reference is not None else None
    options = retrain.DataOptions(val_data=data if val_data is None else val_data,
                                  input_size=input_size, mean=mean, std=std)
    val = retrain.prepare(loaded, options, needs_training=False).val
    if ref is None and not val.labelled:
        raise UsageError(f"{_where(data)}: the data has no labels; give --reference to measure "
                         "agreement with another model")
    return {"model": _where(model), "samples": len(val),
            **train_evaluate(loaded, val, reference=ref)}


def _summary(model: onnx.ModelProto, source: modelio.ModelLike | None = None) -> dict[str, Any]:
    graph = modelio.to_graph(model)
    params, flops = metrics.count(graph)
    if isinstance(source, (str, os.PathLike)):
        size = metrics.file_bytes(source)
    else:
        size = metrics.model_bytes(source if isinstance(source, onnx.ModelProto)
                                   else modelio.store_sparse(model))
    nonzero = metrics.nonzero_weights(graph)
    return {"params": params, "flops": flops, "bytes": size, "nonzero_weights": nonzero}


def _check_runs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Run both models on the same input; outputs must keep their shapes and be finite."""
    feeds = modelio.random_inputs(before, batch=2)
    for a, b in zip(modelio.run(before, feeds), modelio.run(after, feeds), strict=True):
        if a.shape != b.shape or not np.all(np.isfinite(b)):
            raise VerificationError(f"the pruned model's output changed shape {a.shape} -> "
                                    f"{b.shape} or is not finite")


def _where(source: Any) -> str:
    """How reports and errors name a model or data source."""
    if isinstance(source, (str, os.PathLike)):
        return str(Path(source))
    return f"<{type(source).__name__}>"
