"""The ``pp`` method: Play and Prune (Singh et al., IJCAI 2019), filter pruning to a tolerance.

The user says how much validation accuracy may go (``tolerance``, in points), not how much to
cut. Two players take turns, one round at a time:

- AFP (adaptive filter pruning) picks in every group the ``candidates`` fraction of its live
  channels with the lowest normalised L1 norm, trains ``epochs_per_round`` epochs with an L1
  term on those filters only, then removes (zeroes) each candidate whose normalised L1 norm
  (over the mean of its group's live channels) fell below the round's threshold. A group's
  channel goes from all its producers at once, and every group keeps at least one channel.
- PRC (pruning rate controller, :class:`Controller`) reads the validation accuracy after the
  round. With ``r`` of the tolerance left it sets the next round's L1 strength and threshold
  in proportion to ``r / tolerance`` (never below a quarter, so pruning does not stall near
  the edge); past the tolerance it pauses pruning and the model trains to recover (the
  "play"), for at most ``patience`` rounds, after which it stops.

The L1 term is scaled per layer so that ``strength`` means the same on every layer and every
dataset size: at strength 1 it would wear an average weight of the layer down to zero over one
round of plain SGD steps, whatever the layer's scale or the number of steps. The run keeps the
smallest model (by FLOPs) that was within the tolerance; it stops when a round cannot remove a
filter, when recovery fails, when ``--max-flops`` / ``--max-params`` are met, or after
``rounds`` rounds. Kept counts are then rounded up to ``--round-to`` and that model is
fine-tuned ``final_epochs`` epochs, all inside the method.

Without labels the tolerance is on top-1 agreement with the original model; without data the
method refuses (a tolerance cannot be checked on synthetic inputs).

Defaults: ``candidates`` 0.1 as in our notes on the paper. ``strength`` 1 and ``threshold`` 0.2
come from one-round trials on the ResNet sample with the digits: strength 3 or 4 wore the
candidates down to 5 % of their layer's mean but cost 6 to 30 points within the round, strength
1 took them to 10-40 % at no loss, and 0.2 then removes about half of them. Penalising the
weights without folding BatchNorm in left every candidate at 13 % or more whatever the
strength (the layer is blind to its weights' scale). ``benchmarks/pp_mnist.py`` measures the
defaults on MNIST against ``magnitude`` and ``admm --granularity filter``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from onnxprune.errors import UsageError, require_finite
from onnxprune.methods.budget import rounded_keep
from onnxprune.methods.registry import Context, register
from onnxprune.methods.rounds import RoundRun
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel
from onnxprune.training import finetune
from onnxprune.training.loop import Hooks, progress, train


@dataclass(frozen=True)
class PpOptions:
    """The options of the pp method, with their defaults."""

    tolerance: float = 0.5
    candidates: float = 0.1
    strength: float = 1.0
    threshold: float = 0.2
    epochs_per_round: int = 1
    rounds: int = 30
    patience: int = 2
    final_epochs: int = 2

    def __post_init__(self) -> None:
        require_finite(tolerance=self.tolerance, candidates=self.candidates,
                       strength=self.strength, threshold=self.threshold)
        if self.tolerance < 0:
            raise UsageError(f"--tolerance must be >= 0 accuracy points, got {self.tolerance}")
        if not 0 < self.candidates <= 1:
            raise UsageError(f"--candidates must be in (0, 1], got {self.candidates}")
        if self.strength < 0 or self.threshold < 0:
            raise UsageError("--strength and --threshold must be >= 0")
        if self.epochs_per_round < 1 or self.rounds < 1 or self.patience < 0:
            raise UsageError("--epochs-per-round and --rounds must be >= 1, --patience >= 0")
        if self.final_epochs < 0:
            raise UsageError(f"final_epochs must be >= 0, got {self.final_epochs}")


@dataclass(frozen=True)
class Decision:
    """What the controller tells the next round: how hard to prune, or to stop."""

    strength: float
    threshold: float
    prune: bool
    stop: bool = False


class Controller:
    """PRC: the next round's strength and threshold from the tolerance left.

    ``tolerance`` is a fraction (0.005 for half a point). :meth:`step` takes the drop in
    validation quality after a round, as a fraction of the original's.
    """

    def __init__(self, tolerance: float, strength: float, threshold: float,
                 patience: int) -> None:
        self.tolerance, self.strength, self.threshold = tolerance, strength, threshold
        self.patience = patience
        self.recovering = 0

    def first(self) -> Decision:
        """The first round prunes at full strength: all the tolerance is left."""
        return Decision(self.strength, self.threshold, prune=True)

    def step(self, drop: float) -> Decision:
        """Decide the next round from the last round's drop."""
        left = self.tolerance - drop
        if left >= 0:
            self.recovering = 0
            scale = 1.0 if self.tolerance == 0 else max(0.25, min(1.0, left / self.tolerance))
            return Decision(self.strength * scale, self.threshold * scale, prune=True)
        self.recovering += 1
        return Decision(0.0, 0.0, prune=False, stop=self.recovering > self.patience)


