"""The shadow's op table against onnxruntime, one single-node model per case.

Every case builds a one-node ONNX model with onnx.helper, runs it in onnxruntime (optimisations
off) and calls ``ops.resolve(op, opset)`` on the same inputs the way the shadow does: the node's
inputs positionally (a missing optional one as None), its attributes as keywords.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnx.defs
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxprune import ops
from onnxprune.errors import UnsupportedModelError

F32 = np.float32
I64 = np.int64
HYPOTHESIS = settings(max_examples=100, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])


def rand(*shape: int, seed: int = 0, low: float | None = None) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(shape).astype(F32)
    return np.abs(values) + low if low is not None else values


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=I64)


def floats(*values: float) -> np.ndarray:
    return np.array(values, dtype=F32)


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def run_ort(op: str, inputs: list, attrs: dict, opset: int, n_outputs: int) -> list[np.ndarray]:
    names = ["" if a is None else f"x{i}" for i, a in enumerate(inputs)]
    node_attrs = {k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                  for k, v in attrs.items()}
    outputs = [f"y{i}" for i in range(n_outputs)]
    graph = helper.make_graph(
        [helper.make_node(op, names, outputs, **node_attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs, strict=True) if a is not None],
        [helper.make_empty_tensor_value_info(o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=10)
    return run_model(model, {n: a for n, a in zip(names, inputs, strict=True) if a is not None})


def run_ops(op: str, inputs: list, attrs: dict, opset: int) -> list[torch.Tensor]:
    fn = ops.resolve(op, opset)
    kwargs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
              for k, v in attrs.items()}
    with torch.no_grad():
        out = fn(*[None if a is None else torch.from_numpy(np.array(a)) for a in inputs],
                 **kwargs)
    return list(out) if isinstance(out, tuple) else [out]


def check(op: str, inputs: list, attrs: dict | None = None, *, opset: int = 17,
          n_outputs: int = 1, atol: float = 1e-4) -> None:
    """``op`` at ``opset`` gives onnxruntime's outputs: same dtype, shape, values."""
    attrs = attrs or {}
    expected = run_ort(op, inputs, attrs, opset, n_outputs)
    got = run_ops(op, inputs, attrs, opset)
    assert len(got) >= n_outputs
    for e, g in zip(expected, got[:n_outputs], strict=True):
        g = g.numpy()
        assert g.dtype == e.dtype, f"{op}: dtype {g.dtype}, onnxruntime {e.dtype}"
        assert g.shape == e.shape, f"{op}: shape {g.shape}, onnxruntime {e.shape}"
        if np.issubdtype(e.dtype, np.floating):
            assert np.array_equal(np.isnan(e), np.isnan(g))
            diff = np.abs(np.nan_to_num(e) - np.nan_to_num(g)).max(initial=0)
            assert diff <= atol, f"{op}: max abs diff {diff}"
        else:
            assert np.array_equal(e, g), f"{op}: {g} != {e}"


# -- elementwise ----------------------------------------------------------------------------
X = rand(2, 3, 4)
POSITIVE = rand(2, 3, 4, low=0.1)
TIES = floats(-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6)


@pytest.mark.parametrize(("op", "x", "opset"), [
    ("Abs", X, 13), ("Neg", X, 13), ("Sqrt", POSITIVE, 13), ("Exp", X, 13),
    ("Log", POSITIVE, 13), ("Reciprocal", POSITIVE, 13), ("Floor", X, 13), ("Ceil", X, 13),
    ("Round", TIES, 13), ("Sign", X, 13), ("Erf", X, 13), ("Sin", X, 13), ("Cos", X, 13),
    ("Relu", X, 13), ("Sigmoid", X, 13), ("Tanh", X, 13), ("Softplus", X, 13),
    ("Softsign", X, 13), ("HardSwish", X * 4, 14), ("Mish", X, 18), ("Identity", X, 13),
    ("IsNaN", floats(1, np.nan, -np.inf), 13), ("Not", X > 0, 13),
    ("Abs", ints(-3, 0, 5), 13), ("Neg", ints(-3, 0, 5), 13),
])
def test_unary(op: str, x: np.ndarray, opset: int) -> None:
    check(op, [x], opset=opset, atol=1e-5)


@pytest.mark.parametrize(("op", "attrs", "opset"), [
    ("LeakyRelu", {}, 16), ("LeakyRelu", {"alpha": 0.2}, 16), ("Elu", {}, 13),
    ("Elu", {"alpha": 0.5}, 13), ("Selu", {}, 13), ("Selu", {"alpha": 1.5, "gamma": 2.0}, 13),
    ("Celu", {"alpha": 0.7}, 13), ("HardSigmoid", {}, 13),
    ("HardSigmoid", {"alpha": 1 / 6, "beta": 0.5}, 13), ("ThresholdedRelu", {}, 13),
    ("ThresholdedRelu", {"alpha": 0.3}, 13), ("Shrink", {}, 13),
    ("Shrink", {"bias": 0.2, "lambd": 0.3}, 13), ("Gelu", {}, 20),
    ("Gelu", {"approximate": "tanh"}, 20), ("IsInf", {}, 13),
    ("IsInf", {"detect_negative": 0}, 13), ("IsInf", {"detect_positive": 0}, 13),
])
def test_activation_attributes(op: str, attrs: dict, opset: int) -> None:
    x = np.concatenate([X.ravel(), floats(np.inf, -np.inf)]) if op == "IsInf" else X * 3
    check(op, [x], attrs, opset=opset, atol=1e-5)


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (5,), (1, 3, 1, 1), (3, 4, 5)])
def test_prelu(slope_shape: tuple[int, ...]) -> None:
    check("PRelu", [rand(2, 3, 4, 5), rand(*slope_shape, seed=1)], opset=16, atol=1e-5)


B = rand(3, 1, seed=1)
INT_A, INT_B = ints(7, -7, 7, -7, 9), ints(2, 2, -2, -2, 4)


