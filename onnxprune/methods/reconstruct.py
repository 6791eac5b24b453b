"""Layer reconstruction: refit each consumer of removed channels on the channels kept.

After a plan removes channels, each consumer layer (a group-1 Conv, a Gemm, a MatMul on 2-D
inputs) whose input loses positions is refit by ridge least squares so that, on calibration
inputs, it reproduces the original model's output from what the pruned model feeds it:

    min_{W_k, beta} || X_p[:, kept] W_k + 1 beta + f - Y_o ||^2 + lam ||(W_k, beta) - (W, b)_k||^2

``Y_o = X_o W + b`` is the original consumer's output on the original input ``X_o`` (im2col
patch rows for a Conv, feature rows otherwise), ``X_p`` the input of the *pruned* model at
that layer (sequential reconstruction: earlier layers are already refit), ``f`` the constant
that :class:`~onnxprune.passes.fold_removed_channels.FoldRemovedChannelsPass` will add to the
output for the removed channels' constant activations (computed here the way that pass does),
and ``lam`` a ridge of ``ridge`` times the mean diagonal of the normal matrix. The ridge
pulls towards the layer's own weights on the kept columns ``(W, b)_k`` (the plain prune), not
towards zero: a huge ``lam`` gives the plain prune back. The default ``ridge`` 1e-3 had the
best mean held-out agreement against 1e-5, 1e-2 and 1e-1 (vgg_bn, resnet, mobilenetv2,
mobilenetv3 at 0.6 and 0.4 of the FLOPs; mobilenetv2 at 0.4: 0.880 against 0.851 at 1e-5).
``beta`` is the bias written, so once the pass folds ``f`` in, the layer computes exactly what
was fit (even at a padded Conv's borders, where ``f`` is only the interior value). A layer
without a bias initializer fits no ``beta`` (a MatMul, a bias-free Conv).

The pruned model is simulated by the normalised model with the removed channels' producer
weights zeroed (biases kept: a removed channel then emits the constant the pass measures) and
the refit layers' new weights. Consumers are refit in levels: a level holds the consumers none
of whose upstream consumers are still unfit, and each level streams the calibration batches
once through both models, accumulating ``Z^T Z`` and ``Z^T Y`` in float64. Memory is the
accumulators (``(k + 1)^2`` per layer for ``k`` kept input columns) plus one batch's
activations, whatever the number of samples. A Conv's rows are at most ``positions`` randomly
drawn output positions per image, gathered straight from the padded input (im2col without
materialising every patch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from onnxprune import modelio
from onnxprune.analysis.groups import ChannelGroup
from onnxprune.graph import attr
from onnxprune.plan import Plan
from onnxprune.shadow import ShadowModel

Batches = Callable[[], Iterable[torch.Tensor]]


@dataclass(frozen=True)
class Layer:
    """A consumer to refit: its weight as a (columns, outputs) matrix and how to read rows."""

    node: str
    op: str
    input: str
    weight: str
    bias: str | None
    kept: np.ndarray  # kept input positions (channels for a Conv, features otherwise)
    removed: np.ndarray
    attrs: dict

    def columns(self, positions: np.ndarray, kernel: int) -> np.ndarray:
        """The matrix columns of input ``positions`` (a Conv has ``kernel`` per channel)."""
        return (positions[:, None] * kernel + np.arange(kernel)).reshape(-1)


def consumers(graph: gs.Graph, groups: Sequence[ChannelGroup], plan: Plan) -> list[Layer]:
    """The layers ``plan`` takes input positions from that can be refit, in graph order."""
    gone: dict[str, list[np.ndarray]] = {}
    grouped: set[str] = set()
    for g in groups:
        removed = plan.removed(g)
        for s in g.consumers if removed.size else ():
            gone.setdefault(s.node, []).append(s.positions(removed))
            if s.groups > 1:
                grouped.add(s.node)
    out = []
    for node in graph.nodes:
        if node.name not in gone or node.name in grouped:
            continue
        layer = _layer(node, np.unique(np.concatenate(gone[node.name])))
        if layer is not None:
            out.append(layer)
    return out


def _layer(node: gs.Node, removed: np.ndarray) -> Layer | None:
    """``node`` as a refittable Layer, or None when it is not one (rules in the docstring)."""
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    x, w = node.inputs[0], node.inputs[1]
    if isinstance(x, gs.Constant) or len(w.outputs) != 1:
        return None
    shape = tuple(w.shape)
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if node.op == "Conv":
        if (len(shape) != 4 or attr(node, "group", 1) != 1
                or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET")):
            return None
        inputs, outputs = shape[1], shape[0]
    elif node.op == "Gemm":
        if attr(node, "transA", 0) or len(shape) != 2:
            return None
        inputs, outputs = shape[::-1] if attr(node, "transB", 0) else shape
    elif node.op == "MatMul":
        if len(shape) != 2 or x.shape is None or len(x.shape) != 2:
            return None
        inputs, outputs = shape
    else:
        return None
    if not (isinstance(bias, gs.Constant) and bias.values.size == outputs
            and len(bias.outputs) == 1):
        bias = None
    kept = np.setdiff1d(np.arange(inputs), removed)
    return Layer(node.name, node.op, x.name, w.name, None if bias is None else bias.name,
                 kept, removed, dict(node.attrs))


# -- the layer as a matrix ----------------------------------------------------------------
def as_matrix(layer: Layer, w: np.ndarray) -> np.ndarray:
    """The weight as (columns, outputs), Gemm's ``alpha`` and ``transB`` applied."""
    if layer.op == "Conv":
        return w.reshape(w.shape[0], -1).T
    if layer.op == "Gemm":
        m = w.T if layer.attrs.get("transB", 0) else w
        return m * float(layer.attrs.get("alpha", 1.0))
    return w


