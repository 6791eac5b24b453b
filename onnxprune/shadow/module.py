"""The shadow model: an ONNX graph executed by PyTorch, with its weights as Parameters.

Our user holds only the ONNX file; retraining needs a differentiable copy of it. The shadow
runs the graph's nodes in order through :mod:`onnxprune.shadow.op_table` (one function per ONNX
op), with every initializer addressed by its initializer name. ``export()`` writes the current
values back into the same graph.

Only weights and biases train: a float initializer becomes an ``nn.Parameter`` when some node
reads it in one of the roles of :data:`_TRAINED` (Conv / ConvTranspose / Gemm / MatMul weights
and biases, the per-channel scales and shifts of PRelu and the normalisations), or adds it
to a layer's output (a bias written as ``Add``). Every other constant is a buffer, so no
optimiser built from ``parameters()`` sees it and weight decay never moves it: a baked-in input
normalisation (``Sub`` a mean, ``Div`` a std), GELU's ``1/sqrt(2)``,
HardSwish's ``+3`` and ``/6``, Clip bounds, Resize scales, BatchNorm's running statistics, and
per-channel ``Mul`` / ``Add`` constants (a BatchNorm written out by hand) all stay fixed. A
constant shared between a trained role and another role trains.

A method may set a mask on a parameter (unstructured pruning): forward and export then use
``parameter * mask``.

Exported graphs have BatchNorm folded into their convolutions, and such networks retrain
worse. :meth:`ShadowModel.add_batchnorm` puts a BatchNorm back after each biased Conv for
training, calibrated on a batch so that the function is unchanged, and ``export()`` folds it
into the Conv's weight and bias again: with ``s = gamma / sqrt(running_var + eps)``,
``W' = s W`` and ``b' = s (b - running_mean) + beta``. The calibration streams: per-channel
sums and sums of squares accumulate over batches, so its memory does not grow with the data.

A graph output made by a final Sigmoid, Softmax or LogSoftmax saturates; distillation compares
the values before it. :attr:`ShadowModel.output_kinds` says, per output, which op made it and
which tensor holds its logits, and :meth:`ShadowModel.forward_logits` returns those tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn
from torch.nn.utils import parametrize

from onnxprune import modelio
from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow.op_table import resolve

# The inputs that hold weights and biases, by op: the only constants that train. MatMul and
# Gemm list every operand, since either side may be the constant weight.
_TRAINED = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
            "PRelu": (1,), "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
            "LayerNormalization": (1, 2), "GroupNormalization": (1, 2)}

_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

_SQUASHES = frozenset({"Sigmoid", "Softmax", "LogSoftmax"})


@dataclass(frozen=True)
class OutputKind:
    """How a graph output is made, for distillation.

    Attributes:
        activation: "Sigmoid", "Softmax" or "LogSoftmax" when that op makes the output, else
            None.
        logits: The tensor distillation compares: the activation's input, else the output.
        axis: The Softmax / LogSoftmax axis (as the op reads it).
        flatten: True before opset 13, when Softmax normalises over all dims from ``axis`` on.
    """

    activation: str | None
    logits: str
    axis: int = -1
    flatten: bool = False


@dataclass(frozen=True)
class _Step:
    fn: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    tensor_attrs: dict[str, str]  # attribute name -> buffer name


class ShadowModel(nn.Module):
    """A ``torch.nn.Module`` that computes what an ONNX model computes.

    ``forward(*inputs)`` takes the graph inputs in order and returns the output tensor, or a
    tuple when the graph has several outputs. Raises UnsupportedModelError, naming the node,
    when the graph uses an op the shadow cannot run; this happens at construction, before any
    training.
    """

    def __init__(self, model: modelio.ModelLike) -> None:
        super().__init__()
        self._proto = model if isinstance(model, onnx.ModelProto) else modelio.load(model)
        graph = modelio.to_graph(self._proto)
        self.input_names = tuple(t.name for t in graph.inputs)
        self.output_names = tuple(t.name for t in graph.outputs)
        self.output_kinds = tuple(_output_kind(t, graph.opset) for t in graph.outputs)
        self._keys: dict[str, str] = {}
        self.weights = nn.ParameterDict()
        trained = {n.inputs[i].name for n in graph.nodes for i in _TRAINED.get(n.op, ())
                   if i < len(n.inputs)} | _added_biases(graph)
        for name, tensor in graph.tensors().items():
            if isinstance(tensor, gs.Constant):
                self._add_constant(name, np.asarray(tensor.values), trainable=name in trained)
        self._steps = [self._step(node, graph.opset, i) for i, node in enumerate(graph.nodes)]
        self._dead = _last_uses(self._steps, set(self._keys))
        self._masks: dict[str, str] = {}
        readers = {name: len(t.outputs) for name, t in graph.tensors().items()}
        self._foldable = [i for i, (step, node) in enumerate(zip(self._steps, graph.nodes,
                                                                  strict=True))
                          if node.op == "Conv" and len(step.inputs) == 3
                          and all(self._trainable(n) and readers[n] == 1 for n in step.inputs[1:])]
        self.batchnorms = nn.ModuleDict()

    def _add_constant(self, name: str, values: np.ndarray, *, trainable: bool) -> None:
        key = _unique_key(name, self._keys.values())
        self._keys[name] = key
        tensor = torch.from_numpy(np.array(values))
        if trainable and tensor.is_floating_point():
            self.weights[key] = nn.Parameter(tensor)
        else:
            self.register_buffer(f"const_{key}", tensor)

    def _step(self, node: gs.Node, opset: int, index: int) -> _Step:
        try:
            fn = resolve(node.op, opset, node.domain or "")
        except UnsupportedModelError as e:
            raise UnsupportedModelError(f"{e} (node '{node.name}')") from e
        attrs: dict[str, Any] = {}
        tensors: dict[str, str] = {}
        for key, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                raise UnsupportedModelError(
                    f"op '{node.op}' with a subgraph (node '{node.name}') is not supported by "
                    "the shadow model")
            if isinstance(value, gs.Constant):  # a buffer, so it moves with the module
                tensors[key] = f"attr_{index}_{key}"
                self.register_buffer(tensors[key], torch.from_numpy(np.array(value.values)))
            else:
                attrs[key] = value
        if node.op == "Split" and "split" not in attrs and "num_outputs" not in attrs:
            attrs["num_outputs"] = len(node.outputs)  # equal parts, one per output
        return _Step(fn, tuple(t.name for t in node.inputs), tuple(t.name for t in node.outputs),
                     attrs, tensors)

    def _trainable(self, name: str) -> bool:
        key = self._keys.get(name)
        return key is not None and key in self.weights and self.weights[key].requires_grad

    # -- parameters and masks --------------------------------------------------------------
    def initializer_names(self) -> list[str]:
        """Names of the float initializers, trainable or not."""
        return [name for name in self._keys if self.parameter(name).is_floating_point()]

    def parameter(self, name: str) -> torch.Tensor:
        """The tensor holding initializer ``name``.

        An ``nn.Parameter`` when it trains (a weight or bias), otherwise a buffer that does
        not require grad.
        """
        key = self._keys[name]
        return self.weights[key] if key in self.weights else getattr(self, f"const_{key}")

    def set_mask(self, name: str, mask: torch.Tensor | np.ndarray | None) -> None:
        """Multiply initializer ``name`` by ``mask`` in forward and export (None removes it)."""
        key = f"mask_{self._keys[name]}"
        if mask is None:
            self._masks.pop(name, None)
            self.register_buffer(key, None)
            return
        mask = torch.as_tensor(mask, dtype=self.parameter(name).dtype,
                               device=self.parameter(name).device)
        if mask.shape != self.parameter(name).shape:
            raise ValueError(f"mask of shape {tuple(mask.shape)} for '{name}' of shape "
                             f"{tuple(self.parameter(name).shape)}")
        self.register_buffer(key, mask)
        self._masks[name] = key

    def parametrize(self, name: str, parametrization: nn.Module | None) -> None:
        """Train initializer ``name`` through ``parametrization`` (``torch.nn.utils.parametrize``).

        The tensor that trains becomes ``parametrization.right_inverse`` of the current value,
        and forward and export read ``parametrization(that)``. None bakes the current value in
        and makes the initializer a plain parameter again.
        """
        key = self._keys[name]
        if parametrization is None:
            if parametrize.is_parametrized(self.weights, key):
                parametrize.remove_parametrizations(self.weights, key)
            return
        parametrize.register_parametrization(self.weights, key, parametrization)

    def parametrization(self, name: str) -> nn.Module:
        """The parametrization initializer ``name`` trains through (see :meth:`parametrize`)."""
        return self.weights.parametrizations[self._keys[name]][0]

    def original(self, name: str) -> torch.Tensor:
        """The tensor that trains for a parametrized initializer ``name``."""
        return self.weights.parametrizations[self._keys[name]].original

    def mask(self, name: str) -> torch.Tensor | None:
        """The mask set on initializer ``name``, if any."""
        key = self._masks.get(name)
        return getattr(self, key) if key else None

    def masked(self, name: str) -> torch.Tensor:
        """Trainable initializer ``name`` as forward uses it: times its mask, if it has one."""
        mask = self.mask(name)
        return self.parameter(name) * mask if mask is not None else self.parameter(name)

    def values(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every constant by initializer name, masks applied: what forward and export use."""
        for name in self._keys:
            value = self.parameter(name)
            mask_key = self._masks.get(name)
            yield name, value * getattr(self, mask_key) if mask_key else value

    # -- BatchNorm for training -------------------------------------------------------------
    def add_batchnorm(self, x: torch.Tensor | Iterable[torch.Tensor]) -> int:
        """Insert a BatchNorm after every biased Conv, calibrated so the function is unchanged.

        ``x`` is a batch or an iterable of batches; the statistics of each Conv's output over
        all of them set the new BatchNorm (running mean and variance, and bias and scale that
        undo them), one batch in memory at a time. Returns how many BatchNorms there are.
        Convolutions whose weight or bias is shared, frozen or absent get none.
        """
        sums: dict[int, list[Any]] = {}  # step -> [count, sum, sum of squares], per channel
        foldable = set(self._foldable)

        def observe(i: int, y: torch.Tensor) -> None:
            if i not in foldable or y.ndim != 4 or str(i) in self.batchnorms:
                return
            y = y.double()
            got = sums.setdefault(i, [0, 0.0, 0.0])
            got[0] += y.numel() // y.shape[1]
            got[1] = got[1] + y.sum((0, 2, 3))
            got[2] = got[2] + y.square().sum((0, 2, 3))

        with torch.no_grad():
            for batch in [x] if isinstance(x, torch.Tensor) else x:
                self._run((batch,), keep=frozenset(), tap=observe)
        for i, (count, total, squares) in sums.items():
            mean = total / count
            var = (squares / count - mean.square()).clamp_min(0)
            bn = nn.BatchNorm2d(len(mean)).to(mean.device)
            with torch.no_grad():
                bn.weight.copy_(torch.sqrt(var + bn.eps))
                bn.bias.copy_(mean)
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
            self.batchnorms[str(i)] = bn
        return len(self.batchnorms)

    def folded_values(self) -> dict[str, torch.Tensor]:
        """Every constant by initializer name as export writes it.

        Masks are applied and inserted BatchNorms folded into their Conv's weight and bias.
        """
        values = dict(self.values())
        for key, bn in self.batchnorms.items():
            weight, bias = self._steps[int(key)].inputs[1:]
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            values[weight] = values[weight] * s.reshape(-1, 1, 1, 1)
            values[bias] = (values[bias] - bn.running_mean) * s + bn.bias
        return values

    # -- execution -------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph on ``inputs`` (in graph-input order)."""
        outputs = self.tensors(inputs, self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def forward_logits(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per graph output, the values before its final Sigmoid / Softmax / LogSoftmax.

        An output made by another op is returned as it is (see :attr:`output_kinds`).
        """
        return self.tensors(inputs, [kind.logits for kind in self.output_kinds])

    def tensors(self, inputs: Sequence[torch.Tensor],
                names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """The graph tensors ``names`` computed from ``inputs``; the others are freed early."""
        env = self._run(tuple(inputs), keep=frozenset(names))
        return tuple(env[name] for name in names)

    def _run(self, inputs: tuple[torch.Tensor, ...], keep: frozenset[str] | None = None,
             tap: Callable[[int, torch.Tensor], None] | None = None) -> dict[str, Any]:
        """The tensors of the graph computed from ``inputs``.

        Every tensor when ``keep`` is None; otherwise the names in ``keep`` (and the
        constants), each other tensor dropped after its last reader. ``tap(i, y)`` sees the
        (single) output of every step ``i``.
        """
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} input(s), "
                             f"got {len(inputs)}")
        env: dict[str, Any] = dict(self.values())
        env.update(zip(self.input_names, inputs, strict=True))
        env[""] = None
        bns = self.batchnorms
        for i, step in enumerate(self._steps):
            attrs = step.attrs
            if step.tensor_attrs:
                attrs = {**attrs, **{k: getattr(self, b) for k, b in step.tensor_attrs.items()}}
            result = step.fn(*[env[name] for name in step.inputs], **attrs)
            if isinstance(result, tuple):
                env.update(zip(step.outputs, result, strict=False))
            else:
                bn = bns[str(i)] if bns and str(i) in bns else None
                env[step.outputs[0]] = bn(result) if bn is not None else result
                if tap is not None:
                    tap(i, result)
            if keep is not None:
                for name in self._dead[i]:
                    if name not in keep:
                        env.pop(name, None)
        return env

    def export(self) -> onnx.ModelProto:
        """The same graph as the source model, with every initializer's current value.

        Masks are applied and inserted BatchNorms folded into their convolutions.
        """
        return modelio.with_initializers(self._proto, self.snapshot())

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of every float initializer, trainable or not, as :meth:`export` writes it."""
        with torch.no_grad():
            return {name: value.detach().cpu().numpy().copy()
                    for name, value in self.folded_values().items()
                    if value.is_floating_point()}


def _added_biases(graph: gs.Graph) -> set[str]:
    """Constants of several values added straight to a layer's output: biases as ``Add``.

    ``nn.Linear`` on 3-D inputs exports ``MatMul`` then ``Add``; PaddlePaddle adds every Conv
    bias that way. A single value (HardSwish's ``+3`` after a Conv) is no bias.
    """
    found = set()
    for node in graph.nodes:
        if node.op != "Add" or len(node.inputs) != 2:
            continue
        for const, other in (node.inputs, node.inputs[::-1]):
            if (isinstance(const, gs.Constant) and const.values.size > 1 and other.inputs
                    and other.inputs[0].op in _LAYERS):
                found.add(const.name)
    return found


def _output_kind(tensor: gs.Tensor, opset: int) -> OutputKind:
    """How graph output ``tensor`` is made: by a final Sigmoid / Softmax / LogSoftmax or not."""
    node = tensor.inputs[0] if tensor.inputs else None
    if node is None or node.op not in _SQUASHES or (node.domain or "") not in ("", "ai.onnx"):
        return OutputKind(None, tensor.name)
    if node.op == "Sigmoid":
        return OutputKind("Sigmoid", node.inputs[0].name)
    legacy = opset < 13
    return OutputKind(node.op, node.inputs[0].name, int(node.attrs.get("axis", 1 if legacy
                                                                         else -1)), legacy)


def _last_uses(steps: Sequence[_Step], constants: set[str]) -> list[tuple[str, ...]]:
    """Per step, the non-constant tensors no later step reads (they may be freed after it)."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in (*step.inputs, *step.outputs):
            last[name] = i
    dead: list[list[str]] = [[] for _ in steps]
    for name, i in last.items():
        if name and name not in constants:
            dead[i].append(name)
    return [tuple(names) for names in dead]


def _unique_key(name: str, taken: Any) -> str:
    key = re.sub(r"\W", "_", name) or "t"
    taken = set(taken)
    base, k = key, 1
    while key in taken:
        key = f"{base}_{k}"
        k += 1
    return key
