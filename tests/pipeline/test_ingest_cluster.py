"""``fourcast ingest run --scheduler-address``: the ingest runs on an existing Dask cluster."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from dask.distributed import LocalCluster

from ingest.schema import DATA, open_store
from pipeline.cli import main
from pipeline.stages import Paths

CONFIG = {
    "synthetic": {"period": {"start": "2000-01-01T00:00", "end": "2000-02-29T18:00"}, "nlat": 16, "nlon": 32},
    "ingest": {"variables": ["z500", "u500", "v500"], "source": "files", "shard_steps": 40,
               "statistics": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"}},
    "train": {"model": "afno-tiny", "train": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"},
              "validation": {"start": "2000-02-01T00:00", "end": "2000-02-10T18:00"},
              "phases": [{"rollout_steps": 1, "optimizer_steps": 1, "learning_rate": 1e-3}]},
    "forecast": {"inits": {"start": "2000-02-15T00:00", "end": "2000-02-16T00:00"}},
}


@pytest.mark.distributed
def test_ingest_runs_its_tasks_on_the_given_scheduler(era5_files, store, tmp_path, capsys):
    paths = Paths(tmp_path / "work")
    paths.raw.mkdir(parents=True)
    for source in era5_files:
        (paths.raw / source.name).symlink_to(source)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "workdir": str(paths.workdir)}))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        assert main(["ingest", "run", "--config", str(config), "--scheduler-address", cluster.scheduler_address]) == 0
        ran_there = set(cluster.scheduler.task_prefixes)
    assert capsys.readouterr().out.strip() == str(paths.store)
    assert ran_there  # the store's shards were written by the given cluster's worker
    np.testing.assert_array_equal(open_store(paths.store)[DATA].values, open_store(store)[DATA].values)
