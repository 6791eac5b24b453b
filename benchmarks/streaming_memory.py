"""Peak memory of pruning with fine-tuning on an image folder of N vs 10N generated images.

Generates ``--small`` and ``--large`` grayscale PNGs (``--side`` pixels square, 10 class
folders) under a temporary folder, then, in a fresh process for each, prunes the LeNet-5
sample (magnitude to 0.6 of the FLOPs) with 1 epoch of fine-tuning on the folder, every image
read (resized to the model's 28x28). Prints each run's peak RSS and their ratio (the goal is at
most 1.2), and the bytes the decoded inputs would take if read whole.

    python benchmarks/streaming_memory.py [--small 2000] [--large 20000] [--side 64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, resource, onnxprune
onnxprune.prune(sys.argv[1], "magnitude", max_flops=0.6, data=sys.argv[2], epochs=1,
                round_to=1, quiet=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args()
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        for n in (args.small, args.large):
            images = Path(folder) / str(n)
            _generate(images, n, args.side)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", CHILD,
                                   str(ROOT / "sample_models" / "lenet5.onnx"), str(images)],
                                  capture_output=True, text=True, check=True)
            peaks[n] = int(done.stdout.split()[-1]) / 1024  # kB -> MB (Linux)
            print(f"{n} images: peak RSS {peaks[n]:.0f} MB, {time.perf_counter() - start:.0f} s; "
                  f"read whole, the inputs would take {n * 28 * 28 * 4 / 2**20:.0f} MB",
                  flush=True)
    print(f"ratio {args.large} / {args.small}: {peaks[args.large] / peaks[args.small]:.2f}")


def _generate(folder: Path, n: int, side: int) -> None:
    """``n`` random grayscale PNGs of ``side`` pixels in 10 class folders."""
    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 10}" / f"{i:06d}.png", compress_level=1)


if __name__ == "__main__":
    main()
