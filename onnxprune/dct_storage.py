"""Kernels stored as their sparse 2-D DCT coefficients, rebuilt by two constant MatMuls.

A kernel ``W`` (the last two axes of a Conv weight) is ``Dh^T C Dw`` with ``C`` its 2-D DCT
coefficients (``D`` the orthonormal DCT-II matrix). When ``C`` is sparse and ``W`` is not, as
after ``fdp``, storing ``C`` compactly (:mod:`onnxprune.compact`) and the two matrices takes
far fewer bytes than ``W``::

    compact subgraph -> coefficients; MatMul(Dh^T, coefficients) -> MatMul(., Dw) -> W

onnxruntime folds the MatMuls with the rest when a session opens, so the model runs at the
dense model's speed; loading folds them back (:func:`restore`). The coefficients are computed
again from the weight being saved, in float64: entries at most :data:`TOLERANCE` of the
largest are float noise of the training's float32 and become zeros; the storage is used only
when the kernels come back within that tolerance. Like :mod:`onnxprune.modelio` this module
touches protos.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxprune import compact

TOLERANCE = 1e-6  # relative to the largest coefficient / weight of the tensor


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix of size ``n`` (float64): row ``i`` is frequency ``i``."""
    k = np.arange(n, dtype=np.float64)
    d = np.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def coefficients(values: np.ndarray) -> np.ndarray | None:
    """The kernels' DCT coefficients with float noise zeroed, or None when they do not serve.

    None for a tensor that is not a float32 stack of kernels larger than 1x1, or whose
    zeroed coefficients do not give the kernels back within :data:`TOLERANCE`.
    """
    if values.dtype != np.float32 or values.ndim < 3 or values.shape[-1] * values.shape[-2] < 2:
        return None
    dh, dw = dct_matrix(values.shape[-2]), dct_matrix(values.shape[-1])
    c = dh @ values.astype(np.float64) @ dw.T
    largest = np.abs(c).max()
    if largest == 0:
        return None
    c[np.abs(c) <= TOLERANCE * largest] = 0
    if np.abs(dh.T @ c @ dw - values).max() > TOLERANCE * np.abs(values).max():
        return None
    return c.astype(np.float32)


def subgraph(name: str, c: np.ndarray,
             taken: set[str]) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """The initializers and nodes that compute the kernels ``name`` from coefficients ``c``.

    As :func:`onnxprune.compact.subgraph`: the nodes read only the returned initializers and
    go at the front of a graph; the names are ``d{k}.*`` with a ``k`` free in ``taken``.
    """
    k = 0
    while any(f"d{k}.{role}" in taken | {name} for role in ("c", "rows", "columns", "half")):
        k += 1
    prefix = f"d{k}."
    initializers, nodes = compact.subgraph(f"{prefix}c", compact.encode(c), taken)
    rows = onnx.numpy_helper.from_array(dct_matrix(c.shape[-2]).T.astype(np.float32),
                                        f"{prefix}rows")
    columns = onnx.numpy_helper.from_array(dct_matrix(c.shape[-1]).astype(np.float32),
                                           f"{prefix}columns")
    nodes += [onnx.helper.make_node("MatMul", [rows.name, f"{prefix}c"], [f"{prefix}half"]),
              onnx.helper.make_node("MatMul", [f"{prefix}half", columns.name], [name])]
    return [*initializers, rows, columns], nodes


def restore(graph: onnx.GraphProto) -> None:
    """Fold, in place, each MatMul of two initializers into the initializer it computes.

    Run after :func:`onnxprune.compact.restore`, it gives back the kernels :func:`subgraph`
    stored (a loaded model then holds them as initializers, as when stored densely). An
    initializer no other node reads goes with its MatMul; graph outputs are left alone.
    """
    outputs = {o.name for o in graph.output}
    while True:
        inits = {t.name: t for t in graph.initializer}
        node = next((n for n in graph.node if n.op_type == "MatMul" and len(n.input) == 2
                     and all(i in inits for i in n.input) and n.output[0] not in outputs),
                    None)
        if node is None:
            return
        a, b = (onnx.numpy_helper.to_array(inits[i]) for i in node.input)
        product = np.matmul(a, b).astype(np.result_type(a, b))
        graph.node.remove(node)
        read = {i for n in graph.node for i in n.input} | outputs
        kept = [t for t in graph.initializer if t.name not in node.input or t.name in read]
        del graph.initializer[:]
        graph.initializer.extend([*kept, onnx.numpy_helper.from_array(product, node.output[0])])
