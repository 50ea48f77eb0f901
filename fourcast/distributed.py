"""Process groups for data-parallel training: the only module that touches ``torch.distributed``.

Launch with ``torchrun`` (one node: ``torchrun --nproc-per-node N …``; several nodes:
``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT …``, or
Slurm's ``srun`` exporting the same variables). The launcher sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`process_group` reads them through
the ``env://`` rendezvous. Without them (``python -m …``) everything runs as a single process of
world size 1 and no collective is ever issued, so the single-process path costs nothing extra.

Backends: NCCL when the process drives a CUDA device (``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fourcast.device import default_device
from fourcast.errors import DistributedSetupError

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes
    ----------
    rank : int
        Global rank, 0 … ``world_size − 1``; rank 0 writes checkpoints and talks to MLflow.
    world_size : int
        Number of processes (one per device).
    local_rank : int
        Rank on this node; picks the CUDA device.
    device : torch.device
        The device this rank computes on.
    backend : str or None
        ``"nccl"`` or ``"gloo"`` when a process group is up, ``None`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """True on the rank that writes files and tracks the run."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when collectives go to a process group (world size above 1)."""
        return self.backend is not None


def _launch_environment() -> dict[str, str]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return {}
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={world} but {missing} are not set; start the job with torchrun (or export all of "
            f"{list(LAUNCH_VARIABLES)})")
    return {name: os.environ[name] for name in LAUNCH_VARIABLES}


def _rank_device(requested: str | None, local_rank: int) -> torch.device:
    if requested in (None, "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                                        "CUDA devices; start at most one process per device")
        return torch.device("cuda", local_rank)
    device = default_device(requested)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device


@contextmanager
def process_group(device: str | None = None, timeout_s: float = 1800.0) -> Iterator[DistContext]:
    """Join the job described by the launcher's environment for the duration of the block.

    Parameters
    ----------
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when present). Under ``torchrun`` each rank
        takes ``cuda:LOCAL_RANK``.
    timeout_s : float
        How long collectives wait for a slow or dead peer before failing.

    Yields
    ------
    DistContext
        World size 1 (no process group) when the environment names no job.

    Raises
    ------
    DistributedSetupError
        If ``WORLD_SIZE > 1`` but the rendezvous variables are incomplete.
    """
    env = _launch_environment()
    if not env:
        yield DistContext(device=default_device(device))
        return
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    rank_device = _rank_device(device, local)
    backend = "nccl" if rank_device.type == "cuda" else "gloo"
    if rank_device.type == "cuda":
        torch.cuda.set_device(rank_device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s),
                            device_id=rank_device if rank_device.type == "cuda" else None)
    try:
        yield DistContext(rank, world, local, rank_device, backend)
    finally:
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait until every rank arrives (no-op for a single process)."""
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it (unchanged for a single process)."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Average ``tensor`` over ranks, in place; returns it."""
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= ctx.world_size
    return tensor


def gather_objects(obj: object, ctx: DistContext) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.is_distributed:
        return [obj]
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel(model)`` in a process group, ``model`` itself otherwise.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from
    the same weights, and averages gradients over ranks during ``backward``.
    """
    if not ctx.is_distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


@contextmanager
def main_first(timeout_s: float = 600.0) -> Iterator[None]:
    """Run the block on rank 0 first, and on the other processes of the launch once rank 0 is through it.

    For processes that share no process group otherwise (the ensemble campaign coordinates
    through its archive): a gloo group is held for the block and closed after it. Every process
    of the launch must enter it; a single process just runs the block.
    """
    if not _launch_environment():
        yield
        return
    with process_group("cpu", timeout_s) as ctx:
        if not ctx.is_main:
            dist.barrier()
        yield
        if ctx.is_main:
            dist.barrier()
