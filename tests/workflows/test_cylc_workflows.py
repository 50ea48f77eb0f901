"""The Cylc workflows, for real: ``cylc validate``, and ``cylc play --no-detach`` with background jobs.

One forecast-cycle run covers six cycle points of a copy of the 16 x 32 test store (the last two
beyond the store's end): the scheduler is SIGKILLed mid-cycle, the champion is moved by a real
train-and-promote run while it is down, and ``cylc play`` restarts it. The fifth point's ingest
fails naming the missing dates; the test then appends two days to the store, and the retry and
the sixth cycle run to the end. The tasks
call the real ``fourcast`` CLI against an MLflow tracking server the workflow starts. Needs
``make cylc-env`` (cylc in ``.venv-cylc``) and rsync; skipped without them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from ensembles.archive import open_archive
from ensembles.catalogue import DELETED, REDUCED, Catalogue, default_url
from fourcast.checkpoint import CheckpointMeta, save_checkpoint
from fourcast.models.registry import build_model
from ingest.schema import MEAN, STD, TIME, open_store
from ingest.store import StoreLayout, open_sources, write_store
from ingest.synthetic import generate_files
from pipeline import cylc
from pipeline.lineage import store_fingerprint
from pipeline.paths import Paths
from pipeline.tracking import default_tracking_uri, model_aliases, score_metric_name, stop_tracking_server
from tests.conftest import STATS, VARIABLES

ROOT = Path(__file__).resolve().parents[2]
MODEL = "fourcast-afno-tiny"
# the store ends at 2000-02-29T18: the last two points' data arrives only while the workflow runs
POINTS = [
    "2000-02-26T00",
    "2000-02-27T00",
    "2000-02-28T00",
    "2000-02-29T00",
    "2000-03-01T00",
    "2000-03-02T00",
]
LATE = POINTS[4]
FAST = {
    "RETRY_DELAYS": "PT1S",
    "DATA_POLL": 1,
    "DATA_TIMEOUT": 4,
    "MEMBERS": 2,
    "INGEST_RETRY_DELAYS": "120*PT2S",
}


@pytest.fixture(scope="module")
def cylc_env(tmp_path_factory) -> dict[str, str]:
    """Cylc's environment with ``HOME`` in a temp folder (runs go to ``<tmp>/cylc-run``)."""
    try:
        cylc.cylc_executable()
        return {
            **cylc.cylc_environment(tmp_path_factory.mktemp("home")),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
        }
    except cylc.CylcSetupError as err:
        pytest.skip(f"{err}")


def _template(workdir: Path, config: Path) -> dict[str, object]:
    return {
        "CONFIG": str(config),
        "WORKDIR": str(workdir),
        "FOURCAST": cylc.fourcast_command(),
        "PYTHONPATH": str(ROOT),
    }


@pytest.mark.parametrize("workflow", ["forecast-cycle", "train-and-promote"])
def test_workflow_validates(workflow, cylc_env, tmp_path):
    out = cylc.validate(workflow, _template(tmp_path, tmp_path / "run.yaml"), cylc_env)
    assert "Valid for cylc-8" in out


def test_slurm_platform_gives_the_train_job_gpus_and_torchrun(cylc_env, tmp_path):
    """The README's Slurm recipe, rendered by Cylc: a GPU request on one node and torchrun across it."""
    conf = tmp_path / "conf"
    conf.mkdir()
    cylc_bin = cylc.cylc_executable().parent
    (conf / "global.cylc").write_text(
        f"[platforms]\n    [[localhost]]\n        cylc path = {cylc_bin}\n"
        "    [[slurm_gpu]]\n        hosts = localhost\n        job runner = slurm\n        "
        f"cylc path = {cylc_bin}\n"
    )
    env = {**cylc_env, "CYLC_CONF_PATH": str(conf)}
    variables = {
        **_template(tmp_path, tmp_path / "run.yaml"),
        "TRAIN_PLATFORM": "slurm_gpu",
        "GPUS": 4,
        "TRAIN_LAUNCHER": "torchrun --standalone --nproc-per-node=4 -m pipeline.cli",
    }
    assert "Valid for cylc-8" in cylc.validate("train-and-promote", variables, env)
    train = cylc.run_cylc(
        [
            "config",
            str(cylc.WORKFLOWS / "train-and-promote"),
            "-i",
            "[runtime][train]",
            *cylc.template_options(variables),
        ],
        env,
    ).stdout
    assert "platform = slurm_gpu" in train and "--gres = gpu:4" in train and "--nodes = 1" in train, train
    assert "torchrun --standalone --nproc-per-node=4 -m pipeline.cli train" in train, train
    platform = cylc.run_cylc(["config", "-i", "[platforms][slurm_gpu]"], env).stdout
    assert "job runner = slurm" in platform, platform