class CandidatePenalty(Hooks):
    """AFP's L1 term on the round's candidate filters, scaled per producer weight.

    ``coefficients[name]`` multiplies the L1 norm of the candidate rows of weight ``name``
    (a 0/1 mask of the same shape picks them).
    """

    def __init__(self, picks: dict[str, torch.Tensor], coefficients: dict[str, float]) -> None:
        self.picks, self.coefficients = picks, coefficients

    def extra_loss(self, model: ShadowModel) -> torch.Tensor:
        """The weighted L1 norm of the candidates' weights, re-inserted BatchNorms folded in.

        A Conv followed by BatchNorm is blind to its weights' scale; the folded weight is the
        filter's real strength, and what export writes.
        """
        values = model.folded_values()
        return sum(c * (values[n] * self.picks[n]).abs().sum()
                   for n, c in self.coefficients.items())


@register("pp")
class PlayAndPrune:
    """Play and Prune: remove filters round by round while accuracy stays within tolerance."""

    name: str
    records = "rounds"
    trains = True
    needs_data = True
    options: frozenset[str] = frozenset(PpOptions.__dataclass_fields__)

    def run(self, ctx: Context) -> Plan:
        """Prune rounds under the controller, then round the widths and fine-tune."""
        return _Run(ctx, PpOptions(**ctx.options)).run()


