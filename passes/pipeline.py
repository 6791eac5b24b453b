"""The pass pipeline, in order, in one place.

``NORMALIZE`` runs on every loaded model; ``PRUNE`` applies a plan (``ctx.plan``);
``CLEANUP`` runs last. Shape inference and the checker run when ``onnxprune.modelio`` turns the
graph back into a ModelProto.
"""

from onnxprune.passes.cleanup import CleanupPass
from onnxprune.passes.fold_batchnorm import FoldBatchNormPass
from onnxprune.passes.fold_channel_affine import FoldChannelAffinePass
from onnxprune.passes.fold_constant_nodes import FoldConstantNodesPass
from onnxprune.passes.fold_constant_subgraphs import FoldConstantSubgraphsPass
from onnxprune.passes.fold_removed_channels import FoldRemovedChannelsPass
from onnxprune.passes.name_nodes import NameNodesPass
from onnxprune.passes.prune_channels import PruneChannelsPass

NORMALIZE = [
    NameNodesPass(),
    FoldConstantNodesPass(),  # Constant / Identity nodes; refuses an oversized ConstantOfShape
    FoldConstantSubgraphsPass(),  # everything else computed from constants (onnxruntime)
    FoldBatchNormPass(),
    FoldChannelAffinePass(),  # Mul / Add by per-channel constants after a Conv or Gemm
    CleanupPass(),
]
PRUNE = [FoldRemovedChannelsPass(), PruneChannelsPass()]
CLEANUP = [CleanupPass()]
