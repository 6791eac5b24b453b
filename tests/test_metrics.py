"""Counting parameters, FLOPs and latency, and rounding kept channel counts.

FLOPs are one per multiply-accumulate, as the pruning literature counts them; the CIFAR VGG-16
of Li et al. (2017) is the published reference: 3.13e8 FLOPs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest
from conftest import computed_weight_model, normalized, random_plan
from hypothesis import given
from hypothesis import strategies as st

from onnxprune import api, metrics, modelio
from onnxprune.analysis import analyze
from onnxprune.methods.budget import rounded_keep
from onnxprune.plan import Plan

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.onnx"))

# --------------------------------------------------------------------------- VGG-16 (Li et al.)

VGG16_CIFAR = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
               512, 512, 512, "M"]


def vgg16_cifar() -> onnx.ModelProto:
    """The CIFAR VGG-16 of Li et al. 2017 (BN omitted) with random float32 weights."""
    rng = np.random.default_rng(0)
    make = onnx.helper.make_node
    nodes, inits = [], []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        inits.append(onnx.numpy_helper.from_array(
            rng.standard_normal(shape, dtype=np.float32) * 0.01, name))
        return name

    x, c_in = "input", 3
    for i, v in enumerate(VGG16_CIFAR):
        if v == "M":
            nodes.append(make("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{i}"
            continue
        nodes += [make("Conv", [x, weight(f"w{i}", (v, c_in, 3, 3)), weight(f"b{i}", (v,))],
                       [f"conv{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  make("Relu", [f"conv{i}"], [f"relu{i}"])]
        x, c_in = f"relu{i}", v
    nodes += [make("Flatten", [x], ["flat"], axis=1),
              make("Gemm", ["flat", weight("fc1_w", (512, 512)), weight("fc1_b", (512,))],
                   ["fc1"], transB=1, name="fc1"),
              make("Relu", ["fc1"], ["fc1_relu"]),
              make("Gemm", ["fc1_relu", weight("fc2_w", (10, 512)), weight("fc2_b", (10,))],
                   ["logits"], transB=1, name="fc2")]
    graph = onnx.helper.make_graph(
        nodes, "vgg16_cifar",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 32, 32])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def vgg16_expected() -> tuple[int, int]:
    """(conv MACs, conv + linear parameters) worked out by hand from the table above."""
    macs, params, c_in, side = 0, 0, 3, 32
    for v in VGG16_CIFAR:
        if v == "M":
            side //= 2
            continue
        macs += v * c_in * 9 * side * side
        params += v * c_in * 9 + v
        c_in = v
    return macs, params + 512 * 512 + 512 + 10 * 512 + 10


def test_vgg16_cifar_flops_match_li_et_al() -> None:
    graph = modelio.to_graph(modelio.load(vgg16_cifar()))

    params, flops = metrics.count(graph)
    per_layer = {layer.name: layer for layer in metrics.layers(graph)}

    conv_flops = sum(layer.flops for layer in per_layer.values() if layer.op == "Conv")
    assert conv_flops == 313_196_544 == vgg16_expected()[0]
    assert flops == conv_flops + 512 * 512 + 10 * 512
    assert 313 <= round(flops / 1e6) <= 314  # the paper's 3.13e8
    assert params == vgg16_expected()[1]
    assert round(params / 1e6, 1) == 15.0  # the paper's 1.5e7
    # first layer: 64 filters of 3x3x3 over 32x32 positions; last conv: 512x512x3x3 over 2x2
    assert per_layer["conv0"].flops == 64 * 3 * 9 * 32 * 32
    assert per_layer["conv16"].flops == 512 * 512 * 9 * 2 * 2
    assert (per_layer["conv0"].in_channels, per_layer["conv0"].out_channels) == (3, 64)
    assert (per_layer["fc2"].in_channels, per_layer["fc2"].out_channels) == (512, 10)
    assert per_layer["fc1"].params == 512 * 512 + 512


def test_conv_with_a_computed_weight_is_counted() -> None:
    half = np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float16)
    model = computed_weight_model(
        onnx.helper.make_node("Cast", ["w1_half"], ["w1"], to=onnx.TensorProto.FLOAT),
        [onnx.numpy_helper.from_array(half, "w1_half")])

    params, flops = metrics.count(modelio.to_graph(modelio.load(model)))

    assert params == 4 * 2 * 9 + 3 * 4
    assert flops == 4 * 2 * 9 * 36 + 3 * 4 * 36


# --------------------------------------------------------------------------- planned shapes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_planned_shapes_predict_the_pruned_model(name: str, seed: int) -> None:
    model = normalized(SAMPLES / f"{name}.onnx")
    graph = modelio.to_graph(model)
    groups = analyze(graph)
    plan = random_plan(groups, seed)
    assert any(plan.removed(g).size for g in groups), "the plan must remove something"

    planned = metrics.planned_shapes(graph, groups, plan)
    predicted_params, predicted_flops = metrics.count(graph, planned)
    pruned_graph = modelio.to_graph(modelio.observe_shapes(api.apply_plan(model, plan)))
    params, flops = metrics.count(pruned_graph)

    assert predicted_flops == flops
    assert predicted_flops < metrics.count(graph)[1]
    actual = metrics.weight_shapes(pruned_graph)
    # a consumer without a bias (dbnet's FPN convs) gets one holding the constant activation
    # of the removed channels (FoldRemovedChannelsPass): the plan cannot know it in advance
    created = {t.name: int(np.prod(actual[t.name])) for n in pruned_graph.nodes
               if n.op in ("Conv", "ConvTranspose", "Gemm") and len(n.inputs) > 2
               for t in n.inputs[2:3] if t.name in actual and t.name not in planned}
    # every weight of a Conv/Gemm/MatMul keeps the shape the plan predicted
    weighted = {t.name for n in pruned_graph.nodes if n.op in ("Conv", "Gemm", "MatMul")
                for t in n.inputs[1:] if t.name in actual and t.name not in created}
    assert weighted
    for name_ in weighted:
        assert actual[name_] == planned[name_], name_
    # predicted layer by layer too, not only in total
    assert [(la.name, la.flops) for la in metrics.layers(graph, planned)] == [
        (la.name, la.flops) for la in metrics.layers(pruned_graph)]
    # the parameter budget relies on this too
    assert predicted_params + sum(created.values()) == params


def test_planned_shapes_of_a_keep_everything_plan_are_the_weights() -> None:
    graph = modelio.to_graph(normalized(SAMPLES / "resnet.onnx"))
    groups = analyze(graph)

    assert metrics.planned_shapes(graph, groups, Plan()) == metrics.weight_shapes(graph)


# --------------------------------------------------------------------------- latency


def test_latency_returns_one_timing_per_model() -> None:
    models = [modelio.load(SAMPLES / "lenet5.onnx"), modelio.load(SAMPLES / "vgg_bn.onnx")]

    timings = metrics.latency(models, batch=2, runs=5, warmup=1)

    assert len(timings) == len(models)
    for t in timings:
        assert isinstance(t, metrics.Latency)
        assert t.runs == 5
        assert t.p90_ms >= t.median_ms > 0
    # vgg_bn costs 44x lenet5's multiply-accumulates: it cannot be the faster one
    assert timings[1].median_ms > timings[0].median_ms


# --------------------------------------------------------------------------- rounded_keep


@given(k=st.integers(0, 300), size=st.integers(1, 300), round_to=st.integers(1, 64))
def test_rounded_keep_is_a_multiple_within_bounds(k: int, size: int, round_to: int) -> None:
    kept = rounded_keep(k, size, round_to)

    assert 1 <= kept <= size
    assert kept % round_to == 0 or kept == size
    if k <= size:
        assert kept >= k
    assert kept < max(k, 1) + round_to  # rounds up to the next multiple, no further


def test_rounded_keep_examples() -> None:
    assert rounded_keep(0, 64, 16) == 16
    assert rounded_keep(17, 64, 16) == 32
    assert rounded_keep(32, 64, 16) == 32
    assert rounded_keep(60, 70, 16) == 64
    assert rounded_keep(65, 70, 16) == 70
    assert rounded_keep(5, 6, 16) == 6
    assert rounded_keep(3, 6, 1) == 3
