"""Dask cluster lifecycle: the only module that creates a ``dask.distributed.Client``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import dask.config
from dask.distributed import Client, KilledWorker, LocalCluster
from dask.utils import format_bytes, parse_bytes

from ingest.dims import CHANNEL, LAT, LON, TIME
from pipeline.config import ClusterConfig
from pipeline.errors import ClusterError  # re-exported

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

#: Memory of an idle worker process once numpy, xarray, zarr and :mod:`ingest` are imported
#: (measured: about 170 MiB), rounded up.
WORKER_BASELINE_BYTES = 256 * 2**20
#: Copies of a shard a shard task holds at once: its values, and a float64 copy for the statistics.
SHARD_COPIES = 3


def _quiet_dask_logs() -> None:
    """Keep Dask's per-worker INFO chatter out of the pipeline's log unless debugging."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.WARNING)


def _terminate_fraction() -> float:
    """Share of its memory limit at which a worker is killed by its nanny."""
    return float(dask.config.get("distributed.worker.memory.terminate") or 1.0)


def _check_memory_limit(cfg: ClusterConfig) -> None:
    """Refuse a ``memory_limit`` below what an idle worker needs, before starting any worker."""
    if cfg.memory_limit in ("auto", "0", "") or cfg.memory_limit is None:
        return
    limit = parse_bytes(cfg.memory_limit)
    if 0 < limit * _terminate_fraction() < WORKER_BASELINE_BYTES:
        raise ClusterError(
            f"cluster.memory_limit is {cfg.memory_limit} per worker, but an idle Dask worker "
            f"already needs about {format_bytes(WORKER_BASELINE_BYTES)}: its nanny would restart it "
            "over and over; raise cluster.memory_limit"
        )


def check_task_memory(client: Client, task_bytes: int, what: str) -> None:
    """Refuse work whose tasks cannot fit in the workers' memory, before any task runs.

    Each worker runs ``nthreads`` tasks at once, on top of its own footprint
    (:data:`WORKER_BASELINE_BYTES`); a worker without a memory limit is not checked.

    Parameters
    ----------
    client : dask.distributed.Client
    task_bytes : int
        Memory one task holds at its peak.
    what : str
        What one task is, for the message (e.g. "a shard of 64 steps x 3 channels x 16 x 32 float32").

    Raises
    ------
    ClusterError
        If a worker's memory limit is below what its tasks need; the message gives both.
    """
    for address, worker in client.scheduler_info()["workers"].items():
        limit, threads = int(worker.get("memory_limit") or 0), int(worker["nthreads"])
        needed = WORKER_BASELINE_BYTES + threads * task_bytes
        if limit and limit * _terminate_fraction() < needed:
            raise ClusterError(
                f"Dask worker {address} has a memory limit of {format_bytes(limit)} "
                "(cluster.memory_limit), but "
                f"{threads} task(s) at a time of {what} need about "
                f"{format_bytes(threads * task_bytes)} on top of "
                f"the worker's own {format_bytes(WORKER_BASELINE_BYTES)}: raise cluster.memory_limit "
                "to at least "
                f"{format_bytes(int(needed / _terminate_fraction()))}, or make the tasks smaller"
            )


def shard_task_bytes(data: xr.DataArray, shard_steps: int) -> int:
    """Peak memory of one shard-writing task: :data:`SHARD_COPIES` copies of a shard."""
    step_bytes = data.sizes[CHANNEL] * data.sizes[LAT] * data.sizes[LON] * data.dtype.itemsize
    return SHARD_COPIES * min(shard_steps, data.sizes[TIME]) * step_bytes


@contextmanager
def dask_client(cfg: ClusterConfig) -> Iterator[Client]:
    """A client for ``cfg.scheduler_address``, or for a fresh ``LocalCluster`` closed on exit.

    While the block runs the client is Dask's default scheduler, so lazy xarray/Dask work in
    :mod:`ingest` runs on it without knowing about it. The local cluster's dashboard listens on
    ``cfg.dashboard_address`` (loopback by default), and a task whose worker dies is not retried
    on another worker (``allowed-failures`` 0): the block fails at once with a
    :class:`ClusterError` instead of restarting workers until someone notices.

    Raises
    ------
    ClusterError
        If ``cfg.memory_limit`` is too small for a worker to start, or a worker died running a task.
    """
    _quiet_dask_logs()
    try:
        if cfg.scheduler_address:
            with Client(cfg.scheduler_address) as client:
                log.info("connected to Dask scheduler %s", cfg.scheduler_address)
                yield client
            return
        _check_memory_limit(cfg)
        with (
            dask.config.set({"distributed.scheduler.allowed-failures": 0}),
            LocalCluster(
                n_workers=cfg.n_workers,
                threads_per_worker=cfg.threads_per_worker,
                memory_limit=cfg.memory_limit,
                processes=True,
                dashboard_address=cfg.dashboard_address,
                silence_logs=logging.WARNING,
            ) as cluster,
            Client(cluster) as client,
        ):
            log.info(
                "started Dask LocalCluster with %d workers, dashboard %s",
                cfg.n_workers,
                client.dashboard_link,
            )
            yield client
    except KilledWorker as err:
        raise ClusterError(
            f"a Dask worker died while running {err.task!r} (cluster.memory_limit is "
            f"{cfg.memory_limit} per worker; a worker over its limit is killed): {err}"
        ) from err