@pytest.mark.parametrize(("op", "a", "b", "attrs"), [
    ("Add", X, B, {}), ("Sub", X, B, {}), ("Mul", X, B, {}), ("Div", X, B + 3, {}),
    ("Add", INT_A, INT_B, {}), ("Sub", INT_A, INT_B, {}), ("Mul", INT_A, INT_B, {}),
    ("Div", INT_A, INT_B, {}), ("Div", INT_A.astype(np.int32), INT_B.astype(np.int32), {}),
    ("Pow", POSITIVE, B, {}), ("Pow", X, ints(2), {}), ("Pow", X, floats(3.0), {}),
    ("Mod", INT_A, INT_B, {}), ("Mod", INT_A, INT_B, {"fmod": 1}),
    ("Mod", X * 5, B + 3, {"fmod": 1}),
    ("Equal", X, X[:, :1], {}), ("Equal", INT_A, INT_B, {}), ("Less", X, B, {}),
    ("Greater", X, B, {}), ("LessOrEqual", INT_A, INT_B, {}),
    ("GreaterOrEqual", INT_A, INT_B, {}), ("And", X > 0, B > 0, {}), ("Or", X > 0, B > 0, {}),
    ("Xor", X > 0, B > 0, {}), ("MatMul", X, rand(4, 5), {}), ("MatMul", X, rand(2, 4, 2), {}),
    ("MatMul", X, rand(4), {}), ("MatMul", rand(3), rand(3, 2), {}),
])
def test_binary(op: str, a: np.ndarray, b: np.ndarray, attrs: dict) -> None:
    check(op, [a, b], attrs, opset=13, atol=1e-5)


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_variadic(op: str, count: int) -> None:
    inputs = [rand(2, 3, 4, seed=0), rand(3, 1, seed=1), rand(4, seed=2)][:count]
    check(op, inputs, opset=13, atol=1e-5)


def test_where() -> None:
    check("Where", [X > 0, X, rand(3, 1, seed=1)], opset=16, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs"), [
    (6, [X], {}), (6, [X], {"min": -0.5}), (6, [X], {"max": 0.3}),
    (6, [X], {"min": -0.5, "max": 0.3}),
    (13, [X], {}), (13, [X, floats(-0.5).reshape(())], {}),
    (13, [X, None, floats(0.3).reshape(())], {}),
    (13, [X, floats(-0.5).reshape(()), floats(0.3).reshape(())], {}),
    (11, [X, floats(0.0).reshape(()), floats(6.0).reshape(())], {}),
    (13, [INT_A, ints(-3).reshape(()), ints(5).reshape(())], {}),
])
def test_clip(opset: int, inputs: list, attrs: dict) -> None:
    check("Clip", inputs, attrs, opset=opset, atol=0)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize(("opset", "attrs"), [
    (11, {}), (11, {"axis": 0}), (11, {"axis": 2}), (11, {"axis": -1}), (11, {"axis": 3}),
    (13, {}), (13, {"axis": 1}), (13, {"axis": 0}), (13, {"axis": -2}),
])
def test_softmax_before_and_after_13(op: str, opset: int, attrs: dict) -> None:
    check(op, [rand(2, 3, 4, 5)], attrs, opset=opset, atol=1e-5)


# -- convolution ----------------------------------------------------------------------------
@pytest.mark.parametrize(("x_shape", "w_shape", "bias", "attrs"), [
    ((2, 3, 9), (4, 3, 3), True, {}),
    ((1, 4, 8, 7), (6, 4, 3, 3), True, {"pads": [1, 1, 1, 1]}),
    ((1, 4, 8, 7), (6, 2, 3, 3), False, {"group": 2, "strides": [2, 1]}),
    ((1, 4, 8, 7), (4, 1, 3, 3), True, {"group": 4, "pads": [1, 1, 1, 1]}),
    ((1, 4, 8, 7), (6, 4, 3, 2), True, {"pads": [0, 1, 2, 1], "strides": [2, 2]}),
    ((1, 4, 8, 7), (6, 4, 3, 3), False, {"dilations": [2, 1], "pads": [2, 1, 2, 1]}),
    ((1, 4, 9, 8), (6, 4, 3, 3), True, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 4, 9, 8), (6, 4, 2, 4), True, {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 4, 9, 8), (6, 4, 3, 3), True, {"auto_pad": "VALID", "strides": [2, 2]}),
    ((1, 4, 8, 7), (6, 4, 3, 3), True, {"kernel_shape": [3, 3]}),
    ((1, 2, 5, 6, 4), (3, 2, 3, 3, 2), True, {"pads": [1, 0, 1, 1, 2, 0], "strides": [1, 2, 1]}),
])
def test_conv(x_shape: tuple, w_shape: tuple, bias: bool, attrs: dict) -> None:
    inputs = [rand(*x_shape), rand(*w_shape, seed=1)] + ([rand(w_shape[0], seed=2)] if bias
                                                         else [])
    check("Conv", inputs, attrs, opset=11)


@st.composite
def conv_cases(draw: st.DrawFn) -> tuple[list, dict]:
    rank = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2]))
    cin, cout = group * draw(st.integers(1, 2)), group * draw(st.integers(1, 3))
    spatial = [draw(st.integers(3, 9 if rank < 3 else 5)) for _ in range(rank)]
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    attrs = {"strides": [draw(st.integers(1, 3)) for _ in range(rank)],
             "dilations": [draw(st.integers(1, 2)) for _ in range(rank)], "group": group,
             "auto_pad": draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))}
    if attrs["auto_pad"].startswith("SAME"):  # onnxruntime: no dilation with SAME padding
        attrs["dilations"] = [1] * rank
    pads = [draw(st.integers(0, 2)) for _ in range(2 * rank)]
    if attrs["auto_pad"] == "NOTSET":
        attrs["pads"] = pads
    else:
        pads = [0] * 2 * rank
    assume(all(n + pads[i] + pads[i + rank] >= (k - 1) * d + 1 for i, (n, k, d) in
               enumerate(zip(spatial, kernel, attrs["dilations"], strict=True))))
    inputs = [rand(2, cin, *spatial), rand(cout, cin // group, *kernel, seed=1)]
    if draw(st.booleans()):
        inputs.append(rand(cout, seed=2))
    return inputs, attrs


@HYPOTHESIS
@given(conv_cases())
def test_conv_random(case: tuple[list, dict]) -> None:
    check("Conv", *case, opset=13)


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 4, 5, 6), (4, 3, 3, 3), {}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1],
                                  "output_padding": [1, 1]}),
    ((1, 4, 5, 6), (4, 3, 4, 3), {"strides": [2, 3], "pads": [0, 1, 2, 1]}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [11, 12]}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "output_shape": [10, 13]}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 4, 5, 6), (4, 3, 4, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "auto_pad": "VALID"}),
    ((1, 4, 5, 6), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "dilations": [2, 1]}),
    ((1, 4, 5, 6), (4, 2, 3, 3), {"group": 2, "output_padding": [1, 0], "strides": [3, 2],
                                  "pads": [1, 0, 0, 1]}),
    ((2, 3, 7), (3, 2, 3), {"strides": [2], "pads": [1, 2]}),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"strides": [2, 1, 2], "pads": [0, 1, 1, 0, 1, 0]}),
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose(x_shape: tuple, w_shape: tuple, attrs: dict, bias: bool) -> None:
    group = attrs.get("group", 1)
    inputs = [rand(*x_shape), rand(*w_shape, seed=1)] + ([rand(w_shape[1] * group, seed=2)]
                                                         if bias else [])
    check("ConvTranspose", inputs, attrs, opset=17)


