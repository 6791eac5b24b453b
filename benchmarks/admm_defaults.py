"""Weight-level ADMM's defaults: layer rule (uniform / global) and re-inserted BatchNorm, on MNIST.

Each sample is first fine-tuned dense for 5 epochs on the first 8,000 digits of
../shared/data/mnist (the reference); ``admm`` then prunes it to ``--sparsity`` of its weights
with each combination of ``--layer-sparsity`` (uniform: first and last layers 3x denser;
global: one magnitude ranking) and ``--train-batchnorm`` (a BatchNorm after each Conv while
training, folded back), ``--iterations`` ADMM iterations of 1 epoch and 1 epoch of masked
retraining per progressive stage. Accuracy is onnxruntime's on the last 2,000 digits;
compression is dense weights / non-zeros (biases excluded).

    python benchmarks/admm_defaults.py [--models lenet5 resnet vgg_bn] [--sparsity 0.9]
        [--iterations 1]
"""

from __future__ import annotations

import argparse
import time

import mnist_split

from onnxprune import api
from onnxprune.errors import TrainingError
from onnxprune.training.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["lenet5", "resnet", "vgg_bn"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=1)
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, test = mnist_split.load(args.mnist)
    print(f"MNIST split 8000/2000, admm to sparsity {args.sparsity}, {args.iterations} "
          "iteration(s) of 1 epoch + 1 retraining epoch per stage")
    print("| model | layer sparsity | BatchNorm in training | test accuracy | compression "
          "| seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        reference = mnist_split.reference(name, train_set)
        print(f"| {name} | reference (dense, 5 epochs) | | "
              f"{evaluate(reference, test)['accuracy']:.4f} | 1.0x | |", flush=True)
        for rule in ("uniform", "global"):
            for batchnorm in (False, True):
                start = time.perf_counter()
                try:
                    result = api.prune(reference, "admm", sparsity=args.sparsity,
                                       data=train_set, layer_sparsity=rule,
                                       train_batchnorm=batchnorm, quiet=True,
                                       iterations=args.iterations, epochs_per_iteration=1,
                                       retrain_epochs=1)
                except TrainingError as e:
                    outcome = f"{e} |"
                else:
                    outcome = (f"{evaluate(result.model, test)['accuracy']:.4f} "
                               f"| {result.report['stages'][-1]['compression']:.1f}x")
                print(f"| {name} | {rule} | {'on' if batchnorm else 'off'} | {outcome} "
                      f"| {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
