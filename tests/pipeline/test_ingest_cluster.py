"""``fourcast ingest run --scheduler-address``: the ingest runs on an existing Dask cluster."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import numpy as np
import psutil
import pytest
from dask.distributed import LocalCluster

from ingest.schema import DATA, open_store
from pipeline.cli import main
from pipeline.cluster import ClusterError, check_task_memory, dask_client
from pipeline.config import ClusterConfig
from pipeline.paths import Paths


@pytest.mark.distributed
def test_ingest_runs_its_tasks_on_the_given_scheduler(era5_files, store, write_run_config, tmp_path, capsys):
    paths = Paths(tmp_path / "work")
    paths.raw.mkdir(parents=True)
    for source in era5_files:
        (paths.raw / source.name).symlink_to(source)
    config = write_run_config(
        tmp_path / "config.yaml", paths.workdir, ingest={"source": "files", "shard_steps": 40}
    )
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        assert (
            main(["ingest", "run", "--config", str(config), "--scheduler-address", cluster.scheduler_address])
            == 0
        )
        ran_there = set(cluster.scheduler.task_prefixes)
    assert capsys.readouterr().out.strip() == str(paths.store)
    assert ran_there  # the store's shards were written by the given cluster's worker
    np.testing.assert_array_equal(open_store(paths.store)[DATA].values, open_store(store)[DATA].values)


def test_a_memory_limit_too_small_for_a_worker_is_refused_before_any_work(
    era5_files, tmp_path, write_run_config, capsys
):
    paths = Paths(tmp_path / "work")
    paths.raw.mkdir(parents=True)
    for source in era5_files:
        (paths.raw / source.name).symlink_to(source)
    config = write_run_config(
        tmp_path / "config.yaml", paths.workdir, ingest={"source": "files"}, cluster={"memory_limit": "100MB"}
    )
    assert main(["ingest", "run", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "ClusterError: cluster.memory_limit is 100MB per worker" in err and "Traceback" not in err
    assert not paths.store.exists()


@pytest.mark.distributed
def test_tasks_larger_than_a_workers_memory_are_refused_and_a_killed_worker_fails_fast():
    started = time.monotonic()
    with (
        pytest.raises(
            ClusterError, match=r"a Dask worker died while running .*cluster.memory_limit is 400MB"
        ),
        dask_client(ClusterConfig(n_workers=1, memory_limit="400MB")) as client,
    ):
        check_task_memory(client, 2**20, "a small shard")
        with pytest.raises(
            ClusterError,
            match=r"memory limit of 381\.47 MiB \(cluster.memory_limit\).*"
            r"a big shard need about 200\.00 MiB",
        ):
            check_task_memory(client, 200 * 2**20, "a big shard")
        started = time.monotonic()
        client.submit(_hold_memory, 600 * 2**20).result()
    assert time.monotonic() - started < 60, (
        "a worker killed for memory must fail the work, not restart forever"
    )


def _hold_memory(nbytes: int) -> int:
    block = np.ones(nbytes, dtype=np.uint8)
    time.sleep(10)
    return int(block[0])


def test_the_dashboard_listens_on_loopback_only():
    with dask_client(ClusterConfig(n_workers=1)) as client:
        port = urlsplit(client.dashboard_link).port
        listening = [
            c.laddr for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN
        ]
    dashboard = [address for address in listening if address.port == port]
    assert dashboard and all(address.ip == "127.0.0.1" for address in dashboard), listening
