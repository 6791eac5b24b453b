"""The public entry points: ``prune``, ``inspect`` and ``evaluate``.

``prune`` runs the stages of the data flow in order, one call each, and no stage reaches back
into an earlier one:

    load + normalize -> analyze -> method (plan) -> write back -> prune passes -> verify
    -> fine-tune (optional) -> verify -> report
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxprune import methods, metrics, modelio, paths, plot, sizing, sparse, verify
from onnxprune.analysis import ChannelGroup, analyze
from onnxprune.errors import (
    BudgetError,
    NothingToPruneError,
    OnnxPruneError,
    UnsupportedModelError,
    UsageError,
)
from onnxprune.methods.budget import Budget
from onnxprune.passes import PruneContext, run_passes
from onnxprune.passes.pipeline import CLEANUP, NORMALIZE, PRUNE
from onnxprune.plan import Plan
from onnxprune.report import build_report, source_name
from onnxprune.shadow import ShadowModel
from onnxprune.training import distributed, lazy
from onnxprune.training.checkpoint import Checkpoints
from onnxprune.training.data import Dataset
from onnxprune.training.evaluation import evaluate as score
from onnxprune.training.features import group_features
from onnxprune.training.finetune import finetune
from onnxprune.training.loop import TrainConfig
from onnxprune.training.prepare import DataOptions, prepare

QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                           "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
                           "QLinearGlobalAveragePool", "QLinearAveragePool"})

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class PruneResult:
    """The pruned model, the plan that made it, and the report (the same dict as the JSON).

    ``inputs`` are the files the run read (the model, its external data, the data files):
    :meth:`save` refuses to write over any of them.
    """

    model: onnx.ModelProto
    plan: Plan
    report: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[Path, ...] = ()

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically, sparse weights stored sparsely; record path and size.

        Under torchrun only rank 0 writes (every rank holds the same model).
        """
        paths.check_outputs({"the output": path}, self.inputs)
        stored = sparse.store(self.model)
        size = modelio.save(stored, path) if distributed.writes() else stored.ByteSize()
        self.report["output"] = str(path)
        self.report["after"]["bytes"] = size