@pytest.mark.parametrize(("a_shape", "b_shape", "c_shape", "attrs"), [
    ((3, 4), (4, 5), None, {}), ((3, 4), (5, 4), (5,), {"transB": 1}),
    ((4, 3), (4, 5), (1, 5), {"transA": 1, "alpha": 0.5}),
    ((4, 3), (5, 4), (3, 1), {"transA": 1, "transB": 1, "beta": 2.0}),
    ((3, 4), (4, 5), (3, 5), {"alpha": 2.0, "beta": 0.5}), ((3, 4), (4, 5), (), {}),
    ((3, 4), (4, 5), None, {"alpha": 3.0}),
])
def test_gemm(a_shape: tuple, b_shape: tuple, c_shape: tuple | None, attrs: dict) -> None:
    inputs = [rand(*a_shape), rand(*b_shape, seed=1)]
    if c_shape is not None:
        inputs.append(rand(*c_shape, seed=2))
    check("Gemm", inputs, attrs, opset=13)


# -- normalisation --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5), (1, 3, 2, 3, 4)])
@pytest.mark.parametrize(("opset", "attrs"), [(9, {}), (15, {"epsilon": 1e-3, "momentum": 0.7})])
def test_batch_normalization(shape: tuple, opset: int, attrs: dict) -> None:
    inputs = [rand(*shape), rand(3, seed=1), rand(3, seed=2), rand(3, seed=3),
              rand(3, seed=4, low=0.5)]
    check("BatchNormalization", inputs, attrs, opset=opset)


def test_batch_normalization_in_training_mode_is_refused() -> None:
    fn = ops.resolve("BatchNormalization", 15)
    x, c = torch.ones(2, 3, 4), torch.ones(3)
    with pytest.raises(UnsupportedModelError, match="training_mode"):
        fn(x, c, c, c, c, training_mode=1)


@pytest.mark.parametrize("attrs", [{}, {"epsilon": 0.1}])
def test_instance_normalization(attrs: dict) -> None:
    check("InstanceNormalization", [rand(2, 3, 4, 5), rand(3, seed=1), rand(3, seed=2)], attrs)


@pytest.mark.parametrize("attrs", [{"size": 3}, {"size": 5, "alpha": 0.01, "beta": 0.5,
                                                 "bias": 2.0}])
def test_lrn(attrs: dict) -> None:
    check("LRN", [rand(2, 7, 3, 4) * 4], attrs, opset=13, atol=1e-5)


@pytest.mark.parametrize(("axis", "bias"), [(-1, True), (1, True), (2, False)])
def test_layer_normalization(axis: int, bias: bool) -> None:
    shape = (2, 3, 4, 5)[axis:] if axis > 0 else (5,)
    inputs = [rand(2, 3, 4, 5), rand(*shape, seed=1)] + ([rand(*shape, seed=2)] if bias else [])
    check("LayerNormalization", inputs, {"axis": axis}, opset=17)


@pytest.mark.parametrize(("opset", "per"), [(18, 2), (21, 6)])
def test_group_normalization(opset: int, per: int) -> None:
    inputs = [rand(2, 6, 4, 3), rand(per, seed=1), rand(per, seed=2)]
    check("GroupNormalization", inputs, {"num_groups": 2, "epsilon": 1e-3}, opset=opset)


# -- pools ----------------------------------------------------------------------------------
POOL_CASES = [
    ((1, 2, 7, 8), {"kernel_shape": [2, 2]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [0, 1, 2, 0]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 1, 2],
                    "ceil_mode": 1}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 3], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 7, 8), {"kernel_shape": [2, 4], "strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2]}),
    ((2, 3, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 0]}),
    ((1, 2, 5, 6, 4), {"kernel_shape": [2, 3, 2], "strides": [1, 2, 2],
                       "pads": [1, 1, 0, 1, 1, 0]}),
]


@pytest.mark.parametrize(("shape", "attrs"), POOL_CASES + [
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "dilations": [2, 1], "pads": [1, 1, 1, 1]}),
    ((1, 2, 9, 8), {"kernel_shape": [2, 2], "dilations": [2, 2], "ceil_mode": 1,
                    "strides": [2, 2]}),
])
def test_max_pool(shape: tuple, attrs: dict) -> None:
    check("MaxPool", [rand(*shape)], attrs, opset=12, atol=0)


