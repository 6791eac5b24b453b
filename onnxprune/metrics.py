"""Counting: parameters, FLOPs, file bytes and onnxruntime latency.

FLOPs are counted as the pruning literature does, one per multiply-accumulate of the weighted
layers, per sample: a Conv costs ``prod(W.shape) * H_out * W_out`` (groups included, since
``W`` holds ``C_in / group`` input channels), a ConvTranspose ``prod(W.shape) * H_in * W_in``,
a Gemm ``prod(B.shape)`` and a MatMul ``prod(B.shape)`` times the rows of ``A`` per sample.
Other ops are not counted. Parameters are all floating-point initializer elements. A layer
whose positions are unknown (symbolic H, W) has no FLOPs count (None), and neither has a graph
with such a layer: fix the input size first (``modelio.with_input_dims``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxprune.analysis.groups import ChannelGroup
from onnxprune.graph import spatial_size
from onnxprune.modelio import random_inputs, session
from onnxprune.plan import Plan

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Layer:
    """The cost of one weighted node."""

    name: str
    op: str
    params: int
    flops: int | None
    in_channels: int
    out_channels: int


def weight_shapes(graph: gs.Graph) -> dict[str, tuple[int, ...]]:
    """Return the shape of every floating-point initializer."""
    return {name: tuple(t.shape) for name, t in graph.tensors().items()
            if isinstance(t, gs.Constant) and np.dtype(t.dtype).kind == "f"}


def planned_shapes(graph: gs.Graph, groups: Sequence[ChannelGroup],
                   plan: Plan) -> dict[str, tuple[int, ...]]:
    """Return the initializer shapes ``plan`` would leave, without touching the graph."""
    shapes = {k: list(v) for k, v in weight_shapes(graph).items()}
    for group in groups:
        gone = plan.removed(group)
        for s in group.slices:  # a grouped Conv's weight holds 1 / groups of its inputs
            shapes[s.initializer][s.axis] -= len(s.positions(gone)) // s.groups
    return {k: tuple(v) for k, v in shapes.items()}


def layers(graph: gs.Graph, shapes: Shapes | None = None) -> list[Layer]:
    """Return the cost of each weighted node; ``shapes`` overrides initializer shapes."""
    shapes = shapes if shapes is not None else weight_shapes(graph)
    out = []
    for node in graph.nodes:
        if node.op not in _WEIGHT_INPUT or len(node.inputs) <= 1:
            continue
        weight = node.inputs[1]
        w = shapes.get(weight.name) or _static_shape(weight)
        if w is None:
            continue
        params = sum(int(np.prod(shapes[t.name])) for t in node.inputs[1:] if t.name in shapes)
        positions = _positions(node)
        macs = None if positions is None else int(np.prod(w)) * positions
        c_in, c_out = _channels(node, w)
        out.append(Layer(node.name, node.op, params, macs, c_in, c_out))
    return out


def count(graph: gs.Graph, shapes: Shapes | None = None) -> tuple[int, int | None]:
    """Return (parameters, FLOPs) of ``graph``; ``shapes`` overrides initializer shapes.

    FLOPs are None when a layer's positions are unknown (see :func:`unsized_layers`).
    """
    shapes = shapes if shapes is not None else weight_shapes(graph)
    params = sum(int(np.prod(s)) for s in shapes.values())
    flops = [layer.flops for layer in layers(graph, shapes)]
    return params, None if None in flops else sum(flops)


def prunable_share(graph: gs.Graph, groups: Sequence[ChannelGroup]) -> float | None:
    """The share of the FLOPs in layers that produce, carry or consume an unblocked group.

    A producer loses output channels, a consumer input channels, a depthwise Conv both; no
    other layer gets cheaper, so a FLOPs budget below ``1 - share`` cannot be met. None when
    the FLOPs are unknown.
    """
    free = [g for g in groups if not g.blocked]
    names = {s.node for g in free for s in g.slices} | {n for g in free for n in g.depthwise}
    costs = [(layer.name, layer.flops) for layer in layers(graph)]
    if any(flops is None for _, flops in costs):
        return None
    total = sum(flops for _, flops in costs)
    return sum(flops for name, flops in costs if name in names) / total if total else 0.0


def unsized_layers(graph: gs.Graph) -> list[str]:
    """The weighted layers whose output positions are unknown, so their FLOPs are too."""
    return [layer.name for layer in layers(graph) if layer.flops is None]


_WEIGHT_INPUT = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The inferred shape of a computed weight (a Cast of float16 weights, say), if static."""
    shape = tensor.shape
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return tuple(shape)


