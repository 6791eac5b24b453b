"""The Plan: what a method decided, as plain serialisable data.

``keep`` maps a channel group's id to the sorted channel indices it keeps; a group missing
from ``keep`` keeps everything. ``weights`` holds initializers a method trained (with the zeros
of unstructured pruning), written into the graph before channels are removed; ``log`` is what
the method reports (stages, rounds). Applying a plan is the only edit a method causes; a plan
that keeps everything leaves the model's function unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from onnxprune.analysis.groups import ChannelGroup


@dataclass(frozen=True)
class Plan:
    """Channels to keep per group id."""

    keep: dict[str, tuple[int, ...]] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    log: dict[str, object] = field(default_factory=dict)

    def kept(self, group: ChannelGroup) -> np.ndarray:
        """Return the sorted channel indices ``group`` keeps under this plan."""
        if group.id not in self.keep:
            return np.arange(group.size)
        return np.asarray(sorted(self.keep[group.id]), dtype=np.int64)

    def removed(self, group: ChannelGroup) -> np.ndarray:
        """Return the channel indices ``group`` loses under this plan."""
        return np.setdiff1d(np.arange(group.size), self.kept(group))

    def to_json(self) -> str:
        """Serialise the channel decisions as JSON: ``{"keep": {group id: [indices]}}``."""
        return json.dumps({"keep": {k: list(map(int, v)) for k, v in self.keep.items()}})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Read a plan written by :meth:`to_json`."""
        data = json.loads(text)
        return cls({k: tuple(int(i) for i in v) for k, v in data["keep"].items()})
