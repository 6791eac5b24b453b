"""Frequency-domain pruning (fdp) against spatial ADMM at the same sparsity and epochs, on MNIST.

Each sample is first fine-tuned dense for 5 epochs on the first 8,000 digits of
../shared/data/mnist (the reference); every method then prunes the reference to
``--sparsity`` of its weights (the first and last layers three times denser, as both methods
do by default) with ``--epochs`` epochs of training on the same digits:

- ``fdp`` with its defaults (bands on): ``3/4`` of the epochs with dynamic masks, the rest
  with the masks frozen;
- ``fdp --no-bands``: one rate for every frequency band (the ablation);
- ``admm`` at weight level: its progressive stages, each of (1 ADMM iteration of E/2S epochs
  + E/2S epochs of masked retraining) for S stages, so it trains as many epochs.

Accuracy is onnxruntime's on the last 2,000 digits. Compression is dense weights / kept
coefficients (biases excluded). Bytes: the file as written (compact storage), and the same
weights with every sparse tensor in ONNX's ``sparse_initializer`` instead (12 bytes per kept
float), and per kept weight. Speed is onnxruntime CPU (1 thread, batch 32), the written model
against the dense reference in the same process; session creation is the written file's
(rebuilding its weights) over the reference's, median of 5.

    python benchmarks/fdp_mnist.py [--models lenet5 resnet vgg_bn] [--sparsity 0.9]
        [--epochs 8] [--methods fdp fdp-no-bands admm] [--band-ratio R]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import mnist_split
import onnx
import onnxruntime as ort

from onnxprune import api, metrics, sparse
from onnxprune.methods.admm import stage_densities
from onnxprune.training.evaluation import evaluate

METHODS = ("fdp", "fdp-no-bands", "admm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["lenet5", "resnet", "vgg_bn"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--band-ratio", type=float, default=None,
                        help="fdp's --band-ratio (default: fdp's own)")
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, test = mnist_split.load(args.mnist)
    print(f"MNIST split 8000/2000, sparsity {args.sparsity}, {args.epochs} epochs each")
    print("| model | method | test accuracy | compression | theoretical speedup | bytes "
          "| bytes, ONNX sparse | bytes per kept weight | speed vs dense | session creation "
          "| seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        reference = mnist_split.reference(name, train_set)
        base = evaluate(reference, test)["accuracy"]
        print(f"| {name} | reference (dense, 5 epochs) | {base:.4f} | 1.00x | | "
              f"{len(reference.SerializeToString()):,} | | 4.0 | 1.00x | 1.00x | |", flush=True)
        for method in args.methods:
            start = time.perf_counter()
            result = _prune(method, reference, train_set, args.sparsity, args.epochs,
                            args.band_ratio)
            _row(name, method, result, reference, test, time.perf_counter() - start)


def _prune(method: str, reference: onnx.ModelProto, data: Any, sparsity: float,
           epochs: int, band_ratio: float | None) -> api.PruneResult:
    """One method to ``sparsity`` in ``epochs`` epochs of training."""
    if method.startswith("fdp"):
        retrain = max(1, epochs // 4)
        ratio = {} if band_ratio is None else {"band_ratio": band_ratio}
        return api.prune(reference, "fdp", sparsity=sparsity, data=data, quiet=True,
                         prune_epochs=epochs - retrain, retrain_epochs=retrain,
                         bands=method == "fdp", **ratio)
    per = max(1, epochs // (2 * len(stage_densities(1 - sparsity))))
    return api.prune(reference, "admm", sparsity=sparsity, data=data, quiet=True,
                     iterations=1, epochs_per_iteration=per, retrain_epochs=per)


def _row(name: str, method: str, result: api.PruneResult, reference: onnx.ModelProto,
         test: Any, seconds: float) -> None:
    written = sparse.store(result.model)
    onnx_sparse = sparse.store(result.model, formats=(sparse.SPARSE,))
    chosen = [s for s in sparse.describe(result.model) if s.format != sparse.DENSE]
    kept, stored = sum(s.kept for s in chosen), sum(s.nbytes for s in chosen)
    accuracy = evaluate(result.model, test)["accuracy"]
    dense_t, small_t = metrics.latency([reference, written], batch=32, runs=30, threads=1)
    report = result.report
    compression = report.get("compression") or report["stages"][-1]["compression"]
    speedup = report.get("theoretical_speedup", "")
    print(f"| {name} | {method} | {accuracy:.4f} | {compression:.1f}x | {speedup} "
          f"| {written.ByteSize():,} | {onnx_sparse.ByteSize():,} "
          f"| {stored / max(kept, 1):.2f} | {dense_t.median_ms / small_t.median_ms:.2f}x "
          f"| {_creation(written) / _creation(reference):.2f}x | {seconds:.0f} |", flush=True)


def _creation(model: onnx.ModelProto) -> float:
    """Median seconds to create an onnxruntime session of ``model`` (5 tries)."""
    data = model.SerializeToString()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()
