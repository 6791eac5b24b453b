"""Magnitude pruning of every sample model: FLOPs kept and onnxruntime CPU speedup.

For each sample model, FLOPs target (50 % and 25 %) and rounding (off: --round-to 1; on:
this CPU's channel block), prune with ``magnitude`` and time the original and the pruned
model in one process, interleaved, with the same thread count (1 thread and all cores).
``efficiency`` is the speedup divided by the FLOPs cut (original / pruned FLOPs): 1.0 means
the latency fell as much as the FLOPs did.

    python benchmarks/magnitude_speedup.py [--batch 32] [--runs 30] [--models vgg_bn resnet]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from onnxprune import api, metrics, modelio
from onnxprune.errors import UsageError

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--targets", nargs="*", type=float, default=[0.5, 0.25])
    args = parser.parse_args()
    names = args.models or sorted(p.stem for p in SAMPLES.glob("*.onnx"))
    block = metrics.cpu_channel_block()
    threads_all = os.cpu_count() or 1
    print(f"batch {args.batch}, {args.runs} runs, channel block {block}, "
          f"all threads = {threads_all}")
    header = ("model", "target", "round", "FLOPs kept", "speedup 1t", "eff 1t",
              f"speedup {threads_all}t", f"eff {threads_all}t")
    print(_row(header))
    print(_row(["---"] * len(header)))
    for name in names:
        original = modelio.load(SAMPLES / f"{name}.onnx")
        for target in args.targets:
            for round_to in (1, block):
                try:
                    result = api.prune(original, "magnitude", max_flops=target,
                                       round_to=round_to)
                except UsageError:
                    print(_row([name, f"{target:.2f}", str(round_to),
                                "not reachable with this rounding", "", "", "", ""]))
                    continue
                kept = result.report["after"]["flops"] / result.report["before"]["flops"]
                row = [name, f"{target:.2f}", str(round_to), f"{kept:.3f}"]
                for threads in (1, threads_all):
                    base, pruned = metrics.latency([original, result.model], batch=args.batch,
                                                   runs=args.runs, threads=threads)
                    speedup = base.median_ms / pruned.median_ms
                    row += [f"{speedup:.2f}x", f"{speedup * kept:.2f}"]
                print(_row(row), flush=True)


def _row(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
