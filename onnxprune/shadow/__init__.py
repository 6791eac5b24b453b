"""The shadow model: an ONNX graph executed by PyTorch, so a model held only as ONNX can train."""

from onnxprune.shadow.module import ShadowModel

__all__ = ["ShadowModel"]