@pytest.mark.parametrize(("shape", "attrs"), POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(shape: tuple, attrs: dict, count_include_pad: int) -> None:
    check("AveragePool", [rand(*shape)], {**attrs, "count_include_pad": count_include_pad},
          opset=11, atol=1e-5)


@st.composite
def pool_cases(draw: st.DrawFn) -> tuple[np.ndarray, dict]:
    rank = draw(st.integers(1, 3))
    spatial = [draw(st.integers(2, 9 if rank < 3 else 5)) for _ in range(rank)]
    kernel = [draw(st.integers(1, 3)) for _ in range(rank)]
    attrs = {"kernel_shape": kernel, "strides": [draw(st.integers(1, 3)) for _ in range(rank)],
             "ceil_mode": draw(st.integers(0, 1)),
             "auto_pad": draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))}
    pads = [0] * 2 * rank
    if attrs["auto_pad"] == "NOTSET":
        pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
        attrs["pads"] = pads
    assume(all(n + pads[i] + pads[i + rank] >= k for i, (n, k) in
               enumerate(zip(spatial, kernel, strict=True))))
    if attrs["auto_pad"].startswith("SAME"):  # onnxruntime refuses a negative SAME padding
        assume(all((-(-n // s) - 1) * s + k >= n for n, k, s in
                   zip(spatial, kernel, attrs["strides"], strict=True)))
    return rand(2, 2, *spatial), attrs


@HYPOTHESIS
@given(pool_cases(), st.integers(1, 2))
def test_max_pool_random(case: tuple[np.ndarray, dict], dilation: int) -> None:
    x, attrs = case
    if attrs["auto_pad"] in ("NOTSET", "VALID"):
        attrs["dilations"] = [dilation] * (x.ndim - 2)
        pads = attrs.get("pads", [0] * 2 * (x.ndim - 2))
        assume(all(n + pads[i] + pads[i + x.ndim - 2] >= (k - 1) * dilation + 1 for i, (n, k)
                   in enumerate(zip(x.shape[2:], attrs["kernel_shape"], strict=True))))
    check("MaxPool", [x], attrs, opset=12, atol=0)


@HYPOTHESIS
@given(pool_cases(), st.integers(0, 1))
def test_average_pool_random(case: tuple[np.ndarray, dict], count_include_pad: int) -> None:
    x, attrs = case
    check("AveragePool", [x], {**attrs, "count_include_pad": count_include_pad}, opset=11,
          atol=1e-5)


@pytest.mark.parametrize(("shape", "attrs"), [
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "dilations": [2, 1], "pads": [1, 1, 1, 1]}),
    ((1, 2, 9, 8), {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [2, 2],
                    "ceil_mode": 1, "count_include_pad": 1, "pads": [1, 0, 1, 1]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
])
def test_average_pool_opset_19_dilations(shape: tuple, attrs: dict) -> None:
    check("AveragePool", [rand(*shape)], attrs, opset=19, atol=1e-5)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_global_pools(op: str, shape: tuple) -> None:
    check(op, [rand(*shape)], opset=13, atol=1e-5)


# -- shape and layout -----------------------------------------------------------------------
X4 = rand(2, 3, 4, 5)
SHAPE_TENSOR = ints(2, 3, 4, 5)


@pytest.mark.parametrize("axis", [0, 1, 2, 4, -1, -4])
def test_flatten(axis: int) -> None:
    check("Flatten", [X4], {"axis": axis}, opset=13, atol=0)


@pytest.mark.parametrize(("x", "shape", "attrs"), [
    (X4, ints(6, 20), {}), (X4, ints(0, -1), {}), (X4, ints(-1, 5), {}),
    (X4, ints(2, 0, 4, 0), {}), (X4, ints(2, 3, 4, 5), {"allowzero": 1}),
    (np.zeros((0, 3), F32), ints(3, 0), {"allowzero": 1}), (SHAPE_TENSOR, ints(2, -1), {}),
])
def test_reshape(x: np.ndarray, shape: np.ndarray, attrs: dict) -> None:
    check("Reshape", [x, shape], attrs, opset=14, atol=0)


@HYPOTHESIS
@given(st.permutations([2, 3, 2, 5]), st.data())
def test_reshape_random(dims: list[int], data: st.DataObject) -> None:
    x = rand(2, 3, 2, 5)
    shape = list(dims)
    shape[data.draw(st.integers(0, 3))] = -1
    zero = data.draw(st.integers(0, 3))
    if shape[zero] == x.shape[zero]:
        shape[zero] = 0
    check("Reshape", [x, ints(*shape)], opset=14, atol=0)


@pytest.mark.parametrize("attrs", [{}, {"perm": [0, 2, 3, 1]}, {"perm": [3, 1, 0, 2]}])
def test_transpose(attrs: dict) -> None:
    check("Transpose", [X4], attrs, opset=13, atol=0)


@pytest.mark.parametrize(("inputs", "axis"), [
    ([X4, rand(2, 1, 4, 5), rand(2, 2, 4, 5)], 1), ([X4, X4], -1), ([X4], 0),
    ([ints(-1), ints(3, 4), ints(0)], 0),
])
def test_concat(inputs: list, axis: int) -> None:
    check("Concat", inputs, {"axis": axis}, opset=13, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs", "n_outputs"), [
    (11, [X4], {"axis": 1, "split": [1, 2]}, 2), (11, [X4], {"axis": -1, "split": [2, 2, 1]}, 3),
    (13, [X4, ints(1, 2)], {"axis": 1}, 2), (13, [X4, ints(3, 1)], {"axis": 2}, 2),
    (18, [X4], {"axis": 1, "num_outputs": 3}, 3), (18, [X4], {"axis": 3, "num_outputs": 3}, 3),
    (18, [X4, ints(4, 1)], {"axis": -1}, 2),
])
def test_split(opset: int, inputs: list, attrs: dict, n_outputs: int) -> None:
    check("Split", inputs, attrs, opset=opset, n_outputs=n_outputs, atol=0)


def test_split_without_sizes_needs_the_output_count() -> None:
    parts = ops.resolve("Split", 13)(torch.arange(6), num_outputs=3)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(UnsupportedModelError, match="num_outputs"):
        ops.resolve("Split", 13)(torch.arange(6))


BIG = 2**63 - 1


@pytest.mark.parametrize(("starts", "ends", "axes", "steps"), [
    ([1], [3], None, None), ([0, 1], [2, -1], [0, 2], None), ([-1], [-BIG], [3], [-1]),
    ([BIG], [0], [2], [-2]), ([0, 0], [BIG, BIG], [-1, -2], [2, 3]), ([4], [1], [3], [-2]),
    ([2], [1], [1], [1]), ([-10], [10], [1], None), ([3], [3], [2], [-1]),
])
def test_slice(starts: list, ends: list, axes: list | None, steps: list | None) -> None:
    inputs = [X4, ints(*starts), ints(*ends), None if axes is None else ints(*axes),
              None if steps is None else ints(*steps)]
    while inputs[-1] is None:
        inputs.pop()
    check("Slice", inputs, opset=13, atol=0)
    if steps is None:
        attrs = {"starts": starts, "ends": ends} | ({"axes": axes} if axes else {})
        check("Slice", [X4], attrs, opset=9, atol=0)


@HYPOTHESIS
@given(st.lists(st.tuples(st.integers(-7, 7), st.integers(-7, 7), st.sampled_from(
    [1, 2, 3, -1, -2, -3])), min_size=1, max_size=4), st.permutations([0, 1, 2, 3]))
def test_slice_random(specs: list[tuple[int, int, int]], axes: list[int]) -> None:
    starts, ends, steps = zip(*specs, strict=True)
    check("Slice", [X4, ints(*starts), ints(*ends), ints(*axes[:len(specs)]), ints(*steps)],
          opset=13, atol=0)
    check("Slice", [ints(2, 3, 4, 5), ints(starts[0]), ints(ends[0]), ints(0), ints(steps[0])],
          opset=13, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs"), [
    (11, [rand(1, 3, 1, 5)], {}), (11, [rand(1, 3, 1, 5)], {"axes": [0]}),
    (11, [rand(1, 3, 1, 5)], {"axes": [0, -2]}), (13, [rand(1, 3, 1, 5)], {}),
    (13, [rand(1, 3, 1, 5), ints(2)], {}), (13, [rand(1, 3, 1, 5), ints(-4, 2)], {}),
    (13, [ints(7)], {}),
])
def test_squeeze(opset: int, inputs: list, attrs: dict) -> None:
    check("Squeeze", inputs, attrs, opset=opset, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs"), [
    (11, [rand(3, 5)], {"axes": [0]}), (11, [rand(3, 5)], {"axes": [0, -1]}),
    (11, [rand(3, 5)], {"axes": [3, 1]}), (13, [rand(3, 5), ints(1)], {}),
    (13, [rand(3, 5), ints(-1, 0)], {}), (13, [ints(7).reshape(()), ints(0)], {}),
])
def test_unsqueeze(opset: int, inputs: list, attrs: dict) -> None:
    check("Unsqueeze", inputs, attrs, opset=opset, atol=0)


