"""Sparse storage: sparse tensors made dense on load, mostly-zero weights stored compactly.

Graph libraries drop or corrupt ``sparse_initializer`` (DESIGN.md), so everything between load
and save sees dense tensors. On save each float initializer is stored the smallest of four
ways: dense, as an ONNX ``sparse_initializer``, compactly (:mod:`onnxprune.compact`: kept
values, narrow gaps and a constant subgraph that rebuilds it), or, for kernels sparse in the
frequency domain, as compact DCT coefficients (:mod:`onnxprune.dct_storage`). Like
:mod:`onnxprune.modelio` this module touches protos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxprune import compact, dct_storage

MIN_SIZE = 16  # smaller initializers stay dense: storing them otherwise saves next to nothing
DENSE, SPARSE, COMPACT, DCT = "dense", "sparse", "compact", "dct"


@dataclass(frozen=True)
class Stored:
    """How :func:`store` stores one initializer, and what it costs.

    ``format`` is ``"dense"``, ``"sparse"`` (an ONNX ``sparse_initializer``), ``"compact"`` or
    ``"dct"`` (kernels as compact DCT coefficients, :mod:`onnxprune.dct_storage`); ``nbytes``
    is what its protos add to the serialised graph; ``kept`` counts its non-zeros (for
    ``"dct"``, non-zero coefficients) among ``size`` elements.
    """

    name: str
    format: str
    nbytes: int
    kept: int
    size: int


@dataclass(frozen=True)
class _Choice:
    """A :class:`Stored` with the protos that store it."""

    stored: Stored
    initializers: list[onnx.TensorProto]
    nodes: list[onnx.NodeProto]
    sparse: onnx.SparseTensorProto | None = None


FORMATS = (DENSE, SPARSE, COMPACT, DCT)


def store(model: onnx.ModelProto, formats: tuple[str, ...] = FORMATS) -> onnx.ModelProto:
    """Return a copy of ``model`` with each float initializer stored the smallest way.

    Dense, ONNX sparse (values plus int64 flat indices: 12 bytes per non-zero at float32) or
    compact (about 5 bytes at 1 % density; opset 11 or newer), by the bytes each adds to the
    serialised graph. Compact subgraphs go at the front of the graph and produce the tensor
    under its own name; onnxruntime folds them, and densifies sparse initializers, when a
    session opens. Run this last, on the ModelProto: graph libraries drop or corrupt sparse
    initializers. Check the dense model with the full checker first: onnx's shape inference
    cannot type sparse initializers. ``formats`` limits the choice (dense is always allowed).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers, nodes, sparse = [], [], []
    for choice in _choices(out, formats):
        initializers.extend(choice.initializers)
        nodes.extend(choice.nodes)
        if choice.sparse is not None:
            sparse.append(choice.sparse)
    nodes.extend(graph.node)
    del graph.initializer[:], graph.node[:]
    graph.initializer.extend(initializers)
    graph.node.extend(nodes)
    graph.sparse_initializer.extend(sparse)
    return out


def describe(model: onnx.ModelProto, formats: tuple[str, ...] = FORMATS) -> list[Stored]:
    """How :func:`store` would store each initializer of ``model``, in order."""
    return [choice.stored for choice in _choices(model, formats)]


def _choices(model: onnx.ModelProto, formats: tuple[str, ...]) -> list[_Choice]:
    """The smallest storage of each initializer (ties go to dense, then sparse)."""
    graph = model.graph
    taken = _names(graph)
    inputs = {value.name for value in graph.input}  # a graph input cannot be a node output
    can_compact = _opset(model) >= compact.MIN_OPSET
    found = []
    for tensor in graph.initializer:
        values = onnx.numpy_helper.to_array(tensor)
        kept = int(np.count_nonzero(values))
        options = [_Choice(Stored(tensor.name, DENSE, _framed(tensor), kept, values.size),
                           [tensor], [])]
        if (values.dtype.kind == "f" and values.size >= MIN_SIZE
                and kept * (values.itemsize + 1) < values.nbytes):  # else dense is smallest
            options.append(_sparse(tensor.name, values, kept))
            if can_compact and values.dtype.type in compact.DTYPES and tensor.name not in inputs:
                options.append(_compact(tensor.name, values, kept, taken))
        if can_compact and tensor.name not in inputs and values.size >= MIN_SIZE:
            c = dct_storage.coefficients(values)
            if c is not None and np.count_nonzero(c) * (c.itemsize + 1) < values.nbytes:
                options.append(_dct(tensor.name, c, taken))
        best = min((o for o in options if o.stored.format in (DENSE, *formats)),
                   key=lambda choice: choice.stored.nbytes)
        if best.stored.format in (COMPACT, DCT):
            taken.update(t.name for t in best.initializers)
            taken.update(name for node in best.nodes for name in node.output)
        found.append(best)
    return found


def _sparse(name: str, values: np.ndarray, kept: int) -> _Choice:
    flat = values.reshape(-1)
    nonzero = np.flatnonzero(flat)
    tensor = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(flat[nonzero], name),
        onnx.numpy_helper.from_array(nonzero.astype(np.int64), f"{name}_indices"),
        list(values.shape))
    return _Choice(Stored(name, SPARSE, _framed(tensor), kept, values.size), [], [], tensor)


def _compact(name: str, values: np.ndarray, kept: int, taken: set[str]) -> _Choice:
    initializers, nodes = compact.subgraph(name, compact.encode(values), taken)
    size = sum(map(_framed, [*initializers, *nodes]))
    return _Choice(Stored(name, COMPACT, size, kept, values.size), initializers, nodes)


def _dct(name: str, c: np.ndarray, taken: set[str]) -> _Choice:
    initializers, nodes = dct_storage.subgraph(name, c, taken)
    size = sum(map(_framed, [*initializers, *nodes]))
    return _Choice(Stored(name, DCT, size, int(np.count_nonzero(c)), c.size), initializers,
                   nodes)


def _framed(message: onnx.TensorProto | onnx.NodeProto | onnx.SparseTensorProto) -> int:
    """Bytes ``message`` adds as an entry of a graph's repeated field: tag, length, body."""
    size = message.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size  # the length is a 7-bit varint


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` uses or declares, its subgraphs' included."""
    names = {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    names |= {v.name for v in [*graph.input, *graph.output, *graph.value_info]}
    for node in graph.node:
        names.update(node.input, node.output)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else attribute.graphs):
                names |= _names(sub)
    return names


def _opset(model: onnx.ModelProto) -> int:
    """The default ONNX domain's version (``modelio.opset_version``, which imports us)."""
    return next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 0)


def densify(model: onnx.ModelProto) -> None:
    """Store sparse initializers, sparse Constant values and compact weights densely.

    Graphsurgeon drops sparse tensors; the shadow model cannot run a compact subgraph, and
    analysis reads kernels from initializers, not from the MatMuls of DCT storage.
    """
    graph = model.graph
    compact.restore(graph)
    dct_storage.restore(graph)
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
