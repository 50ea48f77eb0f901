"""The tracker against MLflow's real backends: a SQLite store, and a local ``mlflow server``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ensembles.archive import open_archive
from pipeline.config import ScoreConfig
from pipeline.lineage import campaign_key, store_fingerprint
from pipeline.stages import score
from pipeline.tracking import NullTracker, default_tracking_uri, mlflow_run


def _exercise(uri: str, artifact_root: Path | None, tmp_path: Path) -> str:
    note = tmp_path / "note.txt"
    note.write_text("hello")
    with mlflow_run(uri, "tests", "train", {"stage": "train"}, artifact_root) as tracker:
        tracker.log_params({"model": "afno-tiny", "lr": 0.002})
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "nan_is_skipped": float("nan")}, step=step * 10)
        tracker.log_artifact(note, "notes")
        tracker.set_tags({"git_commit": "abc123"})
        run_id = tracker.run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model": "afno-tiny", "lr": "0.002"}
    assert run.data.tags["git_commit"] == "abc123" and run.data.tags["stage"] == "train"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(0, 1.0), (10, 0.5), (20, 0.3333)]
    assert "nan_is_skipped" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(run_id, "notes")] == ["notes/note.txt"]
    return run_id


def test_sqlite_store(tmp_path):
    _exercise(default_tracking_uri(tmp_path), tmp_path / "artifacts", tmp_path)
    assert (tmp_path / "mlflow.db").is_file() and any((tmp_path / "artifacts").rglob("note.txt"))


def test_failed_block_marks_the_run_failed(tmp_path):
    uri = default_tracking_uri(tmp_path)
    with pytest.raises(RuntimeError):
        with mlflow_run(uri, "tests", "boom", artifact_root=tmp_path / "a") as tracker:
            run_id = tracker.run_id
            raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"


def test_null_tracker_accepts_everything(tmp_path):
    tracker = NullTracker()
    tracker.log_params({"a": 1})
    tracker.log_metrics({"b": 2.0}, step=1)
    tracker.log_artifact(tmp_path)
    assert tracker.run_id is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "served"),
        "--workers",
        "1",
    ]
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }  # MLflow 3's GenAI job runner: not needed
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not answer /health within 90 s")
        yield uri, tmp_path / "served"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.distributed
def test_remote_tracking_server(mlflow_server, tmp_path):
    uri, served = mlflow_server
    _exercise(uri, None, tmp_path)
    assert any(served.rglob("note.txt"))  # the artifact went through the server's proxy


def _noisy_archive(store: Path, path: Path, lineage: dict, inits=("2000-02-10T00", "2000-02-15T00")) -> Path:
    """A finalised archive of 3 members: the store's truth at each valid time plus seeded noise."""
    import numpy as np

    from ensembles.archive import ZarrArchive
    from ingest.schema import DATA, open_store

    truth = open_store(store)[DATA]
    inits = np.array(inits, dtype="datetime64[ns]")
    leads = np.arange(0, 49, 12).astype("timedelta64[h]").astype("timedelta64[ns]")
    variables = [str(c) for c in truth["channel"].values]
    archive = ZarrArchive(
        path, variables, inits, leads, 3, truth["lat"].values, truth["lon"].values, attrs=lineage
    )
    rng = np.random.default_rng(0)
    for init in inits:
        for lead in leads:
            state = truth.sel(time=init + lead).values
            x = state[None] * (1 + 0.01 * rng.standard_normal((3, *state.shape)))
            archive.write(
                x,
                {
                    "init_time": np.array([init]),
                    "lead_time": np.array([lead]),
                    "member": np.arange(3),
                    "channel": np.array(variables),
                    "lat": truth["lat"].values,
                    "lon": truth["lon"].values,
                },
            )
    return Path(archive.finalize())