def _naming_the_model(function: Callable[..., Any]) -> Callable[..., Any]:
    """Make every OnnxPruneError raised by ``function`` name the model file it ran on."""
    @functools.wraps(function)
    def named(model: modelio.ModelLike, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(model, *args, **kwargs)
        except OnnxPruneError as e:
            where = source_name(model)
            if isinstance(model, (str, os.PathLike)) and not str(e).startswith(where):
                e.args = (f"{where}: {e}",)  # the same error, what it carries kept
            raise
    return named


@_naming_the_model
def prune(model: modelio.ModelLike, method: str = "magnitude", *,
          max_flops: float | None = None, max_params: float | None = None,
          round_to: int | None = None, data: Any = None, val_data: Any = None,
          input_size: tuple[int, int] | None = None, mean: list[float] | None = None,
          std: list[float] | None = None, epochs: int = 0, lr: float | None = None,
          batch_size: int = 64, device: str = "cpu", seed: int = 0, quiet: bool = False,
          train_batchnorm: bool | None = None, distill_features: bool = False,
          workers: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = False, amp: bool = False, strict: bool = False,
          **options: Any) -> PruneResult:
    """Prune ``model`` (a path or ModelProto) with ``method`` and return the result.

    ``max_flops`` / ``max_params`` are the fractions of the original to keep; ``round_to``
    rounds kept channel counts (default: this CPU's channel block, 1 disables). ``data``
    (an .npz path, an image folder, ``"module:function"``, arrays or a DataLoader) with
    ``epochs > 0`` fine-tunes the pruned model; ``val_data`` (default: a seeded 10 % of
    ``data``) measures it. The input is never modified. Raises
    :class:`onnxprune.OnnxPruneError` subclasses with a one-line reason.
    ``lr`` and ``train_batchnorm`` (a BatchNorm after each Conv while training, folded back
    on export) default by whether the data is labelled (:meth:`TrainConfig.for_data`);
    ``distill_features`` makes label-free fine-tuning also match each group's kept channels
    to the original's (:mod:`onnxprune.training.features`). ``workers`` DataLoader processes
    read the training batches (default: :func:`default_workers`). ``checkpoint_dir`` keeps
    training's state after every epoch; ``resume`` continues the run whose checkpoints it
    holds, to the uninterrupted run's result (:mod:`onnxprune.training.checkpoint`). ``amp``
    trains in mixed precision (float16 with loss scaling on CUDA, bfloat16 on CPU).
    With a budget the report says whether it was met (``budget_met``); a run that ends above
    it warns, or with ``strict`` raises :class:`~onnxprune.errors.BudgetError` (its
    ``result`` holds the run's result and report).
    """
    if resume and checkpoint_dir is None:
        raise UsageError("--resume continues a run from its --checkpoint-dir; give the folder")
    distributed.start_from_env(device)
    chosen = _method(method, options, has_data=data is not None)
    if val_data is not None and data is None:
        raise UsageError("--val-data measures training on --data; give --data too")
    normalized, _ = normalize(model)
    work, dims, prepared = sizing.at_run_size(
        normalized, DataOptions(data, val_data, input_size, mean, std),
        needs_training=epochs > 0 or getattr(chosen, "trains", False))
    config = TrainConfig.for_data(
        prepared.train is not None and prepared.train.labelled, lr=lr, batchnorm=train_batchnorm,
        epochs=epochs, batch_size=batch_size, device=device, seed=seed, quiet=quiet,
        workers=default_workers(prepared.train) if workers is None else workers,
        checkpoints=None if checkpoint_dir is None else Checkpoints(checkpoint_dir,
                                                                    resume=resume), amp=amp)
    if epochs > 0:
        ShadowModel(work)  # refuses an op the shadow cannot run, before any work
    graph = modelio.to_graph(work)
    groups = _prunable_groups(graph)
    context = methods.Context(graph, groups, Budget(max_flops, max_params),
                              metrics.cpu_channel_block() if round_to is None else round_to,
                              options, prepared.train, prepared.val, config, work,
                              synthetic=prepared.synthetic)
    plan = chosen.run(context)
    pruned = apply_plan(modelio.with_initializers(work, plan.weights), plan)
    verify.check_runs(work, pruned)
    training, untrained = None, pruned
    if epochs > 0:
        features = group_features(graph, groups, plan) if distill_features else ()
        pruned, training = finetune(pruned, work, prepared.train, config, val=prepared.val,
                                    features=features)
        verify.check_model(pruned)
        verify.check_runs(work, pruned)
    written = pruned
    if dims is not None:
        written = verify.check_model(modelio.restore_input_dims(pruned, normalized))
        verify.check_runs(normalized, written, dims=sizing.second_size(normalized, dims))
    report = build_report(
        method=method, source=model, prepared=prepared, normalized=work, pruned=pruned,
        written=written, plan=plan, groups=groups, training=training, untrained=untrained,
        options={"max_flops": max_flops, "max_params": max_params,
                 "round_to": context.round_to, "epochs": epochs, "lr": config.lr,
                 "batch_size": batch_size, "device": device, "seed": seed,
                 "train_batchnorm": config.batchnorm, "distill_features": distill_features,
                 "workers": config.workers, "checkpoint_dir": _text(checkpoint_dir),
                 "amp": amp,
                 **options})
    missed = _judge_budget(report, context.budget, method)
    report["world_size"] = distributed.world()[1]
    if config.checkpoints is not None:
        report["checkpoints"] = {"training_calls": config.checkpoints.calls,
                                 "restored": config.checkpoints.restored}
    result = PruneResult(written, plan, report, paths.files_read(model, data, val_data,
                                                               *options.values()))
    if strict and missed:
        raise BudgetError(f"{missed}; --strict: the model is not written", result)
    return result


def _judge_budget(report: dict[str, Any], budget: Budget, method: str) -> str | None:
    """Record whether the written model meets ``budget``; return the warning when it does not."""
    if budget == Budget():
        return None
    before, after = report["before"], report["after"]
    flops, params = after["flops"] / before["flops"], after["params"] / before["params"]
    report["budget_met"] = ((budget.max_flops is None or flops <= budget.max_flops)
                            and (budget.max_params is None or params <= budget.max_params))
    if report["budget_met"]:
        return None
    warnings = report.setdefault("method_warnings", [])
    missed = [w for w in warnings if "did not meet the budget" in w]
    if not missed:
        why = f" ({report['stopped']})" if report.get("stopped") else ""
        missed = [f"{method} did not meet the budget: the model kept {flops:.3f} of the FLOPs "
                  f"and {params:.3f} of the parameters{why}"]
        warnings.insert(0, missed[0])
    return missed[0]


def _text(path: str | os.PathLike | None) -> str | None:
    return None if path is None else os.fspath(path)


def default_workers(data: Dataset | None) -> int:
    """Worker processes for reading ``data``'s training batches.

    Up to 4, leaving a core to train, when its inputs are read from files as batches need them
    (an image folder, a mapped .npz); none for arrays in memory, which workers only slow.
    """
    if data is None or not lazy.is_lazy(data.x):
        return 0
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@_naming_the_model
def check_outputs(model: modelio.ModelLike, method: str, outputs: dict[str, Any], *,
                  data: Any = None, val_data: Any = None, **options: Any) -> None:
    """Refuse, before any work, outputs a prune of ``model`` could not write safely.

    ``outputs`` maps option names (``--out``, ``--report``, ``--plot``) to paths or None. Each
    must not be a file the run reads (the model, its external data, the data and option files),
    nor each other, and must be writable; ``--plot`` needs a method that records stages or
    rounds, and matplotlib.
    """
    paths.check_outputs(outputs, paths.files_read(model, data, val_data, *options.values()))
    if outputs.get("--plot") is not None:
        if methods.create(method).records is None:
            raise UsageError(f"--plot: method '{method}' records no stages or rounds to draw")
        plot.require_matplotlib()


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


def _method(name: str, options: dict[str, Any], *, has_data: bool) -> methods.Method:
    """The method ``name``, once its options and data needs are met."""
    chosen = methods.create(name)
    unknown = sorted(set(options) - set(chosen.options))
    if unknown:
        raise UsageError(f"method '{name}' takes no option {', '.join(unknown)}")
    if getattr(chosen, "needs_data", False) and not has_data:
        raise UsageError(f"method '{name}' needs --data (labelled, for accuracy): a tolerance "
                         "cannot be checked on synthetic inputs")
    return chosen


def _prunable_groups(graph: gs.Graph) -> tuple[ChannelGroup, ...]:
    """The channel groups of ``graph``; refuses models it cannot prune, and all-blocked ones."""
    for node in graph.nodes:
        if node.op in QUANTIZED_OPS:
            raise UnsupportedModelError(
                f"a quantized model ({node.op} node '{node.name}'): onnxprune prunes float "
                "models; prune the float model, then quantize it")
        weight = node.inputs[1] if node.op in LAYER_OPS and len(node.inputs) > 1 else None
        if isinstance(weight, gs.Constant) and 0 in weight.shape:
            raise UnsupportedModelError(f"{node.op} node '{node.name}' has an empty weight "
                                        f"{tuple(weight.shape)}: it has no channels to prune")
    unsized = metrics.unsized_layers(graph)
    if unsized:
        raise UnsupportedModelError(f"the output size of layer '{unsized[0]}' is unknown, so "
                                    "its FLOPs cannot be counted")
    groups = tuple(analyze(graph))
    if all(g.blocked for g in groups):
        raise NothingToPruneError("nothing to prune: every channel group is blocked (run "
                                  "`onnxprune inspect` to see why)")
    return groups


@dataclass(frozen=True)
class Inspection:
    """What ``onnxprune inspect`` shows: per-layer costs and the channel groups."""

    layers: list[metrics.Layer]
    groups: list[ChannelGroup]
    params: int
    flops: int | None
    input_shapes: dict[str, list[int | str]]
    prunable_share: float | None


@_naming_the_model
def inspect(model: modelio.ModelLike, *,
            input_size: tuple[int, int] | None = None) -> Inspection:
    """Return per-layer parameters, FLOPs and channels, and the channel groups of ``model``.

    A model with symbolic input sizes is counted at ``input_size``; without it, the FLOPs of
    the layers whose size depends on it are None, never a guess.
    """
    work, _ = normalize(model)
    if input_size is not None and modelio.open_dims(work):
        work, _, _ = sizing.at_run_size(work, DataOptions(input_size=input_size),
                                        needs_training=False)
    graph = modelio.to_graph(work)
    params, flops = metrics.count(graph)
    shapes = {name: shape for name, shape, _ in modelio.input_specs(work)}
    groups = analyze(graph)
    return Inspection(metrics.layers(graph), groups, params, flops, shapes,
                      metrics.prunable_share(graph, groups))


@_naming_the_model
def evaluate(model: modelio.ModelLike, data: Any, *, reference: modelio.ModelLike | None = None,
             val_data: Any = None, input_size: tuple[int, int] | None = None,
             mean: list[float] | None = None, std: list[float] | None = None,
             provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """Score ``model`` in onnxruntime on all of ``data`` (``val_data`` is not split off).

    Accuracy (top-1, and top-5 over more than 5 classes) with labels; with ``reference``, or
    on unlabelled data, agreement with the reference (top-1 match and output error). Both
    run on onnxruntime's ``provider``.
    """
    _check_provider(provider)
    loaded = modelio.load(model)
    ref = modelio.load(reference) if reference is not None else None
    options = DataOptions(val_data=data if val_data is None else val_data,
                          input_size=input_size, mean=mean, std=std)
    val = prepare(loaded, options, needs_training=False).val
    if ref is None and not val.labelled:
        raise UsageError(f"{source_name(data)}: the data has no labels; give --reference to "
                         "measure agreement with another model")
    return {"model": source_name(model), "samples": len(val),
            **score(loaded, val, reference=ref, provider=provider)}


def bench(models: Sequence[str | os.PathLike], *, batch: int = 1, runs: int = 50,
          warmup: int = 5, threads: int = 1, provider: str = "CPUExecutionProvider",
          input_size: tuple[int, int] | None = None) -> list[metrics.Latency]:
    """Time ``models`` in onnxruntime in one process (see :func:`onnxprune.metrics.latency`).

    Models with symbolic input sizes run at ``input_size``; without it they are refused,
    naming the file.
    """
    _check_provider(provider)
    loaded = []
    for path in models:
        model = modelio.load(path)
        try:
            if modelio.open_dims(model):
                if input_size is None:
                    name, shape = next(iter(modelio.open_dims(model).items()))
                    raise UsageError(f"input '{name}' has shape {tuple(shape)}; give "
                                     "--input-size HxW to time it at")
                model, _, _ = sizing.at_run_size(model, DataOptions(input_size=input_size),
                                                 needs_training=False)
            modelio.random_inputs(model, batch=batch)
        except OnnxPruneError as e:
            raise UsageError(f"{path}: {e}") from e
        loaded.append(model)
    return metrics.latency(loaded, batch=batch, runs=runs, warmup=warmup, threads=threads,
                           provider=provider)


def _check_provider(provider: str) -> None:
    """Refuse an onnxruntime execution provider this machine lacks, saying what it has."""
    if provider not in metrics.available_providers():
        raise UsageError(f"onnxruntime on this machine has no {provider} (it has "
                         f"{', '.join(metrics.available_providers())}); for CUDA install "
                         "onnxruntime-gpu on a machine with an NVIDIA GPU")
