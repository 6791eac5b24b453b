"""Mobile and detection blocks: squeeze-and-excitation, HardSwish, FPN, detection heads,
Swish with one-element constants, and Transposes that move the channel axis."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from equivalence import assert_removal_exact, groups_by_producer, text_model

from onnxprune import modelio
from onnxprune.analysis import analyze

SE = """
    a = Conv(x, w1, b1)
    f = HardSwish(a)
    p = GlobalAveragePool(f)
    e1 = Conv(p, we1, be1)
    r = Relu(e1)
    e2 = Conv(r, we2, be2)
    h = {gate}(e2)
    m = Mul(f, h)
    y = Conv(m, w3)"""
SE_WEIGHTS = {"w1": (8, 4, 1, 1), "b1": (8,), "we1": (2, 8, 1, 1), "be1": (2,),
              "we2": (8, 2, 1, 1), "be2": (8,), "w3": (3, 8, 1, 1)}


@pytest.mark.parametrize("gate", ["HardSigmoid", "Sigmoid"])
def test_squeeze_excitation_joins_the_features_group(gate: str) -> None:
    model = text_model(SE.format(gate=gate), SE_WEIGHTS, opset=14)
    groups = groups_by_producer(model)
    features = groups["w1"]
    assert features.blocked is None
    assert {s.initializer for s in features.producers} == {"w1", "b1", "we2", "be2"}
    assert {(s.initializer, s.axis) for s in features.consumers} == {("we1", 1), ("w3", 1)}
    assert groups["we1"].blocked is None
    assert_removal_exact(model)
    assert_removal_exact(model, biases=False)


FPN = """
    c3 = Conv(x, w3, b3)
    d = MaxPool<kernel_shape=[2, 2], strides=[2, 2]>(c3)
    c4 = Conv(d, w4, b4)
    l4 = Conv(c4, l4w, l4b)
    up = {resize}
    l3 = Conv(c3, l3w, l3b)
    p3 = Add(l3, up)
    y = Conv(p3, wo)"""
FPN_WEIGHTS = {"w3": (6, 4, 1, 1), "b3": (6,), "w4": (6, 6, 1, 1), "b4": (6,),
               "l4w": (5, 6, 1, 1), "l4b": (5,), "l3w": (5, 6, 1, 1), "l3b": (5,),
               "wo": (2, 5, 1, 1)}
RESIZES = {
    "scales": "sc = Constant<value = float[4] {1.0, 1.0, 2.0, 2.0}>()\n"
              "    up = Resize<mode=\"nearest\">(l4, , sc)",
    "sizes": "sz = Constant<value = int64[4] {2, 5, 8, 8}>()\n"
             "    up = Resize<mode=\"nearest\">(l4, , , sz)",
}


@pytest.mark.parametrize("how", sorted(RESIZES))
def test_fpn_merges_lateral_levels_through_resize(how: str) -> None:
    body = FPN.replace("    up = {resize}", "    " + RESIZES[how])
    model = text_model(body, FPN_WEIGHTS)
    groups = groups_by_producer(model)
    merged = groups["l4w"]
    assert merged.blocked is None
    assert {s.initializer for s in merged.producers} == {"l4w", "l4b", "l3w", "l3b"}
    assert bool(merged.counts) == (how == "sizes")
    assert_removal_exact(model, biases=False)


def test_resize_of_the_channel_axis_blocks() -> None:
    body = """
        a = Conv(x, w1)
        sc = Constant<value = float[4] {1.0, 2.0, 1.0, 1.0}>()
        u = Resize(a, , sc)
        y = Conv(u, w2)"""
    a = groups_by_producer(text_model(body, {"w1": (6, 4, 1, 1), "w2": (2, 12, 1, 1)}))["w1"]
    assert a.blocked is not None and "resize the channel axis" in a.blocked


@pytest.mark.parametrize("target", ["{0, 3, 5, 64}", "{0, 3, 5, 8, 8}", "{-1, 5, 192}"])
def test_detection_head_reshape_stays_blocked(target: str) -> None:
    n = target.count(",") + 1
    body = f"""
        f = Conv(x, w0, b0)
        a = Conv(f, w1, b1)
        s = Constant<value = int64[{n}] {target}>()
        r = Reshape(a, s)
        y = Sigmoid(r)"""
    model = text_model(body, {"w0": (6, 4, 1, 1), "b0": (6,), "w1": (15, 6, 1, 1),
                              "b1": (15,)}, outputs="float[?,?,?] y" if n == 3 else
                       f"float[{','.join(['?'] * n)}] y")
    groups = groups_by_producer(model)
    head = groups["w1"]
    assert head.blocked is not None and "mixes channels with other axes" in head.blocked
    assert groups["w0"].blocked is None


@pytest.mark.parametrize("shape", ["", "1", "1,1,1,1", "1,1"])
@pytest.mark.parametrize("inputs", ["float[N,4,H,W] x", "float[N,4,8,8] x"])
def test_swish_with_a_one_element_constant_does_not_block(shape: str, inputs: str) -> None:
    dims = f"[{shape}]" if shape else ""
    body = f"""
        a = Conv(x, w1, b1)
        c = Constant<value = float{dims} {{1.702}}>()
        z = Mul(a, c)
        s = Sigmoid(z)
        m = Mul(a, s)
        y = Conv(m, w2)"""
    model = text_model(body, {"w1": (6, 4, 1, 1), "b1": (6,), "w2": (3, 6, 1, 1)},
                       inputs=inputs)
    a = groups_by_producer(model)["w1"]
    assert a.blocked is None, a.blocked
    if "8,8" in inputs:
        assert_removal_exact(model, biases=False)


def test_scalar_first_operand_does_not_decide_the_rank() -> None:
    body = """
        a = Conv(x, w1)
        z = Mul(c, a)
        q = Add(z, p)
        y = Conv(q, w2)"""
    model = text_model(body, {"w1": (6, 4, 1, 1), "w2": (3, 6, 1, 1), "c": (1,),
                              "p": (1, 6, 1, 1)})
    # analysed as loaded: normalising would fold the Mul and Add into the Conv
    a = next(g for g in analyze(modelio.to_graph(model)) if g.size == 6)
    assert a.blocked is None and [s.initializer for s in a.passengers] == ["p"]


def test_transpose_to_nhwc_names_the_moved_channel_axis() -> None:
    body = """
        a = Conv(x, w1)
        b = Conv(x, w2)
        ta = Transpose<perm=[0, 2, 3, 1]>(a)
        tb = Transpose<perm=[0, 2, 3, 1]>(b)
        k = Concat<axis=3>(ta, tb)
        y = Relu(k)"""
    groups = groups_by_producer(text_model(body, {"w1": (6, 4, 1, 1), "w2": (5, 4, 1, 1)}))
    for name in ("w1", "w2"):
        reason = groups[name].blocked
        assert reason is not None and "moves the channel axis to axis 3" in reason
        assert "not the channel" not in reason


def test_spatial_transpose_keeps_channels() -> None:
    body = """
        a = Conv(x, w1, b1)
        t = Transpose<perm=[0, 1, 3, 2]>(a)
        y = Conv(t, w2)"""
    model = text_model(body, {"w1": (6, 4, 1, 1), "b1": (6,), "w2": (3, 6, 1, 1)})
    assert groups_by_producer(model)["w1"].blocked is None
    assert_removal_exact(model, biases=False)


def test_concat_on_another_axis_says_which() -> None:
    body = """
        a = Conv(x, w1)
        b = Conv(x, w2)
        k = Concat<axis=2>(a, b)
        y = Relu(k)"""
    groups = groups_by_producer(text_model(body, {"w1": (6, 4, 1, 1), "w2": (6, 4, 1, 1)}))
    reason = groups["w1"].blocked
    assert reason is not None and "axis 2 of rank 4, not the channel axis 1" in reason


@pytest.mark.parametrize("shape", [(), (1,), (1, 1, 1, 1)])
def test_one_element_constant_is_neutral_when_no_rank_is_known(shape: tuple[int, ...]) -> None:
    """Shapes not inferred at all (``_rank`` None): a one-element constant still broadcasts."""
    x = gs.Variable("x", np.float32, None)
    a, z, s, m, y = (gs.Variable(n, np.float32, None) for n in "azsmy")
    w1 = gs.Constant("w1", np.ones((6, 4, 1, 1), np.float32))
    w2 = gs.Constant("w2", np.ones((3, 6, 1, 1), np.float32))
    c = gs.Constant("c", np.full(shape, 1.702, np.float32))
    nodes = [gs.Node("Conv", "conv1", inputs=[x, w1], outputs=[a]),
             gs.Node("Mul", "scale", inputs=[a, c], outputs=[z]),
             gs.Node("Sigmoid", "gate", inputs=[z], outputs=[s]),
             gs.Node("Mul", "swish", inputs=[a, s], outputs=[m]),
             gs.Node("Conv", "conv2", inputs=[m, w2], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=13)
    (features,) = [g for g in analyze(graph) if g.size == 6]
    assert features.blocked is None
    assert [(s.initializer, s.axis) for s in features.consumers] == [("w2", 1)]
    per_channel = gs.Constant("c", np.ones((1, 6, 1, 1), np.float32))
    nodes[1].inputs[1] = per_channel
    (features,) = [g for g in analyze(graph) if g.size == 6]
    assert features.blocked is not None and "cannot be followed" in features.blocked
