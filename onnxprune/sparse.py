"""Sparse storage: sparse tensors made dense on load, mostly-zero weights stored sparsely.

Graph libraries drop or corrupt ``sparse_initializer`` (DESIGN.md), so everything between load
and save sees dense tensors. Like :mod:`onnxprune.modelio` this module touches protos.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper


def store(model: onnx.ModelProto, *, max_density: float = 1 / 3) -> onnx.ModelProto:
    """Return a copy of ``model`` with its sparse float initializers stored as sparse tensors.

    An initializer whose share of non-zeros is at most ``max_density`` becomes a
    ``sparse_initializer`` (values plus int64 flat indices: 12 bytes per non-zero at float32,
    so it pays below about 1/3 density). onnxruntime densifies them at load. Run this last, on
    the ModelProto: graph libraries drop or corrupt sparse initializers. Check the dense model
    with the full checker first: onnx's shape inference cannot type sparse initializers.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dense = []
    for tensor in out.graph.initializer:
        values = onnx.numpy_helper.to_array(tensor)
        flat = values.reshape(-1)
        nonzero = np.flatnonzero(flat)
        if values.dtype.kind != "f" or values.size < 16 or nonzero.size > max_density * flat.size:
            dense.append(tensor)
            continue
        out.graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(
            onnx.numpy_helper.from_array(flat[nonzero], tensor.name),
            onnx.numpy_helper.from_array(nonzero.astype(np.int64), f"{tensor.name}_indices"),
            list(values.shape)))
    del out.graph.initializer[:]
    out.graph.initializer.extend(dense)
    return out


def densify(model: onnx.ModelProto) -> None:
    """Store sparse initializers and sparse Constant values densely (graphsurgeon drops them)."""
    graph = model.graph
    graph.initializer.extend(_dense(s) for s in graph.sparse_initializer)
    del graph.sparse_initializer[:]
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.name == "sparse_value":
                dense = _dense(attribute.sparse_tensor)
                attribute.Clear()
                attribute.CopyFrom(onnx.helper.make_attribute("value", dense))


def _dense(sparse: onnx.SparseTensorProto) -> onnx.TensorProto:
    values = onnx.numpy_helper.to_array(sparse.values)
    dims = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
    indices = onnx.numpy_helper.to_array(sparse.indices).astype(np.int64)
    if indices.ndim == 2:  # one row of coordinates per value
        indices = np.ravel_multi_index(indices.T, dims)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return onnx.numpy_helper.from_array(dense.reshape(dims), sparse.values.name)
