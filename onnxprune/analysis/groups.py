"""The data of channel analysis: slices, count edits, channel groups, and channel runs.

Plain frozen data and pure index mappings, with no reference back to the analysis that made
them (see :mod:`onnxprune.analysis` for how groups are found).

A *run* maps channels ``start ... start + length - 1`` of a group to axis positions: channel
``c`` occupies ``offset + (c - start) * stride ... offset + (c - start + 1) * stride - 1``.
Example: a Conv of 8 channels split in halves by ``Split(axis=1)``; the second half's consumer
reads channels 4..7 at positions 0..3 of its input, the run ``offset=0, start=4, length=4``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


def run_positions(channels: np.ndarray, offset: int, stride: int, start: int,
                  length: int | None) -> np.ndarray:
    """The axis positions that ``channels`` occupy in a run; channels outside it have none."""
    ch = np.asarray(channels, dtype=np.int64).reshape(-1)
    if length is not None:
        ch = ch[(ch >= start) & (ch < start + length)]
    base = offset + (ch - start)[:, None] * stride
    return (base + np.arange(stride)).reshape(-1)


@dataclass(frozen=True)
class Slice:
    """A run of an initializer's axis that follows a group's channels (length None: all).

    ``groups > 1`` marks a grouped Conv's weight read on its input axis: the axis holds one
    block's width ``w`` of input positions, and input position ``p`` is column ``p % w`` of
    the filters of block ``p // w`` only.
    """

    initializer: str
    node: str
    axis: int
    offset: int = 0
    stride: int = 1
    bias: bool = False
    start: int = 0
    length: int | None = None
    groups: int = 1

    def positions(self, channels: np.ndarray) -> np.ndarray:
        """Return the axis positions that ``channels`` of the group occupy in this slice.

        For a grouped Conv weight (``groups > 1``) these are the Conv's input positions.
        """
        return run_positions(channels, self.offset, self.stride, self.start, self.length)


@dataclass(frozen=True)
class CountEdit:
    """An integer operand entry that counts the axis positions of a run of a group's channels.

    When channels go, the entry loses the number of their positions that fall in
    ``[lo, hi)``. ``operand`` is an input index (an int64 constant) or an attribute name;
    ``index`` is the entry (-1: a scalar attribute). ``base``, when set, replaces the entry's
    value before that (a negative Slice bound counted from the end becomes the position it
    names). ``default`` is the operand's value where the node leaves it out (a Split into
    equal parts), so the pass can write it explicitly.

    Examples: a Reshape to ``(N, C*H*W)`` (entry 1 counts every position, ``stride=H*W``);
    a depthwise Conv's ``group``; a Split's size of output ``k`` (positions in its range);
    a Slice's start (positions before it); a Resize's ``sizes`` entry 1.
    """

    node: str
    operand: int | str
    index: int
    offset: int = 0
    stride: int = 1
    start: int = 0
    length: int | None = None
    lo: int = 0
    hi: int | None = None
    base: int | None = None
    default: tuple[int, ...] = ()

    def delta(self, channels: np.ndarray) -> int:
        """How much the entry shrinks when ``channels`` of the group are removed."""
        p = run_positions(channels, self.offset, self.stride, self.start, self.length)
        inside = (p >= self.lo) & (p < self.hi if self.hi is not None else True)
        return int(np.count_nonzero(inside))


@dataclass(frozen=True)
class ChannelGroup:
    """One index space of ``size`` channels and every slice that follows it.

    ``blocks > 1``: a grouped Conv splits the channels into ``blocks`` equal parts that must
    each lose the same number of channels (see :func:`balance_blocks`).
    """

    id: str
    size: int
    producers: tuple[Slice, ...]
    passengers: tuple[Slice, ...] = ()
    consumers: tuple[Slice, ...] = ()
    depthwise: tuple[str, ...] = ()
    counts: tuple[CountEdit, ...] = ()
    blocked: str | None = None
    blocks: int = 1

    @property
    def slices(self) -> tuple[Slice, ...]:
        """Every slice of the group: producers, passengers, consumers."""
        return self.producers + self.passengers + self.consumers

    def part_counts(self, kept: Sequence[int]) -> list[int]:
        """The number of kept channels in each of the ``blocks`` equal parts."""
        width = self.size // self.blocks
        return np.bincount(np.asarray(kept, dtype=np.int64) // width,
                           minlength=self.blocks).tolist()


def balance_blocks(kept: Sequence[int], size: int, blocks: int,
                   ranking: Sequence[int] | None = None,
                   per_block: int | None = None) -> tuple[int, ...]:
    """Turn a keep-set into one that keeps the same count in each of ``blocks`` equal parts.

    Each part keeps ``per_block`` channels (default: as many as the part that keeps most, so
    no kept channel is dropped): its kept channels first, then the others, each best-ranked
    first by ``ranking`` (channel indices, best first; default: index order).

    Example: ``balance_blocks([0, 1, 5], 8, 2) == (0, 1, 4, 5)``.
    """
    kept_set = {int(i) for i in kept}
    order = list(ranking) if ranking is not None else list(range(size))
    rank = {int(c): r for r, c in enumerate(order)}
    width = size // blocks
    parts = [range(b * width, (b + 1) * width) for b in range(blocks)]
    if per_block is None:
        per_block = max(sum(c in kept_set for c in part) for part in parts)
    out: list[int] = []
    for part in parts:
        ordered = sorted(part, key=lambda c: (c not in kept_set, rank.get(c, size + c)))
        out.extend(ordered[:per_block])
    return tuple(sorted(out))


def lcm(a: int, b: int) -> int:
    """Least common multiple (a group's parts under two grouped Convs)."""
    return a * b // math.gcd(a, b)


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
    """A run of a tensor's channel axis that holds one group's channels (gid None: fixed).

    It holds channels ``start ... start + length - 1`` of the group (see the module docstring).
    """

    gid: int | None
    offset: int
    length: int
    stride: int = 1
    start: int = 0

    @property
    def span(self) -> int:
        """The number of axis positions the run covers."""
        return self.length * self.stride


def shift(segs: list[Seg], by: int) -> list[Seg]:
    """Map channel runs through a Concat: the input starts ``by`` positions into the output."""
    return [Seg(s.gid, s.offset + by, s.length, s.stride, s.start) for s in segs]


def scale(segs: list[Seg], factor: int) -> list[Seg]:
    """Map channel runs through a Flatten that folds ``factor`` positions into each channel."""
    return [Seg(s.gid, s.offset * factor, s.length, s.stride * factor, s.start) for s in segs]


def crop(segs: list[Seg], lo: int, hi: int) -> list[Seg] | None:
    """Map channel runs through a Split or Slice that keeps positions ``[lo, hi)``.

    Returns None when a channel's positions straddle a bound. Example: ``[Seg(0, 0, 8)]``
    cropped to ``[4, 8)`` is ``[Seg(0, 0, 4, start=4)]``: channels 4..7 at positions 0..3.
    """
    out = []
    for s in segs:
        first = max(lo, s.offset)
        last = min(hi, s.offset + s.span)
        if first >= last:
            continue
        if (first - s.offset) % s.stride or (last - s.offset) % s.stride:
            return None
        skip = (first - s.offset) // s.stride
        out.append(Seg(s.gid, first - lo, (last - first) // s.stride, s.stride, s.start + skip))
    return out
