"""Channel-group analysis on small graphs written inline, one coupling at a time."""

from __future__ import annotations

import onnx
import pytest
from conftest import build

from onnxprune import api, modelio
from onnxprune.analysis import analyze
from onnxprune.analysis.groups import Seg, scale, shift


def groups(model: onnx.ModelProto) -> dict[str, object]:
    return {g.id: g for g in analyze(modelio.to_graph(api.normalize(model)[0]))}


def test_residual_add_merges_groups() -> None:
    model = build("""
        a = Conv(x, w1)
        r = Relu(a)
        b = Conv(r, w2)
        s = Add(b, a)
        c = Conv(s, w3)
        y = Flatten(c)""", {"w1": (6, 4, 1, 1), "w2": (6, 6, 1, 1), "w3": (3, 6, 1, 1)})
    found = [g for g in groups(model).values() if g.size == 6]
    assert len(found) == 1
    g = found[0]
    assert {s.initializer for s in g.producers} == {"w1", "w2"}
    assert {(s.initializer, s.axis) for s in g.consumers} == {("w2", 1), ("w3", 1)}
    assert g.blocked is None


def test_concat_offsets_and_flatten_strides() -> None:
    model = build("""
        a = Conv(x, w1)
        b = Conv(x, w2)
        c = Concat<axis=1>(a, b)
        f = Flatten(c)
        y = Gemm<transB=1>(f, w3)""",
                  {"w1": (3, 4, 3, 3), "w2": (5, 4, 3, 3), "w3": (2, 8 * 36)})
    by_producer = {next(iter(g.producers)).initializer: g for g in groups(model).values()}
    (ca,) = by_producer["w1"].consumers
    (cb,) = by_producer["w2"].consumers
    assert (ca.initializer, ca.axis, ca.offset, ca.stride) == ("w3", 1, 0, 36)
    assert (cb.initializer, cb.axis, cb.offset, cb.stride) == ("w3", 1, 3 * 36, 36)


def test_depthwise_conv_passes_group_through() -> None:
    model = build("""
        a = Conv(x, w1)
        d = Conv<group=6, pads=[1,1,1,1]>(a, wd)
        c = Conv(d, w2)
        y = Flatten(c)""", {"w1": (6, 4, 1, 1), "wd": (6, 1, 3, 3), "w2": (2, 6, 1, 1)})
    g = next(g for g in groups(model).values() if g.size == 6)
    assert [s.initializer for s in g.passengers] == ["wd"]
    assert len(g.depthwise) == 1 and g.blocked is None
    assert [s.initializer for s in g.consumers] == ["w2"]


@pytest.mark.parametrize(("body", "weights", "reason"), [
    ("a = Conv(x, w1)\n y = Flatten(a)", {"w1": (6, 4, 1, 1)}, "graph output"),
    ("a = Conv(x, w1)\n b = LRN<size=3>(a)\n c = Conv(b, w2)\n y = Flatten(c)",
     {"w1": (6, 4, 1, 1), "w2": (2, 6, 1, 1)}, "LRN"),
    ("a = Conv(x, w1)\n b = Softmax<axis=1>(a)\n c = Conv(b, w2)\n y = Flatten(c)",
     {"w1": (6, 4, 1, 1), "w2": (2, 6, 1, 1)}, "mixes channels"),
    ("a = Conv(x, w1)\n b = Transpose<perm=[0,2,3,1]>(a)\n c = Flatten(b)\n y = Relu(c)",
     {"w1": (6, 4, 1, 1)}, "Transpose"),
    ("a = Conv(x, w1)\n e = Conv(x, w0)\n k = Concat<axis=1>(a, e)\n"
     " b = Conv<group=2>(k, w2)\n c = Conv(b, w3)\n y = Flatten(c)",
     {"w1": (6, 4, 1, 1), "w0": (2, 4, 1, 1), "w2": (4, 4, 1, 1), "w3": (2, 4, 1, 1)},
     "not one whole group"),
    ("a = Conv(x, w1)\n b = Add(a, x)\n c = Conv(b, w2)\n y = Flatten(c)",
     {"w1": (4, 4, 1, 1), "w2": (2, 4, 1, 1)}, "cannot be followed"),
    ("a = Conv(x, w1)\n b = Conv(a, w2)\n c = Conv(a, w2)\n d = Add(b, c)\n y = Flatten(d)",
     {"w1": (6, 4, 1, 1), "w2": (6, 6, 1, 1)}, "shared"),
])
def test_unsafe_groups_are_blocked_with_a_reason(body: str, weights: dict, reason: str) -> None:
    model = build(body, weights)
    g = next(g for g in groups(model).values() if g.size == 6 or "Add" in body and g.size == 4)
    assert g.blocked is not None and reason in g.blocked


