"""Intermediate features to distil on: the kept channels of each group's producer outputs.

Distilling on the outputs alone gives a pruned network one signal at its end. Filter pruning
keeps a subset of each group's channels, so the pruned model's producer output (a Conv's
output, after any BatchNorm the shadow inserted) still has a teacher to match: the original's
same tensor restricted to the kept channels. Matching it at every group boundary guides each
layer, as FitNets-style hint losses do, without the projection layers those need, because
the channels correspond one to one.

A producer qualifies when its output holds the group's channels and nothing else (its weight's
output axis is the group, no offset or partial run) and its output tensor is 4-D (N, C, H, W)
or 2-D (N, C): a producer shared with another group cannot be indexed by one plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as F

from onnxprune.analysis.groups import ChannelGroup
from onnxprune.plan import Plan


@dataclass(frozen=True)
class Feature:
    """A tensor present in both models: the original's channels ``kept`` are the pruned one's."""

    name: str
    kept: tuple[int, ...]


def group_features(graph: gs.Graph, groups: Sequence[ChannelGroup], plan: Plan) -> list[Feature]:
    """One :class:`Feature` per qualifying producer output of the groups (see the module)."""
    nodes = {node.name: node for node in graph.nodes}
    sizes = {name: t.values.shape for name, t in graph.tensors().items()
             if isinstance(t, gs.Constant)}
    features: dict[str, Feature] = {}
    for group in groups:
        if group.blocked is not None:
            continue
        kept = tuple(int(i) for i in plan.kept(group))
        for producer in group.producers:
            node = nodes.get(producer.node)
            whole = (producer.offset == 0 and producer.stride == 1 and producer.start == 0
                     and producer.length is None and producer.axis == 0
                     and sizes.get(producer.initializer, (None,))[0] == group.size)
            if node is None or not whole or producer.bias or len(node.outputs) != 1:
                continue
            features.setdefault(node.outputs[0].name, Feature(node.outputs[0].name, kept))
    return list(features.values())


def feature_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                 features: Sequence[Feature]) -> torch.Tensor:
    """Mean over ``features`` of the squared error to the teacher's kept channels.

    Each error is divided by the teacher's variance over those channels, so features of any
    scale weigh alike and a perfect student scores 0.
    """
    losses = []
    for s, t, feature in zip(student, teacher, features, strict=True):
        target = t.index_select(1, torch.as_tensor(feature.kept, device=t.device))
        if s.shape != target.shape:
            raise ValueError(f"feature {feature.name}: the pruned model's {tuple(s.shape)} "
                             f"does not match the original's kept {tuple(target.shape)}")
        losses.append(F.mse_loss(s, target) / target.var().clamp_min(1e-8))
    return torch.stack(losses).mean()

