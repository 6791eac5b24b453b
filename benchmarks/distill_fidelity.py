"""Fidelity without labels: one-shot pruning, calibration, then label-free distillation.

For each model and FLOPs target, with 512 unlabelled calibration inputs: the first output's
top-1 agreement with the original (classifiers) and mean per-sample cosine, on held-out
inputs, for magnitude one-shot without data (weights only), the calibrated one-shot (the
default with ``--data``), then 2 epochs of label-free distillation on the same 512 inputs
(defaults), and the same with ``--distill-features``; and the onnxruntime speedup of the
distilled model (one thread, batch 32, same process, interleaved runs). Then, in a fresh
process each, the peak RSS of a calibrated prune with one epoch of distillation on few and
many inputs (all of them calibrate and train; the data array itself is part of it), and its
ratio to the first.

    python benchmarks/distill_fidelity.py [--models dbnet vgg_bn] [--targets 0.6 0.4]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sample_inputs import CALIBRATION, inputs

from onnxprune import api, metrics, modelio
from onnxprune.errors import UsageError
from onnxprune.fidelity import fidelity
from onnxprune.training.data import Dataset

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODELS = ("dbnet", "vgg_bn", "resnet", "mobilenetv2", "inception", "resnext", "yolo_c2f",
          "mobilenetv3")


def first(scores: dict) -> tuple[float | None, float]:
    """Agreement (None when not a classifier) and cosine of the first output."""
    out = next(iter(scores.values()))
    return out.get("agreement"), out["cosine"]


def cell(scores: tuple[float | None, float]) -> str:
    agree, cos = scores
    return f"{cos:.3f}" if agree is None else f"{agree:.3f} / {cos:.3f}"


def row(name: str, target: float) -> str:
    calib, held, size = inputs(name)
    path = SAMPLES / f"{name}.onnx"
    original = modelio.load(path)
    common = dict(max_flops=target, quiet=True, input_size=size)
    start = time.perf_counter()
    try:
        api.prune(path, "magnitude", **common)
    except UsageError:  # the default --round-to cannot reach the budget: the next one can
        common["round_to"] = 8
    try:
        runs = {
            "weights only": api.prune(path, "magnitude", **common),
            "calibrated": api.prune(path, "magnitude", data=calib, **common),
            "distilled": api.prune(path, "magnitude", data=calib, epochs=2, **common),
            "features": api.prune(path, "magnitude", data=calib, epochs=2,
                                  distill_features=True, **common),
        }
    except UsageError as e:  # e.g. the budget cannot be met at this --round-to
        return f"| {name} | {target} | {str(e)[:70]} |"
    seconds = time.perf_counter() - start
    scores = fidelity({k: r.model for k, r in runs.items()}, original, Dataset(held))
    name_in = original.graph.input[0].name
    sized = [modelio.with_input_dims(m, {name_in: [1, *size]})
             for m in (original, runs["distilled"].model)]
    base, small = metrics.latency(sized, batch=32, runs=30, threads=1)
    kept = runs["distilled"].report["after"]["flops"] / runs["distilled"].report["before"]["flops"]
    cells = " | ".join(cell(first(scores[k])) for k in runs)
    rounding = f", round-to {common['round_to']}" if "round_to" in common else ""
    speedup = base.median_ms / small.median_ms
    return (f"| {name} | {target} ({kept:.2f}{rounding}) | {cells} | {speedup:.2f}x "
            f"| {seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--targets", nargs="*", type=float, default=[0.6, 0.4])
    parser.add_argument("--memory-model", default="resnet")
    parser.add_argument("--memory-samples", nargs="*", type=int, default=[256, 4096])
    args = parser.parse_args()
    print(f"{CALIBRATION} unlabelled calibration inputs; fidelity on held-out inputs "
          "(agreement / cosine, cosine alone for a map)\n")
    print("| model | FLOPs target (kept) | weights only | calibrated one-shot | + 2 epochs "
          "distillation | + features | speedup 1t | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for target in args.targets:
            print(row(name, target), flush=True)
    print("\n| model | inputs (data array) | peak RSS of the process (MB) | vs the first | "
          "seconds |")
    print("|---|---|---|---|---|")
    first_peak = None
    for n in args.memory_samples:
        out = subprocess.run([sys.executable, __file__, "--memory-child", args.memory_model,
                              str(n)], capture_output=True, text=True, check=True).stdout
        peak, data_mb, seconds = (float(v) for v in out.split())
        first_peak = first_peak or peak
        print(f"| {args.memory_model} | {n} ({data_mb:.1f} MB) | {peak:.0f} | "
              f"{peak / first_peak:.2f}x | {seconds:.0f} |", flush=True)

def memory_child(name: str, n: int) -> None:
    """In a fresh process: the peak RSS of one calibrated prune that distils, on ``n`` inputs."""
    calib, held, size = inputs(name)
    data = np.ascontiguousarray(np.resize(calib, (n, *calib.shape[1:])))  # repeated to n
    start = time.perf_counter()
    api.prune(SAMPLES / f"{name}.onnx", "magnitude", max_flops=0.6, quiet=True,
              input_size=size, data=data, val_data=held[:64], epochs=1, calibration_samples=n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak:.1f} {data.nbytes / 2**20:.1f} {time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        memory_child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
