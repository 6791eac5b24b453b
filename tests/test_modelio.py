"""Loading and normalising the models users actually hold.

External weight files, IR v3 graphs that list their weights as inputs, weights reached through
Constant / Identity / ConstantOfShape nodes, old and new opsets, dynamic batch, and unfolded
BatchNormalization: each must load, normalise to the form analysis expects, and prune.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx.version_converter
import pytest
from conftest import computed_weight_model

from onnxprune import api, modelio, sparse
from onnxprune.analysis import analyze

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
FOLDED_AWAY = {"Constant", "Identity", "ConstantOfShape"}


def sample(name: str) -> onnx.ModelProto:
    """A fresh copy of a sample model (tests may modify it)."""
    return onnx.load(str(SAMPLES / f"{name}.onnx"))


def outputs(model: onnx.ModelProto, batch: int = 3, seed: int = 0) -> list[np.ndarray]:
    return modelio.run(model, modelio.random_inputs(model, batch=batch, seed=seed))


def opset_of(model: onnx.ModelProto) -> int:
    (version,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return version


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def as_opset9(model: onnx.ModelProto) -> onnx.ModelProto:
    """Relabel LeNet at opset 11 as opset 9 (its ops mean the same there once MaxPool loses the
    ``ceil_mode`` / ``dilations`` attributes opset 9 lacks; both are at their defaults)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.opset_import[0].version = 9
    out.ir_version = 4
    for node in out.graph.node:
        if node.op_type == "MaxPool":
            values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert values.get("ceil_mode", 0) == 0 and set(values.get("dilations", [1])) == {1}
            kept = [a for a in node.attribute if a.name not in ("ceil_mode", "dilations")]
            del node.attribute[:]
            node.attribute.extend(kept)
    onnx.checker.check_model(out, full_check=True)
    return out


# --------------------------------------------------------------------------- external data


@pytest.mark.parametrize("one_file", [True, False], ids=["one_data_file", "file_per_tensor"])
def test_external_data_prunes_like_the_embedded_model(tmp_path: Path, one_file: bool) -> None:
    path = tmp_path / "lenet5.onnx"
    onnx.save_model(sample("lenet5"), str(path), save_as_external_data=True,
                    all_tensors_to_one_file=one_file,
                    location="weights.bin" if one_file else None, size_threshold=0)
    data_files = [p for p in tmp_path.iterdir() if p != path]
    assert data_files and path.stat().st_size < 20_000  # the weights really are elsewhere
    hashes = {p: sha256(p) for p in tmp_path.iterdir()}

    loaded = modelio.load(path)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in loaded.graph.initializer)
    embedded = modelio.load(SAMPLES / "lenet5.onnx")
    for a, b in zip(loaded.graph.initializer, embedded.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(a),
                                      onnx.numpy_helper.to_array(b))

    result = api.prune(path, max_flops=0.5, round_to=1)
    reference = api.prune(SAMPLES / "lenet5.onnx", max_flops=0.5, round_to=1)

    assert result.plan == reference.plan
    for a, b in zip(outputs(result.model), outputs(reference.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert result.report["after"]["flops"] <= 0.5 * result.report["before"]["flops"]
    assert result.report["before"]["bytes"] == sum(p.stat().st_size for p in hashes)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in result.model.graph.initializer)
    assert {p: sha256(p) for p in tmp_path.iterdir()} == hashes  # nothing touched or added


# --------------------------------------------------------------------------- IR v3


@pytest.mark.parametrize("variant", ["opset9", "opset20"])
def test_ir3_initializers_listed_as_inputs_are_not_inputs_after_load(tmp_path: Path,
                                                                     variant: str) -> None:
    base = as_opset9(sample("lenet5_opset11")) if variant == "opset9" else sample("lenet5")
    ir3 = onnx.ModelProto()
    ir3.CopyFrom(base)
    ir3.ir_version = 3
    real_inputs = [i.name for i in ir3.graph.input]
    weights = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
               for t in ir3.graph.initializer]
    # weights first, as some old exporters wrote them: nothing may assume input 0 is the data
    everything = weights + list(ir3.graph.input)
    del ir3.graph.input[:]
    ir3.graph.input.extend(everything)
    onnx.checker.check_model(ir3, full_check=True)
    path = tmp_path / "ir3.onnx"
    onnx.save(ir3, str(path))

    loaded = modelio.load(path)

    assert [i.name for i in loaded.graph.input] == real_inputs == ["input"]
    assert len(loaded.graph.initializer) == len(weights)
    onnx.checker.check_model(loaded, full_check=True)
    feeds = modelio.random_inputs(loaded, batch=2)
    assert set(feeds) == {"input"}
    for a, b in zip(modelio.run(base, feeds), modelio.run(loaded, feeds), strict=True):
        np.testing.assert_array_equal(a, b)

    result = api.prune(path, max_flops=0.5, round_to=1)
    assert [i.name for i in result.model.graph.input] == ["input"]
    assert opset_of(result.model) == opset_of(base)
    assert result.report["after"]["flops"] <= 0.5 * result.report["before"]["flops"]


