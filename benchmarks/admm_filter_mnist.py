"""Filter-level ADMM against magnitude pruning at 25 % FLOPs, same epochs, on real MNIST.

VGG and ResNet samples, MNIST split of ../shared/data/mnist (first 8,000 to train, last 2,000
to test). admm --granularity filter trains 3 stages of (iterations x epochs + retrain epochs);
magnitude prunes in one step and fine-tunes for the same total number of epochs. Both round
channels to this CPU's block and write dense ONNX models; accuracy is onnxruntime's on the
test digits, speedup is onnxruntime CPU, one thread, batch 32, same process.

    python benchmarks/admm_filter_mnist.py [--target 0.25] [--models vgg_bn resnet]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mnist_split

from onnxprune import api, metrics, modelio

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.25)
    parser.add_argument("--models", nargs="*", default=["vgg_bn", "resnet"])
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per ADMM iteration")
    parser.add_argument("--retrain-epochs", type=int, default=1)
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train, test = mnist_split.load(args.mnist)
    epochs = 3 * (args.iterations * args.epochs + args.retrain_epochs)
    print(f"MNIST split 8000/2000, target {args.target} of FLOPs, {epochs} epochs each")
    print("| model | method | accuracy | FLOPs kept | speedup 1t |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        original = modelio.load(ROOT / "sample_models" / f"{name}.onnx")
        common = dict(max_flops=args.target, data=train, val_data=test, quiet=True)
        runs = {
            "magnitude + fine-tuning": api.prune(original, "magnitude", epochs=epochs, **common),
            "admm --granularity filter": api.prune(
                original, "admm", granularity="filter", iterations=args.iterations,
                epochs_per_iteration=args.epochs, retrain_epochs=args.retrain_epochs, **common),
        }
        for label, result in runs.items():
            kept = result.report["after"]["flops"] / result.report["before"]["flops"]
            base, small = metrics.latency([original, result.model], batch=32, runs=30,
                                          threads=1)
            print(f"| {name} | {label} | {result.report['after']['accuracy']:.4f} | {kept:.3f} "
                  f"| {base.median_ms / small.median_ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
