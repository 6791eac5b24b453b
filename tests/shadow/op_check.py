"""Helpers of the op tests: run one ONNX node in onnxruntime and through the shadow's op table.

Every case builds a one-node ONNX model with onnx.helper, runs it in onnxruntime (optimisations
off) and calls ``op_table.resolve(op, opset)`` on the same inputs the way the shadow does: the
node's inputs positionally (a missing optional one as None), its attributes as keywords.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.defs
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import torch
from hypothesis import HealthCheck, settings
from onnx import helper

from onnxprune.shadow import op_table

F32 = np.float32
I64 = np.int64
HYPOTHESIS = settings(max_examples=100, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])


def rand(*shape: int, seed: int = 0, low: float | None = None) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(shape).astype(F32)
    return np.abs(values) + low if low is not None else values


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=I64)


def floats(*values: float) -> np.ndarray:
    return np.array(values, dtype=F32)


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def run_ort(op: str, inputs: list, attrs: dict, opset: int, n_outputs: int) -> list[np.ndarray]:
    names = ["" if a is None else f"x{i}" for i, a in enumerate(inputs)]
    node_attrs = {k: onnx.numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                  for k, v in attrs.items()}
    outputs = [f"y{i}" for i in range(n_outputs)]
    graph = helper.make_graph(
        [helper.make_node(op, names, outputs, **node_attrs)], "g",
        [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in zip(names, inputs, strict=True) if a is not None],
        [helper.make_empty_tensor_value_info(o) for o in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=10)
    return run_model(model, {n: a for n, a in zip(names, inputs, strict=True) if a is not None})


def run_ops(op: str, inputs: list, attrs: dict, opset: int) -> list[torch.Tensor]:
    fn = op_table.resolve(op, opset)
    kwargs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
              for k, v in attrs.items()}
    with torch.no_grad():
        out = fn(*[None if a is None else torch.from_numpy(np.array(a)) for a in inputs],
                 **kwargs)
    return list(out) if isinstance(out, tuple) else [out]


def check(op: str, inputs: list, attrs: dict | None = None, *, opset: int = 17,
          n_outputs: int = 1, atol: float = 1e-4) -> None:
    """``op`` at ``opset`` gives onnxruntime's outputs: same dtype, shape, values."""
    attrs = attrs or {}
    expected = run_ort(op, inputs, attrs, opset, n_outputs)
    got = run_ops(op, inputs, attrs, opset)
    assert len(got) >= n_outputs
    for e, g in zip(expected, got[:n_outputs], strict=True):
        g = g.numpy()
        assert g.dtype == e.dtype, f"{op}: dtype {g.dtype}, onnxruntime {e.dtype}"
        assert g.shape == e.shape, f"{op}: shape {g.shape}, onnxruntime {e.shape}"
        if np.issubdtype(e.dtype, np.floating):
            assert np.array_equal(np.isnan(e), np.isnan(g))
            diff = np.abs(np.nan_to_num(e) - np.nan_to_num(g)).max(initial=0)
            assert diff <= atol, f"{op}: max abs diff {diff}"
        else:
            assert np.array_equal(e, g), f"{op}: {g} != {e}"


X4 = rand(2, 3, 4, 5)
