"""Play and Prune to a 0.5-point tolerance on MNIST, against magnitude and filter ADMM.

VGG and ResNet samples (trained on the scikit-learn digits), each first fine-tuned dense for 5
epochs on the first 8,000 digits of ../shared/data/mnist: that is the reference. ``pp`` gets
the same 8,000 digits and holds out a seeded 10 % of them to read accuracy every round (never
the test digits), with ``--tolerance``. Then ``magnitude`` (+ fine-tuning) and ``admm
--granularity filter`` prune the reference to the FLOPs pp reached, with as many training
epochs as pp used. Accuracy is onnxruntime's on the last 2,000 digits; speedup is onnxruntime
CPU, one thread, batch 32, pruned against the reference in the same process; seconds are each
run's wall time on this machine.

    python benchmarks/pp_mnist.py [--tolerance 0.5] [--models vgg_bn resnet] [--rounds 15]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import mnist_split

from onnxprune import api, metrics
from onnxprune.training.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--models", nargs="*", default=["vgg_bn", "resnet"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--candidates", type=float, default=None)
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, test = mnist_split.load(args.mnist)
    controller = {k: v for k, v in (("strength", args.strength), ("threshold", args.threshold),
                                    ("candidates", args.candidates)) if v is not None}
    print(f"MNIST split 8000/2000, tolerance {args.tolerance} points, pp options {controller}")
    print("| model | method | test accuracy | loss (points) | FLOPs kept | params kept "
          "| speedup 1t | epochs | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        reference = mnist_split.reference(name, train_set)
        base = evaluate(reference, test)["accuracy"]
        print(f"| {name} | reference (dense, 5 epochs) | {base:.4f} | | 1.000 | 1.000 | 1.00x "
              "| 5 | |", flush=True)

        start = time.perf_counter()
        pp = api.prune(reference, "pp", tolerance=args.tolerance, data=train_set, quiet=True,
                       rounds=args.rounds, **controller)
        seconds = {"pp": time.perf_counter() - start}
        epochs = len(pp.report["rounds"]) + pp.report["final"]["epochs"]
        target = pp.report["after"]["flops"] / pp.report["before"]["flops"]
        rounds = pp.report["rounds"]
        for r in rounds:
            print(f"  round {r['round']} {r['state']}: removed {r['removed']}, FLOPs kept "
                  f"{r['flops_kept']:.3f}, validation {r['accuracy']:.4f}", flush=True)
        _row(name, "pp", pp, reference, test, base, epochs, seconds["pp"])
        runs = {}
        if target < 1:
            common = dict(max_flops=target, data=train_set, quiet=True)
            start = time.perf_counter()
            runs["magnitude + fine-tuning"] = api.prune(reference, "magnitude", epochs=epochs,
                                                        **common)
            seconds["magnitude + fine-tuning"] = time.perf_counter() - start
            per_stage = max(1, epochs // 6)
            start = time.perf_counter()
            runs["admm --granularity filter"] = api.prune(
                reference, "admm", granularity="filter", iterations=1,
                epochs_per_iteration=per_stage, retrain_epochs=per_stage, **common)
            seconds["admm --granularity filter"] = time.perf_counter() - start
        trained = {"pp": epochs, "magnitude + fine-tuning": epochs,
                   "admm --granularity filter": 6 * max(1, epochs // 6)}
        for label, result in runs.items():
            _row(name, label, result, reference, test, base, trained[label], seconds[label])
        print(f"pp {name}: {len(rounds)} rounds "
              f"({sum(r['state'] == 'recover' for r in rounds)} recovering), validation "
              f"{pp.report['baseline']['accuracy']:.4f} -> {pp.report['final']['accuracy']:.4f}",
              flush=True)


def _row(name: str, label: str, result: api.PruneResult, reference: Any, test: Any,
         base: float, epochs: int, seconds: float) -> None:
    after, before = result.report["after"], result.report["before"]
    accuracy = evaluate(result.model, test)["accuracy"]
    ref_t, small_t = metrics.latency([reference, result.model], batch=32, runs=30, threads=1)
    print(f"| {name} | {label} | {accuracy:.4f} | {100 * (base - accuracy):.2f} "
          f"| {after['flops'] / before['flops']:.3f} | {after['params'] / before['params']:.3f} "
          f"| {ref_t.median_ms / small_t.median_ms:.2f}x | {epochs} | {seconds:.0f} |",
          flush=True)


if __name__ == "__main__":
    main()
