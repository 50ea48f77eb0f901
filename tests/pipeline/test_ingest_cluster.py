"""``fourcast ingest run --scheduler-address``: the ingest runs on an existing Dask cluster."""

from __future__ import annotations

import numpy as np
import pytest
from dask.distributed import LocalCluster

from ingest.schema import DATA, open_store
from pipeline.cli import main
from pipeline.stages import Paths


@pytest.mark.distributed
def test_ingest_runs_its_tasks_on_the_given_scheduler(era5_files, store, write_run_config, tmp_path, capsys):
    paths = Paths(tmp_path / "work")
    paths.raw.mkdir(parents=True)
    for source in era5_files:
        (paths.raw / source.name).symlink_to(source)
    config = write_run_config(tmp_path / "config.yaml", paths.workdir,
                              ingest={"source": "files", "shard_steps": 40})
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        assert main(["ingest", "run", "--config", str(config), "--scheduler-address", cluster.scheduler_address]) == 0
        ran_there = set(cluster.scheduler.task_prefixes)
    assert capsys.readouterr().out.strip() == str(paths.store)
    assert ran_there  # the store's shards were written by the given cluster's worker
    np.testing.assert_array_equal(open_store(paths.store)[DATA].values, open_store(store)[DATA].values)