@pytest.mark.slow
def test_fourcast_score_links_its_run_to_the_forecast_and_the_training_run(
    tmp_path, store_paths, write_run_config, capsys
):
    from pipeline.cli import main

    workdir = tmp_path / "my work"  # a space in the path (item 17)
    workdir.mkdir()
    store, climatology = store_paths
    (workdir / "store.zarr").symlink_to(store)
    (workdir / "climatology.zarr").symlink_to(climatology)
    uri = default_tracking_uri(workdir)
    with mlflow_run(uri, "scores", "train", {"stage": "train"}, workdir / "mlartifacts") as train:
        pass
    with mlflow_run(uri, "scores", "forecast", {"stage": "forecast"}, workdir / "mlartifacts") as forecast:
        pass
    archive = _noisy_archive(
        store, tmp_path / "archive.zarr", {"train_run_id": train.run_id, "forecast_run_id": forecast.run_id}
    )
    config = write_run_config(  # only its score and tracking slices matter here
        workdir / "run.yaml",
        workdir,
        ingest={"statistics": {"start": "2000-01-01T00:00", "end": "2000-01-20T18:00"}},
        train={
            "train": {"start": "2000-01-01T00:00", "end": "2000-01-20T18:00"},
            "validation": {"start": "2000-01-21T00:00", "end": "2000-01-31T18:00"},
        },
        forecast={"inits": {"start": "2000-02-10T00:00", "end": "2000-02-15T00:00"}},
        score={
            "lead_hours": [24],
            "regions": ["global", "tropics"],
            "boxes": [{"name": "atlantic", "lat": [20, 60], "lon": [280, 10]}],
        },
        tracking={"experiment": "scores"},
    )
    argv = [
        "score",
        "--config",
        str(config),
        "--archive",
        str(archive),
        "--lead-hours",
        "24",
        "48",
        "--map-lead-hours",
        "12",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # the headline table: fourcast's skill and the baselines, not every metric of the scorecard
    # (fourcast's MAE is in the scorecard only; the control member's MAE is a headline baseline)
    assert re.search(r"z500\s+rmse\s+fourcast", printed) and "climatology" in printed
    assert not re.search(r"mae\s+fourcast", printed)

    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("scores").experiment_id], "tags.stage = 'score'"
    )
    run_id = run.info.run_id
    assert (
        run.data.tags["forecast_run_id"] == forecast.run_id and run.data.tags["train_run_id"] == train.run_id
    )
    assert {f"score/z500/crps_{h}h" for h in (0, 12, 24, 36, 48)} <= set(run.data.metrics)
    assert (
        "score/z500/persistence_rmse_24h" in run.data.metrics
        and "score/z500/climatology_acc_48h" in run.data.metrics
    )
    assert {a.path for a in client.list_artifacts(run_id, "scores")} == {
        "scores/scorecard.nc",
        "scores/scorecard.csv",
    }
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {
        "plots/rmse_z500.png",
        "plots/spread_skill_z500.png",
        "plots/rank_histogram_u500.png",
        "plots/map_v500_12h.png",
    } <= plots
    rmse_24h = run.data.metrics["score/z500/rmse_24h"]
    trained = client.get_run(train.run_id)
    key = campaign_key(open_archive(archive))
    assert run.data.tags["campaign_key"] == key and trained.data.tags[f"score_run_{key}"] == run_id
    assert (
        trained.data.metrics[f"score/{key}/z500/rmse_24h"] == rmse_24h > 0
    )  # the verification is on the model's run
    assert (
        f"score/{key}/z500/crps_48h" in trained.data.metrics
        and f"score/{key}/z500/mae_48h" not in trained.data.metrics
    )
    assert run.info.run_name == f"score {key}: 2 inits × 3 members"
    assert {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs} == {
        ("archive.zarr", open_archive(archive).attrs.get("campaign_fingerprint") or key, "forecasts"),
        ("store.zarr", store_fingerprint(workdir / "store.zarr"), "truth"),
    }
    assert run.data.params["store"] == "store.zarr" and run.data.params["archive"] == "../archive.zarr"
    _assert_nothing_names_the_host_or_the_workdir(run, workdir)
    import xarray as xr

    with xr.open_dataset(workdir / "scores" / "scorecard.nc") as scorecard:
        assert list(scorecard["region"].values) == ["global", "tropics", "atlantic"]
        assert (scorecard["n_forecasts"] == 2).all()


_HOLD_A_RUN = """
import sys, time
from pathlib import Path
from pipeline.tracking import mlflow_run
with mlflow_run(sys.argv[1], "killed", "forecast", {"stage": "forecast"}, Path(sys.argv[2])) as tracker:
    print(tracker.run_id, flush=True)
    time.sleep(300)
"""


