"""The one contract every graph pass follows (after onnx-ir's pass infrastructure).

A pass rewrites an onnx-graphsurgeon ``Graph`` in place and returns a :class:`PassResult`
saying whether it changed anything, with a few counters for the log. ``requires`` and
``ensures`` state pre- and post-conditions; :meth:`Pass.__call__` runs them around ``call``
and re-raises any failure as ``PassError("<Name> failed after [A, B]: ...")``.
:class:`PruneContext` is what the prune passes read besides the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx_graphsurgeon as gs

from onnxprune.errors import OnnxPruneError, PassError
from onnxprune.plan import Plan


@dataclass(frozen=True)
class PruneContext:
    """What the prune passes read: the plan whose removed channels they take out."""

    plan: Plan


@dataclass(frozen=True)
class PassResult:
    """What a pass did: the graph, whether it changed, and counters such as removed channels."""

    graph: gs.Graph
    modified: bool
    stats: dict[str, int] = field(default_factory=dict)


class Pass:
    """Base class of graph passes; subclasses implement :meth:`call`."""

    def call(self, graph: gs.Graph, ctx: Any) -> PassResult:
        """Rewrite ``graph`` in place."""
        raise NotImplementedError

    def requires(self, graph: gs.Graph, ctx: Any) -> None:
        """Raise when ``graph`` is not in a state this pass can handle."""

    def ensures(self, graph: gs.Graph, ctx: Any) -> None:
        """Raise when the pass left ``graph`` in a state it promised not to."""

    @property
    def name(self) -> str:
        """The class name, used in logs and error messages."""
        return type(self).__name__

    def __call__(self, graph: gs.Graph, ctx: Any = None, *,
                 after: Sequence[str] = ()) -> PassResult:
        try:
            self.requires(graph, ctx)
            result = self.call(graph, ctx)
            if not isinstance(result, PassResult):
                raise TypeError(f"{self.name}.call returned {type(result).__name__}, "
                                "not PassResult")
            self.ensures(result.graph, ctx)
        except PassError:
            raise
        except (OnnxPruneError, ValueError, TypeError, KeyError, IndexError) as e:
            raise PassError(f"{self.name} failed after [{', '.join(after)}]: {e}") from e
        return result


def run_passes(passes: Sequence[Pass], graph: gs.Graph,
               ctx: Any = None) -> list[tuple[str, PassResult]]:
    """Run ``passes`` in order on ``graph``; return each pass's name and result, for the log."""
    done: list[str] = []
    log: list[tuple[str, PassResult]] = []
    for p in passes:
        result = p(graph, ctx, after=done)
        graph = result.graph
        done.append(p.name)
        log.append((p.name, result))
    return log
