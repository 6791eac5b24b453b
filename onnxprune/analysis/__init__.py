"""Channel groups: which weight slices must shrink together when a channel is removed."""

from onnxprune.analysis.analyzer import analyze
from onnxprune.analysis.groups import ChannelGroup, ShapeEdit, Slice, producer_weights

__all__ = ["ChannelGroup", "ShapeEdit", "Slice", "analyze", "producer_weights"]
