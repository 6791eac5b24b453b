"""Compact storage of a mostly-zero float tensor, rebuilt by a constant subgraph of ONNX ops.

ONNX's own ``sparse_initializer`` stores an int64 index beside every kept value: 12 bytes per
float32, so it pays only below 1/3 density, and graph libraries drop it (DESIGN.md). Here a
tensor is stored as two ordinary initializers, its kept values (dtype T, flat order) and the
gaps between consecutive kept flat positions (uint8 or uint16, whichever is smaller), and a
few standard ops rebuild it under its own name, so consumers need no change::

    Cast(deltas -> int64) -> CumSum -> positions
    ScatterElements(ConstantOfShape([size]), positions, values) -> Reshape(dims) -> name

About 5 bytes per kept float32 at 1 % density. onnxruntime folds the subgraph into an
initializer when it opens a session (any optimisation level but ``ORT_DISABLE_ALL``, which
runs it at every inference); loading turns it back into the dense initializer
(:func:`restore`, called by ``sparse.densify``; ``FoldConstantSubgraphsPass`` would fold it
too, and folds whatever nodes another method adds after such a tensor).
The first delta is the first position itself (the cumulative sum then needs no offset); a gap
wider than the delta type holds is bridged by filler entries of value 0 and the largest delta,
so decoding stays exact. Zeros of either sign count as not kept (they come back as +0.0).
Like :mod:`onnxprune.modelio` this module touches protos.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

MIN_OPSET = 11  # CumSum and ScatterElements
DTYPES = (np.float16, np.float32, np.float64)  # ConstantOfShape's float types at opset 11
_DELTAS = (np.uint8, np.uint16)  # narrowest first: it wins ties
_ROLES = ("values", "deltas", "axis", "size", "dims", "steps", "positions", "zeros", "flat")


@dataclass(frozen=True)
class Compact:
    """A tensor of ``dims`` as its kept ``values`` and the ``deltas`` between their positions.

    ``values`` and ``deltas`` are 1-D and of equal length; position ``i`` of the flattened
    tensor is ``cumsum(deltas)[i]``. Filler entries (value 0) bridge gaps wider than the
    delta type holds.
    """

    values: np.ndarray
    deltas: np.ndarray
    dims: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        """The tensor's float dtype."""
        return self.values.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the stored values and deltas (the subgraph's few bytes not included)."""
        return self.values.nbytes + self.deltas.nbytes

    @property
    def kept(self) -> int:
        """How many non-zero values it stores (fillers not counted)."""
        return int(np.count_nonzero(self.values))


def encode(values: np.ndarray) -> Compact:
    """The compact form of the float array ``values``, with the delta type that stores less."""
    array = np.asarray(values)
    if array.dtype.type not in DTYPES:
        raise TypeError(f"compact storage takes float16, float32 or float64, not {array.dtype}")
    flat = array.reshape(-1)
    positions = np.flatnonzero(flat)
    gaps = np.diff(positions, prepend=0)  # the first is the first position itself
    entries = {d: _entries(gaps, int(np.iinfo(d).max)) for d in _DELTAS}
    delta = min(_DELTAS, key=lambda d: int(entries[d].sum()) * (flat.itemsize + d().itemsize))
    counts = entries[delta]
    largest = int(np.iinfo(delta).max)
    last = np.cumsum(counts) - 1  # where each kept value goes, after its fillers
    deltas = np.full(int(counts.sum()), largest, dtype=delta)
    deltas[last] = gaps - largest * (counts - 1)
    stored = np.zeros(deltas.size, dtype=flat.dtype)
    stored[last] = flat[positions]
    return Compact(stored, deltas, tuple(int(d) for d in array.shape))


def _entries(gaps: np.ndarray, largest: int) -> np.ndarray:
    """Entries per gap when a delta holds at most ``largest``: 1, plus fillers for wide gaps."""
    return np.maximum(1, -(-gaps // largest))


def decode(c: Compact) -> np.ndarray:
    """The dense tensor ``c`` stores (the numpy reference of :func:`subgraph`)."""
    flat = np.zeros(int(np.prod(c.dims, dtype=np.int64)), dtype=c.dtype)
    flat[np.cumsum(c.deltas, dtype=np.int64)] = c.values
    return flat.reshape(c.dims)


def subgraph(name: str, c: Compact,
             taken: set[str]) -> tuple[list[onnx.TensorProto], list[onnx.NodeProto]]:
    """The initializers and nodes (in topological order) that compute tensor ``name`` from ``c``.

    The nodes read only the returned initializers, so they can go at the front of a graph,
    and need opset :data:`MIN_OPSET`. The other tensors are named ``c{k}.{role}`` with the
    first ``k`` whose names are not in ``taken``, which is left as it is: the caller adds them
    once it keeps the result. Short names and unnamed nodes spare bytes (the names recur 18
    times); onnxruntime folds the nodes away when a session opens, and loading restores the
    initializer ``name`` (:func:`restore`).
    """
    prefix = _prefix(name, taken)
    zero = onnx.numpy_helper.from_array(np.zeros(1, dtype=c.dtype))
    make = onnx.helper.make_node
    dims = onnx.numpy_helper.from_array(np.array(c.dims, dtype=np.int64), f"{prefix}dims")
    if not c.deltas.size:  # nothing kept: zeros of the tensor's shape
        return [dims], [make("ConstantOfShape", [dims.name], [name], value=zero)]
    values = onnx.numpy_helper.from_array(c.values, f"{prefix}values")
    deltas = onnx.numpy_helper.from_array(c.deltas, f"{prefix}deltas")
    axis = onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), f"{prefix}axis")
    size = onnx.numpy_helper.from_array(np.array([np.prod(c.dims, dtype=np.int64)]),
                                        f"{prefix}size")
    steps, positions, zeros = f"{prefix}steps", f"{prefix}positions", f"{prefix}zeros"
    flat = name if len(c.dims) == 1 else f"{prefix}flat"
    nodes = [make("Cast", [deltas.name], [steps], to=onnx.TensorProto.INT64),
             make("CumSum", [steps, axis.name], [positions]),
             make("ConstantOfShape", [size.name], [zeros], value=zero),
             make("ScatterElements", [zeros, positions, values.name], [flat], axis=0)]
    initializers = [values, deltas, axis, size]
    if flat != name:
        nodes.append(make("Reshape", [flat, dims.name], [name]))
        initializers.append(dims)
    return initializers, nodes


def _prefix(name: str, taken: set[str]) -> str:
    """``c{k}.`` for the first ``k`` whose role names are neither ``name`` nor in ``taken``."""
    k = 0
    while any(f"c{k}.{role}" in taken or f"c{k}.{role}" == name for role in _ROLES):
        k += 1
    return f"c{k}."


def restore(graph: onnx.GraphProto) -> None:
    """Replace, in place, each subgraph :func:`subgraph` built by the initializer it computes.

    So a loaded model holds such a weight as an initializer of its name, as when it was stored
    densely, also for readers that fold no constants (the shadow model has no ScatterElements).
    A lookalike that differs in an attribute, a dtype or a value, or whose intermediate tensors
    have other readers, stays: ``FoldConstantSubgraphsPass`` folds what is constant.
    """
    nodes = list(graph.node)  # the same wrappers throughout: their ids name them
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in nodes for out in node.output}
    readers = Counter(_reads(graph))
    found, chains = [], set()
    for node in reversed(nodes):  # a Reshape before the ScatterElements it reshapes
        if id(node) not in chains and (match := _match(node, producers, inits, readers)):
            found.append(match)
            chains.update(id(n) for n in match[0])
    if not found:
        return
    gone = {out for chain, _ in found for node in chain[1:] for out in node.output}
    read = {name for chain, _ in found for node in chain for name in node.input if name in inits}
    kept = [node for node in nodes if id(node) not in chains]
    del graph.node[:]
    graph.node.extend(kept)
    readers = Counter(_reads(graph))
    gone |= {name for name in read if not readers[name]}
    initializers = [t for t in graph.initializer if t.name not in gone]
    initializers += [onnx.numpy_helper.from_array(decode(c), chain[0].output[0])
                     for chain, c in found]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    shapes = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(shapes)


