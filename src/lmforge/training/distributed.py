"""Data-parallel training under ``torchrun`` (DDP): NCCL on GPUs, gloo on CPU.

``torchrun --nproc_per_node=N -m lmforge train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` reads them. Every rank draws the same global batch and keeps its
own rows (see :mod:`lmforge.training.tasks`); DDP averages the gradients, so the global batch is the config's
``batch_size``. Only rank 0 logs, evaluates and writes files.

Before training, :func:`train_lm` and :func:`train_translation` join the group (:func:`process_group`) so that
rank 0 alone trains the tokenizer and writes the token cache (:func:`main_first`, :func:`shared_tokenizer`)
while the other ranks wait at a barrier and then load what it wrote; the run folder must therefore be on a
filesystem every rank sees (as resuming already requires).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from lmforge.tokenizers import load_tokenizer
from torch.nn.parallel import DistributedDataParallel as DDP

__all__ = ["DistInfo", "init_distributed", "wrap_ddp", "all_reduce_sum", "barrier", "cleanup", "env_world_size",
           "current_dist", "process_group", "main_first", "shared_tokenizer"]

log = logging.getLogger(__name__)


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
        return current_dist()
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


def current_dist() -> DistInfo:
    """This process's place in an already initialised process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistInfo]:
    """:func:`init_distributed` for the duration of the block, then :func:`cleanup` (a no-op without torchrun)."""
    info = init_distributed(device)
    try:
        yield info
    finally:
        cleanup(info)


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Runs the block on rank 0 first and on the other ranks once it is done, so that rank 0 writes shared files
    (the tokenizer, the token cache) and the others only read them. Without a process group it just runs."""
    if info.enabled and not info.is_main:
        barrier(info)
    try:
        yield
    finally:  # also when rank 0 fails: the others then fail on the missing files instead of hanging
        if info.enabled and info.is_main:
            barrier(info)


def shared_tokenizer(info: DistInfo, path: Path, train: Callable[[], Any]) -> Any:
    """``train()`` on rank 0, which saves the tokenizer to ``path``; the other ranks load it from there.

    Call it inside :func:`main_first`. In a single process it is just ``train()`` (nothing is written).
    """

    if not info.enabled:
        return train()
    if info.is_main:
        tokenizer = train()
        path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(path)
        log.info("rank 0 trained the tokenizer; the other ranks load it from %s", path)
        return tokenizer
    return load_tokenizer(path)
