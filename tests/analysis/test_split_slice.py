"""Split and Slice along the channel axis: the inverse of Concat offsets (YOLOv8's C2f)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from equivalence import assert_removal_exact, groups_by_producer, text_model

from onnxprune.analysis.groups import Seg, crop

# C2f: a Conv's 8 channels split in two; the second half feeds a Conv; all three are joined.
C2F = """
    a = Conv(x, w1, b1)
    {split}
    r = Relu(s2)
    m = Conv(r, w2, b2)
    k = Concat<axis=1>(s1, s2, m)
    y = Conv(k, w3)"""
C2F_WEIGHTS = {"w1": (8, 4, 1, 1), "b1": (8,), "w2": (4, 4, 1, 1), "b2": (4,),
               "w3": (3, 12, 1, 1)}
SPLITS = {
    "attribute_opset11": (11, "s1, s2 = Split<axis=1, split=[4, 4]>(a)"),
    "uneven_attribute_opset11": (11, "s1, s2 = Split<axis=1, split=[3, 5]>(a)"),
    "implicit_opset11": (11, "s1, s2 = Split<axis=1>(a)"),
    "input_opset13": (13, "sz = Constant<value = int64[2] {3, 5}>()\n"
                          "    s1, s2 = Split<axis=1>(a, sz)"),
    "implicit_opset13": (13, "s1, s2 = Split<axis=1>(a)"),
    "num_outputs_opset18": (18, "s1, s2 = Split<axis=1, num_outputs=2>(a)"),
    "negative_axis_opset18": (18, "s1, s2 = Split<axis=-3, num_outputs=2>(a)"),
}


def _c2f(case: str) -> onnx.ModelProto:
    opset, split = SPLITS[case]
    weights = dict(C2F_WEIGHTS)
    if "uneven" in case or "input" in case:
        weights["w2"] = (4, 5, 1, 1)
    return text_model(C2F.format(split=split), weights, opset=opset)


def test_crop_maps_runs_into_a_range() -> None:
    segs = [Seg(0, 0, 8), Seg(None, 8, 2), Seg(1, 10, 3, 2)]
    assert crop(segs, 4, 8) == [Seg(0, 0, 4, 1, 4)]
    assert crop(segs, 6, 12) == [Seg(0, 0, 2, 1, 6), Seg(None, 2, 2, 1, 0), Seg(1, 4, 1, 2, 0)]
    assert crop(segs, 11, 16) is None, "cuts through a channel of stride 2"
    assert segs[0] == Seg(0, 0, 8)


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_split_outputs_hold_their_range_of_the_group(case: str) -> None:
    groups = groups_by_producer(_c2f(case))
    a = groups["w1"]
    assert a.blocked is None and a.size == 8
    first = 3 if "uneven" in case or "input" in case else 4
    consumers = {(s.initializer, s.axis, s.offset, s.start, s.length) for s in a.consumers}
    assert consumers == {("w2", 1, 0, first, 8 - first), ("w3", 1, 0, 0, first),
                         ("w3", 1, first, first, 8 - first)}
    assert len(a.counts) == 2 and {e.index for e in a.counts} == {0, 1}
    assert groups["w2"].blocked is None


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_split_removal_is_exact_and_sizes_are_rewritten(case: str) -> None:
    for pruned in assert_removal_exact(_c2f(case), biases=False):
        split = next(n for n in pruned.graph.node if n.op_type == "Split")
        assert not any(a.name == "num_outputs" for a in split.attribute)
        if SPLITS[case][0] < 13:
            sizes = next(list(a.ints) for a in split.attribute if a.name == "split")
        else:
            init = {i.name: i for i in pruned.graph.initializer}[split.input[1]]
            assert init.data_type == onnx.TensorProto.INT64
            sizes = list(onnx.numpy_helper.to_array(init))
        conv = {i.name: i for i in pruned.graph.initializer}["w1"]
        assert sum(sizes) == conv.dims[0] < 8


SLICE = """
    a = Conv(x, w1, b1)
    st = Constant<value = int64[{n}] {{{starts}}}>()
    en = Constant<value = int64[{n}] {{{ends}}}>()
    ax = Constant<value = int64[{n}] {{{axes}}}>()
    s = Slice(a, st, en, ax)
    c = Conv(s, w2)
    y = Conv(c, w3)
    z = Conv(a, w4)"""
SLICES = {  # starts, ends, axes -> channels kept of 8
    "middle": ("2", "7", "1", 5),
    "negative": ("-6", "-1", "1", 5),
    "to_the_end": ("3", "9223372036854775807", "1", 5),
    "negative_axis": ("1", "6", "-3", 5),
    "with_a_spatial_axis": ("2, 1", "7, 8", "1, 3", 5),
    "spatial_only": ("1", "7", "2", 8),
}


def _slice_model(case: str) -> onnx.ModelProto:
    starts, ends, axes, width = SLICES[case]
    body = SLICE.format(n=len(axes.split(",")), starts=starts, ends=ends, axes=axes)
    return text_model(body, {"w1": (8, 4, 1, 1), "b1": (8,), "w2": (3, width, 1, 1),
                             "w3": (2, 3, 1, 1), "w4": (2, 8, 1, 1)},
                      outputs="float[N,?,?,?] y, float[N,?,?,?] z")


@pytest.mark.parametrize("case", sorted(SLICES))
def test_slice_keeps_its_range(case: str) -> None:
    a = groups_by_producer(_slice_model(case))["w1"]
    assert a.blocked is None
    read = next(s for s in a.consumers if s.initializer == "w2")
    first = {"middle": 2, "negative": 2, "to_the_end": 3, "negative_axis": 1,
             "with_a_spatial_axis": 2, "spatial_only": 0}[case]
    assert (read.start, read.length) == (first, SLICES[case][3])
    assert bool(a.counts) == (case != "spatial_only")


@pytest.mark.parametrize("case", sorted(SLICES))
def test_slice_removal_is_exact(case: str) -> None:
    for pruned in assert_removal_exact(_slice_model(case), biases=False):
        w2 = {i.name: i for i in pruned.graph.initializer}["w2"]
        assert w2.dims[1] <= SLICES[case][3]


@pytest.mark.parametrize(("starts", "ends", "steps", "reason"), [
    ("0", "8", "2", "steps by 2"),
    ("7", "-9223372036854775807", "-1", "steps by -1"),
])
def test_slice_with_a_step_on_the_channels_blocks(starts: str, ends: str, steps: str,
                                                   reason: str) -> None:
    body = f"""
        a = Conv(x, w1)
        st = Constant<value = int64[1] {{{starts}}}>()
        en = Constant<value = int64[1] {{{ends}}}>()
        ax = Constant<value = int64[1] {{1}}>()
        sp = Constant<value = int64[1] {{{steps}}}>()
        s = Slice(a, st, en, ax, sp)
        y = Conv(s, w2)"""
    model = text_model(body, {"w1": (8, 4, 1, 1), "w2": (2, 8 // abs(int(steps)), 1, 1)})
    a = groups_by_producer(model)["w1"]
    assert a.blocked is not None and reason in a.blocked


def test_slice_with_run_time_bounds_blocks() -> None:
    body = """
        a = Conv(x, w1)
        st = Constant<value = int64[1] {0}>()
        ax = Constant<value = int64[1] {1}>()
        s = Slice(a, st, en, ax)
        y = Conv(s, w2)"""
    model = text_model(body, {"w1": (8, 4, 1, 1), "w2": (2, 4, 1, 1)},
                       inputs="float[N,4,8,8] x, int64[1] en")
    a = groups_by_producer(model)["w1"]
    assert a.blocked is not None and "run time" in a.blocked


def test_split_through_a_stride_two_channel_blocks() -> None:
    body = """
        a = Conv(x, w1)
        f = Flatten(a)
        s1, s2 = Split<axis=1, split=[3, 5]>(f)
        y = Gemm<transB=1>(s2, w2)"""
    model = text_model(body, {"w1": (2, 4, 1, 1), "w2": (3, 5)},
                       inputs="float[N,4,2,2] x", outputs="float[N,3] y", opset=11)
    a = groups_by_producer(model)["w1"]
    assert a.blocked is not None and "cuts through" in a.blocked


def test_crop_keeps_fixed_runs_in_range() -> None:
    assert crop([Seg(None, 0, 4), Seg(2, 4, 4)], 2, 6) == [Seg(None, 0, 2, 1, 2), Seg(2, 2, 2)]
    np.testing.assert_equal(len(crop([Seg(0, 0, 4)], 4, 8) or []), 0)