def _process_holding_a_run(uri: str, tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """A Python process that opens a ``forecast`` run, prints its id and sleeps inside the run."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_RUN, uri, str(tmp_path / "artifacts")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()


def test_a_terminated_process_ends_its_run_killed(tmp_path):
    uri = default_tracking_uri(tmp_path)
    process, run_id = _process_holding_a_run(uri, tmp_path)
    process.terminate()
    assert process.wait(timeout=60) == 128 + 15
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def test_a_run_left_running_by_a_killed_process_is_marked_killed_by_the_next_start(tmp_path):
    uri = default_tracking_uri(tmp_path)
    process, run_id = _process_holding_a_run(uri, tmp_path)
    process.kill()
    process.wait(timeout=60)
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it
    with mlflow_run(uri, "killed", "train", artifact_root=tmp_path / "artifacts"):
        assert client.get_run(run_id).info.status == "RUNNING"  # another stage leaves it alone
    live, live_id = _process_holding_a_run(uri, tmp_path)
    try:
        assert client.get_run(run_id).info.status == "KILLED"  # the next forecast marks it
        with mlflow_run(uri, "killed", "forecast", artifact_root=tmp_path / "artifacts"):
            assert client.get_run(live_id).info.status == "RUNNING"  # a living process's run is not touched
    finally:
        live.kill()
        live.wait(timeout=60)


def _assert_nothing_names_the_host_or_the_workdir(run, workdir: Path) -> None:
    """No param or tag of ``run`` holds the workdir's absolute path or this host's name."""
    values = {**run.data.params, **run.data.tags}
    leaks = {
        key: value
        for key, value in values.items()
        if str(workdir.resolve()) in value
        or str(workdir.absolute()) in value
        or socket.gethostname() in value
    }
    assert leaks == {}


@pytest.mark.slow
def test_two_campaigns_scored_on_one_training_run_both_keep_their_headline_scores(tmp_path, store_paths):
    store, climatology = store_paths
    uri = default_tracking_uri(tmp_path)
    with mlflow_run(uri, "scores", "train", artifact_root=tmp_path / "mlartifacts") as train:
        pass
    cfg = ScoreConfig(lead_hours=[24], plots=False)
    headline = {}
    for name, inits in (("first", ("2000-02-10T00", "2000-02-15T00")), ("second", ("2000-02-20T00",))):
        archive = _noisy_archive(store, tmp_path / f"{name}.zarr", {"train_run_id": train.run_id}, inits)
        with mlflow_run(uri, "scores", "score", artifact_root=tmp_path / "mlartifacts") as tracker:
            records = score(cfg, archive, store, climatology, tmp_path / name, tracker, tracking_uri=uri)
        key = campaign_key(open_archive(archive))
        headline[key] = next(
            r["value"]
            for r in records
            if (r["variable"], r["metric"], r["system"], r["lead_hours"]) == ("z500", "rmse", "fourcast", 24)
        )
    assert len(headline) == 2 and len(set(headline.values())) == 2  # two campaigns, two different scores
    trained = MlflowClient(uri).get_run(train.run_id).data.metrics
    assert {key: trained[f"score/{key}/z500/rmse_24h"] for key in headline} == headline


@pytest.mark.slow
def test_a_training_run_in_another_store_is_a_warning_not_a_failure(
    tmp_path, store_paths, write_run_config, capsys, caplog
):
    from pipeline.cli import main

    store, climatology = store_paths
    elsewhere = default_tracking_uri(tmp_path / "elsewhere")
    with mlflow_run(elsewhere, "scores", "train", artifact_root=tmp_path / "elsewhere") as train:
        pass
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "store.zarr").symlink_to(store)
    (workdir / "climatology.zarr").symlink_to(climatology)
    archive = _noisy_archive(store, workdir / "archive.zarr", {"train_run_id": train.run_id})
    config = write_run_config(
        workdir / "run.yaml",
        workdir,
        score={"lead_hours": [24], "plots": False},
        tracking={"experiment": "scores"},
    )
    assert main(["score", "--config", str(config), "--archive", str(archive)]) == 0
    assert re.search(r"z500\s+rmse\s+fourcast", capsys.readouterr().out)
    assert f"the train_run_id {train.run_id} is not in the tracking store" in caplog.text
    client = MlflowClient(default_tracking_uri(workdir))
    (run,) = client.search_runs(
        [client.get_experiment_by_name("scores").experiment_id], "tags.stage = 'score'"
    )
    assert run.info.status == "FINISHED" and run.data.tags["missing_lineage_runs"] == train.run_id
    assert not any(
        key.startswith("score/") for key in MlflowClient(elsewhere).get_run(train.run_id).data.metrics
    )


def test_a_cycle_run_adopts_the_stage_runs_of_its_cycle_point_only(tmp_path):
    from pipeline.tracking import PARENT_RUN_TAG, nest_runs_under

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = {}
    for stage, point in [("forecast", "20000101T00"), ("score", "20000101T00"), ("forecast", "20000102T00")]:
        with mlflow_run(
            uri, "cycle", stage, {"stage": stage, "cycle_point": point}, tmp_path / "art"
        ) as tracker:
            ids[stage, point] = tracker.run_id
    with mlflow_run(
        uri,
        "cycle",
        "cycle 20000101T00",
        {"stage": "cycle-report", "cycle_point": "20000101T00"},
        tmp_path / "art",
    ) as parent:
        adopted = nest_runs_under(uri, "cycle", parent.run_id, {"cycle_point": "20000101T00"})
    assert sorted(adopted) == sorted([ids["forecast", "20000101T00"], ids["score", "20000101T00"]])
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(ids["score", "20000101T00"]).data.tags[PARENT_RUN_TAG] == parent.run_id
    assert PARENT_RUN_TAG not in client.get_run(ids["forecast", "20000102T00"]).data.tags  # another cycle's
    assert PARENT_RUN_TAG not in client.get_run(parent.run_id).data.tags
    assert (
        nest_runs_under(uri, "cycle", parent.run_id, {"cycle_point": "20000101T00"}) == []
    )  # already nested
    assert nest_runs_under(uri, "no-such-experiment", parent.run_id, {"cycle_point": "x"}) == []
