"""The shadow model: an ONNX graph executed by PyTorch, with its weights as Parameters.

Our user holds only the ONNX file; retraining needs a differentiable copy of it. The shadow
runs the graph's nodes in order through :mod:`onnxprune.shadow.op_table` (one function per ONNX
op), with every float initializer as an ``nn.Parameter`` addressed by its initializer name and
integer constants as buffers. ``export()`` writes the current values back into the same graph.

A method may set a mask on a parameter (unstructured pruning): forward and export then use
``parameter * mask``.

Exported graphs have BatchNorm folded into their convolutions, and such networks retrain
worse. :meth:`ShadowModel.add_batchnorm` puts a BatchNorm back after each biased Conv for
training, calibrated on a batch so that the function is unchanged, and ``export()`` folds it
into the Conv's weight and bias again: with ``s = gamma / sqrt(running_var + eps)``,
``W' = s W`` and ``b' = s (b - running_mean) + beta``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
from torch import nn

from onnxprune import modelio
from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow.op_table import resolve

# Inputs that configure an op rather than carry weights: parameters, but never trained.
_SETTINGS = {"Clip": (1, 2), "Resize": (1, 2), "Upsample": (1,), "Pad": (2,), "Dropout": (1, 2),
             "Pow": (1,)}


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
        self._keys: dict[str, str] = {}
        self.weights = nn.ParameterDict()
        frozen = {n.inputs[i].name for n in graph.nodes for i in _SETTINGS.get(n.op, ())
                  if i < len(n.inputs)}
        for name, tensor in graph.tensors().items():
            if isinstance(tensor, gs.Constant):
                self._add_constant(name, np.asarray(tensor.values), trainable=name not in frozen)
        self._steps = [self._step(node, graph.opset, i) for i, node in enumerate(graph.nodes)]
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
        if np.issubdtype(values.dtype, np.floating):
            self.weights[key] = nn.Parameter(tensor, requires_grad=trainable)
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
        """Names of the float initializers, which are this module's parameters."""
        return [name for name, key in self._keys.items() if key in self.weights]

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter holding initializer ``name``."""
        return self.weights[self._keys[name]]

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
        for name, key in self._keys.items():
            if key in self.weights:
                value = self.weights[key]
                mask_key = self._masks.get(name)
                yield name, value * getattr(self, mask_key) if mask_key else value
            else:
                yield name, getattr(self, f"const_{key}")

    # -- BatchNorm for training -------------------------------------------------------------
    def add_batchnorm(self, x: torch.Tensor) -> int:
        """Insert a BatchNorm after every biased Conv, calibrated so ``forward(x)`` is unchanged.

        Returns how many were inserted. Convolutions whose weight or bias is shared, frozen or
        absent get none.
        """
        with torch.no_grad():
            env = self._run((x,))
        for i in self._foldable:
            y = env[self._steps[i].outputs[0]]
            if y.ndim != 4 or str(i) in self.batchnorms:
                continue
            mean, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
            bn = nn.BatchNorm2d(y.shape[1]).to(y.device)
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
        env = self._run(inputs)
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """Every tensor of the graph, computed from ``inputs``."""
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
        return env

    def export(self) -> onnx.ModelProto:
        """The same graph as the source model, with the current parameter values.

        Masks are applied and inserted BatchNorms folded into their convolutions.
        """
        return modelio.with_initializers(self._proto, self.snapshot())

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of every trainable initializer as :meth:`export` writes it."""
        with torch.no_grad():
            return {name: value.detach().cpu().numpy().copy()
                    for name, value in self.folded_values().items()
                    if self._keys[name] in self.weights}


def _unique_key(name: str, taken: Any) -> str:
    key = re.sub(r"\W", "_", name) or "t"
    taken = set(taken)
    base, k = key, 1
    while key in taken:
        key = f"{base}_{k}"
        k += 1
    return key
