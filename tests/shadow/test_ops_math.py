"""Elementwise, activation, reduction, arg, TopK and Dropout ops against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from op_check import (
    F32,
    check,
    floats,
    ints,
    rand,
)

from onnxprune.shadow import op_table

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
    dropout = op_table.resolve("Dropout", 13)
    y, mask = dropout(torch.ones(1000), torch.tensor(0.25), torch.tensor(True))
    assert 0.65 < mask.float().mean() < 0.85
    assert torch.equal(y, mask / 0.75)
