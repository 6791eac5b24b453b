"""Convolution, Gemm, normalisation, pool and Pad ops against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from op_check import (
    HYPOTHESIS,
    X4,
    check,
    floats,
    ints,
    rand,
)

from onnxprune.errors import UnsupportedModelError
from onnxprune.shadow import op_table


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
    fn = op_table.resolve("BatchNormalization", 15)
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




# -- pad --------------------------------------------------------------------------------------
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
