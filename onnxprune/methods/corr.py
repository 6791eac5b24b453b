"""The ``corr`` method: prune one filter of each highly correlated pair (Singh et al., WACV 2020).

Rounds ("episodes"), each on the masked full-width shadow (:mod:`onnxprune.methods.rounds`):

1. In every group, rank the disjoint pairs of live channels by the correlation of their
   filters, all producers of the group counting together (:mod:`onnxprune.methods.correlation`).
2. Decide how many pairs each group gives up this round (below), and take that many of its
   most correlated pairs.
3. Train ``epochs_per_round`` epochs with the correlation term on those pairs only.
4. Drop one channel of each pair: the one with the smaller L1 norm (over its group's mean,
   as ``pp`` scores filters), after folding its contribution into its partner's consumers
   (``fold``, :func:`~onnxprune.methods.correlation.fit_folds`). The validation quality right
   after the drop is logged with and without the fold.
5. Fine-tune ``finetune_epochs`` epochs; read the validation quality.

*How many per round.* A group wants ``pairs`` channels per round (a fraction of its live
channels when below 1, else a count). Its width always stays one the written model can have
(a multiple of ``--round-to``, or its full width), so every round changes the written widths:
a group drops a whole block when its wants add up to one, and when no group is due, the most
nearly due one drops a block anyway. With a budget, a round also cuts at least its share of
what is left (the remaining FLOPs ratio spread evenly, geometrically, over the rounds left, so
the last round reaches the budget), adding blocks where it cuts the least of a group, and
then gives blocks back, from the group it cuts most, while the budget still holds: the run
ends at or just under the budget, as close as the blocks allow. A budget no width can meet is
refused before any training.

*When it stops.* When the budget (``--max-flops`` / ``--max-params``) is met; when a round
leaves the validation quality more than ``tolerance`` points below the original's (the run
keeps the smallest model within it, like ``pp``); when no group can lose a block; or after
``rounds`` rounds. ``tolerance`` defaults to 0.5 without a budget and to none with one. The
kept model is fine-tuned ``final_epochs`` more. The report says whether the budget was met
(``budget_met``) and why the rounds stopped; a run that misses its budget or removes nothing
says so in ``method_warnings``.

Without labels the quality is top-1 agreement with the original (which training distils
from); without data the method refuses.

``term`` and ``strength`` come from one round on the ResNet and VGG samples with all 1,797
digits (``pairs`` 0.25, ``--round-to 1``, no fine-tuning; ResNet / VGG): at strength 1, 4 and
10 the linear term took the pairs' mean correlation from 0.28 / 0.39 to 0.64 / 0.77, 0.93 /
0.99 and 0.97 / 0.97, the exp form only to 0.47 / 0.54, 0.65 / 0.67 and 0.79 / 0.82 (it eases
as the pairs correlate). At strength 30 the term itself began to cost accuracy before the drop
(0.983 / 0.994, against 0.994 / 1.0 at 10), hence ``linear`` and 10. At the end of whole runs
(``benchmarks/corr_mnist.py``) exp won on vgg_bn (0.9915 against 0.9875) and lost on resnet
and LeNet-5 (0.9885 against 0.9935, 0.9825 against 0.9855). ``pairs`` 0.1 is our
notes' reading of the paper.

The fold is on by default, decided by ``benchmarks/corr_mnist.py`` (MNIST split, 0.25 of the
FLOPs, 6 epochs; the README has the table). Its first version added the dropped column's
constant to every output's bias, masked outputs included; behind a re-inserted BatchNorm
whose variance had collapsed on such a constant channel that was amplified ~300x, and runs
diverged from the second round on. Fixed, it is ahead right after every drop (mean
validation accuracy after the drops 0.73 against 0.11 on resnet, 0.97 against 0.92 on
LeNet-5) and at the end: test accuracy 0.9875 against 0.9855 on vgg_bn, 0.9935 against
0.9885 on resnet, level on LeNet-5 (0.9855 against 0.9860).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from onnxprune.errors import NothingToPruneError, UsageError, require_finite
from onnxprune.methods.correlation import (
    TERMS,
    CorrelationTerm,
    apply_folds,
    correlation_matrix,
    fit_folds,
    pair_correlations,
    rank_pairs,
    restore,
)
from onnxprune.methods.registry import Context, register
from onnxprune.methods.rounds import RoundRun
from onnxprune.plan import Plan
from onnxprune.training import finetune
from onnxprune.training.loop import progress, train

Ranked = dict[str, list[tuple[int, int, float]]]


@dataclass(frozen=True)
class CorrOptions:
    """The options of the corr method, with their defaults."""

    pairs: float = 0.1
    strength: float = 10.0
    term: str = "linear"
    fold: bool = True
    tolerance: float | None = None
    margin: float = 0.0
    epochs_per_round: int = 1
    finetune_epochs: int = 1
    rounds: int = 30
    final_epochs: int = 2

    def __post_init__(self) -> None:
        require_finite(pairs=self.pairs, strength=self.strength, tolerance=self.tolerance,
                       margin=self.margin)
        if not (0 < self.pairs < 1 or (self.pairs >= 1 and float(self.pairs).is_integer())):
            raise UsageError(f"--pairs must be a fraction in (0, 1) or a whole count, got "
                             f"{self.pairs}")
        if self.term not in TERMS:
            raise UsageError(f"--term must be one of {', '.join(TERMS)}, got {self.term}")
        if (self.strength < 0 or self.margin < 0
                or (self.tolerance is not None and self.tolerance < 0)):
            raise UsageError("--strength, --margin and --tolerance must be >= 0")
        if self.epochs_per_round < 1 or self.rounds < 1:
            raise UsageError("--epochs-per-round and --rounds must be >= 1")
        if self.finetune_epochs < 0 or self.final_epochs < 0:
            raise UsageError("--finetune-epochs and final_epochs must be >= 0")

    def wanted(self, live: int) -> int:
        """How many channels a group of ``live`` channels wants to drop in one round."""
        return math.ceil(self.pairs * live) if self.pairs < 1 else int(self.pairs)


@register("corr")
class FilterCorrelation:
    """Filter correlation: drop one filter of each most correlated pair, round by round."""

    name: str
    records = "rounds"
    trains = True
    needs_data = True
    options: frozenset[str] = frozenset(CorrOptions.__dataclass_fields__)

    def run(self, ctx: Context) -> Plan:
        """Correlate, drop and fine-tune in rounds, then fine-tune the model kept."""
        return _Run(ctx, CorrOptions(**ctx.options)).run()


class _Run(RoundRun):
    """One corr run: the shadow, what each group still owes, and the rounds so far."""

    def __init__(self, ctx: Context, opts: CorrOptions) -> None:
        super().__init__(ctx, "corr", opts.tolerance, opts.margin)
        self.opts = opts

    def run(self) -> Plan:
        """The rounds, then the final fine-tuning of the model kept."""
        opts = self.opts
        alive = self._alive()
        best = (self.filters.plan(alive), self.shadow.snapshot())
        rounds: list[dict[str, Any]] = []
        stopped = f"--rounds {opts.rounds} reached"
        bar = progress(opts.rounds, "corr rounds", self.ctx.train.quiet, unit="round")
        for number in range(1, opts.rounds + 1):
            start = time.perf_counter()
            ranked = self._ranked(alive)
            removal = self._removals(alive, {gid: opts.wanted(int(a.sum()))
                                             for gid, a in alive.items()},
                                     {gid: len(r) for gid, r in ranked.items()},
                                     opts.rounds - number + 1)
            if not any(removal.values()):
                if number == 1:
                    raise NothingToPruneError(
                        "corr: no channel group can lose a block of --round-to "
                        f"{self.ctx.round_to} channels (a group needs two live filters to "
                        "pair); a smaller --round-to lets groups shrink")
                stopped = "no group can lose another block of channels"
                break
            pairs = {gid: torch.tensor([p[:2] for p in ranked[gid][:n]])
                     for gid, n in removal.items() if n}
            alive, record = self._round(alive, pairs)
            plan = self.filters.plan(alive)
            quality = self._quality()
            rounds.append({"round": number, **record, **self._size(plan), **quality,
                           "widths": {gid: int(a.sum()) for gid, a in alive.items()},
                           "seconds": round(time.perf_counter() - start, 2)})
            bar.update()
            bar.set_postfix({k: rounds[-1][k] for k in ("flops_kept", self.key)})
            drop = self._drop(quality)
            if self.tolerance is not None and drop > self.tolerance / 100:
                stopped = f"round {number} fell more than {self.tolerance} points"
                break
            best = (plan, self.shadow.snapshot())
            if self._budget_met(plan):
                stopped = "budget met"
                break
        bar.close()
        final = self._finish(*best, opts.final_epochs, self.tolerance)
        return Plan(keep=dict(best[0].keep), weights=final["weights"],
                    log={"rounds": rounds, "baseline": self.baseline,
                         "tolerance": self.tolerance, "tolerance_on": self.key,
                         "term": opts.term, "fold": opts.fold, "stopped": stopped,
                         **self._outcome(best[0], stopped), "final": final["log"],
                         "original_widths": {gid: g.size
                                             for gid, g in self.filters.groups.items()}})

    # -- one round -----------------------------------------------------------------------
    def _round(self, alive: dict[str, torch.Tensor],
               pairs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """Train with the term on ``pairs``, drop one of each (folded), fine-tune."""
        opts, ctx = self.opts, self.ctx
        before = self._correlation(pairs)
        term = CorrelationTerm(self.filters, pairs, opts.term, opts.strength,
                               self._reach(opts.epochs_per_round), self._raw())
        train(self.shadow, ctx.data, self._config(opts.epochs_per_round),
              teacher=self.teacher, hooks=[term])
        after = self._correlation(pairs)
        trained = self._quality().get(self.key)
        chosen = self._roles(alive, pairs)
        batches = finetune.calibration_batches(ctx.data, ctx.train,
                                               torch.device(ctx.train.device))
        folds, unfolded = fit_folds(self.shadow, ctx.graph, self.filters.groups, chosen,
                                    batches)
        alive = {gid: a.clone() for gid, a in alive.items()}
        for gid, both in chosen.items():
            alive[gid][[drop for _, drop in both]] = False
        self._mask(alive)
        plain = self._quality().get(self.key)
        saved = apply_folds(self.shadow, folds)
        folded = self._quality().get(self.key)
        if not opts.fold:
            restore(self.shadow, saved)
        if opts.finetune_epochs:
            train(self.shadow, ctx.data, self._config(opts.finetune_epochs),
                  teacher=self.teacher)
        return alive, {"pairs": {gid: len(p) for gid, p in pairs.items()},
                       "removed": sum(len(p) for p in pairs.values()),
                       "correlation_before": round(before, 4),
                       "correlation_after": round(after, 4),
                       "before_drop": trained, "after_drop": {"fold": folded, "no_fold": plain},
                       "folded_consumers": len(folds) if opts.fold else 0,
                       "unfolded_consumers": unfolded}

    def _raw(self) -> dict[str, torch.Tensor]:
        """The producers' parameters as they train (Pearson ignores the BatchNorm scale)."""
        return {n: self.shadow.parameter(n).detach() for n in self.names}

    def _correlation(self, pairs: dict[str, torch.Tensor]) -> float:
        """The mean |correlation| of ``pairs`` over pairs and producers."""
        raw = self._raw()
        found = [pair_correlations(self.filters, raw, gid, p).abs().mean(0)
                 for gid, p in pairs.items()]
        return float(torch.cat(found).mean())

    def _roles(self, alive: dict[str, torch.Tensor],
               pairs: dict[str, torch.Tensor]) -> dict[str, list[tuple[int, int]]]:
        """``(keep, drop)`` per pair: the channel with the smaller normalised L1 goes."""
        values, out = self._values(), {}
        for gid, p in pairs.items():
            scores = self.filters.scores(values, gid, among=alive[gid])
            out[gid] = [(a, b) if scores[a] >= scores[b] else (b, a) for a, b in p.tolist()]
        return out

    def _ranked(self, alive: dict[str, torch.Tensor]) -> Ranked:
        """Per group, its disjoint pairs of live channels, most correlated first."""
        raw, out = self._raw(), {}
        for gid, live in alive.items():
            group, channels = self.filters.groups[gid], torch.nonzero(live).flatten()
            if len(channels) < 2:
                out[gid] = []
                continue
            matrix = correlation_matrix(self.filters, raw, gid, channels)
            out[gid] = rank_pairs(matrix, channels.tolist(), group.size, group.blocks)
        return out
