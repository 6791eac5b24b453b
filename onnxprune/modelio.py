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
import onnx.version_converter
import onnx_graphsurgeon as gs
import onnxruntime as ort
from google.protobuf.message import DecodeError

from onnxprune import sparse
from onnxprune.errors import InvalidModelError, UnsupportedModelError
from onnxprune.limits import check_tensor

MIN_OPSET = 9  # models below it are upgraded on load
UPGRADE_TO = 13
UPGRADED_FROM = "onnxprune.upgraded_from_opset"
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
    _drop_initializer_inputs(model)
    opset = opset_version(model)
    if opset < MIN_OPSET:
        model = _upgraded(model, opset, where)
    sparse.densify(model)
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


def _upgraded(model: onnx.ModelProto, opset: int, where: str) -> onnx.ModelProto:
    """``model`` converted to opset :data:`UPGRADE_TO` by onnx's version converter.

    Opsets before 9 carry legacy attributes (``broadcast``, ``is_test``, ``consumed_inputs``)
    that nothing downstream reads. The model's metadata records the opset it came with, and
    the report says so. What the converter cannot convert is refused in one line.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)  # some adapters refuse symbolic dims: convert at 1, restore after
    for value in [*fixed.graph.input, *fixed.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    del fixed.graph.value_info[:]
    try:
        converted = onnx.version_converter.convert_version(fixed, UPGRADE_TO)
        del converted.graph.value_info[:]
        onnx.checker.check_model(converted)
        outputs = run(converted, random_inputs(converted, batch=1))
        for (name, shape, _), got in zip(output_specs(fixed), outputs, strict=True):
            if shape and tuple(shape) != got.shape:  # the converter can get it wrong
                raise ValueError(f"the converted model's output '{name}' has shape "
                                 f"{got.shape}, not the declared {tuple(shape)}")
        converted = restore_input_dims(converted, model)
    except Exception as e:  # the converter raises several types, some from C++
        raise UnsupportedModelError(f"{where}: opset {opset} is older than {MIN_OPSET} and "
                                    f"onnx's version converter cannot upgrade it "
                                    f"({_first_line(e)})") from e
    converted.metadata_props.add(key=UPGRADED_FROM, value=str(opset))
    return converted


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


def open_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """The inputs whose dims after the batch are not all fixed, with their shapes."""
    return {name: shape for name, shape, _ in input_specs(model)
            if not all(isinstance(d, int) and d > 0 for d in shape[1:])}


def with_input_dims(model: onnx.ModelProto,
                    dims: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs have the given dims after the batch, shapes inferred.

    The batch stays as it is. Nothing else changes: a model whose inputs are symbolic (H, W)
    is analysed and measured at one size, then :func:`restore_input_dims` gives the written
    model its symbolic inputs back.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name in dims:
            for dim, size in zip(value.type.tensor_type.shape.dim[1:], dims[value.name],
                                 strict=True):
                dim.Clear()
                dim.dim_value = int(size)
    del out.graph.value_info[:]
    for value in out.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()
    return infer_shapes(out)


def observe_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose float tensors left unshaped by inference get observed shapes.

    Exporters build reshape targets at run time (``Shape -> Gather -> Div -> Concat``), which
    shape inference cannot follow even at a fixed input size. One onnxruntime run at batch 1
    gives their shapes; dim 0 is recorded as the batch.
    """
    graph = to_graph(model)
    batch = next((d for _, shape, _ in input_specs(model) for d in shape[:1]), "batch")
    unknown = [t for t in graph.tensors().values()
               if isinstance(t, gs.Variable) and t.inputs and t.dtype is not None
               and np.dtype(t.dtype).kind == "f" and t not in graph.outputs
               and (t.shape is None or not all(isinstance(d, int) for d in t.shape[1:]))]
    if not unknown:
        return model
    graph.outputs = list(unknown)
    probe = gs.export_onnx(graph)
    probe.ir_version = model.ir_version
    values = run(probe, random_inputs(model, batch=1))
    observed = {tensor.name: onnx.helper.make_tensor_value_info(
        tensor.name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
        [batch, *value.shape[1:]]) for tensor, value in zip(unknown, values, strict=True)
        if value.ndim >= 2}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [v for v in out.graph.value_info if v.name not in observed]
    del out.graph.value_info[:]
    out.graph.value_info.extend([*kept, *observed.values()])
    return out


def restore_input_dims(model: onnx.ModelProto, like: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with the input and output dims ``like`` declares (symbolic ones)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    declared = {v.name: v for v in [*like.graph.input, *like.graph.output]}
    for value in [*out.graph.input, *out.graph.output]:
        if value.name in declared:
            value.type.CopyFrom(declared[value.name].type)
    del out.graph.value_info[:]
    return infer_shapes(out)


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