@pytest.mark.parametrize(("data", "indices", "axis"), [
    (X4, ints(0, 2, -1), 1), (X4, ints(1).reshape(()), 0), (X4, ints(0, 3, 1, 4).reshape(2, 2), 3),
    (SHAPE_TENSOR, ints(0).reshape(()), 0), (SHAPE_TENSOR, ints(2, 3), 0),
    (X4, np.array([1, -2], dtype=np.int32), 2),
])
def test_gather(data: np.ndarray, indices: np.ndarray, axis: int) -> None:
    check("Gather", [data, indices], {"axis": axis}, opset=13, atol=0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis: int) -> None:
    x = rand(3, 4)
    indices = np.random.default_rng(0).integers(-x.shape[axis], x.shape[axis], (2, 3))
    check("GatherElements", [x, indices], {"axis": axis}, opset=13, atol=0)


@pytest.mark.parametrize(("opset", "attrs"), [
    (13, {}), (15, {"start": 1}), (15, {"end": -1}), (15, {"start": -3, "end": 3}),
    (15, {"start": 10}),
])
def test_shape(opset: int, attrs: dict) -> None:
    check("Shape", [X4], attrs, opset=opset, atol=0)
    check("Size", [X4], opset=13, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs"), [
    (9, [X4], {"pads": [0, 0, 1, 2, 0, 0, 2, 1]}),
    (9, [X4], {"pads": [0, 1, 0, 1, 0, 1, 0, 1], "value": 1.5}),
    (9, [X4], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "reflect"}),
    (9, [X4], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "edge"}),
    (13, [X4, ints(0, 0, 1, 2, 0, 0, 2, 1)], {}),
    (13, [X4, ints(0, 0, 1, 2, 0, 0, 2, 1), floats(-2.0).reshape(())], {}),
    (13, [X4, ints(0, 0, -1, 2, 0, 0, 2, -2)], {}),
    (13, [X4, ints(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "reflect"}),
    (13, [X4, ints(0, 0, 2, 3, 0, 0, 3, 1)], {"mode": "edge"}),
    (13, [X4, ints(1, 0, 0, 0, 1, 0, 0, 0)], {"mode": "edge"}),
    (13, [rand(4, 5), ints(1, 2, 2, 1)], {"mode": "reflect"}),
    (13, [ints(1, 2, 3), ints(2, 1), ints(7).reshape(())], {}),
    (18, [X4, ints(1, 2, 2, 1), None, ints(2, -1)], {}),
    (19, [X4, ints(0, 0, 1, 2, 0, 0, 2, 1)], {"mode": "wrap"}),
])
def test_pad(opset: int, inputs: list, attrs: dict) -> None:
    check("Pad", inputs, attrs, opset=opset, atol=0)


@HYPOTHESIS
@given(st.lists(st.integers(-1, 3), min_size=8, max_size=8),
       st.sampled_from(["constant", "reflect", "edge"]))
def test_pad_random(pads: list[int], mode: str) -> None:
    if mode != "constant":
        pads = [0, 0] + [max(p, 0) for p in pads[2:4]] + [0, 0] + [max(p, 0) for p in pads[6:]]
    check("Pad", [X4, ints(*pads)], {"mode": mode}, opset=13, atol=0)


@pytest.mark.parametrize(("x", "shape"), [
    (rand(3, 1), ints(2, 3, 4)), (rand(3, 1), ints(3, 1)), (rand(1, 4), ints(3, 1)),
    (ints(5), ints(2, 1)),
])
def test_expand(x: np.ndarray, shape: np.ndarray) -> None:
    check("Expand", [x, shape], opset=13, atol=0)


def test_tile() -> None:
    check("Tile", [rand(2, 3), ints(2, 3)], opset=13, atol=0)
    check("Tile", [ints(1, 2), ints(3)], opset=13, atol=0)


@pytest.mark.parametrize(("inputs", "attrs"), [
    ([ints(2, 3)], {}), ([ints(2, 3)], {"value": floats(1.5)}),
    ([ints(4)], {"value": ints(7)}), ([ints(0)], {"value": np.array([1], dtype=np.int32)}),
])
def test_constant_of_shape(inputs: list, attrs: dict) -> None:
    check("ConstantOfShape", inputs, attrs, opset=13, atol=0)


@pytest.mark.parametrize("attrs", [
    {"value": rand(2, 3)}, {"value": ints(4, 5)}, {"value_float": 2.5},
    {"value_floats": [1.0, 2.0]}, {"value_int": 3}, {"value_ints": [3, 4, 5]},
])
def test_constant(attrs: dict) -> None:
    check("Constant", [], attrs, opset=13, atol=0)


@pytest.mark.parametrize("to", [1, 2, 3, 5, 6, 7, 9, 10, 11])
def test_cast(to: int) -> None:
    x = floats(-2.7, -1.2, 0.0, 0.5, 1.9, 3.0, 100.4)
    if to == 2:
        x = np.abs(x)
    check("Cast", [x], {"to": to}, opset=13, atol=0)
    check("Cast", [ints(-3, 0, 2)], {"to": to}, opset=13, atol=0)


def test_cast_like_and_unsupported_cast() -> None:
    check("CastLike", [floats(1.5, -2.5), ints(0)], opset=15, atol=0)
    with pytest.raises(UnsupportedModelError, match="Cast"):
        ops.resolve("Cast", 13)(torch.ones(2), to=8)


@pytest.mark.parametrize("inputs", [
    [ints(1).reshape(()), ints(10).reshape(()), ints(3).reshape(())],
    [ints(10).reshape(()), ints(1).reshape(()), ints(-4).reshape(())],
    [floats(0.5).reshape(()), floats(2.0).reshape(()), floats(0.25).reshape(())],
])
def test_range(inputs: list) -> None:
    check("Range", inputs, opset=13, atol=0)


