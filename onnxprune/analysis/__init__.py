"""Channel groups: which weight slices must shrink together when a channel is removed."""

from onnxprune.analysis.analyzer import analyze
from onnxprune.analysis.groups import (
    ChannelGroup,
    CountEdit,
    Slice,
    balance_blocks,
    producer_weights,
)

__all__ = ["ChannelGroup", "CountEdit", "Slice", "analyze", "balance_blocks", "producer_weights"]
