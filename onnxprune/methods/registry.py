"""Methods register here by name; the CLI and the API look them up here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx
import onnx_graphsurgeon as gs

from onnxprune.analysis.groups import ChannelGroup
from onnxprune.errors import UsageError
from onnxprune.methods.budget import Budget
from onnxprune.plan import Plan
from onnxprune.training.data import Dataset
from onnxprune.training.loop import TrainConfig


@dataclass(frozen=True)
class Context:
    """What every method gets.

    The normalised graph (and the same model as a ModelProto, to build a shadow from), its
    groups, the budget, the method's options, and for methods that train, the training and
    validation data and the training options.
    """

    graph: gs.Graph
    groups: tuple[ChannelGroup, ...]
    budget: Budget
    round_to: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)
    data: Dataset | None = None
    val_data: Dataset | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    model: onnx.ModelProto | None = None
    synthetic: bool = False  # ``data`` was drawn at random (no --data), not given by the user

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        """The groups that are not blocked."""
        return tuple(g for g in self.groups if not g.blocked)


class Method(Protocol):
    """A pruning method: reads a context, returns a plan; it never edits the graph.

    ``options`` names the keyword options the method reads from ``Context.options``;
    ``records`` names the per-step log it leaves in ``Plan.log`` for ``--plot`` ("stages",
    "rounds"), or is None when it leaves none.
    """

    name: str
    options: frozenset[str]
    records: str | None

    def run(self, ctx: Context) -> Plan:
        """Decide what to prune."""
        ...


_METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator registering a method under ``name``; a second use of a name raises."""
    def decorate(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is already registered by {_METHODS[name].__name__}")
        cls.name = name
        _METHODS[name] = cls
        return cls
    return decorate


def names() -> list[str]:
    """Return the registered method names, sorted."""
    return sorted(_METHODS)


def create(name: str) -> Method:
    """Return a new instance of the method called ``name``."""
    if name not in _METHODS:
        raise UsageError(f"unknown method '{name}' (known: {', '.join(names())})")
    return _METHODS[name]()
