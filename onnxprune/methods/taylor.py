"""First-order Taylor importance: how much a channel's removal moves the outputs, to first order.

``--importance taylor``. Removing channel ``c`` zeroes its producers' weights; the constant it
then emits is folded into the next layer's bias, which layer reconstruction refits, so the
output ``a_{k,p}`` of producer ``k`` at each position ``p`` of ``c`` becomes about its mean
``mu_{k,c}``. To first order that moves the model's outputs ``y`` on one input by

    dy = - sum_k sum_{p in c} (a_{k,p} - mu_{k,c}) * dy/da_{k,p}

(the producers of a residual group add into one channel, so their terms add before squaring).
The score of ``c`` is ``E ||dy||^2`` over the calibration inputs, Molchanov et al. (2019)'s
squared form. Their loss does not work here: the distillation loss ``||y' - y||^2`` and its
gradient are zero at the unpruned model. The output change itself is used instead, without
forming a Jacobian: for a vector ``r`` of independent standard normal entries
``E_r (r . dy)^2 = ||dy||^2``, and ``r . dy`` is the sum above with ``dy/da`` replaced by the
gradient of ``r . y``. One backward pass per batch, with a fresh ``r`` per input, scores every
channel on every input at once. The squared form is the one that adds up over inputs and
channels to the relative L2 error of the outputs the report gives.

``y`` holds the values before a final Sigmoid / Softmax (what distillation compares), each
output divided by its RMS on the batch so outputs of different scales count alike. The
scores are divided by their group's mean, like
:func:`~onnxprune.methods.magnitude.normalised_l1`, so the budget cuts each layer by the
relative score of its channels; ``--allocation sensitivity`` spreads the cut across layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch

from onnxprune import modelio
from onnxprune.analysis.groups import ChannelGroup
from onnxprune.methods.reconstruct import Batches
from onnxprune.shadow import ShadowModel


def taylor_scores(model: onnx.ModelProto, groups: Sequence[ChannelGroup], batches: Batches,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Per prunable group, each channel's ``E ||dy||^2`` over its group's mean (see above).

    Producers (Conv, ConvTranspose, Gemm, MatMul) put their channels on axis 1 of their
    output, channel ``c`` at index ``c``.
    """
    graph = modelio.to_graph(model)
    made = {n.name: n.outputs[0].name for n in graph.nodes}
    prunable = [g for g in groups if not g.blocked]
    reads = {g.id: sorted({made[s.node] for s in g.producers}) for g in prunable}
    names = sorted({name for group in reads.values() for name in group})
    shadow = ShadowModel(model).eval()
    for p in shadow.parameters():
        p.requires_grad_(False)
    logits = [kind.logits for kind in shadow.output_kinds]
    generator = torch.Generator().manual_seed(seed)
    sums = {g.id: np.zeros(g.size) for g in prunable}
    for x in batches():
        x = x.float().requires_grad_(True)  # the gradient flows to the producers' outputs
        values = shadow.tensors((x,), [*names, *logits])
        acts, ys = dict(zip(names, values[:len(names)], strict=True)), values[len(names):]
        projection = sum((y * torch.randn(y.shape, generator=generator)).sum()
                         / y.detach().square().mean().sqrt().clamp_min(1e-12) for y in ys)
        grads = torch.autograd.grad(projection, [acts[n] for n in names], allow_unused=True)
        with torch.no_grad():  # a gradient is None where no output reads that producer
            terms = {n: _per_channel(acts[n], torch.zeros_like(acts[n]) if grad is None
                                     else grad) for n, grad in zip(names, grads, strict=True)}
        for g in prunable:
            change = sum(terms[n] for n in reads[g.id])  # (inputs, channels)
            sums[g.id] += change.square().sum(0).double().numpy()
    return {gid: s / max(float(s.mean()), 1e-30) for gid, s in sums.items()}


def _per_channel(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per input and channel (axis 1), ``sum_p (a_p - mu) g_p``, ``mu`` the batch's mean."""
    a, g = a.reshape(*a.shape[:2], -1), g.reshape(*g.shape[:2], -1)
    mu = a.mean(dim=(0, 2), keepdim=True)
    return ((a - mu) * g).sum(2)