@pytest.mark.parametrize(("op", "attrs"), [
    ("DepthToSpace", {"blocksize": 2}), ("DepthToSpace", {"blocksize": 2, "mode": "CRD"}),
    ("SpaceToDepth", {"blocksize": 2}),
])
def test_depth_and_space(op: str, attrs: dict) -> None:
    check(op, [rand(2, 8, 4, 6)], attrs, opset=13, atol=0)


def test_trilu_einsum_nonzero_cumsum() -> None:
    m = rand(4, 5)
    for inputs, attrs in (([m], {}), ([m, ints(1).reshape(())], {"upper": 0}),
                          ([m, ints(-1).reshape(())], {})):
        check("Trilu", inputs, attrs, opset=14, atol=0)
    check("Einsum", [rand(2, 3, 4), rand(2, 4, 5)], {"equation": "bij,bjk->bik"}, opset=12)
    check("NonZero", [m > 0], opset=13, atol=0)
    for attrs in ({}, {"exclusive": 1}, {"reverse": 1}, {"exclusive": 1, "reverse": 1}):
        check("CumSum", [m, ints(1).reshape(())], attrs, opset=14, atol=1e-5)
        check("CumSum", [ints(1, 2, 3), ints(0).reshape(())], attrs, opset=14, atol=0)


# -- reductions, arg and topk ---------------------------------------------------------------
REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize(("axes", "keepdims"), [(None, 1), ([1], 0), ([0, -1], 1), ([2, 0], 0)])
def test_reduce_axes_as_attribute_and_as_input(op: str, axes: list | None, keepdims: int) -> None:
    x = rand(2, 3, 4, low=0.5) if op == "ReduceLogSum" else rand(2, 3, 4)
    attrs = {"keepdims": keepdims}
    check(op, [x], attrs | ({"axes": axes} if axes else {}), opset=11, atol=1e-5)
    opset = 13 if op == "ReduceSum" else 18
    check(op, [x] + ([ints(*axes)] if axes else []), attrs, opset=opset, atol=1e-5)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax"])
def test_reduce_noop_with_empty_axes(op: str) -> None:
    opset = 13 if op == "ReduceSum" else 18
    check(op, [X], {"noop_with_empty_axes": 1}, opset=opset, atol=0)
    check(op, [X, ints()], {"noop_with_empty_axes": 1}, opset=opset, atol=0)
    check(op, [X, ints()], {"keepdims": 0}, opset=opset, atol=1e-5)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [{}, {"axis": 1, "keepdims": 0}, {"axis": -1},
                                   {"axis": 1, "select_last_index": 1}])
def test_arg(op: str, attrs: dict) -> None:
    x = np.round(rand(3, 4, 5)).astype(F32)  # ties, so first/last index matters
    check(op, [x], attrs, opset=13, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs"), [
    (9, [X], {"k": 2}), (11, [X, ints(2)], {}), (11, [X, ints(3)], {"axis": 1, "largest": 0}),
    (11, [X, ints(2)], {"axis": 0}),
])
def test_topk(opset: int, inputs: list, attrs: dict) -> None:
    check("TopK", inputs, attrs, opset=opset, n_outputs=2, atol=0)


@pytest.mark.parametrize(("opset", "inputs", "attrs"), [
    (9, [X], {}), (9, [X], {"ratio": 0.3}), (13, [X], {}), (13, [X, floats(0.2).reshape(())], {}),
    (13, [X, floats(0.2).reshape(()), np.array(False)], {"seed": 3}),
])
def test_dropout_at_inference(opset: int, inputs: list, attrs: dict) -> None:
    check("Dropout", inputs, attrs, opset=opset, n_outputs=2, atol=0)


def test_dropout_in_training_mode_drops() -> None:
    torch.manual_seed(0)
    y, mask = ops.resolve("Dropout", 13)(torch.ones(1000), torch.tensor(0.25), torch.tensor(True))
    assert 0.65 < mask.float().mean() < 0.85
    assert torch.equal(y, mask / 0.75)


# -- resize -----------------------------------------------------------------------------------
RESIZE_X = rand(1, 2, 4, 5)


def scales(*values: float) -> np.ndarray:
    return floats(1, 1, *values)


def sizes(*values: int) -> np.ndarray:
    return ints(1, 2, *values)


NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
COORDINATE_MODES = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_half_pixel_for_nn"]
TARGETS = [(scales(2, 2), None), (scales(3, 1.5), None), (scales(0.5, 0.6), None),
           (scales(1.7, 0.8), None), (None, sizes(8, 3)), (None, sizes(1, 7)),
           (None, sizes(4, 5))]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("coordinates", COORDINATE_MODES)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
