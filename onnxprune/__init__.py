"""onnxprune: prune trained ONNX models into smaller, faster ONNX models."""

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
    "InvalidModelError",
    "NothingToPruneError",
    "OnnxPruneError",
    "PassError",
    "UnsupportedModelError",
    "UsageError",
    "VerificationError",
]
