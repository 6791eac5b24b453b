"""The edge between files, ModelProtos and graphsurgeon graphs: load, save, convert, run.

This is one of the two modules that touch ONNX protos (the other is ``passes/_evaluate.py``);
everything between load and save works on ``onnx_graphsurgeon.Graph``.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_graphsurgeon as gs
import onnxruntime as ort
from google.protobuf.message import DecodeError

from onnxprune.errors import InvalidModelError, UnsupportedModelError
from onnxprune.limits import check_tensor

MIN_OPSET = 9
ModelLike = str | os.PathLike | onnx.ModelProto


def load(source: ModelLike) -> onnx.ModelProto:
    """Read a model from a path (external data included) or copy a ModelProto, and check it.

    The result is self-contained (external data loaded), lists no initializer among its graph
    inputs (IR v3 style models are upgraded to IR v4), and carries inferred shapes.
    Raises InvalidModelError or UnsupportedModelError with a one-line reason.
    """
    if isinstance(source, onnx.ModelProto):
        model, where = onnx.ModelProto(), "model"
        model.CopyFrom(source)
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise InvalidModelError(f"{path}: no such file")
        if not path.is_file():
            raise InvalidModelError(f"{path}: not a file")
        _check_external_files(path)
        try:
            model = onnx.load(str(path))
        except (DecodeError, RuntimeError, ValueError, OSError,
                onnx.checker.ValidationError) as e:
            raise InvalidModelError(f"{path}: not a readable ONNX model ({_first_line(e)})") from e
    if not model.graph.node or not model.opset_import:
        raise InvalidModelError(f"{where}: not an ONNX model (no graph nodes or no opset)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise InvalidModelError(f"{where}: invalid ONNX model ({_first_line(e)})") from e
    opset = opset_version(model)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{where}: opset {opset} is older than {MIN_OPSET}, the oldest onnxprune reads; "
            "upgrade it with onnx.version_converter"
        )
    _drop_initializer_inputs(model)
    _densify_sparse(model)
    return infer_shapes(model)


def external_files(path: str | os.PathLike) -> list[Path]:
    """The external-data files the model at ``path`` refers to ([] when it cannot be read)."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError):
        return []  # load says what is wrong with it
    locations = {entry.value for tensor in _tensors(model.graph) for entry in tensor.external_data
                 if entry.key == "location"}
    return [path.parent / name for name in sorted(locations)]


def _check_external_files(path: Path) -> None:
    """Refuse external data that is missing or lies outside the model's folder, naming it."""
    folder = path.resolve().parent
    for data in external_files(path):
        if not data.resolve().is_relative_to(folder):
            raise InvalidModelError(f"{path}: its external data '{data}' lies outside the "
                                    "model's folder (onnx refuses to read it)")
        if not data.is_file():
            raise InvalidModelError(f"{path}: its external data file {data} is missing")


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Every tensor a graph stores: initializers and tensor attributes, subgraphs included."""
    found = list(graph.initializer)
    for node in graph.node:
        for attribute in node.attribute:
            found.extend([attribute.t] if attribute.HasField("t") else attribute.tensors)
            for sub in ([attribute.g] if attribute.HasField("g") else attribute.graphs):
                found.extend(_tensors(sub))
    return found


def opset_version(model: onnx.ModelProto) -> int:
    """Return the version of the default ONNX domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return ``model`` with shapes inferred for every tensor onnx can infer."""
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a ModelProto as a graphsurgeon graph."""
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` as a ModelProto with the IR version, opsets and metadata of ``like``.

    Shapes are inferred afresh, so the result never carries stale ``value_info``.
    """
    model = gs.export_onnx(graph, do_type_check=True)
    del model.graph.value_info[:]
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    model.metadata_props.extend(like.metadata_props)
    return infer_shapes(model)


def with_initializers(model: onnx.ModelProto,
                      values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Return a copy of ``model`` whose named initializers hold ``values`` (same graph)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, tensor in enumerate(out.graph.initializer):
        if tensor.name in values:
            array = np.asarray(values[tensor.name]).astype(
                onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), copy=False)
            out.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    return out


def store_sparse(model: onnx.ModelProto, *, max_density: float = 1 / 3) -> onnx.ModelProto:
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


def session(model: onnx.ModelProto, *, threads: int = 0, optimize: bool = False,
            providers: list[str] | None = None) -> ort.InferenceSession:
    """Open an onnxruntime session on ``model``.

    ``optimize=False`` disables onnxruntime's graph rewrites, so comparisons see our graph.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # failures are raised with their message, not logged
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types derive from Exception only
        raise UnsupportedModelError(f"onnxruntime cannot load the model: {_first_line(e)}") from e


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` once in onnxruntime (no graph optimisations) and return its outputs."""
    return run_session(session(model), feeds)


def run_session(opened: ort.InferenceSession,
                feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run an open session on ``feeds``; onnxruntime's failures become one-line errors."""
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failure is raised below, not logged on stderr too
    try:
        return opened.run(None, dict(feeds), quiet)
    except Exception as e:  # onnxruntime's own error types derive from Exception only
        raise UnsupportedModelError(f"onnxruntime cannot run the model: {_first_line(e)}") from e


def input_specs(model: onnx.ModelProto) -> list[tuple[str, list[int | str], np.dtype]]:
    """Return (name, shape, numpy dtype) of each graph input; symbolic dims stay strings."""
    return _specs(model.graph.input)


def output_specs(model: onnx.ModelProto) -> list[tuple[str, list[int | str], np.dtype]]:
    """Return (name, shape, numpy dtype) of each graph output; symbolic dims stay strings."""
    return _specs(model.graph.output)


def _specs(values: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, list[int | str], np.dtype]]:
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                  for d in tensor_type.shape.dim]
        specs.append((value.name, shape,
                      np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))))
    return specs


def random_inputs(model: onnx.ModelProto, *, batch: int = 2,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Return seeded random feeds for every graph input; symbolic dimensions become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in input_specs(model):
        dims = [d if isinstance(d, int) and d > 0 else batch for d in shape]
        check_tensor(dims, dtype, f"random inputs for '{name}' at batch {batch}")
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def save(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write ``model`` to ``path`` atomically and return the number of bytes written.

    The bytes go to a temporary file beside ``path`` that is renamed over it only once
    complete, so ``path`` holds the whole model or is left as it was.
    """
    data = model.SerializeToString()
    _atomic_write(data, Path(path))
    return len(data)


def _atomic_write(data: bytes, target: Path) -> None:
    """Write to a temporary file beside ``target``, then rename it over ``target``.

    An existing file keeps its mode; a new one gets the umask's. The temporary file is removed
    on any exception, KeyboardInterrupt and SystemExit included (the CLI turns SIGTERM and
    SIGHUP into SystemExit), so an interrupted save leaves nothing behind.
    """
    mode = (stat.S_IMODE(target.stat().st_mode) if target.is_file()
            else 0o666 & ~_umask())  # mkstemp's 0600 would otherwise survive the rename
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _densify_sparse(model: onnx.ModelProto) -> None:
    """Store sparse initializers and sparse Constant values densely (graphsurgeon drops them)."""
    graph = model.graph
    graph.initializer.extend(_dense(sparse) for sparse in graph.sparse_initializer)
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


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Remove initializers from the graph inputs (IR v3 style), upgrading the IR to v4."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def save_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file renamed over it)."""
    save_bytes(text.encode(), path)


def save_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    _atomic_write(data, Path(path))