# --------------------------------------------------------------------------- constant nodes


def _constant_fed_model(weight_via: str) -> onnx.ModelProto:
    """conv1 (weight from a node, bias via Identity) -> Relu -> conv2 (weight from
    ConstantOfShape) -> y."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(4).astype(np.float32)
    make = onnx.helper.make_node
    nodes = []
    if weight_via == "Constant":
        nodes.append(make("Constant", [], ["w1"], value=onnx.numpy_helper.from_array(w1, "v")))
    else:  # Constant -> Identity -> Identity
        nodes += [make("Constant", [], ["w1_c"], value=onnx.numpy_helper.from_array(w1, "v")),
                  make("Identity", ["w1_c"], ["w1_i"]),
                  make("Identity", ["w1_i"], ["w1"])]
    nodes += [
        make("Identity", ["b_init"], ["b1"]),
        make("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             name="conv1"),
        make("Relu", ["c1"], ["r1"]),
        make("ConstantOfShape", ["w2_shape"], ["w2"],
             value=onnx.numpy_helper.from_array(np.array([0.25], np.float32), "fill")),
        make("Conv", ["r1", "w2"], ["y"], kernel_shape=[1, 1], name="conv2"),
    ]
    graph = onnx.helper.make_graph(
        nodes, "constant_fed",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2, 6, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [onnx.numpy_helper.from_array(b1, "b_init"),
         onnx.numpy_helper.from_array(np.array([3, 4, 1, 1], np.int64), "w2_shape")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("weight_via", ["Constant", "Constant_Identity_Identity"])
def test_weights_behind_constant_nodes_become_initializers(weight_via: str) -> None:
    original = _constant_fed_model(weight_via)

    normalized, graph = api.normalize(original)

    assert not {n.op_type for n in normalized.graph.node} & FOLDED_AWAY
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in normalized.graph.initializer}
    convs = {n.name: n for n in normalized.graph.node if n.op_type == "Conv"}
    assert set(convs) == {"conv1", "conv2"}
    for conv in convs.values():
        assert all(name in initializers for name in conv.input[1:]), conv.input
    assert initializers[convs["conv1"].input[1]].shape == (4, 2, 3, 3)
    np.testing.assert_array_equal(initializers[convs["conv2"].input[1]],
                                  np.full((3, 4, 1, 1), 0.25, np.float32))

    groups = {g.id: g for g in analyze(graph)}
    conv1 = groups["conv1"]
    assert conv1.blocked is None
    assert {s.initializer for s in conv1.producers} == set(convs["conv1"].input[1:])
    assert {s.initializer for s in conv1.consumers} == {convs["conv2"].input[1]}
    assert groups["conv2"].blocked  # reaches the graph output

    for a, b in zip(outputs(original), outputs(normalized), strict=True):
        np.testing.assert_array_equal(a, b)

    pruned = api.prune(original, max_flops=0.5, round_to=1)
    assert pruned.report["groups"]["pruned"] == 1
    assert pruned.report["after"]["flops"] <= 0.5 * pruned.report["before"]["flops"]


def _sparse_constant_model() -> tuple[onnx.ModelProto, np.ndarray]:
    """conv1 whose weight is a Constant holding a ``sparse_value`` -> Relu -> conv2 -> y."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w1[:, :, 0, :] = 0  # some zeros, so sparse storage means something
    flat = w1.reshape(-1)
    nonzero = np.flatnonzero(flat)
    sparse = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(flat[nonzero], "w1_values"),
        onnx.numpy_helper.from_array(nonzero.astype(np.int64), "w1_indices"), list(w1.shape))
    model = computed_weight_model(
        onnx.helper.make_node("Constant", [], ["w1"], sparse_value=sparse), [])
    onnx.checker.check_model(model, full_check=True)
    return model, w1


