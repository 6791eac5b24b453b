"""Evaluate a graphsurgeon graph, or one node of it, in onnxruntime.

Used by passes that need a number the graph computes (the constant activation of a removed
channel). Like ``onnxprune/modelio.py`` this module touches protos; no other pass does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune import modelio


def evaluate(graph: gs.Graph, feeds: Mapping[str, np.ndarray],
             outputs: list[str]) -> dict[str, np.ndarray]:
    """Run a copy of ``graph`` with the named tensors as its outputs; return their values."""
    probe = graph.copy()
    tensors = probe.tensors()
    probe.outputs = []
    for name in outputs:
        tensor = tensors[name]
        if tensor.dtype is None:
            tensor.dtype = np.float32
        probe.outputs.append(tensor)
    probe.cleanup(remove_unused_graph_inputs=False)
    return dict(zip(outputs, _run(probe, feeds), strict=True))


def evaluate_node(op: str, attrs: Mapping[str, object], inputs: list[np.ndarray],
                  opset: int) -> np.ndarray:
    """Run a single ``op`` node on constant ``inputs`` and return its output."""
    names = [f"in{i}" for i in range(len(inputs))]
    variables = [gs.Variable(n, dtype=a.dtype, shape=list(a.shape)) for n, a in zip(names, inputs,
                                                                                   strict=True)]
    out = gs.Variable("out", dtype=inputs[0].dtype)
    node = gs.Node(op, attrs=dict(attrs), inputs=variables, outputs=[out])
    graph = gs.Graph(nodes=[node], inputs=variables, outputs=[out], opset=opset)
    return _run(graph, dict(zip(names, inputs, strict=True)))[0]


def _run(graph: gs.Graph, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    model = gs.export_onnx(graph)
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    session = modelio.session(model)
    wanted = {i.name for i in session.get_inputs()}
    return modelio.run_session(session, {k: v for k, v in feeds.items() if k in wanted})