def _noisy_checkpoint(path: Path, store: Path) -> Path:
    """An afno-tiny checkpoint with large random weights: a poor forecaster any trained model beats."""
    ds = open_store(store)
    channels = [str(c) for c in ds["channel"].values]
    torch.manual_seed(0)
    model = build_model("afno-tiny", (ds["lat"].size, ds["lon"].size), len(channels))
    with torch.no_grad():
        for weights in model.parameters():
            weights.add_(0.1 * torch.randn_like(weights))
    meta = CheckpointMeta(
        preset="afno-tiny",
        channels=channels,
        lat=ds["lat"].values.tolist(),
        lon=ds["lon"].values.tolist(),
        step_hours=6,
        mean=ds[MEAN].values.tolist(),
        std=ds[STD].values.tolist(),
        extra={"store_fingerprint": store_fingerprint(store)},
    )
    return save_checkpoint(path, model, meta)


def _register_champion(workdir: Path, checkpoint: Path) -> str:
    uri = default_tracking_uri(workdir)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment(
        "cycle", artifact_location=(workdir / "mlartifacts").resolve().as_uri()
    )
    run = client.create_run(experiment, run_name="train")
    client.log_artifact(run.info.run_id, str(checkpoint), "checkpoint")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    version = client.create_model_version(
        MODEL, f"runs:/{run.info.run_id}/checkpoint", run.info.run_id
    ).version
    client.set_registered_model_alias(MODEL, "champion", version)
    return str(version)


@pytest.fixture(scope="module")
def cycle_workdir(store_paths, write_run_config, tmp_path_factory) -> tuple[Path, Path]:
    """A workdir with a copy of the test store, its climatology, config and a poor champion (v1)
    registered."""
    work = tmp_path_factory.mktemp("cycle")
    paths = Paths(work)
    shutil.copytree(store_paths[0], paths.store)  # a copy: the test appends to it
    paths.climatology.symlink_to(store_paths[1])
    config = write_run_config(
        work / "run.yaml",
        work,
        tracking={"experiment": "cycle"},
        score={"lead_hours": [24], "plots": False},
        train={
            "phases": [{"rollout_steps": 1, "optimizer_steps": 2, "learning_rate": 1e-3}],
            "batch_size": 4,
            "validate_every": 2,
            "validation_lead_hours": [6],
            "validation_samples": 2,
            "warmup_steps": 0,
        },
    )
    _register_champion(work, _noisy_checkpoint(work / "champion-v1" / "model.pt", store_paths[0]))
    return work, config


def _job_processes_running(run: Path) -> bool:
    """Whether a job of the run still runs (its job.status has a pid alive and no exit)."""
    for status in run.glob("log/job/*/*/[0-9]*/job.status"):
        fields = dict(line.split("=", 1) for line in status.read_text().splitlines() if "=" in line)
        if "CYLC_JOB_EXIT" not in fields and "CYLC_JOB_PID" in fields:
            try:
                os.kill(int(fields["CYLC_JOB_PID"]), 0)
                return True
            except (ProcessLookupError, ValueError):
                continue
    return False


