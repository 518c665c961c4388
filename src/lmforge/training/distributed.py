"""Data-parallel training under ``torchrun`` (DDP): NCCL on GPUs, gloo on CPU.

``torchrun --nproc_per_node=N -m lmforge train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` reads them. Every rank draws the same global batch and keeps its
own rows (see :mod:`lmforge.training.tasks`); DDP averages the gradients, so the global batch is the config's
``batch_size``. Only rank 0 logs, evaluates and writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "wrap_ddp", "all_reduce_sum", "barrier", "cleanup", "env_world_size"]


@dataclass
class DistInfo:
    """Where this process stands: its rank, the number of ranks and whether it writes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        """True when there is more than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates and writes."""
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> DistInfo:
    """Joins the process group when launched by torchrun (or when one is already initialised).

    Args:
        device: the training device; picks the backend (``nccl`` for CUDA, ``gloo`` otherwise) and, for CUDA,
            the GPU ``LOCAL_RANK``.

    Returns:
        A :class:`DistInfo` (rank 0 of 1 when not distributed).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = env_world_size()
    if world <= 1 or not dist.is_available():
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local_rank, initialised_here=True)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """Wraps ``model`` in ``DistributedDataParallel`` when distributed, else returns it unchanged."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device.type == "cuda":
        return DDP(model, device_ids=[device.index if device.index is not None else info.local_rank])
    return DDP(model)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sums ``tensor`` over ranks in place (a no-op for one rank) and returns it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(info: DistInfo) -> None:
    """Waits for every rank (a no-op for one rank)."""
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leaves the process group if this module joined it."""
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()
