"""onnxprune: prune trained ONNX models into smaller, faster ONNX models.

``prune`` and ``inspect`` are the entry points; ``load`` and ``save`` read and write models
(external data, old IR versions, atomic writes); ``ShadowModel`` runs an ONNX model as a
trainable ``torch.nn.Module``.
"""

from onnxprune.api import PruneResult, inspect, prune
from onnxprune.errors import (
    InvalidModelError,
    NothingToPruneError,
    OnnxPruneError,
    PassError,
    TrainingError,
    UnsupportedModelError,
    UsageError,
    VerificationError,
)
from onnxprune.modelio import load, save
from onnxprune.shadow import ShadowModel

__all__ = [
    "PruneResult",
    "ShadowModel",
    "inspect",
    "load",
    "prune",
    "save",
    "InvalidModelError",
    "NothingToPruneError",
    "OnnxPruneError",
    "PassError",
    "TrainingError",
    "UnsupportedModelError",
    "UsageError",
    "VerificationError",
]
