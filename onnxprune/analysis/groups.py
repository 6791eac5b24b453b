"""The data of channel analysis: slices, channel groups, and channel runs of tensors.

Plain frozen data and pure index mappings, with no reference back to the analysis that made
them (see :mod:`onnxprune.analysis` for how groups are found).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


@dataclass(frozen=True)
class Slice:
    """A run of an initializer's axis that follows a group's channels."""

    initializer: str
    node: str
    axis: int
    offset: int = 0
    stride: int = 1
    bias: bool = False

    def positions(self, channels: np.ndarray) -> np.ndarray:
        """Return the axis positions that ``channels`` of the group occupy in this slice."""
        base = self.offset + np.asarray(channels, dtype=np.int64)[:, None] * self.stride
        return (base + np.arange(self.stride)).reshape(-1)


@dataclass(frozen=True)
class ShapeEdit:
    """An entry of a Reshape's shape constant that counts ``stride`` elements per channel."""

    initializer: str
    node: str
    index: int
    stride: int


@dataclass(frozen=True)
class ChannelGroup:
    """One index space of ``size`` channels and every slice that follows it."""

    id: str
    size: int
    producers: tuple[Slice, ...]
    passengers: tuple[Slice, ...] = ()
    consumers: tuple[Slice, ...] = ()
    depthwise: tuple[str, ...] = ()
    reshapes: tuple[ShapeEdit, ...] = ()
    blocked: str | None = None

    @property
    def slices(self) -> tuple[Slice, ...]:
        """Every slice of the group: producers, passengers, consumers."""
        return self.producers + self.passengers + self.consumers


def producer_weights(graph: gs.Graph, group: ChannelGroup) -> list[np.ndarray]:
    """Return each producer weight (biases excluded) as an array of shape (size, -1).

    Methods score channels through this accessor, so none needs to know op types.
    """
    tensors = graph.tensors()
    weights = []
    for s in group.producers:
        if s.bias:
            continue
        values = np.moveaxis(np.asarray(tensors[s.initializer].values), s.axis, 0)
        rows = values[s.positions(np.arange(group.size))]
        weights.append(rows.reshape(group.size, -1))
    return weights


@dataclass(frozen=True)
class Seg:
    """A run of a tensor's channel axis that holds one group's channels (gid None: fixed)."""

    gid: int | None
    offset: int
    length: int
    stride: int = 1

    @property
    def span(self) -> int:
        """The number of axis positions the run covers."""
        return self.length * self.stride


def shift(segs: list[Seg], by: int) -> list[Seg]:
    """Map channel runs through a Concat: the input starts ``by`` positions into the output."""
    return [Seg(s.gid, s.offset + by, s.length, s.stride) for s in segs]


def scale(segs: list[Seg], factor: int) -> list[Seg]:
    """Map channel runs through a Flatten that folds ``factor`` positions into each channel."""
    return [Seg(s.gid, s.offset * factor, s.length, s.stride * factor) for s in segs]
