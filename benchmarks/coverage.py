"""Coverage of the sample models: how much of each one onnxprune can prune, and whether it works.

For every .onnx in sample_models/ (and --models-dir), one row per
rounding (--round-to 1, and the default: this CPU's channel block):

- ``FLOPs``: onnxprune's count (multiply-accumulates of Conv, ConvTranspose, Gemm, MatMul) at
  28x28; a symbolic-size model is counted on a copy whose input is fixed to 28x28.
- ``prunable``: the share of those FLOPs in layers that produce, carry (depthwise) or consume
  the channels of an unblocked group (``onnxprune inspect``'s figure,
  ``metrics.prunable_share``: they lose output or input channels when it is pruned).
  ``prunable out``: the same for layers whose own output channels are such a group (a
  producer, or a depthwise conv). ``groups``: unblocked / all.
- ``checker``, ``onnxruntime``: magnitude pruning to --max-flops (0.6) with that rounding: does
  the result pass ``onnx.checker`` (full check), and at which input sizes does onnxruntime run
  it (28x28, and 32x32 for a symbolic-size model)?
- ``FLOPs kept``: pruned / original at 28x28; ``speedup``: original / pruned onnxruntime latency
  at 28x28 (``onnxprune.metrics.latency``: batch 32, one process, interleaved, 1 thread).

A symbolic-size model is pruned with ``input_size=(28, 28)`` (the CLI's ``--input-size 28x28``).
A step that fails puts its error message in the row instead of numbers.

    python benchmarks/coverage.py [--models-dir DIR] [--runs 30]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx

from onnxprune import api, metrics, modelio

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
SIZE, OTHER_SIZE = (28, 28), (32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--max-flops", type=float, default=0.6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    paths = sorted(SAMPLES.glob("*.onnx"))
    paths += sorted(args.models_dir.glob("*.onnx")) if args.models_dir else []
    block = metrics.cpu_channel_block()
    print(f"magnitude, max_flops {args.max_flops}, batch {args.batch}, {args.runs} runs, "
          f"1 thread, channel block {block}\n")
    header = ("model", "input H x W", "FLOPs", "prunable", "prunable out", "groups", "round",
              "checker", "onnxruntime", "FLOPs kept", "speedup")
    print(_row(header))
    print(_row(["---"] * len(header)))
    for path in paths:
        original = modelio.load(path)
        symbolic = _symbolic_hw(original)
        try:
            cells = _coverage(original)
        except Exception as e:
            cells = [_error(e), "", "", ""]
        for round_to in (1, None):
            rounding = "1" if round_to else f"{block} (default)"
            row = [path.stem, "symbolic" if symbolic else "fixed", *cells, rounding]
            print(_row(row + _prune(original, symbolic, round_to, args)), flush=True)


def _prune(original: onnx.ModelProto, symbolic: bool, round_to: int | None,
           args: argparse.Namespace) -> list[str]:
    """The checker, onnxruntime, FLOPs kept and speedup cells of one prune."""
    try:
        result = api.prune(original, "magnitude", max_flops=args.max_flops, round_to=round_to,
                           quiet=True, input_size=SIZE)
    except Exception as e:
        return [_error(e), "", "", ""]
    pruned = result.model
    cells: list[str] = []
    try:
        cells.append(onnx.checker.check_model(pruned, full_check=True) or "passes")
    except Exception as e:
        cells.append(_error(e))
    cells.append(_runs(pruned, [SIZE, OTHER_SIZE] if symbolic else [SIZE]))
    try:
        base, small = _fixed(original), _fixed(pruned)
        cells.append(f"{result.report['after']['flops'] / result.report['before']['flops']:.3f}")
        times = metrics.latency([base, small], batch=args.batch, runs=args.runs, threads=1)
        cells.append(f"{times[0].median_ms / times[1].median_ms:.2f}x")
    except Exception as e:
        cells += [_error(e)] if len(cells) == 3 else [_error(e), ""]
    return cells


def _coverage(model: onnx.ModelProto) -> list[str]:
    """The FLOPs (at 28x28), prunable, prunable out and groups cells."""
    info = api.inspect(model, input_size=SIZE)
    if info.flops is None:
        unknown = next(layer.name for layer in info.layers if layer.flops is None)
        raise ValueError(f"the FLOPs of {unknown} are unknown at 28x28")
    free = [g for g in info.groups if not g.blocked]
    producing = {s.node for g in free for s in g.producers} | {n for g in free for n in g.depthwise}
    out_share = sum(la.flops for la in info.layers if la.name in producing) / info.flops
    return [f"{info.flops:,}", f"{info.prunable_share:.1%}", f"{out_share:.1%}",
            f"{len(free)}/{len(info.groups)}"]


def _symbolic_hw(model: onnx.ModelProto) -> bool:
    """Whether an input has a height or width that is not a fixed size."""
    return bool(modelio.open_dims(model))


def _fixed(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at 28x28 (the batch stays symbolic), its shapes known."""
    dims = {name: [shape[1], *SIZE] for name, shape in modelio.open_dims(model).items()}
    return modelio.observe_shapes(modelio.with_input_dims(model, dims)) if dims else model


def _runs(model: onnx.ModelProto, sizes: list[tuple[int, int]]) -> str:
    """The input sizes onnxruntime runs ``model`` at, or the first error."""
    try:
        session = modelio.session(model, threads=1, optimize=True)
        name = session.get_inputs()[0].name
        for h, w in sizes:
            x = np.random.default_rng(0).random((2, 1, h, w), dtype=np.float32)
            (out,) = session.run(None, {name: x})
            if out.shape != (2, 10):
                return f"{h}x{w} gave output shape {out.shape}"
    except Exception as e:
        return _error(e)
    return ", ".join(f"{h}x{w}" for h, w in sizes)


def _error(e: Exception) -> str:
    """The error as one table cell: its type and first line, at most 160 characters."""
    lines = str(e).strip().splitlines() or [""]
    text = f"{type(e).__name__}: {lines[0]}".replace("|", "/")
    return text if len(text) <= 160 else text[:157] + "..."


def _row(cells: list[str] | tuple[str, ...]) -> str:
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    main()
