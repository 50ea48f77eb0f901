"""Tracking shared by several processes: a fresh SQLite store initialised by writers starting together."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.tracking import default_tracking_uri, mlflow_run

WRITERS = 4


def _write_a_run(workdir: str, index: int, barrier) -> str:
    """One writer: wait for the others, then record a run with a parameter and a metric."""
    barrier.wait(timeout=120)
    with mlflow_run(
        default_tracking_uri(Path(workdir)),
        "concurrent",
        f"writer-{index}",
        {"stage": "forecast"},
        Path(workdir) / "mlartifacts",
    ) as tracker:
        tracker.log_params({"writer": index})
        tracker.log_metrics({"value": float(index)})
        return tracker.run_id


def test_writers_starting_together_on_a_fresh_sqlite_store_all_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Manager().Barrier(WRITERS)
    with context.Pool(WRITERS) as pool:
        run_ids = pool.starmap(_write_a_run, [(str(tmp_path), i, barrier) for i in range(WRITERS)])
    client = MlflowClient(default_tracking_uri(tmp_path))
    runs = [client.get_run(run_id) for run_id in run_ids]
    assert sorted(int(run.data.params["writer"]) for run in runs) == list(range(WRITERS))
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len(client.search_experiments(filter_string="name = 'concurrent'")) == 1