def test_resize_nearest(target: tuple, coordinates: str, nearest_mode: str) -> None:
    attrs = {"mode": "nearest", "coordinate_transformation_mode": coordinates,
             "nearest_mode": nearest_mode}
    check("Resize", [RESIZE_X, None, *target], attrs, opset=13, atol=0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("coordinates", COORDINATE_MODES[:4])
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_linear_and_cubic(target: tuple, coordinates: str, mode: str) -> None:
    check("Resize", [RESIZE_X, None, *target],
          {"mode": mode, "coordinate_transformation_mode": coordinates}, opset=13)


@pytest.mark.parametrize(("inputs", "attrs"), [
    ([rand(2, 3, 7), None, floats(1, 1, 2.5)], {"mode": "linear"}),
    ([rand(1, 2, 3, 4, 3), None, floats(1, 1, 2, 1.5, 0.7)], {"mode": "linear"}),
    ([rand(4, 6), None, floats(2, 0.5)], {"mode": "linear"}),
    ([RESIZE_X, None, floats(1, 2, 1, 1)], {"mode": "nearest"}),
    ([RESIZE_X, None, scales(2, 3)], {"mode": "cubic", "cubic_coeff_a": -0.5}),
    ([RESIZE_X, None, scales(0.6, 1.5)], {"mode": "cubic", "exclude_outside": 1}),
    ([RESIZE_X, floats(0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2), None, sizes(6, 6)],
     {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
      "extrapolation_value": -3.0}),
    ([RESIZE_X, floats(0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2), None, sizes(6, 6)],
     {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize"}),
])
def test_resize_other_ranks_and_modes(inputs: list, attrs: dict) -> None:
    check("Resize", inputs, attrs, opset=13)


@pytest.mark.parametrize(("inputs", "attrs"), [
    ([RESIZE_X, None, None, ints(8, 3)], {"axes": [2, 3], "mode": "linear"}),
    ([RESIZE_X, None, floats(2.5)], {"axes": [-1], "mode": "nearest"}),
    ([RESIZE_X, None, None, ints(8, 8)], {"axes": [2, 3], "keep_aspect_ratio_policy":
                                          "not_larger"}),
    ([RESIZE_X, None, None, ints(8, 8)], {"axes": [2, 3], "keep_aspect_ratio_policy":
                                          "not_smaller", "mode": "linear"}),
    ([RESIZE_X, None, scales(0.5, 0.6)], {"mode": "linear", "antialias": 1}),
    ([RESIZE_X, None, scales(0.5, 0.6)], {"mode": "cubic", "antialias": 1,
                                          "cubic_coeff_a": -0.5}),
    ([RESIZE_X, None, scales(0.7, 0.4)], {"mode": "cubic", "antialias": 1}),
    ([RESIZE_X, None, scales(1.5, 0.4)], {"mode": "linear", "antialias": 1,
                                          "coordinate_transformation_mode": "align_corners"}),
    ([rand(1, 2, 9, 11), None, scales(0.3, 0.45)], {"mode": "linear", "antialias": 1}),
    ([rand(1, 2, 9, 11), None, scales(0.3, 0.45)], {"mode": "cubic", "antialias": 1,
                                                   "exclude_outside": 1}),
    ([RESIZE_X, None, scales(1.7, 0.8)], {"mode": "linear",
                                          "coordinate_transformation_mode":
                                          "half_pixel_symmetric"}),
])
def test_resize_opset_18_and_19(inputs: list, attrs: dict) -> None:
    check("Resize", inputs, attrs, opset=19)


@pytest.mark.parametrize("target", [scales(2, 2), scales(3, 2), scales(0.5, 0.6),
                                    scales(1.7, 0.8)])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_10_and_upsample_9(target: np.ndarray, mode: str) -> None:
    check("Resize", [RESIZE_X, target], {"mode": mode}, opset=10)
    if target.min() >= 1:
        check("Upsample", [RESIZE_X, target], {"mode": mode}, opset=9)


# -- gradients --------------------------------------------------------------------------------
def _double(*shape: int, seed: int = 0, positive: bool = False) -> torch.Tensor:
    t = torch.from_numpy(rand(*shape, seed=seed)).double()
    return (t.abs() + 0.5 if positive else t).requires_grad_()


@pytest.mark.parametrize(("op", "opset", "make", "attrs"), [
    ("Conv", 13, lambda: [_double(1, 2, 5, 5), _double(3, 2, 3, 3, seed=1), _double(3, seed=2)],
     {"pads": [0, 1, 2, 1], "strides": [2, 1]}),
    ("ConvTranspose", 13, lambda: [_double(1, 2, 3, 3), _double(2, 3, 3, 3, seed=1),
                                   _double(3, seed=2)], {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ("Gemm", 13, lambda: [_double(3, 4), _double(5, 4, seed=1), _double(5, seed=2)],
     {"transB": 1, "alpha": 0.5}),
    ("BatchNormalization", 15, lambda: [_double(2, 3, 4), _double(3, seed=1), _double(3, seed=2),
                                        _double(3, seed=3), _double(3, seed=4, positive=True)],
     {}),
    ("Clip", 13, lambda: [_double(2, 5), torch.tensor(-0.5, dtype=torch.float64),
                          torch.tensor(0.5, dtype=torch.float64)], {}),
    ("Clip", 9, lambda: [_double(2, 5)], {"min": -0.5, "max": 0.5}),
    ("Resize", 13, lambda: [_double(1, 2, 3, 4), None, torch.tensor([1, 1, 2, 1.5])],
     {"mode": "linear"}),
    ("Resize", 13, lambda: [_double(1, 2, 3, 4), None, torch.tensor([1, 1, 2, 1.5])],
     {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
    ("Resize", 13, lambda: [_double(1, 2, 3, 4), None, torch.tensor([1, 1, 2, 2])],
     {"mode": "nearest"}),
    ("MaxPool", 12, lambda: [_double(1, 2, 5, 5)], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}),
    ("AveragePool", 12, lambda: [_double(1, 2, 5, 5)],
     {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1], "ceil_mode": 1}),
    ("PRelu", 16, lambda: [_double(2, 3, 4), _double(3, 1, seed=1)], {}),
])
def test_gradients_reach_every_float_input(op: str, opset: int, make: object,
                                           attrs: dict) -> None:
    inputs = make()
    fn = ops.resolve(op, opset)
    trainable = [t for t in inputs if t is not None and t.requires_grad]

    def run(*values: torch.Tensor) -> torch.Tensor:
        it = iter(values)
        return fn(*[next(it) if t is not None and t.requires_grad else t for t in inputs],
                  **attrs)

    assert torch.autograd.gradcheck(run, trainable, fast_mode=True)
    run(*trainable).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in trainable)


# -- resolve ----------------------------------------------------------------------------------
def test_resolve_picks_the_semantics_of_the_opset() -> None:
    assert ops.resolve("Softmax", 11) is not ops.resolve("Softmax", 13)
    assert ops.resolve("Softmax", 12) is ops.resolve("Softmax", 1)
    assert ops.resolve("ReduceMean", 17) is not ops.resolve("ReduceMean", 18)
    assert ops.resolve("ReduceSum", 13) is ops.resolve("ReduceSum", 21)
    assert ops.resolve("Conv", 9, "ai.onnx") is ops.resolve("Conv", 21)


@pytest.mark.parametrize(("op", "opset", "domain"), [
    ("NonMaxSuppression", 17, ""), ("Conv", 13, "com.microsoft"), ("Gelu", 17, ""),
    ("FusedConv", 11, "com.microsoft"),
])
def test_resolve_refuses_with_op_domain_and_opset(op: str, opset: int, domain: str) -> None:
    with pytest.raises(UnsupportedModelError) as error:
        ops.resolve(op, opset, domain)
    message = str(error.value)
    assert f"'{op}'" in message and f"'{domain}'" in message and f"opset {opset}" in message
    assert "\n" not in message


def test_supported_lists_the_ops_the_shadow_needs() -> None:
    needed = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow",
              "Sqrt", "Exp", "Neg", "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid",
              "HardSwish", "Tanh", "Clip", "Softmax", "LogSoftmax", "BatchNormalization",
              "InstanceNormalization", "LRN", "MaxPool", "AveragePool", "GlobalAveragePool",
              "GlobalMaxPool", "Flatten", "Reshape", "Transpose", "Concat", "Split", "Slice",
              "Squeeze", "Unsqueeze", "Gather", "Shape", "Pad", "Resize", "Upsample",
              "ReduceMean", "ReduceSum", "ReduceMax", "Dropout", "Identity", "Constant",
              "ConstantOfShape", "Sum", "Max", "Min", "Cast", "Erf", "Expand", "Tile", "Where",
              "Equal"}
    assert needed <= ops.SUPPORTED
    for op in ops.SUPPORTED:
        assert callable(ops.resolve(op, 21))


def test_space_to_depth_crd_inverts_depth_to_space_crd() -> None:
    x = torch.from_numpy(rand(2, 8, 4, 6))
    y = ops.resolve("SpaceToDepth", 28)(x, blocksize=2, mode="CRD")
    assert torch.equal(ops.resolve("DepthToSpace", 13)(y, blocksize=2, mode="CRD"), x)


# -- the interface ----------------------------------------------------------------------------
def test_every_spec_attribute_is_a_keyword_with_the_spec_default() -> None:
    """The shadow passes a node's attributes as keywords: each must be accepted, defaults equal."""
    for op in sorted(ops.SUPPORTED):
        for opset in range(9, onnx.defs.onnx_opset_version() + 1):
            try:
                schema, fn = onnx.defs.get_schema(op, opset), ops.resolve(op, opset)
            except (onnx.defs.SchemaError, UnsupportedModelError):
                continue
            if not schema.attributes:
                continue
            params = inspect.signature(fn).parameters
            for name, attr in schema.attributes.items():
                assert name in params, f"{op} at opset {opset} lacks attribute {name}"
                if attr.default_value.name:
                    default = helper.get_attribute_value(attr.default_value)
                    default = default.decode() if isinstance(default, bytes) else default
                    if isinstance(default, float):
                        default = pytest.approx(default, rel=1e-6)
                    assert params[name].default == default, \
                        f"{op} at opset {opset}: {name} defaults to {params[name].default}"


def _run_nodes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Execute a graph node by node through ops.resolve, the way the shadow does."""
    opset = model.opset_import[0].version
    env: dict = {k: torch.from_numpy(v) for k, v in feeds.items()}
    env.update({t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
                for t in model.graph.initializer})
    env[""] = None
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        result = ops.resolve(node.op_type, opset)(*[env[n] for n in node.input], **attrs)
        env.update(zip(node.output, result if isinstance(result, tuple) else (result,),
                       strict=False))
    return [env[o.name].numpy() for o in model.graph.output]


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_shape_arithmetic_chain_on_int64_tensors(opset: int) -> None:
    """Exporters compute reshape targets with Shape -> Gather -> Unsqueeze -> Concat chains."""
    unsqueeze = "Unsqueeze <axes = [0]> (n)" if opset < 13 else "Unsqueeze (n, axis0)"
    text = f"""<ir_version: 8, opset_import: ["": {opset}]>
    g (float[2,3,4,6] x) => (float[?,?] y, int64[?] tail, float[?,?,?] z) <int64 zero = {{0}},
       int64[1] axis0 = {{0}}, int64[1] minus = {{-1}}, int64 two = {{2}},
       int64[1] start = {{1}}, int64[1] end = {{3}}> {{
        s = Shape (x)
        n = Gather <axis = 0> (s, zero)
        n1 = {unsqueeze}
        target = Concat <axis = 0> (n1, minus)
        y = Reshape (x, target)
        mid = Slice (s, start, end)
        half = Div (mid, two)
        tail = Mul (half, two)
        t3 = Concat <axis = 0> (n1, half, minus)
        z = Reshape (x, t3)
    }}"""
    model = onnx.parser.parse_model(text)
    feeds = {"x": rand(2, 3, 4, 6)}
    expected = run_model(model, feeds)
    for e, g in zip(expected, _run_nodes(model, feeds), strict=True):
        assert e.dtype == g.dtype and np.array_equal(e, g)


def test_batch_normalization_with_trainable_statistics_matches_onnxruntime() -> None:
    """With grad enabled and mean/var requiring grad, BN takes its differentiable form."""
    x, scale, b, mean = (rand(2, 3, 4, 5), rand(3, seed=1), rand(3, seed=2), rand(3, seed=3))
    var = rand(3, seed=4, low=0.5)
    expected = run_ort("BatchNormalization", [x, scale, b, mean, var], {}, 15, 1)[0]
    fn = ops.resolve("BatchNormalization", 15)
    tensors = [torch.from_numpy(a).requires_grad_() for a in (x, scale, b, mean, var)]
    got = fn(*tensors)
    assert got.grad_fn is not None
    assert np.abs(got.detach().numpy() - expected).max() <= 1e-5


@st.composite
def resize_cases(draw: st.DrawFn) -> tuple[list, dict]:
    shape = (1, 2, draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    mode = draw(st.sampled_from(["nearest", "linear", "cubic"]))
    attrs = {"mode": mode, "coordinate_transformation_mode": draw(st.sampled_from(
        COORDINATE_MODES + ["half_pixel_symmetric", "tf_crop_and_resize"]))}
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(NEAREST_MODES))
    else:
        attrs["antialias"] = draw(st.integers(0, 1))
    if mode == "cubic":
        attrs["cubic_coeff_a"] = draw(st.sampled_from([-0.75, -0.5]))
        attrs["exclude_outside"] = draw(st.integers(0, 1))
    roi = None
    if attrs["coordinate_transformation_mode"] == "tf_crop_and_resize":
        lo = [draw(st.sampled_from([-0.2, 0.0, 0.1, 0.25, 0.5])) for _ in range(2)]
        roi = floats(0, 0, *lo, 1, 1, *[v + draw(st.sampled_from([0.3, 0.5, 0.8, 1.0]))
                                        for v in lo])
        attrs["extrapolation_value"] = -1.5
    # Nearest: ratios whose source coordinates are exact in float32. Where a coordinate lands
    # within an ulp of a rounding tie (sizes 2 from 7 in asymmetric mode: 1 / (2/7) is
    # 3.4999998), onnxruntime 1.32 sometimes rounds as if it were the tie and picks the
    # neighbouring pixel; its arithmetic there is not plain float32 division.
    if mode == "nearest":
        factor = st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 4.0])
    else:
        factor = st.sampled_from([0.25, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
    if mode != "nearest" and draw(st.booleans()):
        target = [roi, None, sizes(draw(st.integers(1, 12)), draw(st.integers(1, 12)))]
    else:
        target = [roi, scales(draw(factor), draw(factor))]
        assume(all(int(n * f) > 0 for n, f in zip(shape[2:], target[1][2:], strict=True)))
    return [rand(*shape), *target], attrs


@HYPOTHESIS
@given(resize_cases())
def test_resize_random(case: tuple[list, dict]) -> None:
    check("Resize", *case, opset=19)