def _match(last: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
           inits: dict[str, onnx.TensorProto],
           readers: Counter[str]) -> tuple[list[onnx.NodeProto], Compact] | None:
    """The nodes of the subgraph that ends at ``last`` (last first) and what it stores."""
    def array(name: str) -> np.ndarray | None:
        return onnx.numpy_helper.to_array(inits[name]) if name in inits else None

    def producer(name: str) -> onnx.NodeProto | None:  # of a tensor read by this chain alone
        return producers.get(name) if readers[name] == 1 else None

    chain, dims = [last], None
    if last.op_type == "Reshape" and len(last.input) == 2:
        dims = array(last.input[1])
        chain.append(producer(last.input[0]) if dims is not None else None)
    scatter = chain[-1]
    if scatter is None or scatter.op_type != "ScatterElements" or len(scatter.input) != 3:
        return None
    zeros, cumsum = producer(scatter.input[0]), producer(scatter.input[1])
    cast = producer(cumsum.input[0]) if cumsum is not None and cumsum.input else None
    if zeros is None or cast is None:
        return None
    chain += [cumsum, cast, zeros]
    values, deltas = array(scatter.input[2]), array(cast.input[0])
    axis, size = array(cumsum.input[1]), array(zeros.input[0])
    zero = _attr(zeros, "value")
    if (values is None or deltas is None or axis is None or size is None or zero is None
            or [n.op_type for n in chain[-3:]] != ["CumSum", "Cast", "ConstantOfShape"]
            or (_attr(scatter, "axis", 0), _attr(scatter, "reduction", b"none")) != (0, b"none")
            or (_attr(cumsum, "exclusive", 0), _attr(cumsum, "reverse", 0)) != (0, 0)
            or _attr(cast, "to") != onnx.TensorProto.INT64 or axis.shape or axis != 0):
        return None
    zero = onnx.numpy_helper.to_array(zero)
    dims = size if dims is None else dims
    if (values.dtype.type not in DTYPES or deltas.dtype.type not in _DELTAS
            or zero.dtype != values.dtype or zero.shape != (1,) or zero[0] != 0
            or values.shape != deltas.shape or values.ndim != 1 or size.dtype != np.int64
            or size.shape != (1,) or dims.dtype != np.int64 or dims.ndim != 1
            or (dims < 1).any() or np.prod(dims) != size[0]):
        return None
    positions = np.cumsum(deltas, dtype=np.int64)
    if positions.size and (positions[-1] >= size[0] or (deltas[1:] == 0).any()):
        return None  # out of range or repeated: what ScatterElements refuses or leaves open
    return chain, Compact(values, deltas, tuple(int(d) for d in dims))


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def _reads(graph: onnx.GraphProto) -> Iterator[str]:
    """Every tensor name read in ``graph``: node inputs (in subgraphs too) and graph outputs."""
    for node in graph.node:
        yield from node.input
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else attribute.graphs):
                yield from _reads(sub)
    yield from (value.name for value in graph.output)
