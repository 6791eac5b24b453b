"""Shadow training throughput against the same architecture written natively in torch.

For each sample model, one SGD training step per batch on random inputs and labels, timed
over the same number of batches in one process, same thread count: samples per second of the
shadow (the normalised ONNX graph, BatchNorm folded), of the shadow with BatchNorm re-inserted
(as fine-tuning runs it by default), and of the sample's own torch definition
(sample_models/build.py, BatchNorm in training mode), and the ratios (target: the native model
is at most 1.15x faster).

    python benchmarks/shadow_throughput.py [--batch 64] [--steps 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from onnxprune.api import normalize
from onnxprune.shadow import ShadowModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sample_models.build import MODELS  # noqa: E402


def samples_per_second(model: torch.nn.Module, batch: int, steps: int, device: str) -> float:
    model.to(device).train()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                                momentum=0.9)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.steps} steps, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print("| model | shadow samples/s | shadow + BN samples/s | native samples/s "
          "| native / shadow | native / shadow + BN |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, make in MODELS.items():
        shadow = ShadowModel(normalize(ROOT / "sample_models" / f"{name}.onnx")[0])
        with_bn = ShadowModel(normalize(ROOT / "sample_models" / f"{name}.onnx")[0])
        with_bn.add_batchnorm(torch.rand(args.batch, 1, 28, 28))
        native = make()
        rates = []
        for _ in range(2):  # alternate, so drift in machine load hits all alike
            rates.append([samples_per_second(m, args.batch, args.steps, args.device)
                          for m in (shadow, with_bn, native)])
        s, b, n = (max(r[i] for r in rates) for i in range(3))
        print(f"| {name} | {s:.0f} | {b:.0f} | {n:.0f} | {n / s:.2f} | {n / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
