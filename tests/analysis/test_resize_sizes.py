"""Resize with ``sizes`` computed at run time from Shape, as FPN exports upsample to a level."""

from __future__ import annotations

import pytest
from equivalence import assert_removal_exact, groups_by_producer, text_model

# c3 (6 ch, 8x8) -> pool -> c4 -> lateral l4 (5 ch, 4x4), upsampled to c3's size, added to
# lateral l3 (5 ch): the two laterals are one group when the Resize keeps the channels.
FPN = """
    c3 = Conv(x, w3, b3)
    d = MaxPool<kernel_shape=[2, 2], strides=[2, 2]>(c3)
    c4 = Conv(d, w4, b4)
    l4 = Conv(c4, l4w, l4b)
    i0 = Constant<value = int64[1] {{0}}>()
    i2 = Constant<value = int64[1] {{2}}>()
    i4 = Constant<value = int64[1] {{4}}>()
{sizes}
    up = Resize<mode="nearest">(l4, , , sz)
    l3 = Conv(c3, l3w, l3b)
    p3 = Add(l3, up)
    y = Conv(p3, wo)"""
WEIGHTS = {"w3": (6, 4, 1, 1), "b3": (6,), "w4": (6, 6, 1, 1), "b4": (6,),
           "l4w": (5, 6, 1, 1), "l4b": (5,), "l3w": (5, 6, 1, 1), "l3b": (5,),
           "wo": (2, 5, 1, 1)}
# torch's legacy export of F.interpolate(l4, size=c3.shape[2:]):
# Concat(Slice(Shape(l4), 0, 2), Cast(Concat(Unsqueeze(Gather(Shape(c3), 2)), ... 3))))
TORCH = """
    s4 = Shape(l4)
    nc = Slice(s4, i0, i2)
    k2 = Constant<value = int64 {2}>()
    k3 = Constant<value = int64 {3}>()
    s3 = Shape(c3)
    g2 = Gather<axis=0>(s3, k2)
    g3 = Gather<axis=0>(s3, k3)
    h = Unsqueeze(g2, i0)
    w = Unsqueeze(g3, i0)
    hw = Concat<axis=0>(h, w)
    hwc = Cast<to=7>(hw)
    sz = Concat<axis=0>(nc, hwc)"""
SPATIAL = """
    s3 = Shape(c3)
    hw = Slice(s3, i2, i4)"""
SIZES = {
    "torch_export": TORCH,
    "slices": SPATIAL + """
    s4 = Shape(l4)
    nc = Slice(s4, i0, i2)
    sz = Concat<axis=0>(nc, hw)""",
    "shape_start_end": """
    nc = Shape<end=2>(l4)
    hw = Shape<start=2>(c3)
    sz = Concat<axis=0>(nc, hw)""",
    "gather_both": SPATIAL + """
    s4 = Shape(l4)
    k = Constant<value = int64[2] {0, 1}>()
    nc = Gather(s4, k)
    sz = Concat<axis=0>(nc, hw)""",
}
BLOCKING = {
    "another_tensors_channels": SPATIAL + """
    nc = Slice(s3, i0, i2)
    sz = Concat<axis=0>(nc, hw)""",
    "channel_entry_from_a_spatial_one": SPATIAL + """
    s4 = Shape(l4)
    nc = Slice(s4, i0, i2)
    all = Concat<axis=0>(nc, hw)
    k = Constant<value = int64[4] {0, 2, 2, 3}>()
    sz = Gather(all, k)""",
    "channel_entry_from_values": SPATIAL + """
    s4 = Shape(l4)
    i1 = Constant<value = int64[1] {1}>()
    n = Slice(s4, i0, i1)
    m = ReduceMax<keepdims=0>(x)
    v = Cast<to=7>(m)
    c = Unsqueeze(v, i0)
    sz = Concat<axis=0>(n, c, hw)""",
}


@pytest.mark.parametrize("inputs", ["float[N,4,8,8] x", "float[N,4,H,W] x"])
@pytest.mark.parametrize("how", sorted(SIZES))
def test_run_time_sizes_of_the_resized_tensor_keep_channels(how: str, inputs: str) -> None:
    model = text_model(FPN.format(sizes=SIZES[how]), WEIGHTS, opset=15, inputs=inputs)
    merged = groups_by_producer(model)["l4w"]
    assert merged.blocked is None, merged.blocked
    assert {s.initializer for s in merged.producers} == {"l4w", "l4b", "l3w", "l3b"}
    assert not merged.counts  # Shape reads the pruned width by itself
    if "8,8" in inputs:
        assert_removal_exact(model, biases=False)


@pytest.mark.parametrize("how", sorted(BLOCKING))
def test_other_run_time_sizes_block(how: str) -> None:
    model = text_model(FPN.format(sizes=BLOCKING[how]), WEIGHTS, opset=15,
                       inputs="float[N,4,H,W] x")
    reason = groups_by_producer(model)["l4w"].blocked
    assert reason is not None and "may resize the channel axis" in reason
