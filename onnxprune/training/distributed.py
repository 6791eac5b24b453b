"""Training in several processes with torch.distributed (``torchrun``).

Launched under ``torchrun --nproc-per-node N`` (or torchrun's multi-node rendezvous), every
process runs the whole command; :func:`start_from_env` joins the process group torchrun
describes in the environment (``gloo`` on CPU, ``nccl`` with ``--device cuda``). In training,
a ``DistributedSampler`` gives each process its share of every epoch's samples, the loss runs
in ``DistributedDataParallel`` (:func:`parallel`), which averages the gradients over the
processes in buckets while the backward pass runs, and rank 0's BatchNorm statistics are
shared after each epoch, so every process applies the same updates and holds the same model.
Validation is sharded too (:func:`share`): each process scores its share and the counts are
summed. Everything else a method does is a deterministic function of the weights, so every
process makes the same decisions without a broadcast; only rank 0 writes files and draws
progress bars, and a checkpoint rank 0 reads on resume reaches the others by broadcast
(:func:`from_rank_0`), so the checkpoint folder need not be shared between machines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from onnxprune.training.data import Dataset

T = TypeVar("T")


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


def parallel(module: nn.Module) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun; itself in one process.

    The graph is declared static: the weights the loss reads are the same at every step of
    a training call, and DDP learns from the first step which ones it never reads (a loss
    may read only some outputs: a labelled detector trains on its first).
    """
    if world()[1] == 1:
        return module
    device = next(module.parameters()).device
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   static_graph=True)


def share(data: Dataset) -> Dataset:
    """This process's share of ``data`` for scoring: samples rank, rank + size, ..."""
    rank, size = world()
    return data if size == 1 else data.subset(np.arange(rank, len(data), size))


def from_rank_0(read: Callable[[], T]) -> T:
    """What ``read`` returns on rank 0, on every process (only rank 0 calls it)."""
    if world()[1] == 1:
        return read()
    box: list[Any] = [read() if writes() else None]
    dist.broadcast_object_list(box, 0)
    return box[0]


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
    return _reduce(values, dist.ReduceOp.SUM)


def maximum(value: float) -> float:
    """The largest of ``value`` over the processes."""
    return _reduce((value,), dist.ReduceOp.MAX)[0]


def _reduce(values: tuple[float, ...], op: dist.ReduceOp) -> list[float]:
    if world()[1] == 1:
        return list(values)
    found = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(found, op)
    return found.tolist()
