"""The ``admm`` method: progressive ADMM weight pruning (Ye et al. 2018, after Zhang et al. 2018).

Pruning as constrained training: minimise the task loss ``f(W)`` subject to
``card(W_i) <= k_i`` for each layer. ADMM splits it with auxiliary ``Z_i`` and scaled duals
``U_i`` and alternates

    W-step: train f(W) + sum_i rho/2 ||W_i - Z_i + U_i||^2    (``epochs_per_iteration``)
    Z-step: Z_i = Proj(W_i + U_i), keeping the k_i largest magnitudes (the exact projection)
    U-step: U_i = U_i + W_i - Z_i

with rho multiplied by ``rho_growth`` after each iteration, then hard-prunes W to the support
of Z and retrains with the mask fixed. *Progressive*: the target density is reached through
stages that halve the density of the remaining weights (1/2, 1/4, ... of the original), each
stage starting from the previous one's pruned model, as the paper does. The first and last
weighted layers keep three times the target density by default (the paper keeps them denser).

Defaults were chosen with ``benchmarks/admm_lenet_mnist.py``: the paper's rho 1.5e-3 and
W-step lr 1e-3 (with Adam there) barely move SGD's weights in a small budget (LeNet-5 on MNIST
reached 15.5x within 0.5 points, below one-shot magnitude pruning); rho 0.1 growing 1.5x per
iteration with lr 1e-2 reached 31x and beat it. Masked retraining uses lr 1e-2, as the paper.
The stage and epoch counts are small so that the command runs as typed on a CPU; all are
options. Both levels train with the BatchNorm that fine-tuning on labels re-inserts after
each Conv (``--train-batchnorm``): without it weight-level ADMM diverged on the ResNet sample
(BatchNorm folded; NaN in the first epoch at lr 1e-2), lost 4.7 points more on vgg_bn and
0.25 to 0.5 more on LeNet-5 at 10x (``benchmarks/admm_defaults.py``). There ``uniform`` beat
``global`` on resnet and vgg_bn (0.3, 0.5 points) and lost on LeNet-5 (0.3): it stays.
``tolerance`` (accuracy points) stops the progression at the last stage within it of the
original's validation quality. Weight level only: the file shrinks (sparse storage) but
onnxruntime does not run faster.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from onnxprune import metrics
from onnxprune.errors import UsageError, require_finite
from onnxprune.methods.budget import Budget, plan_for_budget
from onnxprune.methods.filters import Filters
from onnxprune.methods.registry import Context, register
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.training import finetune
from onnxprune.training.loop import Hooks, progress, train


@dataclass(frozen=True)
class AdmmOptions:
    """The options of the admm method, with their defaults."""

    granularity: str = "weight"
    sparsity: float = 0.9
    layer_sparsity: Any = None
    iterations: int = 3
    epochs_per_iteration: int = 1
    retrain_epochs: int = 1
    rho: float = 0.1
    rho_growth: float = 1.5
    admm_lr: float = 1e-2
    retrain_lr: float = 1e-2
    tolerance: float | None = None

    def __post_init__(self) -> None:
        if self.granularity not in ("weight", "filter"):
            raise UsageError(f"--granularity must be weight or filter, got {self.granularity}")
        if not 0 < self.sparsity < 1:
            raise UsageError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        require_finite(tolerance=self.tolerance, rho=self.rho, rho_growth=self.rho_growth,
                       admm_lr=self.admm_lr, retrain_lr=self.retrain_lr)


def project(w: torch.Tensor, keep: int) -> torch.Tensor:
    """Euclidean projection of ``w`` onto {at most ``keep`` non-zeros}.

    Keeps the ``keep`` entries of largest magnitude; among equal magnitudes the lower flat
    index wins, so the result is deterministic.
    """
    flat = w.reshape(-1)
    if keep >= flat.numel():
        return w.clone()
    order = torch.argsort(-flat.abs(), stable=True)[:max(keep, 0)]
    out = torch.zeros_like(flat)
    out[order] = flat[order]
    return out.reshape(w.shape)


def project_global(values: dict[str, torch.Tensor], keep: int) -> dict[str, torch.Tensor]:
    """Projection onto {at most ``keep`` non-zeros over all the tensors together}.

    One magnitude ranking across layers (``--layer-sparsity global``): layers whose weights
    are small, typically the wide fully connected ones, give up the most.
    """
    flat = project(torch.cat([v.reshape(-1) for v in values.values()]), keep)
    parts = torch.split(flat, [v.numel() for v in values.values()])
    return {n: part.reshape(v.shape) for (n, v), part in zip(values.items(), parts, strict=True)}


def project_filters(values: dict[str, torch.Tensor], filters: Filters,
                    keep: dict[str, int]) -> dict[str, torch.Tensor]:
    """Group-aware projection onto {at most ``keep[g]`` non-zero channels in each group g}.

    A channel's norm is the L2 norm of its rows across all the group's producers (a residual
    group's filters are kept or dropped together); the ``keep[g]`` largest are kept, ties
    going to the lower index.
    """
    chosen = {}
    for gid, k in keep.items():
        norms = filters.l2(values, gid)
        mask = torch.zeros_like(norms, dtype=torch.bool)
        mask[torch.argsort(-norms, stable=True)[:k]] = True
        chosen[gid] = mask
    masks = filters.masks(values, chosen)
    return {n: v * masks[n] if n in masks else v for n, v in values.items()}


def stage_densities(density: float) -> list[float]:
    """Densities of the progressive stages: halving from 1/2 until ``density`` is reached."""
    stages, d = [], 0.5
    while d > density:
        stages.append(d)
        d /= 2
    return stages + [density]


class AdmmPenalty(Hooks):
    """The W-step's extra loss ``sum_i rho/2 ||W_i - Z_i + U_i||^2``."""

    def __init__(self, z: dict[str, torch.Tensor], u: dict[str, torch.Tensor],
                 rho: float) -> None:
        self.z, self.u, self.rho = z, u, rho

    def extra_loss(self, model: ShadowModel) -> torch.Tensor:
        """The penalty on the current weights."""
        return sum(self.rho / 2 * (model.masked(n) - self.z[n] + self.u[n]).square().sum()
                   for n in self.z)


@register("admm")
class Admm:
    """Progressive ADMM pruning of individual weights to ``sparsity``."""

    name: str
    records = "stages"
    trains = True
    options: frozenset[str] = frozenset(AdmmOptions.__dataclass_fields__)

    def run(self, ctx: Context) -> Plan:
        """Train with ADMM stage by stage; return the trained, masked weights."""
        opts = AdmmOptions(**ctx.options)
        if opts.granularity == "weight" and ctx.budget != Budget():
            raise UsageError("admm at weight level zeroes single weights and keeps every "
                             "channel, so it cannot meet --max-flops or --max-params; give "
                             "--sparsity, or --granularity filter with --max-flops")
        shadow, teacher = finetune.trainable_shadow(ctx.model, ctx.data, ctx.train), None
        if ctx.data is not None and not ctx.data.labelled:
            teacher = ShadowModel(ctx.model)
        baseline = finetune.quality(shadow, teacher, ctx.val_data)
        if opts.granularity == "filter":
            return _run_filters(shadow, teacher, baseline, ctx, opts)
        densities = layer_densities(shadow, opts.sparsity, opts.layer_sparsity)
        total = sum(shadow.parameter(n).numel() for n in densities)
        stages, best = [], shadow.snapshot()
        fractions = stage_densities(1 - opts.sparsity)
        bar = progress(len(fractions), "admm stages", ctx.train.quiet, unit="stage")
        for stage, fraction in enumerate(fractions):
            start = time.perf_counter()
            if opts.layer_sparsity == "global":
                proj = partial(project_global, keep=math.ceil(fraction * total))
            else:
                proj = _weights_projection({
                    n: math.ceil(min(1.0, d * fraction / (1 - opts.sparsity))
                                 * shadow.parameter(n).numel()) for n, d in densities.items()})
            _admm_stage(shadow, list(densities), proj, ctx, teacher, opts)
            quality = finetune.quality(shadow, teacher, ctx.val_data)
            nonzero = sum(int(shadow.masked(n).count_nonzero()) for n in densities)
            stages.append({"stage": stage + 1, "sparsity": round(1 - nonzero / total, 4),
                           "compression": round(total / max(nonzero, 1), 2), **quality,
                           "seconds": round(time.perf_counter() - start, 2)})
            bar.update()
            bar.set_postfix(_postfix(stages[-1], "compression"))
            if (opts.tolerance is not None
                    and finetune.quality_drop(baseline, quality) > opts.tolerance / 100):
                stages[-1]["kept"] = False
                break
            best = shadow.snapshot()
        bar.close()
        return Plan(weights=best, log={"stages": stages, "baseline": baseline})


_RULES = ("uniform", "global")

Projection = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _admm_stage(shadow: ShadowModel, names: list[str], proj: Projection, ctx: Context,
                teacher: ShadowModel | None, opts: AdmmOptions) -> None:
    """One stage: ADMM iterations, then hard pruning to the support of Z and masked retraining.

    ``proj`` maps the weights ``names`` to their projection onto the stage's sparse set.
    """
    with torch.no_grad():
        z = proj({n: shadow.masked(n) for n in names})
        u = {n: torch.zeros_like(v) for n, v in z.items()}
    rho = opts.rho
    for _ in range(opts.iterations):
        train(shadow, ctx.data, replace(ctx.train, epochs=opts.epochs_per_iteration,
                                        lr=opts.admm_lr),
              teacher=teacher, hooks=[AdmmPenalty(z, u, rho)])
        with torch.no_grad():
            w = {n: shadow.masked(n) for n in names}
            z = proj({n: w[n] + u[n] for n in names})
            for n in names:
                u[n] += w[n] - z[n]
        rho *= opts.rho_growth
    for n, v in z.items():
        shadow.set_mask(n, v != 0)
    train(shadow, ctx.data, replace(ctx.train, epochs=opts.retrain_epochs, lr=opts.retrain_lr,
                                    cosine=True), teacher=teacher)


def _run_filters(shadow: ShadowModel, teacher: ShadowModel | None, baseline: dict[str, float],
                 ctx: Context, opts: AdmmOptions) -> Plan:
    """Filter level: stages towards the FLOPs / parameter budget, then channels removed."""
    budget = ctx.budget
    if budget.max_flops is None and budget.max_params is None:
        raise UsageError("admm --granularity filter needs --max-flops F or --max-params F")
    filters = Filters(ctx.groups)
    names = filters.names()
    params0, flops0 = metrics.count(ctx.graph)
    stages, best, stopped = [], (Plan(), shadow.snapshot()), "all 3 stages ran"
    bar = progress(3, "admm stages", ctx.train.quiet, unit="stage")
    for stage in (1, 2, 3):  # each stage takes a third of the way, geometrically
        start = time.perf_counter()
        target = Budget(*(None if f is None else f ** (stage / 3)
                          for f in (budget.max_flops, budget.max_params)))
        with torch.no_grad():
            values = {n: shadow.masked(n) for n in names}
            scores = {gid: filters.scores(values, gid).cpu().numpy() for gid in filters.groups}
        plan = plan_for_budget(ctx.graph, ctx.groups, scores, target, ctx.round_to)
        keep = {gid: len(kept) for gid, kept in plan.keep.items()}
        _admm_stage(shadow, names, partial(project_filters, filters=filters, keep=keep), ctx,
                    teacher, opts)
        with torch.no_grad():
            chosen = filters.plan(filters.alive({n: shadow.masked(n) for n in names}))
        params, flops = metrics.count(ctx.graph, metrics.planned_shapes(ctx.graph, ctx.groups,
                                                                         chosen))
        quality = finetune.quality(shadow, teacher, ctx.val_data)
        stages.append({"stage": stage, "flops_kept": round(flops / flops0, 4),
                       "params_kept": round(params / params0, 4), **quality,
                       "seconds": round(time.perf_counter() - start, 2)})
        bar.update()
        bar.set_postfix(_postfix(stages[-1], "flops_kept"))
        if (opts.tolerance is not None
                and finetune.quality_drop(baseline, quality) > opts.tolerance / 100):
            stages[-1]["kept"] = False
            stopped = f"stage {stage} fell more than {opts.tolerance} points"
            break
        best = (chosen, shadow.snapshot())
    bar.close()
    return Plan(keep=dict(best[0].keep), weights=best[1],
                log={"stages": stages, "baseline": baseline, "stopped": stopped})


def _weights_projection(keep: dict[str, int]) -> Projection:
    def proj(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: project(v, keep[n]) for n, v in values.items()}
    return proj


def layer_densities(shadow: ShadowModel, sparsity: float,
                    layer_sparsity: Any = None) -> dict[str, float]:
    """Target density of each weighted layer: uniform, first and last 3x denser, or the map.

    ``layer_sparsity`` is None, a rule name, a {weight name: sparsity} dict or a JSON/YAML
    file of one; a map overrides the layers it names.
    """
    names = [n for n in shadow.initializer_names()
             if shadow.parameter(n).ndim >= 2 and shadow.parameter(n).requires_grad]
    if not names:
        raise UsageError("the model has no weight matrices or kernels to prune")
    density = 1 - sparsity
    out = {n: density for n in names}
    for n in (names[0], names[-1]):
        out[n] = min(1.0, 3 * density)
    given = _read_map(layer_sparsity)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(f"--layer-sparsity names no weight of the model: {', '.join(unknown)}")
    out.update({n: 1 - float(s) for n, s in given.items()})
    return out


def _read_map(source: Any) -> dict[str, float]:
    """The per-layer map of ``--layer-sparsity``: a dict, or a JSON or YAML file of one."""
    if source is None or source in _RULES or isinstance(source, dict):
        return dict(source) if isinstance(source, dict) else {}
    path = Path(source)
    try:
        given = yaml.safe_load(path.read_text())
        if not isinstance(given, dict):
            raise ValueError(f"found {type(given).__name__}")
        return {str(k): float(v) for k, v in given.items()}
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0]
        raise UsageError(f"{path}: --layer-sparsity needs uniform, global, or a JSON/YAML "
                         f"map {{weight name: sparsity}} ({reason})") from e


def _postfix(stage: dict[str, Any], key: str) -> dict[str, Any]:
    """What the stage bar shows of a finished stage: its size and its validation quality."""
    return {k: stage[k] for k in (key, "accuracy", "agreement") if k in stage}
