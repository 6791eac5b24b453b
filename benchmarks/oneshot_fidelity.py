"""One-shot magnitude pruning with and without calibration data: fidelity to the original.

For each sample model and FLOPs target, prune with ``magnitude`` (no epochs) and compare the
written model with the original in onnxruntime on held-out inputs: top-1 agreement (argmax of
the first output over axis 1) and the mean cosine similarity of each sample's output. Variants:
``l1`` without data (the old one-shot), then each ``--importance`` with and without layer
reconstruction on the first ``--calibration`` unlabelled inputs of digits.npz. Then, in a
fresh process each, how much the peak RSS grows during one calibrated prune at few and many
calibration samples (the data array itself, also listed, is part of it).

    python benchmarks/oneshot_fidelity.py [--models vgg_bn resnet] [--targets 0.6 0.4]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from onnxprune import api, modelio
from onnxprune.errors import UsageError
from onnxprune.fidelity import fidelity as score
from onnxprune.training.data import Dataset

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODELS = ("vgg_bn", "resnet", "mobilenetv2", "inception", "resnext", "yolo_c2f", "mobilenetv3")
HELD_OUT = slice(1024, None)  # digits.npz has 1797 samples; calibration reads from the start


def fidelity(pruned, original, x: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean per-sample cosine of the first outputs (onnxprune.fidelity)."""
    scores = score({"pruned": pruned}, original, Dataset(x))["pruned"]
    first = next(iter(scores.values()))
    return first["agreement"], first["cosine"]


def variants(calibration: np.ndarray):
    yield "l1, no data", {}
    for importance in ("l1", "reconstruction"):
        for refit in (False, True):
            yield (f"{importance}{' + refit' if refit else ''}",
                   {"data": calibration, "importance": importance, "reconstruction": refit,
                    "calibration_samples": len(calibration)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--targets", nargs="*", type=float, default=[0.6, 0.4])
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--memory-model", default="resnet")
    parser.add_argument("--memory-samples", nargs="*", type=int, default=[256, 4096])
    args = parser.parse_args()
    x = np.load(SAMPLES / "digits.npz")["x"]
    held = x[HELD_OUT]
    calib = x[:args.calibration]
    print(f"calibration: first {len(calib)} digits inputs (unlabelled); evaluation: "
          f"{len(held)} held-out inputs\n")
    print("| model | FLOPs | variant | top-1 agreement | cosine | seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = SAMPLES / f"{name}.onnx"
        original = modelio.load(path)
        for target in args.targets:
            for label, options in variants(calib):
                start = time.perf_counter()
                try:
                    result = api.prune(path, "magnitude", max_flops=target, quiet=True,
                                       input_size=(28, 28), **options)
                except UsageError as e:  # e.g. the budget cannot be met at this --round-to
                    why = "budget not met" if "budget" in str(e) else str(e)[:60]
                    print(f"| {name} | {target} | {label} | - | - | {why} |")
                    continue
                seconds = time.perf_counter() - start
                agree, cos = fidelity(result.model, original, held)
                print(f"| {name} | {target} | {label} | {agree:.3f} | {cos:.4f} | "
                      f"{seconds:.1f} |", flush=True)
    print("\n| model | calibration samples | peak RSS growth during the prune (MB) | seconds |")
    print("|---|---|---|---|")
    for n in args.memory_samples:
        out = subprocess.run([sys.executable, __file__, "--memory-child", args.memory_model,
                              str(n)], capture_output=True, text=True, check=True).stdout
        print(out.strip(), flush=True)


def memory_child(name: str, n: int) -> None:
    """In a fresh process: how much the peak RSS grows while one calibrated prune runs."""
    x = np.load(SAMPLES / "digits.npz")["x"]
    data = np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])))  # digits repeated to n
    val = x[HELD_OUT][:64]
    api.prune(SAMPLES / f"{name}.onnx", "magnitude", max_flops=0.6, quiet=True,
              input_size=(28, 28), data=x[:64], val_data=val, calibration_samples=64)  # warm
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    api.prune(SAMPLES / f"{name}.onnx", "magnitude", max_flops=0.6, quiet=True,
              input_size=(28, 28), data=data, val_data=val, calibration_samples=n)
    seconds = time.perf_counter() - start
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(f"| {name} | {n} (data itself {data.nbytes / 2**20:.1f} MB) | {grown:.1f} | "
          f"{seconds:.1f} |")

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