class _Run(RoundRun):
    """One Play-and-Prune run: the shadow, the controller, and the rounds so far."""

    def __init__(self, ctx: Context, opts: PpOptions) -> None:
        super().__init__(ctx, "pp")
        self.opts = opts

    def run(self) -> Plan:
        """The rounds, then the final fine-tuning of the best model within the tolerance."""
        opts, ctx = self.opts, self.ctx
        controller = Controller(opts.tolerance / 100, opts.strength, opts.threshold,
                                opts.patience)
        decision, rounds = controller.first(), []
        best = (self._rounded(self._alive()), self.shadow.snapshot())
        bar = progress(opts.rounds, "pp rounds", ctx.train.quiet, unit="round")
        for number in range(1, opts.rounds + 1):
            start = time.perf_counter()
            removed = self._prune_round(decision) if decision.prune else self._recover()
            alive = self._alive()
            plan = self._rounded(alive)
            quality = self._quality()
            drop = finetune.quality_drop(self.baseline, quality)
            rounds.append({"round": number, "state": "prune" if decision.prune else "recover",
                           "removed": removed, **self._size(plan), **quality,
                           "strength": round(decision.strength, 4),
                           "threshold": round(decision.threshold, 4),
                           "widths": {gid: int(a.sum()) for gid, a in alive.items()},
                           "seconds": round(time.perf_counter() - start, 2)})
            bar.update()
            bar.set_postfix({k: rounds[-1][k] for k in ("flops_kept", self.key)})
            if drop <= opts.tolerance / 100:
                best = (plan, self.shadow.snapshot())
                if self._budget_met(plan):
                    break
            decision = controller.step(drop)
            if decision.stop or (decision.prune and not self._removable(alive)):
                break
            if decision.prune and self._stalled(rounds):
                break
        bar.close()
        final = self._finish(*best, opts.final_epochs, opts.tolerance)
        return Plan(keep=dict(best[0].keep), weights=final["weights"],
                    log={"rounds": rounds, "baseline": self.baseline,
                         "tolerance": opts.tolerance, "tolerance_on": self.key,
                         "final": final["log"],
                         "original_widths": {gid: g.size
                                             for gid, g in self.filters.groups.items()}})

    # -- one round -----------------------------------------------------------------------
    def _prune_round(self, decision: Decision) -> int:
        """AFP: train with L1 on the candidates, then zero those under the threshold."""
        alive = self._alive()
        picks = self._candidates(alive)
        train(self.shadow, self.ctx.data, self._config(self.opts.epochs_per_round),
              teacher=self.teacher, hooks=[self._penalty(picks, alive, decision.strength)])
        with torch.no_grad():
            values = self._values()
            keep, removed = {}, 0
            for gid, cand in picks.items():
                scores = self.filters.scores(values, gid, among=alive[gid])
                gone = cand & (scores < decision.threshold)
                limit = int(alive[gid].sum()) - 1  # a group keeps one channel
                if int(gone.sum()) > limit:
                    order = torch.argsort(scores.masked_fill(~gone, math.inf), stable=True)
                    gone = torch.zeros_like(gone)
                    gone[order[:limit]] = True
                keep[gid] = alive[gid] & ~gone
                removed += int(gone.sum())
            self._mask(keep)
        return removed

    def _recover(self) -> int:
        """The play: train without the L1 term and remove nothing."""
        train(self.shadow, self.ctx.data, self._config(self.opts.epochs_per_round),
              teacher=self.teacher)
        return 0

    def _candidates(self, alive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per group, the lowest-scoring ``candidates`` fraction of the live channels."""
        values, picks = self._values(), {}
        for gid, live in alive.items():
            n = min(math.ceil(self.opts.candidates * int(live.sum())), int(live.sum()) - 1)
            scores = self.filters.scores(values, gid, among=live).masked_fill(~live, math.inf)
            pick = torch.zeros_like(live)
            pick[torch.argsort(scores, stable=True)[:max(n, 0)]] = True
            picks[gid] = pick
        return picks

    def _penalty(self, picks: dict[str, torch.Tensor], alive: dict[str, torch.Tensor],
                 strength: float) -> CandidatePenalty:
        """The L1 term, scaled so ``strength`` 1 wears a mean weight to zero in one round."""
        values = self._values()
        chosen = self.filters.masks(values, {gid: ~p for gid, p in picks.items()})
        live = self.filters.masks(values, alive)
        reach = self._reach(self.opts.epochs_per_round)
        picks_mask, coefficients = {}, {}
        for n in self.names:
            candidates = 1 - chosen[n]
            if not bool(candidates.any()):
                continue
            weights = values[n].abs()[live[n] > 0]
            mean = float(weights.mean()) if weights.numel() else 0.0
            picks_mask[n] = candidates
            coefficients[n] = strength * mean / reach
        return CandidatePenalty(picks_mask, coefficients)

    # -- helpers -------------------------------------------------------------------------
    def _rounded(self, alive: dict[str, torch.Tensor]) -> Plan:
        """The live channels, each group topped up to a multiple of ``round_to``.

        The top-up takes removed channels back by index; their weights are zero, so the
        function does not change until the final fine-tuning trains them.
        """
        keep = {}
        for gid, live in alive.items():
            k = rounded_keep(int(live.sum()), live.numel(), self.ctx.round_to)
            order = torch.argsort((~live).to(torch.int8), stable=True)
            kept = torch.zeros_like(live)
            kept[order[:k]] = True
            keep[gid] = kept
        return self.filters.plan(keep)

    def _removable(self, alive: dict[str, torch.Tensor]) -> bool:
        return any(int(a.sum()) > 1 for a in alive.values())

    def _stalled(self, rounds: list[dict[str, Any]]) -> bool:
        """True after ``patience + 1`` pruning rounds in a row that removed nothing."""
        recent = rounds[-(self.opts.patience + 1):]
        return (len(recent) == self.opts.patience + 1
                and all(r["state"] == "prune" and r["removed"] == 0 for r in recent))
