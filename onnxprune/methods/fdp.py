"""The ``fdp`` method: frequency-domain dynamic pruning (Liu et al., NeurIPS 2018).

Every Conv kernel larger than 1x1 trains as its 2-D DCT coefficients
(:class:`~onnxprune.methods.dct.Coefficients`); 1x1 kernels and Gemm / MatMul weights train
in the spatial domain under the same rule (the report says which is which). Masks are
dynamic, as in Dynamic Network Surgery moved to the DCT domain: the forward uses the masked
coefficients, every coefficient keeps its gradient, and a masked one returns when it grows.

*Masks.* Per weight and band (``i + j`` of the coefficient; one band for a spatial weight),
a target density: the weight's (``--layer-sparsity`` as for ``admm``: uniform, the first and
last layers three times denser, or a map) spread over the bands so that band ``b`` of ``B``
is ``band_ratio ** (b / (B - 1))`` times as dense as band 0 (low frequencies carry more of the
accuracy; ``bands=False`` gives every band the same rate, for the ablation). ``band_ratio``
0.25 from ``benchmarks/fdp_mnist.py`` (sparsity 0.9, 8 epochs; at 0.1 / 0.25 / 0.5 / 1: resnet
0.9930 / 0.9930 / 0.9915 / 0.9890, LeNet-5 0.9850 / 0.9850 / 0.9840 / 0.9840). With ``t`` the
magnitude that keeps that density, a kept coefficient is masked when ``|c| <= 0.9 t`` and a
masked one returns when ``|c| > 1.1 t`` (DNS's hysteresis). Masks are updated after a step
with DNS's probability ``(1 + 1e-4 i) ** -1`` at iteration ``i``; the sparsity ramps up along
a cubic over the first three quarters of ``prune_epochs`` (removing 90 % at once, as DNS's
fixed threshold does, left too little to train). Then the masks are made exact (the target
count of largest coefficients in each band) and frozen for ``retrain_epochs``.

The result is dense weights whose kernels are sparse in the DCT domain. Written, a kernel is
stored as its kept coefficients and rebuilt by two constant MatMuls onnxruntime folds when
the session is created (:mod:`onnxprune.sparse`): the file shrinks, the speed is the dense
model's. The report gives the compression (dense weights / kept coefficients, biases
excluded, as the papers count), the kept coefficients per band and weight, and the paper's
theoretical multiply count: each kept coefficient one multiply per output position.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from onnxprune import metrics
from onnxprune.errors import UsageError, require_finite
from onnxprune.methods.admm import layer_densities
from onnxprune.methods.budget import Budget
from onnxprune.methods.dct import Coefficients, bands, in_frequency
from onnxprune.methods.registry import Context, register
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.training import finetune
from onnxprune.training.loop import Hooks, progress, train

HYSTERESIS = (0.9, 1.1)  # DNS: mask at or below 0.9 t, return above 1.1 t
UPDATE_GAMMA, UPDATE_POWER = 1e-4, 1.0  # DNS: update with probability (1 + gamma i) ** -power
RAMP = 0.75  # share of the pruning steps over which the sparsity ramps up


@dataclass(frozen=True)
class FdpOptions:
    """The options of the fdp method, with their defaults."""

    sparsity: float = 0.9
    layer_sparsity: Any = None
    bands: bool = True
    band_ratio: float = 0.25
    prune_epochs: int = 4
    retrain_epochs: int = 2

    def __post_init__(self) -> None:
        require_finite(band_ratio=self.band_ratio)
        if not 0 < self.sparsity < 1:
            raise UsageError(f"--sparsity must be in (0, 1), got {self.sparsity}")
        if not 0 < self.band_ratio <= 1:
            raise UsageError(f"--band-ratio must be in (0, 1], got {self.band_ratio}")
        if self.prune_epochs < 1 or self.retrain_epochs < 0:
            raise UsageError("--prune-epochs must be >= 1 and --retrain-epochs >= 0")
        if self.layer_sparsity == "global":
            raise UsageError("fdp: --layer-sparsity global is not supported; give uniform or "
                             "a map {weight name: sparsity}")


def band_densities(counts: np.ndarray, density: float, ratio: float) -> np.ndarray:
    """Per band, the density that keeps ``density`` of all ``counts`` coefficients overall.

    Band ``b`` of ``B`` gets ``d0 * ratio ** (b / (B - 1))`` (at most 1), ``d0`` found by
    bisection. Example: two bands of 9 and 9 at density 0.5 and ratio 0.5 give 2/3 and 1/3.
    """
    counts = np.asarray(counts, dtype=np.float64)
    shape = ratio ** (np.arange(len(counts)) / max(len(counts) - 1, 1))
    want = density * counts.sum()
    low, high = 0.0, 1.0 / shape.min()
    for _ in range(60):
        mid = (low + high) / 2
        if (np.minimum(1, mid * shape) * counts).sum() < want:
            low = mid
        else:
            high = mid
    return np.minimum(1.0, high * shape)


class DynamicMasks(Hooks):
    """The masks of every pruned weight, updated during training (module docstring)."""

    def __init__(self, shadow: ShadowModel, targets: dict[str, torch.Tensor],
                 band_of: dict[str, torch.Tensor], steps: int, seed: int) -> None:
        self.shadow, self.targets, self.band_of = shadow, targets, band_of
        self.steps, self.iteration = max(steps, 1), 0
        self.rng = np.random.default_rng(seed)
        self.frozen = False

    def parametrization(self, name: str) -> Coefficients:
        """The parametrization of weight ``name`` (its mask)."""
        module = self.shadow.parametrization(name)
        assert isinstance(module, Coefficients)
        return module

    def coefficients(self, name: str) -> torch.Tensor:
        """The coefficients weight ``name`` trains as."""
        return self.shadow.original(name)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of it (the masks themselves are shadow buffers)."""
        return {"iteration": self.iteration, "rng": self.rng.bit_generator.state,
                "frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave."""
        self.iteration, self.frozen = state["iteration"], state["frozen"]
        self.rng.bit_generator.state = state["rng"]

    def after_step(self, model: Any) -> None:
        """Update the masks, with DNS's decaying probability, unless they are frozen."""
        self.iteration += 1
        p = (1 + UPDATE_GAMMA * self.iteration) ** -UPDATE_POWER
        if self.frozen or self.rng.random() >= p:
            return
        ramp = min(1.0, self.iteration / (RAMP * self.steps))
        self.update(1 - (1 - ramp) ** 3)

    @torch.no_grad()
    def update(self, progress_: float, exact: bool = False) -> None:
        """Masks at ``progress_`` (0..1) of each band's target sparsity; ``exact``: top-k."""
        for name, target in self.targets.items():
            c, module = self.coefficients(name).abs(), self.parametrization(name)
            band = self.band_of[name].to(c.device).expand_as(c)
            mask = module.mask.bool()
            new = torch.zeros_like(mask)
            for b, density in enumerate(target.tolist()):
                inside = band == b
                values = c[inside]
                keep = math.ceil((1 - progress_ * (1 - density)) * values.numel())
                chosen = torch.zeros_like(values, dtype=torch.bool)
                if keep >= values.numel():
                    chosen[:] = True
                elif keep > 0:
                    order = torch.argsort(-values, stable=True)
                    if exact:
                        chosen[order[:keep]] = True
                    else:
                        t = values[order[keep - 1]]
                        low, high = HYSTERESIS
                        chosen = (values > high * t) | (mask[inside] & (values > low * t))
                new[inside] = chosen
            module.mask.copy_(new.to(module.mask.dtype))


@register("fdp")
class FrequencyDomainPruning:
    """Frequency-domain dynamic pruning of kernels' DCT coefficients to ``sparsity``."""

    name: str
    records = "stages"
    trains = True
    needs_data = True
    options: frozenset[str] = frozenset(FdpOptions.__dataclass_fields__)

    def run(self, ctx: Context) -> Plan:
        """Train with dynamic masks, make them exact, retrain; return the weights."""
        opts = FdpOptions(**ctx.options)
        if ctx.budget != Budget():
            raise UsageError("fdp removes single DCT coefficients and keeps every channel, so "
                             "it cannot meet --max-flops or --max-params; give --sparsity")
        if ctx.train.epochs:
            raise UsageError("fdp trains itself (--prune-epochs, then the masks frozen): "
                             "fine-tuning with --epochs would fill the pruned coefficients in; "
                             "leave --epochs out")
        shadow = finetune.trainable_shadow(ctx.model, ctx.data, ctx.train)
        teacher = None if ctx.data.labelled else ShadowModel(ctx.model)
        baseline = finetune.quality(shadow, teacher, ctx.val_data)
        densities = layer_densities(shadow, opts.sparsity, opts.layer_sparsity)
        targets, band_of = {}, {}
        for name, density in densities.items():
            shape = shadow.parameter(name).shape
            band_of[name], counts = _bands(shape)
            ratio = opts.band_ratio if opts.bands else 1.0
            targets[name] = torch.as_tensor(band_densities(counts, density, ratio))
            shadow.parametrize(name, Coefficients(shape))
        steps = opts.prune_epochs * -(-len(ctx.data) // ctx.train.batch_size)
        masks = DynamicMasks(shadow, targets, band_of, steps, ctx.train.seed)
        stages = []
        bar = progress(2, "fdp", ctx.train.quiet, unit="phase")
        for label, epochs in (("dynamic", opts.prune_epochs), ("retrain", opts.retrain_epochs)):
            start = time.perf_counter()
            if label == "retrain":
                masks.update(1.0, exact=True)
                masks.frozen = True
            train(shadow, ctx.data, replace(ctx.train, epochs=epochs, cosine=True),
                  teacher=teacher, hooks=[masks])
            if label == "dynamic":
                masks.update(1.0, exact=True)
            stages.append({"stage": len(stages) + 1, "phase": label, "epochs": epochs,
                           **_kept(masks), **finetune.quality(shadow, teacher, ctx.val_data),
                           "seconds": round(time.perf_counter() - start, 2)})
            bar.update()
        bar.close()
        log = {"stages": stages, "baseline": baseline, **_summary(ctx, masks)}
        for name in targets:
            shadow.parametrize(name, None)
        return Plan(weights=shadow.snapshot(), log=log)


def _bands(shape: torch.Size) -> tuple[torch.Tensor, np.ndarray]:
    """The band of each coefficient (broadcastable to ``shape``) and the count per band."""
    if not in_frequency(shape):
        return torch.zeros(1, 1, dtype=torch.long), np.array([int(np.prod(shape))])
    band = bands(*shape[-2:])
    return band, np.bincount(band.reshape(-1).numpy()) * int(np.prod(shape[:-2]))


def _kept(masks: DynamicMasks) -> dict[str, float]:
    """The sparsity and compression the masks give now (biases excluded)."""
    found = [masks.parametrization(n).mask for n in masks.targets]
    total, kept = sum(m.numel() for m in found), sum(int(m.sum()) for m in found)
    return {"sparsity": round(1 - kept / total, 4), "compression": round(total / max(kept, 1), 2)}


def _summary(ctx: Context, masks: DynamicMasks) -> dict[str, Any]:
    """Per weight: domain, kept per band; overall compression and theoretical multiplies."""
    macs: dict[str, int] = {}
    nodes = {n.name: n for n in ctx.graph.nodes}
    for layer in metrics.layers(ctx.graph):
        weight = nodes[layer.name].inputs[1].name
        macs[weight] = macs.get(weight, 0) + (layer.flops or 0)
    weights, dense_macs, kept_macs = {}, 0, 0.0
    for name in masks.targets:
        mask = masks.parametrization(name).mask
        band = masks.band_of[name]
        per_band = ([int(mask[..., band == b].sum()) for b in range(int(band.max()) + 1)]
                    if in_frequency(mask.shape) else [int(mask.sum())])
        sizes = _bands(mask.shape)[1].tolist()
        weights[name] = {"domain": "dct" if in_frequency(mask.shape) else "spatial",
                         "size": mask.numel(), "kept": int(mask.sum()),
                         "kept_per_band": per_band, "band_sizes": sizes}
        dense_macs += macs.get(name, 0)
        kept_macs += macs.get(name, 0) * float(mask.mean())
    return {"weights": weights, **_kept(masks),
            "multiplies_kept": round(kept_macs / max(dense_macs, 1), 4),
            "theoretical_speedup": round(dense_macs / max(kept_macs, 1), 2)}
