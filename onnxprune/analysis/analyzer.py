"""Channel groups: which weight slices must shrink together when a channel is removed.

A *group* is one index space of channels. Its *producers* create the channels (output rows of
a Conv/Gemm/MatMul weight, and its bias); its *passengers* are per-channel tensors that follow
them (BatchNorm parameters, PRelu slopes, per-channel Mul/Add constants, depthwise kernels);
its *consumers* read them (input rows of the next weights). Every slice is a run of one
initializer's axis: channel ``c`` of the group occupies positions
``offset + c * stride ... offset + (c + 1) * stride - 1`` of that axis.

Worked example: ``conv1 (16 ch) -> Relu -> Concat(axis 1) with conv2 (8 ch) -> Flatten (7x7)
-> Gemm W[10, 24*49]`` gives two groups. conv1's group consumes ``W`` axis 1 with offset 0 and
stride 49; conv2's consumes it with offset ``16 * 49`` and stride 49. A residual ``Add`` merges
its inputs' groups into one; a depthwise Conv carries its input's group through.

A group that cannot be pruned safely is *blocked* with a sentence saying why; analysis never
guesses. The op knowledge lives in :mod:`onnxprune.analysis.roles`, the state of a run in
:mod:`onnxprune.analysis.builder`.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.analysis.builder import GroupBuilder
from onnxprune.analysis.groups import ChannelGroup
from onnxprune.analysis.roles import ROLES


def handle(b: GroupBuilder, node: gs.Node) -> None:
    """Apply the role of ``node``'s op type, or block what reaches an unknown op."""
    role = ROLES.get(node.op)
    if role is not None:
        role(b, node)
    elif any(b.layout(t) for t in node.inputs):
        b.block_inputs(node, f"{node.op} node '{node.name}' is not known to keep channels apart")


def analyze(graph: gs.Graph) -> list[ChannelGroup]:
    """Return the channel groups of a normalised, toposorted graph with inferred shapes."""
    builder = GroupBuilder(graph)
    for node in graph.nodes:
        handle(builder, node)
    return builder.groups()
