"""Dask cluster lifecycle: the only module that creates a ``dask.distributed.Client``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from dask.distributed import Client, LocalCluster

from pipeline.config import ClusterConfig

log = logging.getLogger(__name__)


def _quiet_dask_logs() -> None:
    """Keep Dask's per-worker INFO chatter out of the pipeline's log unless debugging."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def dask_client(cfg: ClusterConfig) -> Iterator[Client]:
    """A client for ``cfg.scheduler_address``, or for a fresh ``LocalCluster`` closed on exit.

    While the block runs the client is Dask's default scheduler, so lazy xarray/Dask work in
    :mod:`ingest` runs on it without knowing about it.
    """
    _quiet_dask_logs()
    if cfg.scheduler_address:
        with Client(cfg.scheduler_address) as client:
            log.info("connected to Dask scheduler %s", cfg.scheduler_address)
            yield client
        return
    with LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                      memory_limit=cfg.memory_limit, processes=True, dashboard_address=":0",
                      silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:
        log.info("started Dask LocalCluster with %d workers", cfg.n_workers)
        yield client
