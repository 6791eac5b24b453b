"""Compact storage of mostly-zero weights: exact codec, the ONNX subgraph, the choice of format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import api, compact, modelio, report, sparse
from onnxprune.passes import run_passes
from onnxprune.passes.pipeline import NORMALIZE

DTYPES = [np.float16, np.float32, np.float64]
SUBGRAPH_OPS = {"Cast", "CumSum", "ConstantOfShape", "ScatterElements", "Reshape"}


def masked(shape: tuple[int, ...], density: float, dtype: type = np.float32,
           seed: int = 0) -> np.ndarray:
    """Seeded normal values, each kept with probability ``density`` (the others +0.0)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape).astype(dtype)
    return np.where(rng.random(shape) < density, values, np.zeros((), dtype))


def model_of(weights: dict[str, np.ndarray], opset: int = 13) -> onnx.ModelProto:
    """x (N, 8, 6, 6) -> Conv(w, 3x3, pad 1) -> Flatten -> Gemm(g, b, transB) -> y."""
    make = onnx.helper.make_node
    graph = onnx.helper.make_graph(
        [make("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
         make("Flatten", ["c"], ["f"], name="flatten"),
         make("Gemm", ["f", "g", "b"], ["y"], transB=1, name="gemm")],
        "net",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8, 6, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 10])],
        [onnx.numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def weights(density: float) -> dict[str, np.ndarray]:
    """The Conv and Gemm weights of :func:`model_of`, non-zero at ``density``, and a bias."""
    return {"w": masked((16, 8, 3, 3), density), "g": masked((10, 16 * 36), density, seed=1),
            "b": masked((10,), 1.0, seed=2)}


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of an optimising session, as users open one: the subgraph is folded away, so
    the weight is an initializer and takes the same kernels (prepacked) as the dense one."""
    return modelio.run_session(modelio.session(model, optimize=True), feeds)


def assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


# --------------------------------------------------------------------------- the codec


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES),
       shape=st.sampled_from([(16,), (7, 11), (4, 3, 5, 5), (3, 1000), (2, 40000)]),
       density=st.sampled_from([0.0, 1e-4, 0.01, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_decode_inverts_encode(dtype: type, shape: tuple[int, ...], density: float,
                               seed: int) -> None:
    values = masked(shape, density, dtype, seed)
    c = compact.encode(values)
    assert c.values.shape == c.deltas.shape and c.dims == shape and c.dtype == dtype
    assert c.kept == np.count_nonzero(values)
    assert_same_bits(compact.decode(c), values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positions", [[0], [5], [299_999], [0, 256, 512, 70_000],
                                       [100_000, 100_001, 299_999], [65_535, 65_536 + 65_535]])
def test_wide_gaps_are_bridged_exactly(dtype: type, positions: list[int]) -> None:
    values = np.zeros((3, 100_000), dtype)
    values.reshape(-1)[positions] = np.arange(1, len(positions) + 1)
    c = compact.encode(values)
    assert c.kept == len(positions)
    assert_same_bits(compact.decode(c), values)
    assert np.isin(c.deltas[c.values == 0], [np.iinfo(c.deltas.dtype).max]).all()  # fillers


def test_the_narrower_delta_type_wins_when_it_stores_less() -> None:
    assert compact.encode(masked((100_000,), 0.01)).deltas.dtype == np.uint8
    assert compact.encode(masked((1_000_000,), 1e-4)).deltas.dtype == np.uint16


def test_only_float_tensors_are_encoded() -> None:
    with pytest.raises(TypeError, match="int64"):
        compact.encode(np.zeros(20, np.int64))


# --------------------------------------------------------------------------- the subgraph


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "positions"), [((300,), [3, 299]), ((2, 3, 40000), [0, 70_000,
                                                  239_999]), ((5, 6), [])])
def test_onnxruntime_computes_the_encoded_tensor(dtype: type, shape: tuple[int, ...],
                                                 positions: list[int]) -> None:
    values = np.zeros(shape, dtype)
    values.reshape(-1)[positions] = np.arange(1, len(positions) + 1) / 3
    inits, nodes = compact.subgraph("t", compact.encode(values), {"t", "c0.zeros"})
    names = {i.name for i in inits} | {o for n in nodes for o in n.output}
    assert all(n.startswith("c1.") for n in names - {"t"}) and nodes[-1].output == ["t"]
    graph = onnx.helper.make_graph(
        [*nodes, onnx.helper.make_node("Identity", ["t"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info(
            "y", onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape))], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    assert_same_bits(modelio.run(model, {})[0], values)


def test_a_stored_model_runs_exactly_as_the_dense_one() -> None:
    dense = model_of(weights(0.05))
    stored = sparse.store(dense)
    assert [s.format for s in sparse.describe(dense)] == ["compact", "compact", "dense"]
    assert not stored.graph.sparse_initializer
    onnx.checker.check_model(stored, full_check=True)
    assert [n.op_type for n in stored.graph.node][-3:] == ["Conv", "Flatten", "Gemm"]
    feeds = modelio.random_inputs(dense, batch=3)
    np.testing.assert_array_equal(run(stored, feeds)[0], run(dense, feeds)[0])
    # without optimisations the subgraph runs, and the Gemm's weight is not prepacked
    np.testing.assert_allclose(modelio.run(stored, feeds)[0], run(dense, feeds)[0], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_onnxruntime_folds_the_subgraph_when_a_session_opens(
        tmp_path: Path, level: ort.GraphOptimizationLevel) -> None:
    stored = sparse.store(model_of(weights(0.05)))
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(stored.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert not ops & {"Cast", "CumSum", "ConstantOfShape", "ScatterElements"}


def test_new_names_avoid_the_names_the_graph_uses() -> None:
    dense = model_of(weights(0.05))
    dense.graph.node[1].output[0] = "c0.values"  # Flatten's output, read by the Gemm
    dense.graph.node[2].input[0] = "c0.values"
    stored = sparse.store(dense)
    onnx.checker.check_model(stored, full_check=True)
    assert {"c1.values", "c2.values"} <= set(initializers(stored))  # for w, then for g
    assert not {n for n in initializers(stored) if n.startswith("c0.")}
    feeds = modelio.random_inputs(dense, batch=2)
    np.testing.assert_array_equal(run(stored, feeds)[0], run(dense, feeds)[0])


def test_another_method_can_add_nodes_after_a_compact_tensor() -> None:
    coefficients = masked((8, 8), 0.2)
    basis = np.linalg.qr(np.random.default_rng(2).standard_normal((8, 8)))[0].astype(np.float32)
    inits, nodes = compact.subgraph("coefficients", compact.encode(coefficients), set())
    graph = onnx.helper.make_graph(
        [*nodes, onnx.helper.make_node("MatMul", ["basis", "coefficients"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [8, 8])],
        [*inits, onnx.numpy_helper.from_array(basis, "basis")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(modelio.run(model, {})[0], basis @ coefficients, rtol=1e-6)


# --------------------------------------------------------------------------- the choice


def test_store_picks_the_smallest_format() -> None:
    tensors = {**weights(0.05), "nearly_empty": masked((100, 100), 0.0)}
    tensors["nearly_empty"][3, 7] = 1.0  # one value: an int64 index costs less than a subgraph
    tensors["w"] = masked((16, 8, 3, 3), 1.0)  # dense
    dense = model_of(tensors)
    chosen = {s.name: s for s in sparse.describe(dense)}
    assert {name: s.format for name, s in chosen.items()} == {
        "w": "dense", "g": "compact", "b": "dense", "nearly_empty": "sparse"}
    assert [chosen[n].kept for n in ("w", "b", "nearly_empty")] == [1152, 10, 1]
    old = model_of(tensors, opset=10)  # compact needs opset 11: dense or ONNX sparse only
    assert {s.format for s in sparse.describe(old)} == {"dense", "sparse"}
    stored, fallback = sparse.store(dense), sparse.store(old)
    assert stored.ByteSize() < fallback.ByteSize() < dense.ByteSize()
    assert stored.graph.ByteSize() == dense.graph.ByteSize() + sum(
        s.nbytes - sparse._framed(t) for s, t in zip(chosen.values(), dense.graph.initializer,
                                                     strict=True))
    feeds = modelio.random_inputs(dense, batch=2)
    for model in (stored, fallback):
        onnx.checker.check_model(model)  # sparse initializers defeat onnx's shape inference
        for a, b in zip(run(model, feeds), run(dense, feeds), strict=True):
            np.testing.assert_array_equal(a, b)


def weight_model(values: np.ndarray, opset: int = 13) -> onnx.ModelProto:
    """A graph that outputs its one initializer ``w`` (through an Identity)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "weight", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(values.shape))],
        [onnx.numpy_helper.from_array(values, "model.layer4.1.conv2.weight")])
    graph.node[0].input[0] = graph.initializer[0].name
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


