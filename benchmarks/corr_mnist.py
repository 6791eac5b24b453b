"""Filter correlation at 25 % FLOPs on MNIST, with and without the fold, against the others.

VGG, ResNet and LeNet-5 samples (trained on the scikit-learn digits), each first fine-tuned
dense for 5 epochs on the first 8,000 digits of ../shared/data/mnist: that is the reference.
Every method then prunes the reference to ``--target`` of its FLOPs with the same number of
training epochs, on the same 8,000 digits (a seeded 10 % held out for the methods' own
validation; never the test digits):

- ``corr-fold`` (``--fold``), ``corr-no-fold`` (the default since this benchmark) and
  ``corr-exp`` (``--term exp``, default fold):
  ``--rounds`` rounds of ``--epochs-per-round`` epochs with the term (the next round's
  training is the fine-tuning of the last drop: ``--finetune-epochs`` 0), then
  ``--final-epochs``;
- ``magnitude`` (its defaults for fine-tuning on labels), then fine-tuning for as many
  epochs;
- ``admm --granularity filter``: 3 stages of (1 iteration of E/6 epochs + E/6 retraining);
- ``pp`` with the budget, a tolerance that never stops it and strong rounds (half the live
  filters are candidates, strength 3, threshold 0.3, as in its tests) so that it can cut fast,
  as many epochs (it stops at the budget or after its rounds; the FLOPs column says where).

Accuracy is onnxruntime's on the last 2,000 digits; speedup is onnxruntime CPU, one thread,
batch 32, pruned against the reference in the same process; seconds are each run's wall time.
Channels are rounded to ``--round-to`` (default: this CPU's block) except on LeNet-5, whose 6-
and 16-filter layers cannot reach the target in blocks: there every method runs at 1. For each
corr run the mean validation accuracy right after the rounds' drops, with and without the
fold, is printed below the table.

    python benchmarks/corr_mnist.py [--target 0.25] [--models vgg_bn resnet lenet5]
        [--methods corr-fold corr-no-fold corr-exp magnitude admm pp] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import mnist_split
import numpy as np

from onnxprune import api, metrics
from onnxprune.training.evaluation import evaluate

METHODS = ("corr-fold", "corr-no-fold", "corr-exp", "magnitude", "admm", "pp")
UNROUNDED = {"lenet5"}  # layers of 6 and 16 filters: no block rounding reaches the target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--models", nargs="*", default=["vgg_bn", "resnet", "lenet5"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs-per-round", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--final-epochs", type=int, default=3)
    parser.add_argument("--pairs", type=float, default=None)
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--round-to", type=int, default=None)
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, test = mnist_split.load(args.mnist)
    epochs = args.rounds * (args.epochs_per_round + args.finetune_epochs) + args.final_epochs
    corr = dict(rounds=args.rounds, epochs_per_round=args.epochs_per_round,
                finetune_epochs=args.finetune_epochs, final_epochs=args.final_epochs,
                **{k: v for k, v in (("pairs", args.pairs), ("strength", args.strength))
                   if v is not None})
    print(f"MNIST split 8000/2000, target {args.target} of FLOPs, {epochs} epochs each, "
          f"corr options {corr}")
    print("| model | method | test accuracy | FLOPs kept | params kept | speedup 1t | epochs "
          "| seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    notes = []
    for name in args.models:
        reference = mnist_split.reference(name, train_set)
        base = evaluate(reference, test)["accuracy"]
        print(f"| {name} | reference (dense, 5 epochs) | {base:.4f} | 1.000 | 1.000 | 1.00x | 5 "
              "| |", flush=True)
        common = dict(max_flops=args.target, data=train_set, quiet=True,
                      round_to=1 if name in UNROUNDED else args.round_to)
        for method in args.methods:
            start = time.perf_counter()
            result, trained = _prune(method, reference, common, corr, epochs)
            seconds = time.perf_counter() - start
            _row(name, method, result, reference, test, trained, seconds)
            if method.startswith("corr"):
                notes.append(_drops(name, method, result.report))
    print()
    for line in notes:
        print(line)


def _prune(method: str, reference: Any, common: dict[str, Any], corr: dict[str, Any],
           epochs: int) -> tuple[api.PruneResult, int]:
    """Run one method on ``reference``; return the result and the epochs it trained."""
    if method.startswith("corr"):
        variant = {"corr-fold": {"fold": True}, "corr-no-fold": {"fold": False},
                   "corr-exp": {"term": "exp"}}
        return api.prune(reference, "corr", **common, **corr, **variant[method]), epochs
    if method == "magnitude":
        return api.prune(reference, "magnitude", epochs=epochs, **common), epochs
    if method == "admm":
        per_stage = max(1, epochs // 6)
        return api.prune(reference, "admm", granularity="filter", iterations=1,
                         epochs_per_iteration=per_stage, retrain_epochs=per_stage,
                         **common), 6 * per_stage
    final = min(2, epochs - 1)
    return api.prune(reference, "pp", tolerance=100.0, rounds=epochs - final,
                     final_epochs=final, candidates=0.5, strength=3.0, threshold=0.3,
                     **common), epochs


def _row(name: str, label: str, result: api.PruneResult, reference: Any, test: Any,
         epochs: int, seconds: float) -> None:
    after, before = result.report["after"], result.report["before"]
    accuracy = evaluate(result.model, test)["accuracy"]
    ref_t, small_t = metrics.latency([reference, result.model], batch=32, runs=30, threads=1)
    print(f"| {name} | {label} | {accuracy:.4f} | {after['flops'] / before['flops']:.3f} "
          f"| {after['params'] / before['params']:.3f} "
          f"| {ref_t.median_ms / small_t.median_ms:.2f}x | {epochs} | {seconds:.0f} |",
          flush=True)


def _drops(name: str, label: str, report: dict[str, Any]) -> str:
    """One line: per round, validation accuracy right after the drop, with / without fold."""
    rounds = report["rounds"]
    fold = [r["after_drop"]["fold"] for r in rounds]
    plain = [r["after_drop"]["no_fold"] for r in rounds]
    pairs = " ".join("{correlation_before:.2f}->{correlation_after:.2f}".format(**r)
                     for r in rounds)
    return (f"{name} {label}: right after each drop, fold "
            f"{' '.join(f'{v:.3f}' for v in fold)} (mean {np.mean(fold):.3f}), no fold "
            f"{' '.join(f'{v:.3f}' for v in plain)} (mean {np.mean(plain):.3f}); pairs' "
            f"correlation {pairs}; budget met {report['budget_met']}, stopped: "
            f"{report['stopped']}")


if __name__ == "__main__":
    main()
