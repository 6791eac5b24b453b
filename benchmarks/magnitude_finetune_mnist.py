"""Magnitude pruning to 25 % FLOPs plus fine-tuning, on the real MNIST digits.

The MNIST test set in ../shared/data/mnist (10,000 digits) is split as the issue fixes it:
the first 8,000 to fine-tune on, the last 2,000 to measure. For each model: accuracy of the
original as shipped and after the same fine-tuning (the samples were trained on the scikit-learn
digits, so MNIST is new to them: the fine-tuned original is the fair baseline), of the pruned
model before and after fine-tuning, FLOPs kept, and onnxruntime CPU speedup (same process,
interleaved, batch 32, one thread).

    python benchmarks/magnitude_finetune_mnist.py [--epochs 3] [--models vgg_bn resnet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mnist_split

from onnxprune import api, metrics, modelio
from onnxprune.training.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--models", nargs="*", default=["vgg_bn", "resnet"])
    mnist_split.add_argument(parser)
    parser.add_argument("--no-train-batchnorm", dest="train_batchnorm", action="store_false",
                        help="fine-tune without re-inserted BatchNorm")
    args = parser.parse_args()
    train, test = mnist_split.load(args.mnist)
    print(f"MNIST split: {len(train)} train, {len(test)} test; {args.epochs} epochs, "
          f"lr {args.lr}, target {args.target} of FLOPs, BatchNorm in training: "
          f"{args.train_batchnorm}")
    print("| model | original acc | original fine-tuned acc | pruned acc | pruned fine-tuned acc "
          "| FLOPs kept | speedup 1t | fine-tune s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        original = modelio.load(ROOT / "sample_models" / f"{name}.onnx")
        common = dict(max_flops=args.target, data=train, val_data=test, quiet=True,
                      train_batchnorm=args.train_batchnorm)
        baseline = api.prune(original, "magnitude", epochs=args.epochs, lr=args.lr,
                             **{**common, "max_flops": 1.0})
        pruned = api.prune(original, "magnitude", **common)
        tuned = api.prune(original, "magnitude", epochs=args.epochs, lr=args.lr, **common)
        kept = tuned.report["after"]["flops"] / tuned.report["before"]["flops"]
        base, small = metrics.latency([original, tuned.model], batch=32, runs=30, threads=1)
        print(f"| {name} | {evaluate(original, test)['accuracy']:.4f} "
              f"| {baseline.report['after']['accuracy']:.4f} "
              f"| {pruned.report['after']['accuracy']:.4f} "
              f"| {tuned.report['after']['accuracy']:.4f} | {kept:.3f} "
              f"| {base.median_ms / small.median_ms:.2f}x "
              f"| {tuned.report['training']['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
