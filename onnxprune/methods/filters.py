"""A shadow's filters by channel group: per-channel norms, channel masks, the plan they make.

Filter-level methods (``admm --granularity filter``, ``pp``) train a shadow in which a removed
channel is a zeroed one, and the prune passes then remove it for real. This module is the one
place that maps a group's channels to the rows of its producers' weights (through each
slice's offset and stride, so a weight split between groups is read correctly). Biases are
left out: a zeroed channel still emits its bias, which the prune pass folds into the
consumers, so the shadow computes what the pruned model will.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from onnxprune.analysis.groups import ChannelGroup, Slice, balance_blocks
from onnxprune.plan import Plan

Values = Mapping[str, torch.Tensor]


class Filters:
    """The prunable groups of a model and their producer weights."""

    def __init__(self, groups: Sequence[ChannelGroup]) -> None:
        self.groups = {g.id: g for g in groups if not g.blocked}
        self.slices: dict[str, list[Slice]] = {
            gid: [s for s in g.producers if not s.bias] for gid, g in self.groups.items()}

    def names(self) -> list[str]:
        """The initializers holding the groups' filters, sorted."""
        return sorted({s.initializer for slices in self.slices.values() for s in slices})

    def rows(self, values: Values, gid: str) -> list[torch.Tensor]:
        """Each producer weight of group ``gid`` as a (channels, -1) tensor."""
        size = self.groups[gid].size
        out = []
        for s in self.slices[gid]:
            index = torch.as_tensor(s.positions(np.arange(size)))
            value = values[s.initializer]
            out.append(value.movedim(s.axis, 0)[index.to(value.device)].reshape(size, -1))
        return out

    def l1(self, values: Values, gid: str) -> torch.Tensor:
        """The L1 norm of each channel of ``gid`` over all its producers."""
        return sum(r.abs().sum(1) for r in self.rows(values, gid))

    def l2(self, values: Values, gid: str) -> torch.Tensor:
        """The L2 norm of each channel of ``gid`` over all its producers."""
        return sum(r.square().sum(1) for r in self.rows(values, gid)).sqrt()

    def scores(self, values: Values, gid: str,
               among: torch.Tensor | None = None) -> torch.Tensor:
        """Per-channel L1 over its producer's mean channel L1, averaged over producers.

        Layers of different scale compare fairly. ``among`` (a bool per channel) restricts
        the mean to those channels, e.g. the ones still alive.
        """
        out = []
        for r in self.rows(values, gid):
            l1 = r.detach().abs().sum(1).double()
            base = l1[among] if among is not None and bool(among.any()) else l1
            out.append(l1 / base.mean().clamp_min(1e-12))
        return torch.stack(out).mean(0)

    def alive(self, values: Values) -> dict[str, torch.Tensor]:
        """Which channels of each group have any non-zero producer weight."""
        return {gid: self.l1(values, gid) > 0 for gid in self.groups}

    def masks(self, values: Values, keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A 0/1 mask per producer weight that zeroes the channels ``keep`` marks False."""
        out = {n: torch.ones_like(values[n]) for n in self.names()}
        for gid, kept in keep.items():
            dropped = np.flatnonzero(~kept.cpu().numpy())
            for s in self.slices[gid]:
                index = torch.as_tensor(s.positions(dropped), device=out[s.initializer].device)
                out[s.initializer].index_fill_(s.axis, index, 0.0)
        return out

    def plan(self, keep: Mapping[str, torch.Tensor]) -> Plan:
        """The plan that keeps the channels ``keep`` marks True.

        A group that grouped Convs split into equal parts keeps as many in each part as the
        part keeping most (topped up by index: zeroed channels, the function is unchanged).
        """
        return Plan({gid: balance_blocks(np.flatnonzero(k.cpu().numpy()).tolist(),
                                         self.groups[gid].size, self.groups[gid].blocks)
                     for gid, k in keep.items()})
