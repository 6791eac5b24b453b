"""Small graphsurgeon idioms shared by analysis and the passes, so each is written once."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """Return the values of ``tensor`` when it is a constant (an initializer), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def set_values(tensor: gs.Constant, values: np.ndarray) -> None:
    """Replace the values of a constant in place (shape may change)."""
    tensor.values = np.ascontiguousarray(values)


def attr(node: gs.Node, name: str, default: object = None) -> object:
    """Return attribute ``name`` of ``node``, or ``default`` when absent."""
    return node.attrs.get(name, default)


def input_or_none(node: gs.Node, index: int) -> gs.Tensor | None:
    """Return input ``index`` of ``node``, or None when absent or the empty optional input."""
    if index < len(node.inputs) and node.inputs[index].name != "":
        return node.inputs[index]
    return None


def replace_tensor(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every reader of ``old`` (nodes and graph outputs) read ``new`` instead."""
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    graph.outputs = [new if t is old else t for t in graph.outputs]


def clear_inner_shapes(graph: gs.Graph) -> None:
    """Forget the shapes of all inner variables, so shape inference recomputes them.

    Exporters write known shapes into ``value_info``; after channels are removed those are
    stale, and a stale shape fails the checker.
    """
    keep = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = None


def spatial_size(tensor: gs.Tensor) -> int | None:
    """Return the product of the dimensions after the first two (1 for rank 2).

    None when the shape or any of those dimensions is unknown or symbolic: a FLOPs count must
    not quietly take an unknown height as 1.
    """
    if tensor.shape is None:
        return None
    size = 1
    for d in list(tensor.shape)[2:]:
        if not (isinstance(d, int) and d > 0):
            return None
        size *= d
    return size
