"""ADMM weight pruning of LeNet-5 on the real MNIST digits, against one-shot magnitude pruning.

The LeNet-5 sample was trained on the scikit-learn digits, so it is first fine-tuned on the
MNIST split (first 8,000 of ../shared/data/mnist to train, last 2,000 to test); that dense model
is the reference. Then:

- admm: progressive ADMM to ``--sparsity`` with ``--tolerance`` 0.5 points, so it stops at the
  last stage within half a point of the reference; the compression it reaches (dense weights /
  non-zeros, biases excluded) is the figure to compare with the paper's 167x on full MNIST.
- magnitude one-shot: each layer's weights cut to the same per-layer density as admm's result
  by magnitude in one step, then retrained with the mask fixed for as many epochs as admm
  trained in all.

    python benchmarks/admm_lenet_mnist.py [--sparsity 0.99] [--iterations 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mnist_split
import numpy as np
import onnx.numpy_helper
import torch

import onnxprune
from onnxprune import sparse
from onnxprune.api import normalize
from onnxprune.methods.admm import project
from onnxprune.shadow import ShadowModel
from onnxprune.training.evaluation import evaluate
from onnxprune.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per ADMM iteration")
    parser.add_argument("--retrain-epochs", type=int, default=4)
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--rho-growth", type=float, default=1.5)
    parser.add_argument("--admm-lr", type=float, default=1e-2)
    parser.add_argument("--layer-sparsity", default="global")
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, test = mnist_split.load(args.mnist)

    dense = ShadowModel(normalize(ROOT / "sample_models" / "lenet5.onnx")[0])
    train(dense, train_set, TrainConfig(epochs=5, lr=0.05, quiet=True))
    reference = dense.export()
    base = evaluate(reference, test)["accuracy"]

    start = time.perf_counter()
    result = onnxprune.prune(reference, "admm", sparsity=args.sparsity, tolerance=0.5,
                             data=train_set, val_data=test, quiet=True,
                             iterations=args.iterations, epochs_per_iteration=args.epochs,
                             retrain_epochs=args.retrain_epochs, rho=args.rho,
                             rho_growth=args.rho_growth, admm_lr=args.admm_lr,
                             layer_sparsity=args.layer_sparsity)
    seconds = time.perf_counter() - start
    kept = [s for s in result.report["stages"] if s.get("kept", True)]
    for s in result.report["stages"]:
        print(s)
    admm_acc = result.report["after"]["accuracy"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    epochs = len(result.report["stages"]) * (args.iterations * args.epochs + args.retrain_epochs)

    oneshot = ShadowModel(reference)
    names = [n for n in oneshot.initializer_names() if oneshot.parameter(n).ndim >= 2]
    with torch.no_grad():
        for n in names:
            keep = int(np.count_nonzero(weights[n]))
            oneshot.set_mask(n, project(oneshot.parameter(n), keep) != 0)
    train(oneshot, train_set, TrainConfig(epochs=epochs, lr=1e-2, cosine=True, quiet=True))
    magnitude_acc = evaluate(oneshot, test)["accuracy"]

    total = sum(weights[n].size for n in names)
    nonzero = sum(int(np.count_nonzero(weights[n])) for n in names)
    print(f"reference (dense, fine-tuned on MNIST): accuracy {base:.4f}, {total} weights")
    print("| method | compression | non-zero weights | accuracy | loss (points) | epochs |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| admm (progressive, tolerance 0.5) | {total / nonzero:.1f}x | {nonzero} | "
          f"{admm_acc:.4f} | {100 * (base - admm_acc):.2f} | {epochs} |")
    print(f"| magnitude one-shot + masked retraining | {total / nonzero:.1f}x | {nonzero} | "
          f"{magnitude_acc:.4f} | {100 * (base - magnitude_acc):.2f} | {epochs} |")
    with tempfile.TemporaryDirectory() as folder:
        result.save(Path(folder) / "admm.onnx")
        small = (Path(folder) / "admm.onnx").stat().st_size
    onnx_sparse = sparse.store(result.model, formats=(sparse.SPARSE,)).ByteSize()
    stored = [s for s in sparse.describe(result.model) if s.format != sparse.DENSE]
    per_kept = sum(s.nbytes for s in stored) / sum(s.kept for s in stored)
    print(f"admm stages kept: {len(kept)} of {len(result.report['stages'])}; {seconds:.0f} s; "
          f"file {reference.ByteSize()} -> {small} bytes ({reference.ByteSize() / small:.1f}x "
          f"smaller; {onnx_sparse} with ONNX sparse tensors only); the sparse weights take "
          f"{per_kept:.1f} bytes per kept weight, subgraphs included")


if __name__ == "__main__":
    main()
