"""Typed errors: each carries a one-line sentence a user can act on.

The CLI prints ``str(error)`` and exits with the error's ``exit_code``: 2 for every
:class:`OnnxPruneError` but :class:`BudgetError` (3).
"""

import math


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""

    exit_code = 2


class InvalidModelError(OnnxPruneError):
    """The input file is missing, unreadable, not ONNX, or fails the checker."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but uses something onnxprune cannot handle."""


class NothingToPruneError(OnnxPruneError):
    """Every channel group of the model is blocked, so no filter can be removed."""


class UsageError(OnnxPruneError):
    """An option or argument is out of range or contradicts another one."""


class PassError(OnnxPruneError):
    """A graph pass failed; the message names the pass and the passes run before it."""


class VerificationError(OnnxPruneError):
    """The written model does not behave like the one it was derived from."""


class BudgetError(OnnxPruneError):
    """``--strict``: the run ended above its ``--max-flops`` / ``--max-params`` budget.

    ``result`` is the run's :class:`~onnxprune.api.PruneResult`, its report saying why.
    """

    exit_code = 3

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class TrainingError(OnnxPruneError):
    """Training diverged: the loss or the weights are no longer finite."""


def require_finite(**values: float | None) -> None:
    """Refuse NaN and infinite option values, naming the option as the CLI spells it."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
