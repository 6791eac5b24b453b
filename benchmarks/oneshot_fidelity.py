"""One-shot magnitude pruning with and without calibration data: fidelity to the original.

For each sample model and FLOPs target, prune with ``magnitude`` (no epochs) and compare the
written model with the original in onnxruntime on held-out inputs: top-1 agreement (argmax of
the first output over axis 1) and the mean cosine similarity of each sample's output. Variants:
``l1`` without data (the old one-shot), then each ``--importance`` with and without layer
reconstruction (``--allocation global``) on ``--calibration`` unlabelled inputs
(:mod:`sample_inputs`), then each with ``--allocation sensitivity`` and reconstruction. Then
the default path at several ``--calibration-samples`` (``--sweep``). Peak memory against the
number of inputs is in ``distill_fidelity.py``.

    python benchmarks/oneshot_fidelity.py [--models vgg_bn resnet] [--targets 0.6 0.4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sample_inputs import inputs

from onnxprune import api, modelio
from onnxprune.errors import UsageError
from onnxprune.fidelity import fidelity as score
from onnxprune.methods.magnitude import IMPORTANCES
from onnxprune.training.data import Dataset

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
MODELS = ("dbnet", "vgg_bn", "resnet", "mobilenetv2", "inception", "resnext", "yolo_c2f",
          "mobilenetv3")


def fidelity(pruned, original, x: np.ndarray) -> tuple[str, float]:
    """Top-1 agreement ("-" for a map) and mean per-sample cosine of the first outputs."""
    scores = score({"pruned": pruned}, original, Dataset(x))["pruned"]
    first = next(iter(scores.values()))
    agreement = first.get("agreement")
    return "-" if agreement is None else f"{agreement:.3f}", first["cosine"]


def variants(calibration: np.ndarray):
    yield "l1, no data", {}
    for importance in IMPORTANCES:
        for refit in (False, True):
            yield (f"{importance}{' + refit' if refit else ''}",
                   {"data": calibration, "importance": importance, "allocation": "global",
                    "reconstruction": refit, "calibration_samples": len(calibration)})
    for importance in IMPORTANCES:
        yield (f"{importance} + sensitivity + refit",
               {"data": calibration, "importance": importance, "allocation": "sensitivity",
                "reconstruction": True, "calibration_samples": len(calibration)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--targets", nargs="*", type=float, default=[0.6, 0.4])
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--sweep", nargs="*", type=int, default=[64, 128, 256, 512, 1024])
    parser.add_argument("--sweep-models", nargs="*", default=["dbnet", "mobilenetv2", "resnet"])
    args = parser.parse_args()
    print(f"calibration: {args.calibration} unlabelled inputs; evaluation on held-out ones\n")
    print("| model | FLOPs | variant | top-1 agreement | cosine | seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        calib, held, _ = inputs(name, args.calibration)
        for target in args.targets:
            for label, options in variants(calib):
                print(row(name, target, label, options, held), flush=True)
    print("\n| model | FLOPs | calibration samples (defaults) | top-1 agreement | cosine "
          "| seconds |")
    print("|---|---|---|---|---|---|")
    for name in args.sweep_models:
        calib, held, _ = inputs(name, max(args.sweep))
        for n in args.sweep:
            print(row(name, 0.6, str(n), {"data": calib[:n], "calibration_samples": n},
                      held), flush=True)


def row(name: str, target: float, label: str, options: dict, held: np.ndarray) -> str:
    """One prune of sample ``name`` at the default rounding, as a table row."""
    path = SAMPLES / f"{name}.onnx"
    size = inputs(name, 1)[2]
    start = time.perf_counter()
    try:
        result = api.prune(path, "magnitude", max_flops=target, quiet=True, input_size=size,
                           **options)
    except UsageError as e:  # e.g. the budget cannot be met at this --round-to
        why = "budget not met" if "budget" in str(e) else str(e)[:60]
        return f"| {name} | {target} | {label} | - | - | {why} |"
    seconds = time.perf_counter() - start
    agree, cos = fidelity(result.model, modelio.load(path), held)
    return f"| {name} | {target} | {label} | {agree} | {cos:.4f} | {seconds:.1f} |"


if __name__ == "__main__":
    main()
