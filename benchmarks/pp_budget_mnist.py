"""pp to a FLOPs budget with default rounding, against magnitude and filter ADMM, on MNIST.

The user's run from issue 16: a model trained on the MNIST split, then ``--max-flops 0.25
--epochs 3`` with every other option at its default (``--round-to`` is this CPU's channel
block), for ``pp``, ``magnitude`` and ``admm --granularity filter``. Each reference is the VGG
or ResNet sample fine-tuned dense for 5 epochs on the first 8,000 digits of
../shared/data/mnist (``mnist_split.reference``); every method gets those 8,000 digits (and
holds out its seeded 10 % to validate on) and is scored in onnxruntime on the last 2,000.
Seconds are each run's wall time, and "x magnitude" their ratio to magnitude's in the same
process. ``--pp`` adds pp runs with other options, e.g. ``--pp budget_rounds=6``.

    python benchmarks/pp_budget_mnist.py [--models vgg_bn resnet] [--max-flops 0.25]
        [--epochs 3] [--methods magnitude admm pp] [--pp budget_rounds=6 ...]

With ``--max-flops 1 --methods --pp tolerance=0.5 tolerance=0.5,margin=1`` it compares the
tolerance judged on the plain drop and with a margin of standard errors, on a validation split
the reference was trained on (``--reference-epochs 20`` memorises it).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import mnist_split

from onnxprune import api
from onnxprune.training.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["vgg_bn", "resnet"])
    parser.add_argument("--max-flops", type=float, default=0.25,
                        help="the budget; 1 gives none (pp then prunes to its tolerance)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pp", nargs="*", default=[], metavar="OPTION=VALUE",
                        help="extra pp runs, each with these options")
    parser.add_argument("--methods", nargs="*", default=["magnitude", "admm", "pp"])
    parser.add_argument("--reference-epochs", type=int, default=5,
                        help="dense epochs of the reference; many memorise its training split, "
                             "the validation split the methods hold out of it included")
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, test = mnist_split.load(args.mnist)
    print(f"MNIST split 8000/2000, --max-flops {args.max_flops}, --epochs {args.epochs}, "
          "default --round-to")
    print("| model | method | FLOPs kept | budget met | test accuracy | seconds | x magnitude "
          "| rounds | stopped |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    runs: list[tuple[str, str, dict[str, Any]]] = []
    for name in args.models:
        runs += [(name, m, {"granularity": "filter"} if m == "admm" else {})
                 for m in args.methods]
        runs += [(name, "pp", _options(text)) for text in args.pp]
    references, magnitude_seconds, times = {}, {}, []
    for name, method, options in runs:
        if name not in references:
            references[name] = mnist_split.reference(name, train_set, args.reference_epochs)
            print(f"| {name} | reference (dense, {args.reference_epochs} epochs) | 1.000 | | "
                  f"{evaluate(references[name], test)['accuracy']:.4f} | | | | |", flush=True)
        start = time.perf_counter()
        result = api.prune(references[name], method,
                           max_flops=None if args.max_flops >= 1 else args.max_flops,
                           data=train_set, epochs=args.epochs, quiet=True, **options)
        seconds = time.perf_counter() - start
        if method == "magnitude" and not options:
            magnitude_seconds[name] = seconds
        report = result.report
        label = " ".join([method, *(f"--{k.replace('_', '-')} {v}" for k, v in options.items())])
        ratio = (f"{seconds / magnitude_seconds[name]:.1f}x" if name in magnitude_seconds
                 else "")
        print(f"| {name} | {label} | {report['after']['flops'] / report['before']['flops']:.3f} "
              f"| {report.get('budget_met')} | {evaluate(result.model, test)['accuracy']:.4f} "
              f"| {seconds:.0f} | {ratio} | {len(report.get('rounds', [])) or ''} "
              f"| {report.get('stopped', '')} |", flush=True)
        if method == "pp":
            times.append(f"{label} on {name}: {_time_split(report, seconds)}; validation "
                         f"{report['baseline']} before, drops judged "
                         f"{[r['drop_judged'] for r in report['rounds']]}; "
                         f"warnings {report.get('method_warnings')}")
    print("\nwhere pp's time goes:", *times, sep="\n- ")


def _time_split(report: dict[str, Any], seconds: float) -> str:
    """Where a pp run's seconds went.

    Its rounds (each a masked full-width epoch), its final fine-tuning, the ``--epochs``
    fine-tuning, and the rest (analysis, scoring, export and checks).
    """
    rounds = [r["seconds"] for r in report["rounds"]]
    final = report["final"]["seconds"]
    tuned = (report.get("training") or {}).get("seconds", 0.0)
    rest = seconds - sum(rounds) - final - tuned
    return (f"rounds {sum(rounds):.0f} s ({', '.join(f'{r:.0f}' for r in rounds)}), final "
            f"fine-tuning {final:.0f} s, --epochs fine-tuning {tuned:.0f} s, the rest {rest:.0f} s")


def _options(text: str) -> dict[str, Any]:
    """``key=value`` pairs (values read as JSON when they parse) as keyword options."""
    found = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        try:
            found[key] = json.loads(value)
        except json.JSONDecodeError:
            found[key] = value
    return found


if __name__ == "__main__":
    main()
