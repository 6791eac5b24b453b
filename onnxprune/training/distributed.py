"""Training in several processes with torch.distributed (``torchrun``).

Launched under ``torchrun --nproc-per-node N`` (or torchrun's multi-node rendezvous), every
process runs the whole command; :func:`start_from_env` joins the process group torchrun
describes in the environment (``gloo`` on CPU, ``nccl`` with ``--device cuda``). In training,
each process reads its own share of every epoch's batches (the same seeded order cut into
rank-strided batches, as ``DistributedSampler`` does), the gradients are all-reduced before
each step and rank 0's BatchNorm statistics are shared after each epoch, so every process
applies the same updates and holds the same model. Everything
else a method does is a deterministic function of those weights, so every process makes the
same decisions without a broadcast; only rank 0 writes files and draws progress bars.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def start_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun set up, once; nothing in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def writes() -> bool:
    """Whether this process writes files and shows progress: rank 0."""
    return world()[0] == 0


def average_gradients(model: nn.Module) -> None:
    """All-reduce every gradient to its mean over the processes (nothing in one process)."""
    _, size = world()
    if size == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size


def share_buffers(model: nn.Module) -> None:
    """Give every process rank 0's float buffers (BatchNorm running statistics), as DDP does.

    Each process's statistics come from its own batches; after this all hold the same model.
    Nothing in one process.
    """
    if world()[1] == 1:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.broadcast(buffer, 0)


def total(*values: float) -> list[float]:
    """Each value summed over the processes."""
    if world()[1] == 1:
        return list(values)
    found = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(found)
    return found.tolist()
