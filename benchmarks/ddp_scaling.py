"""Training throughput in 1 and 2 processes of one thread each (torchrun, gloo), on MNIST.

Fine-tunes the ResNet sample pruned to 0.5 of its FLOPs for ``--epochs`` epochs on the first
8,000 digits of ../shared/data/mnist with ``torchrun --nproc-per-node P`` for each P, and
prints the samples per second of the fine-tuning (from the report: epochs x training samples /
seconds) and their ratio to one process.

    python benchmarks/ddp_scaling.py [--model resnet] [--epochs 2] [--processes 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mnist_split
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2])
    mnist_split.add_argument(parser)
    args = parser.parse_args()
    train_set, _ = mnist_split.load(args.mnist)
    exe = Path(sys.executable).parent / "onnxprune"
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "train.npz"
        np.savez(data, x=train_set.x, y=train_set.y)
        for p in args.processes:
            report = Path(folder) / f"r{p}.json"
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc-per-node", str(p), str(exe),
                            str(ROOT / "sample_models" / f"{args.model}.onnx"),
                            "--max-flops", "0.5", "--data", str(data), "--epochs",
                            str(args.epochs), "--out", str(Path(folder) / f"s{p}.onnx"),
                            "--report", str(report), "--quiet"],
                           check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            found = json.loads(report.read_text())
            samples = found["data"]["train"] * args.epochs
            rates[p] = samples / found["training"]["seconds"]
            print(f"{p} process(es): {rates[p]:.0f} samples/s "
                  f"({rates[p] / rates[args.processes[0]]:.2f}x; world size "
                  f"{found['world_size']})", flush=True)


if __name__ == "__main__":
    main()