@pytest.mark.parametrize("density", [0.01, 0.1])
def test_a_kept_float32_weight_costs_at_most_6_bytes(density: float) -> None:
    (chosen,) = sparse.describe(weight_model(masked((256, 128, 3, 3), density)))
    assert chosen.format == "compact" and chosen.nbytes / chosen.kept <= 6


def test_the_report_gives_bytes_per_kept_weight() -> None:
    model = model_of(weights(0.05))
    packed = [s for s in sparse.describe(model) if s.format != "dense"]
    found = report.storage(model)
    assert found["formats"] == {"dense": 1, "sparse": 0, "compact": 2, "dct": 0}
    assert found["bytes_per_kept_weight"] == (sum(s.nbytes for s in packed)
                                              / sum(s.kept for s in packed))
    assert report.storage(model_of(weights(1.0)))["bytes_per_kept_weight"] is None


def test_opset_10_falls_back_to_onnx_sparse() -> None:
    dense = model_of(weights(0.05), opset=10)
    stored = sparse.store(dense)
    assert len(stored.graph.sparse_initializer) == 2 and len(stored.graph.node) == 3
    feeds = modelio.random_inputs(dense, batch=2)
    np.testing.assert_array_equal(run(stored, feeds)[0], run(dense, feeds)[0])


