"""FoldConstantNodesPass: turn constant-producing nodes into initializers."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.errors import UnsupportedModelError
from onnxprune.graph import constant_value, replace_tensor
from onnxprune.limits import check_tensor
from onnxprune.passes._base import Pass, PassResult


class FoldConstantNodesPass(Pass):
    """Replace nodes whose output is a constant by an initializer holding it.

    Weights reach a layer through such nodes in many exports, and analysis reads weights only
    from initializers.

    Rules:
      1. ``Constant`` with a ``value`` tensor (or ``value_float(s)`` / ``value_int(s)``).
      2. ``ConstantOfShape`` whose shape input is constant.
      3. ``Identity`` of a constant.
    Repeated until nothing changes, so chains such as Constant -> Identity fold fully.
    Runs before :class:`FoldConstantSubgraphsPass`, which folds every other node computed from
    constants in onnxruntime: the size claim of rule 2 is refused here, with a clear error,
    before anything is evaluated.
    """

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Fold in place, then drop the dead nodes."""
        folded = 0
        changed = True
        while changed:
            changed = False
            for node in [n for n in graph.nodes if n.outputs]:
                values = _folded_value(node)
                if values is None or len(node.outputs) != 1:
                    continue
                out = node.outputs[0]
                if out in graph.outputs:
                    continue
                const = gs.Constant(f"{out.name}_folded", np.asarray(values))
                replace_tensor(graph, out, const)
                node.outputs.clear()
                node.inputs.clear()
                folded += 1
                changed = True
        graph.cleanup(remove_unused_graph_inputs=False)
        return PassResult(graph, folded > 0, {"nodes_folded": folded})


def _folded_value(node: gs.Node) -> np.ndarray | None:
    if node.op == "Constant":  # rule 1
        if "value" in node.attrs:
            return np.asarray(node.attrs["value"].values)
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in node.attrs:
                return np.asarray(node.attrs[key], dtype=dtype)
        return None
    if node.op == "ConstantOfShape":  # rule 2
        shape = constant_value(node.inputs[0])
        if shape is None:
            return None
        fill = node.attrs.get("value")
        fill_values = np.asarray(fill.values) if fill is not None else np.zeros(1, np.float32)
        check_tensor(shape.reshape(-1), fill_values.dtype, f"ConstantOfShape node '{node.name}'",
                     error=UnsupportedModelError)
        return np.full(tuple(int(d) for d in shape), fill_values.reshape(-1)[0], fill_values.dtype)
    if node.op == "Identity":  # rule 3
        return constant_value(node.inputs[0])
    return None