def _positions(node: gs.Node) -> int | None:
    """How often per sample the layer applies its weight; None when unknown."""
    if node.op == "Conv":
        return spatial_size(node.outputs[0])
    if node.op == "ConvTranspose":
        return spatial_size(node.inputs[0])
    if node.op == "MatMul":
        shape = node.inputs[0].shape
        rows = list(shape or [])[1:-1]
        if shape is None or not all(isinstance(d, int) and d > 0 for d in rows):
            return None
        return int(np.prod(rows))
    return 1


def _channels(node: gs.Node, w: Sequence[int]) -> tuple[int, int]:
    if node.op == "Conv":
        return w[1] * int(node.attrs.get("group", 1)), w[0]
    if node.op == "ConvTranspose":
        return w[0], w[1] * int(node.attrs.get("group", 1))
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return w[1], w[0]
    return w[0], w[1]


def nonzero_weights(graph: gs.Graph) -> int:
    """Non-zero entries of the weights of Conv, ConvTranspose, Gemm and MatMul (no biases).

    Dense weights / non-zeros is the compression rate of unstructured pruning, as the ADMM
    papers report it.
    """
    tensors = {t.name: t for t in (n.inputs[1] for n in graph.nodes
                                   if n.op in _WEIGHT_INPUT and len(n.inputs) > 1)
               if isinstance(t, gs.Constant)}
    return sum(int(np.count_nonzero(t.values)) for t in tensors.values())


def model_bytes(model: onnx.ModelProto) -> int:
    """Return the size of ``model`` serialised as one file."""
    return model.ByteSize()


def file_bytes(path: str | Path) -> int:
    """Return the size of a model file plus its external data files."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    extra = {e.value for t in model.graph.initializer for e in t.external_data
             if e.key == "location"}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in extra
                                     if (path.parent / f).exists())


def cpu_channel_block() -> int:
    """Channel block of onnxruntime's blocked CPU convolutions here: 16 on AVX-512, else 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    return 16 if re.search(r"\bavx512f\b", flags) else 8


@dataclass(frozen=True)
class Latency:
    """Latency of one model in milliseconds over ``runs`` timed runs."""

    median_ms: float
    p90_ms: float
    runs: int


def latency(models: Sequence[onnx.ModelProto], *, batch: int = 1, runs: int = 50,
            warmup: int = 5, threads: int = 1, provider: str = "CPUExecutionProvider",
            seed: int = 0) -> list[Latency]:
    """Time ``models`` in onnxruntime in one process, same inputs and thread count.

    Runs are interleaved (model A, model B, model A, ...) so drift in machine load affects
    every model alike; the ratio of medians is the speedup.
    """
    sessions = [session(m, threads=threads, optimize=True, providers=[provider]) for m in models]
    feeds = [random_inputs(m, batch=batch, seed=seed) for m in models]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            start = time.perf_counter()
            s.run(None, f)
            times[i].append((time.perf_counter() - start) * 1e3)
    return [Latency(float(np.median(t)), float(np.percentile(t, 90)), runs) for t in times]


def available_providers() -> list[str]:
    """Return onnxruntime's execution providers on this machine, CUDA first when present."""
    wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in wanted if p in ort.get_available_providers()]
