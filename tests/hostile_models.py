"""Hostile and careless inputs, written to a folder: odd models, broken data, size claims.

Each ``write_*`` function writes its input into ``folder`` and returns its path. The models
are built with onnx.helper the way exporters write them (symbolic batch, initializers).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
from conftest import SAMPLE_DIR

F = onnx.TensorProto.FLOAT
RNG = np.random.default_rng(0)


def _weight(name: str, *shape: int) -> onnx.TensorProto:
    return onh.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto], initializers: list[onnx.TensorProto],
           opset: int = 13, domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "hostile", inputs, outputs, initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset),
                                                *(oh.make_opsetid(d, 1) for d in domains)])
    model.ir_version = 8
    return model


def _save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / name
    onnx.save(model, str(path))
    return path


def _conv_pair(tail: list[onnx.NodeProto], out: str = "y", out_shape: list | None = None,
               extra_inputs: list[onnx.ValueInfoProto] = (),
               extra_weights: list[onnx.TensorProto] = (), head: list[onnx.NodeProto] = (),
               x: str = "x", domains: tuple[str, ...] = ()) -> onnx.ModelProto:
    """x (N,1,8,8) -> [head] -> conv1 (4) -> Relu -> conv2 (4) -> r2 -> [tail] -> ``out``."""
    nodes = [*head,
             oh.make_node("Conv", [x, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1],
                          kernel_shape=[3, 3]),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             oh.make_node("Relu", ["c2"], ["r2"], name="relu2"), *tail]
    return _model(nodes, [oh.make_tensor_value_info("x", F, ["N", 1, 8, 8]), *extra_inputs],
                  [oh.make_tensor_value_info(out, F, out_shape)],
                  [_weight("w1", 4, 1, 3, 3), _weight("b1", 4), _weight("w2", 4, 4, 1, 1),
                   _weight("b2", 4), *extra_weights], domains=domains)


def _conv3(src: str, out: str = "y") -> list[onnx.NodeProto]:
    return [oh.make_node("Conv", [src, "w3"], [out], name="conv3", kernel_shape=[1, 1])]


W3 = [_weight("w3", 2, 4, 1, 1)]
Y = ["N", 2, 8, 8]


def write_lenet(folder: Path, name: str = "model.onnx") -> Path:
    """The LeNet-5 sample (10 classes, input N x 1 x 28 x 28)."""
    path = folder / name
    shutil.copyfile(SAMPLE_DIR / "lenet5.onnx", path)
    return path


def write_external(folder: Path) -> Path:
    """LeNet-5 with its weights in the external-data file ``model.onnx.data``."""
    path = folder / "model.onnx"
    onnx.save_model(onnx.load(str(SAMPLE_DIR / "lenet5.onnx")), str(path),
                    save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path


def write_external_missing(folder: Path) -> Path:
    path = write_external(folder)
    (folder / "model.onnx.data").unlink()
    return path


def write_external_outside(folder: Path) -> Path:
    """LeNet-5 whose external data lies in the parent folder (``../outside.data``)."""
    path = write_external(folder)
    os.replace(folder / "model.onnx.data", folder.parent / "outside.data")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(model, str(path))
    return path


def write_npz(folder: Path, name: str = "d.npz", *, n: int = 40, labels: int | None = 10,
              nan: bool = False, top_label: int | None = None) -> Path:
    """MNIST-shaped inputs (n, 1, 28, 28) with labels below ``labels`` (None: no labels)."""
    x = RNG.random((n, 1, 28, 28), dtype=np.float32)
    if nan:
        x[3, 0, 5, 5] = np.nan
    arrays = {"x": x}
    if labels is not None:
        y = RNG.integers(0, labels, n)
        if top_label is not None:
            y[0] = top_label
        arrays["y"] = y
    path = folder / name
    np.savez(path, **arrays)
    return path


def write_huge_npz(folder: Path) -> Path:
    """An .npz whose x.npy header claims 3.6 TiB of float32 (and holds no data)."""
    path = folder / "huge.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1, 1024, 900)}
    with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
    return path


def write_symbolic_hw(folder: Path) -> Path:
    """LeNet-5 whose input is N x 1 x H x W."""
    model = onnx.load(str(SAMPLE_DIR / "lenet5.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, name in zip(dims[2:], ("H", "W"), strict=True):
        dim.Clear()
        dim.dim_param = name
    del model.graph.value_info[:]
    return _save(model, folder, "sym.onnx")


def write_huge_constant_of_shape(folder: Path) -> Path:
    """A 3.6 TiB ConstantOfShape summed into the output: the file is a few KB."""
    shape = onh.from_array(np.array([1 << 20, 1, 1024, 900], np.int64), "claim")
    tail = [oh.make_node("ConstantOfShape", ["claim"], ["big"], name="claim_node"),
            oh.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
            *_conv3("r2", "c3"), oh.make_node("Add", ["c3", "s"], ["y"])]
    return _save(_conv_pair(tail, out_shape=Y, extra_weights=[shape, *W3]), folder, "big.onnx")


def write_custom_op(folder: Path) -> Path:
    """conv1 -> conv2 -> a com.example op onnxruntime does not know -> y."""
    tail = [oh.make_node("Mystery", ["r2"], ["y"], domain="com.example")]
    return _save(_conv_pair(tail, out_shape=["N", 4, 8, 8], domains=("com.example",)), folder,
                 "custom.onnx")


def write_inconsistent_if(folder: Path) -> Path:
    """An If whose else-branch gives 3 values where the then-branch and its reader expect 2."""
    def branch(name: str, values: list[float]) -> onnx.GraphProto:
        const = oh.make_node("Constant", [], [f"{name}_v"],
                             value=onh.from_array(np.array(values, np.float32)))
        return oh.make_graph([const], name, [],
                             [oh.make_tensor_value_info(f"{name}_v", F, None)])
    cond = onh.from_array(np.array(False), "cond")
    tail = [*_conv3("r2", "c3"),
            oh.make_node("If", ["cond"], ["branch"], then_branch=branch("then", [1.0, 2.0]),
                         else_branch=branch("else", [1.0, 2.0, 3.0])),
            oh.make_node("ReduceMean", ["c3"], ["m"], axes=[2, 3], keepdims=0),
            oh.make_node("Add", ["m", "branch"], ["y"])]
    return _save(_conv_pair(tail, out_shape=["N", 2], extra_weights=[cond, *W3]), folder,
                 "if.onnx")


def write_if_reads_only_group(folder: Path) -> Path:
    """conv1's channels are read inside an If branch; conv2's reach the output."""
    body = oh.make_graph([oh.make_node("ReduceMean", ["r1"], ["m"], keepdims=0)], "branch", [],
                         [oh.make_tensor_value_info("m", F, None)])
    tail = [oh.make_node("If", ["cond"], ["z"], then_branch=body, else_branch=body)]
    model = _conv_pair(tail, out="r2", out_shape=["N", 4, 8, 8], extra_inputs=[
        oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])])
    model.graph.output.append(oh.make_tensor_value_info("z", F, []))
    return _save(model, folder, "branch.onnx")


def write_if_reads_one_group(folder: Path) -> Path:
    """As :func:`write_if_reads_only_group`, with conv3 after conv2: conv2's group is prunable."""
    body = oh.make_graph([oh.make_node("ReduceMean", ["r1"], ["m"], keepdims=0)], "branch", [],
                         [oh.make_tensor_value_info("m", F, None)])
    tail = [*_conv3("r2"), oh.make_node("If", ["cond"], ["z"], then_branch=body,
                                        else_branch=body)]
    model = _conv_pair(tail, out_shape=Y, extra_weights=W3, extra_inputs=[
        oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])])
    model.graph.output.append(oh.make_tensor_value_info("z", F, []))
    return _save(model, folder, "branch.onnx")


