"""Small models in the shapes third-party exporters write, built with onnx.helper.

Each is ``x -> conv1 -> ... -> Relu -> conv2 -> ... -> y`` where the interesting part is how the
weights, biases and affine maps reach the convolutions. ``dims`` is the input shape: symbolic
(``["N", 3, "H", "W"]``) or static (``[1, 3, 8, 8]``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

from onnxprune import modelio
from onnxprune.passes import (
    CleanupPass,
    FoldBatchNormPass,
    FoldConstantNodesPass,
    NameNodesPass,
    run_passes,
)

SYMBOLIC = ["N", 3, "H", "W"]
STATIC = [1, 3, 8, 8]
C1, C2 = 8, 4
# NORMALIZE as it was before constant subgraphs and channel affines were folded.
OLD_NORMALIZE = [NameNodesPass(), FoldConstantNodesPass(), FoldBatchNormPass(), CleanupPass()]


def _init(name: str, values: np.ndarray) -> onnx.TensorProto:
    return onh.from_array(values, name)


def _rand(seed: int, *shape: int, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _conv(name: str, x: str, w: str, y: str, bias: str | None = None) -> onnx.NodeProto:
    return oh.make_node("Conv", [x, w] + ([bias] if bias else []), [y], name=name,
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], dims: list,
           out_dims: list | None = None, opset: int = 13) -> onnx.ModelProto:
    out = out_dims if out_dims is not None else [dims[0], C2, dims[2], dims[3]]
    graph = oh.make_graph(nodes, "exported", [oh.make_tensor_value_info("x", 1, dims)],
                          [oh.make_tensor_value_info("y", 1, out)], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return modelio.load(model)


def _reshaped(name: str, values: np.ndarray, shape: list[int]) -> tuple[list, list]:
    """``name = Reshape(values, shape)``: the nodes and initializers."""
    return ([oh.make_node("Reshape", [f"{name}_v", f"{name}_s"], [name])],
            [_init(f"{name}_v", values), _init(f"{name}_s", np.array(shape, np.int64))])


def paddle(dims: list, shape: tuple[int, ...] = (1, -1, 1, 1)) -> onnx.ModelProto:
    """Conv without bias, then ``Add(conv, Reshape(bias, shape))``, twice (PaddlePaddle)."""
    n1, i1 = _reshaped("b1", _rand(1, C1), list(shape))
    n2, i2 = _reshaped("b2", _rand(2, C2), list(shape))
    nodes = [_conv("conv1", "x", "w1", "c1"), *n1, oh.make_node("Add", ["c1", "b1"], ["a1"]),
             oh.make_node("Relu", ["a1"], ["r1"]), _conv("conv2", "r1", "w2", "c2"), *n2,
             oh.make_node("Add", ["c2", "b2"], ["y"])]
    return _model(nodes, [_init("w1", _rand(3, C1, 3, 3, 3)), _init("w2", _rand(4, C2, C1, 3, 3)),
                          *i1, *i2], dims)


def caffe2_bn(dims: list, shape: tuple[int, ...] = (C1, 1, 1)) -> onnx.ModelProto:
    """conv1 -> ``Mul(., Reshape(scale))`` -> ``Add(., Reshape(shift))`` -> Relu -> conv2."""
    ns, i_s = _reshaped("s1", np.abs(_rand(5, C1)) + 0.5, list(shape))
    nt, i_t = _reshaped("t1", _rand(6, C1), list(shape))
    nodes = [_conv("conv1", "x", "w1", "c1", "cb1"), *ns, oh.make_node("Mul", ["s1", "c1"], ["m1"]),
             *nt, oh.make_node("Add", ["m1", "t1"], ["a1"]), oh.make_node("Relu", ["a1"], ["r1"]),
             _conv("conv2", "r1", "w2", "y")]
    return _model(nodes, [_init("w1", _rand(3, C1, 3, 3, 3)), _init("cb1", _rand(7, C1)),
                          _init("w2", _rand(4, C2, C1, 3, 3)), *i_s, *i_t], dims)


def fp16_weights(dims: list) -> onnx.ModelProto:
    """Every Conv weight and bias is a float16 initializer ``Cast`` to float at run time."""
    nodes = [oh.make_node("Cast", [f"{t}16"], [t], to=onnx.TensorProto.FLOAT)
             for t in ("w1", "b1", "w2")]
    nodes += [_conv("conv1", "x", "w1", "c1", "b1"), oh.make_node("Relu", ["c1"], ["r1"]),
              _conv("conv2", "r1", "w2", "y")]
    return _model(nodes, [_init("w116", _rand(3, C1, 3, 3, 3, dtype=np.float16)),
                          _init("b116", _rand(7, C1, dtype=np.float16)),
                          _init("w216", _rand(4, C2, C1, 3, 3, dtype=np.float16))], dims)


def swish(dims: list, c_shape: tuple[int, ...] = (1,), *, cast: bool = True) -> onnx.ModelProto:
    """conv1 -> ``x * Sigmoid(x * c)``, ``c`` one-element (an fp16 constant Cast to float
    when ``cast``) -> conv2."""
    c = np.full(c_shape, 1.702, np.float16 if cast else np.float32)
    nodes = [oh.make_node("Cast", ["c16"], ["c"], to=onnx.TensorProto.FLOAT)] if cast else []
    nodes += [_conv("conv1", "x", "w1", "c1", "b1"), oh.make_node("Mul", ["c1", "c"], ["xc"]),
              oh.make_node("Sigmoid", ["xc"], ["sg"]), oh.make_node("Mul", ["c1", "sg"], ["r1"]),
              _conv("conv2", "r1", "w2", "y")]
    return _model(nodes, [_init("w1", _rand(3, C1, 3, 3, 3)), _init("b1", _rand(7, C1)),
                          _init("w2", _rand(4, C2, C1, 3, 3)),
                          _init("c16" if cast else "c", c)], dims)


def shape_flatten(dims: list) -> onnx.ModelProto:
    """conv1 -> Relu -> ``Reshape(r, Concat(Unsqueeze(Gather(Shape(r), 0)), [-1]))`` -> Gemm.

    On a static input the whole reshape target folds to ``[1, -1]``.
    """
    size = C1 * dims[2] * dims[3]
    nodes = [_conv("conv1", "x", "w1", "c1", "b1"), oh.make_node("Relu", ["c1"], ["r1"]),
             oh.make_node("Shape", ["r1"], ["sh"]),
             oh.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
             oh.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
             oh.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             oh.make_node("Reshape", ["r1", "target"], ["f"]),
             oh.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1, name="fc")]
    return _model(nodes, [_init("w1", _rand(3, C1, 3, 3, 3)), _init("b1", _rand(7, C1)),
                          _init("zero", np.array(0, np.int64)),
                          _init("axes0", np.array([0], np.int64)),
                          _init("minus1", np.array([-1], np.int64)),
                          _init("w2", _rand(4, 5, size)), _init("b2", _rand(8, 5))],
                  dims, out_dims=[dims[0], 5])


def gemm_bias(shape: tuple[int, ...] = (1, -1), *, trans_b: int = 1) -> onnx.ModelProto:
    """f (3, 16) -> Gemm without bias -> ``Add(., Reshape(b, shape))`` -> Relu -> Gemm -> y."""
    nb, ib = _reshaped("b1", _rand(1, C1), list(shape))
    w1 = _rand(3, C1, 16) if trans_b else _rand(3, 16, C1)
    nodes = [oh.make_node("Gemm", ["x", "w1"], ["g1"], transB=trans_b, name="fc1"), *nb,
             oh.make_node("Add", ["g1", "b1"], ["a1"]), oh.make_node("Relu", ["a1"], ["r1"]),
             oh.make_node("Gemm", ["r1", "w2"], ["y"], transB=1, name="fc2")]
    graph = oh.make_graph(nodes, "exported", [oh.make_tensor_value_info("x", 1, [3, 16])],
                          [oh.make_tensor_value_info("y", 1, [3, C2])],
                          [_init("w1", w1), _init("w2", _rand(4, C2, C1)), *ib])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return modelio.load(model)


def old_normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` through :data:`OLD_NORMALIZE`."""
    graph = modelio.to_graph(model)
    run_passes(OLD_NORMALIZE, graph)
    return modelio.to_model(graph, model)


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Seeded inputs; symbolic H/W become 8x8 (batch 2)."""
    return modelio.random_inputs(model)


def op_types(model: onnx.ModelProto) -> list[str]:
    """The op types of ``model``'s nodes, sorted."""
    return sorted(n.op_type for n in model.graph.node)
