"""Process groups for data-parallel training: the only module that touches ``torch.distributed``.

Launch with ``torchrun`` (one node: ``torchrun --nproc-per-node N …``; several nodes:
``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT …``, or
Slurm's ``srun`` exporting the same variables). The launcher sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :class:`LaunchEnv` is the one parser and
check of them (the pipeline's stages read it too), and :func:`process_group` joins the job through
the ``env://`` rendezvous. Without them (``python -m …``) everything runs as a single process of
world size 1 and no collective is ever issued, so the single-process path costs nothing extra.

Backends: NCCL when the process drives a CUDA device (``cuda:LOCAL_RANK``), gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
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


@dataclass(frozen=True)
class LaunchEnv:
    """This process's place in a launch, as the launcher's environment describes it.

    The one parser of ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``torchrun``, or Slurm's
    ``srun`` exporting the same): the process group and the pipeline's stages both read it.
    Without the variables it is a single process (rank 0 of 1).

    Attributes
    ----------
    rank : int
        Global rank, ``0 <= rank < world_size``.
    world_size : int
        Number of processes, at least 1.
    local_rank : int
        Rank on this node, ``0 <= local_rank < world_size``; picks the CUDA device.

    Raises
    ------
    DistributedSetupError
        On construction, if the values do not satisfy those bounds.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        world = self.world_size
        if world < 1 or not 0 <= self.rank < world or not 0 <= self.local_rank < world:
            raise DistributedSetupError(
                f"expected WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and 0 <= LOCAL_RANK < WORLD_SIZE, found "
                f"RANK={self.rank} WORLD_SIZE={self.world_size} LOCAL_RANK={self.local_rank}"
            )

    @property
    def is_distributed(self) -> bool:
        """True for a launch of more than one process."""
        return self.world_size > 1

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None) -> LaunchEnv:
        """Read the launcher's variables from ``env`` (default ``os.environ``).

        Raises
        ------
        DistributedSetupError
            If a variable is not an integer, the bounds of :class:`LaunchEnv` do not hold, or
            ``WORLD_SIZE > 1`` while any of :data:`LAUNCH_VARIABLES` (the rendezvous) is unset.
        """
        env = os.environ if env is None else env
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            text = env.get(name)
            try:
                values[name] = default if text is None else int(text)
            except ValueError as err:
                message = f"expected an integer {name} from the launcher, found {text!r}"
                raise DistributedSetupError(message) from err
        launch = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        missing = [name for name in LAUNCH_VARIABLES if name not in env]
        if launch.is_distributed and missing:
            raise DistributedSetupError(
                f"WORLD_SIZE={launch.world_size} but {missing} are not set; start the job with torchrun (or "
                f"export all of {list(LAUNCH_VARIABLES)})"
            )
        return launch


def _rank_device(requested: str | None, local_rank: int) -> torch.device:
    if requested in (None, "cuda") and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} "
                "CUDA devices; start at most one process per device"
            )
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
        If the launcher's variables are malformed or, with ``WORLD_SIZE > 1``, incomplete
        (:meth:`LaunchEnv.from_environ`).
    """
    launch = LaunchEnv.from_environ()
    if not launch.is_distributed:
        yield DistContext(device=default_device(device))
        return
    rank, world, local = launch.rank, launch.world_size, launch.local_rank
    rank_device = _rank_device(device, local)
    backend = "nccl" if rank_device.type == "cuda" else "gloo"
    if rank_device.type == "cuda":
        torch.cuda.set_device(rank_device)
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
        device_id=rank_device if rank_device.type == "cuda" else None,
    )
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
    if not LaunchEnv.from_environ().is_distributed:
        yield
        return
    with process_group("cpu", timeout_s) as ctx:
        if not ctx.is_main:
            dist.barrier()
        yield
        if ctx.is_main:
            dist.barrier()