def test_unknown_op_blocks_and_the_model_still_prunes_elsewhere() -> None:
    model = build("""
        a = Conv(x, w1)
        b = Hardmax<axis=1>(a)
        c = Conv(b, w2)
        d = Relu(c)
        e = Conv(d, w3)
        y = Flatten(e)""", {"w1": (6, 4, 1, 1), "w2": (5, 6, 1, 1), "w3": (2, 5, 1, 1)})
    gs_ = groups(model)
    blocked = [g for g in gs_.values() if g.size == 6][0]
    assert "Hardmax" in blocked.blocked and "not known" in blocked.blocked
    free = [g for g in gs_.values() if g.size == 5][0]
    assert free.blocked is None
    result = api.prune(model, "magnitude", max_params=0.9, round_to=1)
    assert result.report["groups"]["pruned"] == 1


def test_seg_mappings_are_pure() -> None:
    segs = [Seg(0, 0, 4), Seg(None, 4, 2)]
    assert shift(segs, 3) == [Seg(0, 3, 4), Seg(None, 7, 2)]
    assert scale(segs, 9) == [Seg(0, 0, 4, 9), Seg(None, 36, 2, 9)]
    assert segs == [Seg(0, 0, 4), Seg(None, 4, 2)]


def test_sample_models_group_shapes() -> None:
    """Structural goldens: which couplings each sample exposes."""
    from conftest import ROOT, groups_of, normalized

    res = groups_of(normalized(ROOT / "sample_models" / "resnet.onnx"))
    assert any(len({s.node for s in g.producers}) >= 3 for g in res), "residual merge"
    mob = groups_of(normalized(ROOT / "sample_models" / "mobilenetv2.onnx"))
    assert any(g.depthwise and not g.blocked for g in mob), "depthwise pass-through"
    inc = groups_of(normalized(ROOT / "sample_models" / "inception.onnx"))
    assert any(s.offset > 0 for g in inc for s in g.consumers), "concat offsets"
    rsx = groups_of(normalized(ROOT / "sample_models" / "resnext.onnx"))
    assert any(g.blocks == 4 and not g.blocked for g in rsx), "grouped Conv, 4 groups"
    yolo = groups_of(normalized(ROOT / "sample_models" / "yolo_c2f.onnx"))
    assert any(e.node.endswith("Split") and not g.blocked for g in yolo for e in g.counts), \
        "Split sizes follow the pruned halves"
    # what still blocks, by sample: a residual Add onto half of a Split (YOLO's C2f), a channel
    # shuffle whose shape is computed at run time (ShuffleNet); elsewhere only the logits
    known = {"yolo_c2f": "adds channels from", "shufflenet": "mixes channels with other axes"}
    for path in (ROOT / "sample_models").glob("*.onnx"):
        gs_ = groups_of(normalized(path))
        assert sum(g.blocked is None for g in gs_) >= 2, path.name
        allowed = ("graph output", known.get(path.stem, "graph output"))
        assert all(any(a in g.blocked for a in allowed) for g in gs_ if g.blocked), path.name