def _wait(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"cylc play ended ({process.returncode}) before {what}:\n{process.stdout.read()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _job_err(run: Path, point: str, task: str) -> str:
    return "".join(p.read_text() for p in sorted(run.glob(f"log/job/{point}/{task}/[0-9]*/job.err")))


def _append_analyses(store: Path, folder: Path, start: str, end: str) -> None:
    """The late analyses arrive: synthetic files for ``start..end`` appended to the store."""
    files = generate_files(
        folder, np.datetime64(start), np.datetime64(end), nlat=16, nlon=32, seed=2, spinup_days=5.0
    )
    write_store(open_sources(files, VARIABLES, shard_steps=40), store, STATS, StoreLayout(shard_steps=40))


@pytest.mark.slow
@pytest.mark.distributed
def test_forecast_cycle_survives_a_kill_follows_the_champion_and_names_missing_data(
    cycle_workdir, cylc_env, tmp_path
):
    workdir, config = cycle_workdir
    catalogue = Catalogue(default_url(workdir))
    variables = {
        **_template(workdir, config),
        **FAST,
        "INITIAL": POINTS[0],
        "FINAL": POINTS[-1],
        "INTERVAL_HOURS": 24,
        "LEAD_HOURS": 24,
        "SCORE_LEAD_HOURS": "24",
        "MODEL": MODEL,
    }
    cycle_id = cylc.install("forecast-cycle", "fc", cylc_env)
    run = cylc.run_dir(cylc_env, cycle_id)
    scheduler = None
    try:
        # 1. the scheduler is SIGKILLed once two cycles are published (a third is forecasting)
        scheduler = cylc.start_play(cycle_id, cylc_env, variables)
        _wait(lambda: len(catalogue.entries()) >= 2, 900, "two published cycles", scheduler)
        os.kill(scheduler.pid, signal.SIGKILL)
        scheduler.wait()
        _wait(lambda: not _job_processes_running(run), 600, "the orphaned jobs to end")
        before_kill = {e.cycle_point: e.model_version for e in catalogue.entries()}

        # 2. while it is down, train-and-promote trains version 2 and moves the champion (v1 is poor)
        promote_id = cylc.install("train-and-promote", "tp", cylc_env)
        promoted = cylc.play(
            promote_id,
            cylc_env,
            {
                **_template(workdir, config),
                "INGEST": False,
                "MODEL": MODEL,
                "RETRY_DELAYS": "PT1S",
                "VERIFY_INITS": "2000-02-20T00",
                "MEMBERS": 2,
                "LEAD_HOURS": 24,
                "SCORE_LEAD_HOURS": "24",
                "HEADLINE": "z500:rmse:24",
            },
            timeout=900,
        )
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        uri = default_tracking_uri(workdir)
        client = MlflowClient(uri, registry_uri=uri)
        assert model_aliases(uri, MODEL) == {"champion": "2"}
        decision = json.loads(
            next((workdir / "promotion").glob("*/candidate-scores/promotion.json")).read_text()
        )
        assert decision["promoted"] and decision["candidate"] == "2" and decision["champion"] == "1"
        assert decision["candidate_scores"]["z500:rmse:24"] < decision["champion_scores"]["z500:rmse:24"]
        promote_runs = client.search_runs(
            [client.get_experiment_by_name("cycle").experiment_id], "tags.stage = 'promote'"
        )
        assert [r.data.tags["promoted"] for r in promote_runs] == ["True"]

        # 3. restarted, it runs on until the fifth cycle, whose data is not there: its ingest fails
        #    after the configured wait, naming the missing dates
        scheduler = cylc.start_play(cycle_id, cylc_env)
        first_try = run / "log" / "job" / LATE / "ingest" / "01" / "job.err"
        _wait(
            lambda: first_try.exists() and "did not arrive" in first_try.read_text(),
            900,
            f"the {LATE} ingest to fail",
            scheduler,
        )
        err = first_try.read_text()
        assert f"analyses for {LATE} did not arrive" in err and "store ends at 2000-02-29T18" in err, err

        # 4. the data arrives: the ingest's next try picks it up and the cycles behind it run to the end
        _append_analyses(Paths(workdir).store, tmp_path / "late", "2000-03-01T00", "2000-03-02T18")
        assert open_store(Paths(workdir).store)[TIME].values[-1] == np.datetime64("2000-03-02T18")
        log, _ = scheduler.communicate(timeout=900)
        assert scheduler.returncode == 0, log
        tries = sorted(p.parent.name for p in run.glob(f"log/job/{LATE}/ingest/[0-9]*/job.status"))
        assert len(tries) >= 2, tries
        assert (
            "CYLC_JOB_EXIT=SUCCEEDED"
            in (run / "log" / "job" / LATE / "ingest" / tries[-1] / "job.status").read_text()
        )
    finally:
        if scheduler is not None and scheduler.poll() is None:
            os.killpg(scheduler.pid, signal.SIGKILL)
        stop_tracking_server(run / "share" / "tracking")
        stop_tracking_server(cylc.run_dir(cylc_env, "tp") / "share" / "tracking")

    # every cycle has exactly one archive, on disk and complete (the late one's too)
    entries = catalogue.entries()
    assert [e.cycle_point for e in entries] == POINTS
    for entry in entries:
        attrs = open_archive(entry.path).attrs
        assert (attrs["model_name"], attrs["model_version"]) == (MODEL, entry.model_version)
    versions = {e.cycle_point: e.model_version for e in entries}
    assert versions[POINTS[0]] == versions[POINTS[1]] == "1"  # published before the kill: lineage kept
    assert {k: versions[k] for k in before_kill} == before_kill
    assert (
        versions[POINTS[3]]
        == versions[LATE]
        == versions[POINTS[5]]
        == "2"
        == model_aliases(uri, MODEL)["champion"]
    )

    # each forecast whose truth arrived is scored in MLflow, tagged with its cycle point; holds released
    experiment = client.get_experiment_by_name("cycle").experiment_id
    scores = {
        r.data.tags["forecast_cycle_point"]: r
        for r in client.search_runs(  # (train-and-promote's scores have no cycle point)
            [experiment], "tags.stage = 'score' and attributes.status = 'FINISHED'"
        )
        if "forecast_cycle_point" in r.data.tags
    }
    assert sorted(scores) == POINTS[:-1]
    for point, score_run in scores.items():
        assert score_run.data.tags["cycle_point"] == POINTS[POINTS.index(point) + 1]
        names = set(score_run.data.metrics)  # the metric naming of pipeline.tracking, or the older flat one
        assert score_metric_name("z500", "rmse", 24) in names or "z500_fourcast_rmse" in names, sorted(names)[
            :20
        ]
        assert (
            score_run.info.run_id
            in catalogue.get(next(e.id for e in entries if e.cycle_point == point)).score_run_ids
        )
    # every score finished, so no hold is left (the last forecast's truth lies beyond the final point)
    assert {e.cycle_point: e.holds for e in catalogue.entries()} == dict.fromkeys(POINTS, ())
    reports = client.search_runs([experiment], "tags.stage = 'cycle-report'")
    assert sorted({r.data.tags["cycle_point"] for r in reports}) == POINTS
    for point in POINTS:  # one run tree per cycle point: its report run is the parent of its stage runs
        parents = {
            r.info.run_id for r in reports if r.data.tags["cycle_point"] == point
        }  # (a killed report reran)
        assert {r.info.run_name for r in reports if r.info.run_id in parents} == {f"cycle {point}"}
        children = client.search_runs(
            [experiment], f"tags.cycle_point = '{point}' and tags.stage != 'cycle-report'"
        )
        assert "forecast" in {r.data.tags["stage"] for r in children}
        assert all(r.data.tags.get("mlflow.parentRunId") in parents for r in children)

    # retention, ages from the newest init (2000-03-02): a held archive is left alone, the others
    # reduced after 1 day and deleted after 4
    catalogue.hold(entries[1].id, "score")
    prune = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "archive",
            "prune",
            "--config",
            str(config),
            "--keep-members-days",
            "1",
            "--delete-after-days",
            "4",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=False,
    )
    assert prune.returncode == 0, prune.stderr
    after = {e.cycle_point: e for e in catalogue.entries()}
    assert after[POINTS[0]].status == DELETED and not Path(after[POINTS[0]].path).exists()  # 5 days old
    assert after[POINTS[1]].status == "published" and after[POINTS[1]].holds == ("score",)  # held: untouched
    assert after[POINTS[2]].status == after[POINTS[3]].status == REDUCED  # 3 and 2 days old: mean only
    assert after[LATE].status == after[POINTS[5]].status == "published"  # 1 and 0 days old: kept whole
    catalogue.release(entries[1].id, "score")
    catalogue.prune(1, 4)
    reduced = catalogue.get(entries[1].id)
    assert reduced.status == REDUCED and "member" not in open_archive_dims(reduced.path)
    assert reduced.bytes < entries[1].bytes


def open_archive_dims(path: str) -> tuple[str, ...]:
    import xarray as xr

    return tuple(xr.open_zarr(path, consolidated=False).dims)
