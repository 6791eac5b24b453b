"""What the round-based filter methods (``pp``, ``corr``) share: a masked shadow, round by round.

Such a method trains the full-width shadow of the model and removes a filter by zeroing it
(masks on its group's producers, :class:`~onnxprune.methods.filters.Filters`), so the shadow
computes what the pruned model will. After each round it reads the validation quality:
accuracy with labels; without labels, top-1 agreement with the original model, which training
then distils from. A plan's size is counted on the graph as the prune passes would leave it.
The run ends by fine-tuning the model it keeps, in a fresh shadow (BatchNorms calibrated anew).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from onnxprune import metrics, modelio
from onnxprune.errors import UsageError
from onnxprune.methods.filters import Filters
from onnxprune.methods.registry import Context
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.training import finetune
from onnxprune.training.loop import TrainConfig, train


class RoundRun:
    """One run of a round-based method: the shadow, the teacher, the baseline quality."""

    def __init__(self, ctx: Context, method: str) -> None:
        if ctx.data is None or ctx.val_data is None:
            raise UsageError(f"{method} needs --data (labelled for accuracy): a tolerance "
                             "cannot be checked on synthetic inputs")
        self.ctx = ctx
        self.filters = Filters(ctx.groups)
        self.names = self.filters.names()
        self.teacher = None if ctx.data.labelled else ShadowModel(ctx.model)
        self.shadow = finetune.trainable_shadow(ctx.model, ctx.data, ctx.train)
        self.params0, self.flops0 = metrics.count(ctx.graph)
        self.baseline = self._quality()
        self.key = "accuracy" if "accuracy" in self.baseline else "agreement"

    def _config(self, epochs: int) -> TrainConfig:
        """Training for ``epochs``, the learning rate decayed to zero along a cosine.

        Each round then ends on a settled model, not wherever the last SGD step left it.
        """
        return replace(self.ctx.train, epochs=epochs, cosine=True)

    def _reach(self, epochs: int) -> float:
        """How far one unit of constant gradient moves a weight in ``epochs`` of SGD steps."""
        config = self._config(epochs)
        steps = config.epochs * -(-len(self.ctx.data) // config.batch_size)
        return config.lr / (1 - config.momentum) * steps

    def _values(self) -> dict[str, torch.Tensor]:
        """The filters' weights as export writes them (masked, BatchNorms folded)."""
        with torch.no_grad():
            values = self.shadow.folded_values()
            return {n: values[n].detach() for n in self.names}

    def _alive(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {gid: a.cpu() for gid, a in self.filters.alive(self._values()).items()}

    def _mask(self, keep: dict[str, torch.Tensor]) -> None:
        """Zero every channel ``keep`` marks False (the masks replace the previous ones)."""
        for name, mask in self.filters.masks(self._values(), keep).items():
            self.shadow.set_mask(name, mask)

    def _kept(self, plan: Plan) -> tuple[float, float]:
        """The fractions of the original FLOPs and parameters ``plan`` keeps."""
        shapes = metrics.planned_shapes(self.ctx.graph, self.ctx.groups, plan)
        params, flops = metrics.count(self.ctx.graph, shapes)
        return flops / self.flops0, params / self.params0

    def _size(self, plan: Plan) -> dict[str, float]:
        flops, params = self._kept(plan)
        return {"flops_kept": round(flops, 4), "params_kept": round(params, 4)}

    def _fits(self, plan: Plan, max_flops: float | None, max_params: float | None) -> bool:
        """Whether ``plan`` keeps at most these fractions (None: no limit)."""
        flops, params = self._kept(plan)
        return ((max_flops is None or flops <= max_flops)
                and (max_params is None or params <= max_params))

    def _budget_met(self, plan: Plan) -> bool:
        """Whether ``plan`` meets the budget; False when there is none."""
        budget = self.ctx.budget
        if budget.max_flops is None and budget.max_params is None:
            return False
        return self._fits(plan, budget.max_flops, budget.max_params)

    def _quality(self) -> dict[str, float]:
        return finetune.quality(self.shadow, self.teacher, self.ctx.val_data)

    def _finish(self, plan: Plan, weights: dict[str, Any], epochs: int,
                tolerance: float | None) -> dict[str, Any]:
        """Fine-tune the kept model (``plan``'s widths) ``epochs``; return its weights and log.

        ``tolerance`` is in accuracy points (None: none). Fine-tuning that leaves the
        tolerance and does not improve is discarded: the model before it was within it.
        """
        start = time.perf_counter()
        model = modelio.with_initializers(self.ctx.model, weights)
        self.shadow = finetune.trainable_shadow(model, self.ctx.data, self.ctx.train)
        keep = {gid: torch.zeros(g.size, dtype=torch.bool) for gid, g in
                self.filters.groups.items()}
        for gid, kept in plan.keep.items():
            keep[gid][list(kept)] = True
        self._mask(keep)
        untrained, quality = self.shadow.snapshot(), self._quality()
        if epochs:
            train(self.shadow, self.ctx.data, self._config(epochs), teacher=self.teacher)
            tuned = self._quality()
            kept = (tolerance is not None
                    and finetune.quality_drop(self.baseline, tuned) <= tolerance / 100)
            if kept or finetune.quality_drop(quality, tuned) <= 0:
                untrained, quality = self.shadow.snapshot(), tuned
        return {"weights": untrained,
                "log": {"epochs": epochs, **self._size(plan), **quality,
                        "seconds": round(time.perf_counter() - start, 2)}}
