"""What the round-based filter methods (``pp``, ``corr``) share: a masked shadow, round by round.

Such a method trains the full-width shadow of the model and removes a filter by zeroing it
(masks on its group's producers, :class:`~onnxprune.methods.filters.Filters`), so the shadow
computes what the pruned model will. After each round it reads the validation quality:
accuracy with labels; without labels, top-1 agreement with the original model, which training
then distils from. A plan's size is counted on the graph as the prune passes would leave it.
The run ends by fine-tuning the model it keeps, in a fresh shadow (BatchNorms calibrated anew).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

from onnxprune import metrics, modelio
from onnxprune.errors import UsageError
from onnxprune.methods.budget import require_reachable, rounded_keep
from onnxprune.methods.filters import Filters
from onnxprune.methods.registry import Context
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.training import finetune
from onnxprune.training.evaluation import evaluate
from onnxprune.training.loop import TrainConfig, train

DEFAULT_TOLERANCE = 0.5  # points: the tolerance without a budget (with one: none)
TOLERANCE_SAMPLES = 10  # a tolerance of fewer validation samples than this is warned about
SATURATED = 0.995  # ... and so is a validation split the original scores this well on


class RoundRun:
    """One run of a round-based method: the shadow, the teacher, the baseline quality."""

    def __init__(self, ctx: Context, method: str, tolerance: float | None,
                 margin: float = 0.0) -> None:
        if ctx.data is None or ctx.val_data is None:
            raise UsageError(f"{method} needs --data (labelled for accuracy): a tolerance "
                             "cannot be checked on synthetic inputs")
        budget = ctx.budget
        self.budgeted = budget.max_flops is not None or budget.max_params is not None
        if self.budgeted:
            require_reachable(ctx.graph, ctx.groups, ctx.prunable, budget, ctx.round_to)
        self.ctx, self.method = ctx, method
        self.tolerance = (tolerance if tolerance is not None or self.budgeted
                          else DEFAULT_TOLERANCE)
        self.filters = Filters(ctx.groups)
        self.debt = {gid: 0.0 for gid in self.filters.groups}  # channels owed, per group
        self.names = self.filters.names()
        self.teacher = None if ctx.data.labelled else ShadowModel(ctx.model)
        self.shadow = finetune.trainable_shadow(ctx.model, ctx.data, ctx.train)
        self.params0, self.flops0 = metrics.count(ctx.graph)
        self.baseline = self._quality()
        self.key = "accuracy" if "accuracy" in self.baseline else "agreement"
        self.margin = margin
        self.original = self.teacher
        if margin and self.key == "accuracy":
            self.original = ShadowModel(ctx.model).to(ctx.train.device)

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

    def _drop(self, quality: dict[str, float]) -> float:
        """The drop in validation quality that the tolerance is judged on.

        The measured drop, less ``margin`` standard errors of it: on ``n`` samples of which
        ``d`` changed their top-1 prediction against the original's, sqrt(d) / n (McNemar's),
        so that on a small split a drop of a few samples is not taken for a real loss.
        """
        drop = round(finetune.quality_drop(self.baseline, quality), 12)  # 4/800 is 0.005
        if not self.margin:
            return drop
        n = len(self.ctx.val_data)
        agreement = (quality["agreement"] if self.key == "agreement" else
                     evaluate(self.shadow, self.ctx.val_data, reference=self.original)[
                         "agreement"])
        return drop - self.margin * math.sqrt(max(1 - agreement, 0.0) * n) / n

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

    # -- how many per round --------------------------------------------------------------
    def _steps(self, gid: str, live: int) -> list[int]:
        """The removals that take group ``gid`` from ``live`` to a width it can be written at."""
        g = self.filters.groups[gid]
        widths = {rounded_keep(k, g.size, self.ctx.round_to, g.blocks) for k in range(1, live)}
        return sorted(live - w for w in widths if w < live)

    def _removals(self, alive: dict[str, torch.Tensor], wants: dict[str, float],
                  limits: dict[str, int], left: int) -> dict[str, int]:
        """How many channels each group drops this round.

        ``wants`` is what each group would drop (added to what it owes from earlier rounds),
        ``limits`` the most it can, ``left`` the rounds left to reach the budget in. A group
        drops the largest step to a writable width that its debt covers; when none is due,
        the most nearly due group drops its smallest step anyway, so every round changes the
        written widths; with a budget, :meth:`_meet` then cuts this round's share of it.
        """
        live = {gid: int(a.sum()) for gid, a in alive.items()}
        options = {gid: [r for r in self._steps(gid, n) if r <= limits[gid]]
                   for gid, n in live.items()}
        removal = {}
        for gid in live:
            self.debt[gid] += wants[gid] if options[gid] else 0
            removal[gid] = max((r for r in options[gid] if r <= self.debt[gid]), default=0)
        if not any(removal.values()):
            due = [(self.debt[gid] / steps[0], gid) for gid, steps in options.items() if steps]
            if not due:
                return removal
            gid = max(due)[1]
            removal[gid] = options[gid][0]
        if self.budgeted:
            self._meet(alive, options, removal, left)
        for gid, r in removal.items():
            self.debt[gid] = max(self.debt[gid] - r, 0.0)
        return removal

    def _meet(self, alive: dict[str, torch.Tensor], options: dict[str, list[int]],
              removal: dict[str, int], left: int) -> None:
        """Cut at least this round's share of the budget, then give back what it allows.

        Blocks are added where the round cuts the smallest fraction of a group's live
        channels, and given back where it cuts the largest: the groups shrink evenly, as the
        paper's N pairs per layer do (correlations of filters of different lengths do not
        compare across layers: short first-layer filters correlate by chance).
        """
        budget, left = self.ctx.budget, max(left, 1)
        live = {gid: int(a.sum()) for gid, a in alive.items()}
        now = self._kept(self.filters.plan(alive))
        share = tuple(None if b is None else max(b, f * (b / f) ** (1 / left))
                      for b, f in zip((budget.max_flops, budget.max_params), now, strict=True))
        while not self._fits(self._planned(alive, removal), *share):
            offers = [(more[0] / live[gid], gid, more[0]) for gid, steps in options.items()
                      if (more := [r for r in steps if r > removal[gid]])]
            if not offers:
                break
            _, gid, r = min(offers)
            removal[gid] = r
        while True:
            offers = sorted(((-r / live[gid], gid, max([x for x in options[gid] if x < r],
                                                       default=0))
                             for gid, r in removal.items() if r))
            for _, gid, less in offers:
                trial = {**removal, gid: less}
                if any(trial.values()) and self._fits(self._planned(alive, trial),
                                                      budget.max_flops, budget.max_params):
                    removal[gid] = less
                    break
            else:
                return

    def _planned(self, alive: dict[str, torch.Tensor], removal: dict[str, int]) -> Plan:
        """The plan after ``removal``, for counting (any ``r`` live channels of a part do)."""
        keep = {}
        for gid, live in alive.items():
            g, kept = self.filters.groups[gid], live.clone()
            width = g.size // g.blocks
            for part in range(g.blocks):
                channels = torch.nonzero(live[part * width:(part + 1) * width]).flatten()
                kept[channels[:removal.get(gid, 0) // g.blocks] + part * width] = False
            keep[gid] = kept
        return self.filters.plan(keep)

    def _outcome(self, plan: Plan, stopped: str) -> dict[str, Any]:
        """``budget_met`` (None without a budget) and the warnings a user must see."""
        met = self._budget_met(plan) if self.budgeted else None
        flops, params = self._kept(plan)
        warnings = []
        if met is False:
            warnings.append(f"{self.method} did not meet the budget: the model kept "
                            f"{flops:.3f} of the FLOPs and {params:.3f} of the parameters "
                            f"({stopped})")
        if not any(len(k) < self.filters.groups[gid].size for gid, k in plan.keep.items()):
            warnings.append(f"{self.method} removed no filter ({stopped})")
        return {"budget_met": met, "method_warnings": warnings + self._split_notes()}

    def _split_notes(self) -> list[str]:
        """A warning when the tolerance is a handful of samples the original gets all but right.

        Such a split was likely trained on, and the tolerance then measures noise, not loss.
        """
        n, score = len(self.ctx.val_data), self.baseline.get("accuracy", 0.0)
        if self.tolerance is None or not n:
            return []
        allowed, saturated = self.tolerance / 100 * n, score >= SATURATED
        if allowed >= TOLERANCE_SAMPLES and not saturated:
            return []
        said = (f"the tolerance of {self.tolerance} points is {allowed:.0f} of the {n} "
                "validation samples")
        if saturated:
            return [f"{said}, on which the original scores {100 * score:.2f} % "
                    f"({round((1 - score) * n)} missed): it has likely seen them in training; "
                    "give --val-data it never saw"]
        return [f"{said}: too few to judge it on; give a larger --val-data"]