def test_sparse_constant_weight_becomes_an_initializer() -> None:
    original, w1 = _sparse_constant_model()

    normalized, graph = api.normalize(original)

    assert "Constant" not in {n.op_type for n in normalized.graph.node}
    onnx.checker.check_model(normalized, full_check=True)
    (conv1,) = [n for n in normalized.graph.node if n.name == "conv1"]
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in normalized.graph.initializer}
    np.testing.assert_array_equal(initializers[conv1.input[1]], w1)
    assert {g.id: g.blocked for g in analyze(graph)}["conv1"] is None
    for a, b in zip(outputs(original), outputs(normalized), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- opsets


def _converted(version: int) -> onnx.ModelProto:
    """LeNet converted to ``version``: from opset 20 if the converter can, else from opset 11."""
    reasons = []
    for name in ("lenet5", "lenet5_opset11"):
        try:
            model = onnx.version_converter.convert_version(sample(name), version)
            onnx.checker.check_model(model, full_check=True)
            return model
        except Exception as e:  # the converter raises RuntimeError, the checker ValidationError
            reasons.append(f"{name}: {str(e).strip().splitlines()[-1]}")
    pytest.skip(f"onnx.version_converter cannot produce opset {version}: {'; '.join(reasons)}")


@pytest.mark.parametrize("version", range(9, 22))
def test_prune_keeps_the_opset_of_its_input(tmp_path: Path, version: int) -> None:
    model = _converted(version)
    assert opset_of(model) == version

    result = api.prune(model, max_flops=0.5, round_to=1)
    out = tmp_path / "pruned.onnx"
    result.save(out)

    written = onnx.load(str(out))
    assert opset_of(written) == version
    onnx.checker.check_model(written, full_check=True)
    assert result.report["after"]["flops"] <= 0.5 * result.report["before"]["flops"]
    (logits,) = outputs(written, batch=2)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_prune_at_the_opset_floor() -> None:
    model = as_opset9(sample("lenet5_opset11"))
    for a, b in zip(outputs(model), outputs(sample("lenet5_opset11")), strict=True):
        np.testing.assert_array_equal(a, b)

    result = api.prune(model, max_flops=0.5, round_to=1)

    assert opset_of(result.model) == 9
    onnx.checker.check_model(result.model, full_check=True)
    assert result.report["after"]["flops"] <= 0.5 * result.report["before"]["flops"]


# --------------------------------------------------------------------------- dynamic batch


@pytest.mark.parametrize("name", ["lenet5", "resnet", "inception"])
def test_pruned_model_keeps_a_dynamic_batch(name: str) -> None:
    result = api.prune(SAMPLES / f"{name}.onnx", max_flops=0.5, round_to=1)
    (spec,) = modelio.input_specs(result.model)
    assert isinstance(spec[1][0], str)  # still symbolic

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 28, 28)).astype(np.float32)
    (five,) = modelio.run(result.model, {"input": x})
    (one,) = modelio.run(result.model, {"input": x[:1]})

    assert five.shape == (5, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one[0], five[0], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- BatchNormalization


def test_unfolded_batchnorm_is_folded_by_normalize() -> None:
    original = modelio.load(SAMPLES / "vgg_bn_unfolded.onnx")
    assert "BatchNormalization" in {n.op_type for n in original.graph.node}

    normalized, _ = api.normalize(SAMPLES / "vgg_bn_unfolded.onnx")

    ops = [n.op_type for n in normalized.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == [n.op_type for n in original.graph.node].count("Conv")
    for seed in (0, 1):
        for a, b in zip(outputs(original, batch=4, seed=seed),
                        outputs(normalized, batch=4, seed=seed), strict=True):
            assert float(np.abs(a - b).max()) <= 1e-4


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.9])
def test_sparse_storage_shrinks_the_file_and_keeps_outputs(density: float) -> None:
    model, graph = api.normalize(SAMPLES / "mlp.onnx")
    rng = np.random.default_rng(0)
    for tensor in graph.tensors().values():
        if getattr(tensor, "values", None) is not None and np.asarray(tensor.values).ndim == 2:
            values = np.asarray(tensor.values)
            tensor.values = values * (rng.random(values.shape) < density)
    masked = modelio.to_model(graph, model)
    stored = sparse.store(masked)
    formats = [s.format for s in sparse.describe(masked) if s.size >= 640]  # the 3 weights
    if density <= 0.5:  # compact: 5 bytes per kept float32 (ONNX sparse for a few values)
        assert "dense" not in formats and formats.count("compact") >= 2
        assert stored.ByteSize() < masked.ByteSize() * (density * 5 / 4 + 0.05)
    else:  # 5 bytes per kept float32 is more than 4 per float
        assert formats == ["dense"] * 3 and stored.ByteSize() == masked.ByteSize()
    onnx.checker.check_model(stored)  # onnx's shape inference cannot type sparse initializers
    feeds = modelio.random_inputs(masked, batch=3)
    optimized = [modelio.run_session(modelio.session(m, optimize=True), feeds)[0]
                 for m in (masked, stored)]  # folded: the same (prepacked) kernels
    np.testing.assert_array_equal(*optimized)
    back = modelio.load(stored)  # densified again on load
    assert not back.graph.sparse_initializer
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in masked.graph.node]
    np.testing.assert_array_equal(modelio.run(back, feeds)[0], modelio.run(masked, feeds)[0])
