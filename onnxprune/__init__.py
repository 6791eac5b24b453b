"""onnxprune: prune trained ONNX models into smaller, faster ONNX models."""

from onnxprune.api import PruneResult, inspect, prune
from onnxprune.errors import (
    InvalidModelError,
    NothingToPruneError,
    OnnxPruneError,
    PassError,
    UnsupportedModelError,
    UsageError,
    VerificationError,
)

__all__ = [
    "PruneResult",
    "inspect",
    "prune",
    "InvalidModelError",
    "NothingToPruneError",
    "OnnxPruneError",
    "PassError",
    "UnsupportedModelError",
    "UsageError",
    "VerificationError",
]