# --------------------------------------------------------------------------- loading


def test_load_and_normalize_restore_the_dense_weights(tmp_path: Path) -> None:
    original = weights(0.05)
    modelio.save(sparse.store(model_of(original)), tmp_path / "stored.onnx")

    loaded = modelio.load(tmp_path / "stored.onnx")
    normalized, _ = api.normalize(tmp_path / "stored.onnx")

    for model in (loaded, normalized):
        assert not {n.op_type for n in model.graph.node} & SUBGRAPH_OPS
        found = initializers(model)
        for name, values in original.items():
            assert_same_bits(found[name], values)
    assert set(initializers(loaded)) == set(original)


def test_the_fold_pass_also_restores_them() -> None:
    original = weights(0.05)
    graph = modelio.to_graph(modelio.infer_shapes(sparse.store(model_of(original))))

    run_passes(NORMALIZE, graph)

    found = {name: t.values for name, t in graph.tensors().items() if hasattr(t, "values")}
    for name, values in original.items():
        assert_same_bits(np.asarray(found[name]), values)


def test_a_lookalike_subgraph_is_left_to_the_fold_pass() -> None:
    stored = sparse.store(model_of(weights(0.05)))
    cumsums = [n for n in stored.graph.node if n.op_type == "CumSum"]
    cumsums[0].attribute.append(onnx.helper.make_attribute("exclusive", 1))
    loaded = modelio.load(stored)
    assert [n.op_type for n in loaded.graph.node].count("CumSum") == 1
    assert len(loaded.graph.node) == len(stored.graph.node) - 5