def write_quantized(folder: Path) -> Path:
    """Quantize -> Dequantize in front of the first Conv (a QDQ model)."""
    scale, zero = (onh.from_array(np.array(0.02, np.float32), "scale"),
                   onh.from_array(np.array(0, np.uint8), "zero"))
    head = [oh.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
            oh.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"])]
    return _save(_conv_pair(_conv3("r2"), out_shape=Y, head=head, x="dq",
                            extra_weights=[scale, zero, *W3]), folder, "qdq.onnx")


def write_zero_channel_conv(folder: Path) -> Path:
    """A Conv with no filters (weight 0 x 1 x 3 x 3) feeding one with no input channels."""
    nodes = [oh.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3]),
             oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", kernel_shape=[1, 1])]
    model = _model(nodes, [oh.make_tensor_value_info("x", F, ["N", 1, 8, 8])],
                   [oh.make_tensor_value_info("y", F, ["N", 2, 6, 6])],
                   [onh.from_array(np.zeros((0, 1, 3, 3), np.float32), "w1"),
                    onh.from_array(np.zeros((2, 0, 1, 1), np.float32), "w2")])
    return _save(model, folder, "zero.onnx")


def write_two_inputs(folder: Path) -> Path:
    """The conv pair plus a second input added to its output."""
    tail = [*_conv3("r2", "c3"), oh.make_node("Add", ["c3", "x2"], ["y"])]
    return _save(_conv_pair(tail, out_shape=Y, extra_weights=W3, extra_inputs=[
        oh.make_tensor_value_info("x2", F, ["N", 2, 8, 8])]), folder, "two.onnx")


def write_integer_input(folder: Path) -> Path:
    """An int64 image input cast to float before the first Conv."""
    head = [oh.make_node("Cast", ["pixels"], ["xf"], to=F)]
    model = _conv_pair(_conv3("r2"), out_shape=Y, head=head, x="xf", extra_weights=W3)
    model.graph.input[0].CopyFrom(oh.make_tensor_value_info("pixels", onnx.TensorProto.INT64,
                                                            ["N", 1, 8, 8]))
    return _save(model, folder, "int.onnx")


def write_nonfinite_output(folder: Path) -> Path:
    """The conv pair and conv3 followed by Log: negative values give NaN in the model's output."""
    tail = [*_conv3("r2", "c3"), oh.make_node("Log", ["c3"], ["y"])]
    return _save(_conv_pair(tail, out_shape=Y, extra_weights=W3), folder, "log.onnx")


def write_single(folder: Path, op: str) -> Path:
    """A single Gemm / MatMul from the input to the output: its only group is the output's."""
    if op == "Gemm":
        node = oh.make_node("Gemm", ["input", "W"], ["logits"], transB=1)
        weight = _weight("W", 10, 784)
    else:
        node = oh.make_node("MatMul", ["input", "W"], ["logits"])
        weight = _weight("W", 784, 10)
    model = _model([node], [oh.make_tensor_value_info("input", F, ["N", 784])],
                   [oh.make_tensor_value_info("logits", F, ["N", 10])], [weight], opset=17)
    return _save(model, folder, f"{op.lower()}.onnx")
