"""The whole pipeline on a tiny grid: every stage real (LocalCluster, Zarr v3, torch, MLflow)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import xarray as xr
import yaml
from mlflow.tracking import MlflowClient

from ensembles.scorecard import HEADLINE_METRICS
from pipeline.cli import main

TINY = {
    "synthetic": {
        "period": {"start": "2000-01-01T00:00", "end": "2000-03-31T18:00"},
        "nlat": 16,
        "nlon": 32,
        "seed": 3,
        "spinup_days": 5,
    },
    "cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_limit": "2GiB"},
    "ingest": {
        "variables": ["z500", "u500", "v500"],
        "statistics": {"start": "2000-01-01T00:00", "end": "2000-02-10T18:00"},
        "shard_steps": 31,
    },
    "train": {
        "model": "afno-tiny",
        "train": {"start": "2000-01-01T00:00", "end": "2000-02-10T18:00"},
        "validation": {"start": "2000-02-11T00:00", "end": "2000-02-28T18:00"},
        "batch_size": 8,
        "phases": [
            {"rollout_steps": 1, "optimizer_steps": 40, "learning_rate": 3e-3},
            {"rollout_steps": 2, "optimizer_steps": 5, "learning_rate": 5e-4},
        ],
        "warmup_steps": 5,
        "validate_every": 20,
        "validation_lead_hours": [6, 24],
    },
    "forecast": {
        "inits": {"start": "2000-03-01T00:00", "end": "2000-03-21T00:00"},
        "init_every_hours": 120,
        "members": 4,
        "lead_hours": 48,
        "members_per_batch": 2,
        "perturbation": {"kind": "gaussian", "amplitude": 0.1},
        "stream_scores": True,
    },
    "score": {"lead_hours": [24, 48]},
    "tracking": {"experiment": "e2e"},
}


@pytest.mark.slow
@pytest.mark.distributed
def test_pipeline_end_to_end_twice(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "workdir": str(tmp_path / "work")}))
    for _ in range(2):  # the second run must replace (or reuse) everything cleanly
        assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "summary:" in out and "mlflow ui --backend-store-uri sqlite:///" in out

    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    scores = summary["scores"]
    seen = {(s["system"], s["metric"]) for s in scores if s["variable"] == "z500"}
    # every headline score of every system: fourcast's skill, calibration and skill scores, each
    # baseline's (persistence, both climatologies and the stronger of them, the control member)
    assert seen == {(system, m) for system, metrics in HEADLINE_METRICS.items() for m in metrics}
    assert {s["lead_hours"] for s in scores} == {24, 48}
    assert all(np.isfinite(s["value"]) for s in scores)
    rmse = {
        (s["system"], s["lead_hours"]): s["value"]
        for s in scores
        if s["variable"] == "z500" and s["metric"] == "rmse"
    }
    assert 0 < rmse[("persistence", 24)] < rmse[("persistence", 48)]

    client = MlflowClient(summary["mlflow_tracking_uri"])
    runs = {stage: client.get_run(run_id) for stage, run_id in summary["mlflow_run_ids"].items()}
    assert {stage: run.info.status for stage, run in runs.items()} == dict.fromkeys(
        ("pipeline", "train", "forecast", "score"), "FINISHED"
    )
    assert [m.step for m in client.get_metric_history(runs["train"].info.run_id, "train/loss")][:2] == [
        1,
        2,
    ]  # every step
    assert "val/z500/rmse_24h" in runs["train"].data.metrics
    campaign = runs["score"].data.tags["campaign_key"]
    headline = runs["train"].data.metrics[
        f"score/{campaign}/z500/rmse_24h"
    ]  # verification logged on the model's run
    assert runs["train"].data.tags[f"score_run_{campaign}"] == runs["score"].info.run_id
    for run in runs.values():  # paths are relative to the workdir, and no host name is recorded
        values = {**run.data.params, **run.data.tags}
        assert [v for v in values.values() if str(tmp_path) in v or socket.gethostname() in v] == []
    assert headline == rmse[("fourcast", 24)]
    assert [a.path for a in client.list_artifacts(runs["train"].info.run_id, "model/artifacts")] == [
        "model/artifacts/model.pt"
    ]
    plots = {a.path for a in client.list_artifacts(runs["score"].info.run_id, "plots")}
    assert "plots/rmse_z500.png" in plots
    assert client.list_artifacts(runs["forecast"].info.run_id, "plots")
    assert {f"score/z500/rmse_{h}h" for h in range(0, 49, 6)} <= set(runs["score"].data.metrics)
    with (
        xr.open_dataset(tmp_path / "work" / "scores" / "scorecard.nc") as batch,
        xr.open_dataset(tmp_path / "work" / "scores" / "streamed" / "scorecard.nc") as streamed,
    ):
        xr.testing.assert_allclose(streamed["score"], batch["score"], rtol=1e-6)  # members scored as produced
    leftovers = [p.name for p in (tmp_path / "work").rglob(".*partial*")]
    assert leftovers == []
    (aside,) = (tmp_path / "work" / "checkpoints").glob(
        "replaced-*"
    )  # the second run started over explicitly
    assert sorted(p.name for p in aside.iterdir()) == ["best.pt", "last.pt", "model.pt"]
