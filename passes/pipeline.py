"""The pass pipeline, in order, in one place.

``NORMALIZE`` runs on every loaded model; ``PRUNE`` applies a plan (``ctx.plan``);
``CLEANUP`` runs last. Shape inference and the checker run when ``onnxprune.modelio`` turns the
graph back into a ModelProto.
"""

from onnxprune.passes.cleanup import CleanupPass
from onnxprune.passes.fold_batchnorm import FoldBatchNormPass
from onnxprune.passes.fold_constant_nodes import FoldConstantNodesPass
from onnxprune.passes.fold_removed_channels import FoldRemovedChannelsPass
from onnxprune.passes.name_nodes import NameNodesPass
from onnxprune.passes.prune_channels import PruneChannelsPass

NORMALIZE = [NameNodesPass(), FoldConstantNodesPass(), FoldBatchNormPass(), CleanupPass()]
PRUNE = [FoldRemovedChannelsPass(), PruneChannelsPass()]
CLEANUP = [CleanupPass()]
