"""The public entry points: ``prune``, ``inspect`` and ``evaluate``.

``prune`` runs the stages of the data flow in order, one call each, and no stage reaches back
into an earlier one:

    load + normalize -> analyze -> method (plan) -> write back -> prune passes -> verify
    -> fine-tune (optional) -> verify -> report
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxprune import methods, metrics, modelio, verify
from onnxprune.analysis import ChannelGroup, analyze
from onnxprune.errors import NothingToPruneError, UsageError
from onnxprune.methods.budget import Budget
from onnxprune.passes import PruneContext, run_passes
from onnxprune.passes.pipeline import CLEANUP, NORMALIZE, PRUNE
from onnxprune.plan import Plan
from onnxprune.report import build_report, source_name
from onnxprune.shadow import ShadowModel
from onnxprune.training.finetune import finetune
from onnxprune.training.loop import TrainConfig
from onnxprune.training.loop import evaluate as score
from onnxprune.training.prepare import DataOptions, Prepared, prepare


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
    chosen = _method(model, method, options, has_data=data is not None)
    normalized, graph = normalize(model)
    if epochs > 0:
        ShadowModel(normalized)  # refuses an op the shadow cannot run, before any work
    groups = _prunable_groups(graph, model)
    context = methods.Context(graph, groups, Budget(max_flops, max_params),
                              metrics.cpu_channel_block() if round_to is None else round_to,
                              options, train=config, model=normalized)
    prepared, plan = _decide(chosen, context, model, DataOptions(data, val_data, input_size, mean,
                                                                 std), needs_training=epochs > 0)
    written = modelio.with_initializers(normalized, plan.weights)
    pruned = apply_plan(written, plan)
    verify.check_runs(normalized, pruned)
    training = None
    if epochs > 0:
        pruned, training = finetune(pruned, normalized, prepared.train, config)
        verify.check_model(pruned)
    report = build_report(
        method=method, source=model, prepared=prepared, normalized=normalized, pruned=pruned,
        plan=plan, groups=groups, training=training,
        options={"max_flops": max_flops, "max_params": max_params,
                 "round_to": context.round_to, "epochs": epochs, "lr": lr,
                 "batch_size": batch_size, "device": device, "seed": seed,
                 "train_batchnorm": train_batchnorm, **options})
    return PruneResult(pruned, plan, report)


def normalize(source: modelio.ModelLike) -> tuple[onnx.ModelProto, gs.Graph]:
    """Load ``source`` and run the normalising passes; return the normalised model and graph."""
    original = modelio.load(source)
    graph = modelio.to_graph(original)
    run_passes(NORMALIZE, graph)
    normalized = modelio.to_model(graph, original)
    return normalized, modelio.to_graph(normalized)


def apply_plan(normalized: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """Rewrite ``normalized`` by ``plan`` (the prune and cleanup passes); return it checked."""
    graph = modelio.to_graph(normalized)
    run_passes(PRUNE + CLEANUP, graph, PruneContext(plan))
    return verify.check_model(modelio.to_model(graph, normalized))


def _method(model: modelio.ModelLike, name: str, options: dict[str, Any], *,
            has_data: bool) -> methods.Method:
    """The method ``name``, once its options and data needs are met."""
    chosen = methods.create(name)
    unknown = sorted(set(options) - set(chosen.options))
    if unknown:
        raise UsageError(f"method '{name}' takes no option {', '.join(unknown)}")
    if getattr(chosen, "needs_data", False) and not has_data:
        raise UsageError(f"{source_name(model)}: method '{name}' needs --data (labelled, for "
                         "accuracy): a tolerance cannot be checked on synthetic inputs")
    return chosen


def _prunable_groups(graph: gs.Graph, model: modelio.ModelLike) -> tuple[ChannelGroup, ...]:
    """The channel groups of ``graph``; refuses when every one is blocked."""
    groups = tuple(analyze(graph))
    if all(g.blocked for g in groups):
        raise NothingToPruneError(f"{source_name(model)}: nothing to prune: every channel group "
                                  "is blocked (run `onnxprune inspect` to see why)")
    return groups


def _decide(chosen: methods.Method, context: methods.Context, model: modelio.ModelLike,
            options: DataOptions, *, needs_training: bool) -> tuple[Prepared, Plan]:
    """Prepare the data and run the method on it; usage errors name the model."""
    try:
        prepared = prepare(context.model, options,
                           needs_training=needs_training or getattr(chosen, "trains", False))
        plan = chosen.run(replace(context, data=prepared.train, val_data=prepared.val))
    except UsageError as e:
        raise UsageError(f"{source_name(model)}: {e}") from e
    return prepared, plan


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
    options = DataOptions(val_data=data if val_data is None else val_data,
                          input_size=input_size, mean=mean, std=std)
    val = prepare(loaded, options, needs_training=False).val
    if ref is None and not val.labelled:
        raise UsageError(f"{source_name(data)}: the data has no labels; give --reference to "
                         "measure agreement with another model")
    return {"model": source_name(model), "samples": len(val),
            **score(loaded, val, reference=ref)}
