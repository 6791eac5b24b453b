"""Shape, layout, constant and cast ops against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from op_check import (
    F32,
    HYPOTHESIS,
    X4,
    check,
    floats,
    ints,
    rand,
)

from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import op_table

# -- shape and layout -----------------------------------------------------------------------
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
    parts = op_table.resolve("Split", 13)(torch.arange(6), num_outputs=3)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(UnsupportedModelError, match="num_outputs"):
        op_table.resolve("Split", 13)(torch.arange(6))


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
        op_table.resolve("Cast", 13)(torch.ones(2), to=8)


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