def from_matrix(layer: Layer, m: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Invert :func:`as_matrix` to an initializer of ``like``'s shape and dtype."""
    if layer.op == "Conv":
        w = m.T.reshape(like.shape)
    elif layer.op == "Gemm":
        m = m / float(layer.attrs.get("alpha", 1.0))
        w = m.T if layer.attrs.get("transB", 0) else m
    else:
        w = m
    return np.ascontiguousarray(w, dtype=like.dtype)


def bias_scale(layer: Layer) -> float:
    """What the bias initializer is multiplied by in the output (Gemm's ``beta``)."""
    return float(layer.attrs.get("beta", 1.0)) if layer.op == "Gemm" else 1.0


def rows(layer: Layer, x: torch.Tensor, kernel: tuple[int, ...],
         pick: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as rows of its weight matrix's columns (im2col for a Conv).

    ``pick`` holds flat output positions (one set for every image of the batch), None: all.
    """
    if layer.op != "Conv":
        return x.reshape(-1, x.shape[-1]).double()
    kh, kw = kernel
    pads = list(layer.attrs.get("pads", [0, 0, 0, 0]))
    sh, sw = layer.attrs.get("strides", [1, 1])
    dh, dw = layer.attrs.get("dilations", [1, 1])
    x = torch.nn.functional.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    oh = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    flat = torch.arange(oh * ow) if pick is None else pick
    h, w = flat // ow, flat % ow
    r = (h * sh)[:, None, None] + (torch.arange(kh) * dh)[None, :, None]
    c = (w * sw)[:, None, None] + (torch.arange(kw) * dw)[None, None, :]
    patches = x[:, :, r, c]  # (N, C, P, kh, kw)
    return patches.permute(0, 2, 1, 3, 4).reshape(-1, x.shape[1] * kh * kw).double()


def output_positions(layer: Layer, x: torch.Tensor, kernel: tuple[int, ...]) -> int:
    """How many output positions per image a Conv has (1 for a Gemm or MatMul)."""
    if layer.op != "Conv":
        return 1
    pads = list(layer.attrs.get("pads", [0, 0, 0, 0]))
    sh, sw = layer.attrs.get("strides", [1, 1])
    dh, dw = layer.attrs.get("dilations", [1, 1])
    oh = (x.shape[2] + pads[0] + pads[2] - dh * (kernel[0] - 1) - 1) // sh + 1
    ow = (x.shape[3] + pads[1] + pads[3] - dw * (kernel[1] - 1) - 1) // sw + 1
    return oh * ow


def fold_offset(layer: Layer, x: torch.Tensor, w: np.ndarray) -> np.ndarray:
    """What FoldRemovedChannelsPass adds to the output (per output, in matrix units).

    ``x`` is the pruned model's input to the layer: its removed positions hold constants.
    Like the pass, the offset is the median over positions of the removed part's output.
    """
    idx = torch.as_tensor(layer.removed)
    slab = torch.zeros_like(x[:1], dtype=torch.float64)
    slab[:, idx] = x[:1][:, idx].double()
    if float(slab.abs().max()) < 1e-12:
        return np.zeros(as_matrix(layer, w).shape[1])
    if layer.op == "Conv":
        pads = list(layer.attrs.get("pads", [0, 0, 0, 0]))
        y = torch.nn.functional.conv2d(
            torch.nn.functional.pad(slab, (pads[1], pads[3], pads[0], pads[2])),
            torch.from_numpy(w).double(), stride=layer.attrs.get("strides", [1, 1]),
            dilation=layer.attrs.get("dilations", [1, 1]))
        per = y[0].reshape(y.shape[1], -1).T.numpy()
    else:
        per = slab.numpy() @ as_matrix(layer, w).astype(np.float64)
    return np.median(per, axis=0)


class Normal:
    """The normal equations ``Z^T Z``, ``Z^T Y`` of a least-squares fit, summed batch by batch."""

    def __init__(self, columns: int, outputs: int) -> None:
        self.zz = torch.zeros(columns, columns, dtype=torch.float64)
        self.zy = torch.zeros(columns, outputs, dtype=torch.float64)
        self.rows = 0

    def add(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Add the rows ``z`` (n, columns) with their targets ``y`` (n, outputs)."""
        z32 = z.float()
        self.zz += (z32.T @ z32).double()  # float32 products, summed per batch in float64
        self.zy += z.T @ y
        self.rows += len(z)

    def solve(self, ridge: float, prior: torch.Tensor) -> np.ndarray:
        """The ridge solution pulled towards ``prior`` (columns, outputs).

        ``ridge`` is relative to the mean diagonal of ``Z^T Z``.
        """
        lam = ridge * float(torch.diagonal(self.zz).mean().clamp_min(1e-12))
        eye = torch.eye(len(self.zz), dtype=self.zz.dtype)
        return torch.linalg.solve(self.zz + lam * eye, self.zy + lam * prior).numpy()


# -- streaming through the models ----------------------------------------------------------
def capture(model: onnx.ModelProto, tensors: Sequence[str],
            values: dict[str, np.ndarray] | None = None) -> Callable[[torch.Tensor], list]:
    """A function from an input batch to the values of ``tensors`` in ``model``.

    ``values`` replace initializers first. The shadow runs without gradients.
    """
    graph = modelio.to_graph(model)
    by_name = graph.tensors()
    for name, value in (values or {}).items():
        by_name[name].values = value
    outputs = [by_name[name] for name in tensors]
    for t in outputs:
        t.dtype = t.dtype or np.float32
    graph.outputs = outputs
    graph.cleanup()  # only the nodes these tensors need run
    shadow = ShadowModel(modelio.to_model(graph, model)).eval()

    def run(x: torch.Tensor) -> list:
        with torch.no_grad():
            out = shadow(x)
        return list(out) if isinstance(out, tuple) else [out]
    return run


def producer_zeros(groups: Sequence[ChannelGroup], plan: Plan) -> dict[str, list]:
    """Per producer weight, the (axis, positions) the plan removes (biases excluded)."""
    out: dict[str, list] = {}
    for g in groups:
        removed = plan.removed(g)
        for s in g.producers if removed.size else ():
            if not s.bias:
                out.setdefault(s.initializer, []).append((s.axis, s.positions(removed)))
    return out


def zeroed(value: np.ndarray, cuts: list) -> np.ndarray:
    """``value`` with the positions ``cuts`` lists set to 0."""
    out = np.array(value)
    for axis, positions in cuts:
        moved = np.moveaxis(out, axis, 0)
        moved[positions] = 0
    return out


def _levels(graph: gs.Graph, layers: Sequence[Layer]) -> list[list[Layer]]:
    """The layers in levels: each after every level holding a layer upstream of it."""
    names = {layer.node for layer in layers}
    producer = {t.name: n for n in graph.nodes for t in n.outputs}
    nodes = {n.name: n for n in graph.nodes}
    level: dict[str, int] = {}
    for layer in layers:
        seen: set[str] = set()
        stack = [t.name for t in nodes[layer.node].inputs]
        above = -1
        while stack:
            p = producer.get(stack.pop())
            if p is None or p.name in seen:
                continue
            seen.add(p.name)
            if p.name in names:
                above = max(above, level.get(p.name, -1))
            stack.extend(t.name for t in p.inputs)
        level[layer.node] = above + 1
    out: list[list[Layer]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for layer in layers:
        out[level[layer.node]].append(layer)
    return out


def reconstruct(model: onnx.ModelProto, groups: Sequence[ChannelGroup], plan: Plan,
                batches: Batches, *, ridge: float = 1e-3, positions: int = 64,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Refit the consumers of the channels ``plan`` removes; return their new initializers.

    ``model`` is the normalised model, ``batches()`` yields the calibration input batches
    (called once per level). The arrays are full size (removed columns keep their values) and
    go into :attr:`Plan.weights`.
    """
    graph = modelio.to_graph(model)
    layers = consumers(graph, groups, plan)
    if not layers:
        return {}
    by_name = graph.tensors()
    original = {n: np.asarray(by_name[n].values) for layer in layers
                for n in (layer.weight, layer.bias) if n is not None}
    cuts = producer_zeros(groups, plan)
    values = {n: zeroed(np.asarray(by_name[n].values), c) for n, c in cuts.items()}
    written: dict[str, np.ndarray] = {}
    generator = torch.Generator().manual_seed(seed)
    for level in _levels(graph, layers):
        inputs = list(dict.fromkeys(layer.input for layer in level))
        ref, sim = capture(model, inputs), capture(model, inputs, values)
        fitted = _fit(level, ref, sim, inputs, batches, original, ridge, positions, generator)
        for name, value in fitted.items():
            written[name] = value
            values[name] = zeroed(value, cuts.get(name, []))
    return written


def _fit(level: Sequence[Layer], ref: Callable, sim: Callable, inputs: list[str],
         batches: Batches, original: dict[str, np.ndarray], ridge: float, positions: int,
         generator: torch.Generator) -> dict[str, np.ndarray]:
    """Stream the batches once and solve the ridge problem of every layer of ``level``."""
    where = {name: i for i, name in enumerate(inputs)}
    state: dict[str, dict] = {}
    for x in batches():
        xo, xp = ref(x), sim(x)
        for layer in level:
            a_o, a_p = xo[where[layer.input]], xp[where[layer.input]]
            w = original[layer.weight]
            kernel = tuple(w.shape[2:]) if layer.op == "Conv" else ()
            s = state.get(layer.node)
            if s is None:
                m = as_matrix(layer, w).astype(np.float64)
                k = int(np.prod(kernel)) if kernel else 1
                b = (np.zeros(m.shape[1]) if layer.bias is None else
                     original[layer.bias].reshape(-1).astype(np.float64) * bias_scale(layer))
                cols = layer.columns(layer.kept, k)
                d = cols.size + (layer.bias is not None)
                s = state[layer.node] = {
                    "m": torch.from_numpy(m), "b": torch.from_numpy(b), "cols": cols,
                    "offset": torch.from_numpy(fold_offset(layer, a_p, w)),
                    "normal": Normal(d, m.shape[1])}
            count = output_positions(layer, a_o, kernel)
            pick = (torch.randperm(count, generator=generator)[:positions]
                    if count > positions else None)
            r_o, r_p = rows(layer, a_o, kernel, pick), rows(layer, a_p, kernel, pick)
            target = r_o @ s["m"] + s["b"] - s["offset"]
            z = r_p[:, torch.as_tensor(s["cols"])]
            if layer.bias is not None:
                z = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)
            s["normal"].add(z, target)
    out = {}
    for layer in level:
        s = state[layer.node]
        prior = s["m"][torch.as_tensor(s["cols"])]
        if layer.bias is not None:
            prior = torch.cat([prior, s["b"][None]])
        sol = s["normal"].solve(ridge, prior)
        m = s["m"].numpy().copy()
        m[s["cols"]] = sol[:len(s["cols"])]
        out[layer.weight] = from_matrix(layer, m, original[layer.weight])
        if layer.bias is not None:
            bias = sol[-1] / bias_scale(layer)
            like = original[layer.bias]
            out[layer.bias] = bias.reshape(like.shape).astype(like.dtype)
    return out
