"""Graph passes: one per file, each a :class:`Pass` rewriting a graphsurgeon graph in place."""

from onnxprune.passes._base import Pass, PassResult, PruneContext, run_passes
from onnxprune.passes.cleanup import CleanupPass
from onnxprune.passes.fold_batchnorm import FoldBatchNormPass
from onnxprune.passes.fold_channel_affine import FoldChannelAffinePass
from onnxprune.passes.fold_constant_nodes import FoldConstantNodesPass
from onnxprune.passes.fold_constant_subgraphs import FoldConstantSubgraphsPass
from onnxprune.passes.fold_removed_channels import FoldRemovedChannelsPass
from onnxprune.passes.name_nodes import NameNodesPass
from onnxprune.passes.prune_channels import PruneChannelsPass

__all__ = [
    "CleanupPass",
    "FoldBatchNormPass",
    "FoldChannelAffinePass",
    "FoldConstantNodesPass",
    "FoldConstantSubgraphsPass",
    "FoldRemovedChannelsPass",
    "NameNodesPass",
    "Pass",
    "PassResult",
    "PruneContext",
    "PruneChannelsPass",
    "run_passes",
]
