"""What a reviewer sees: the MLflow run tree, names, inputs, the model as a pyfunc, per-campaign headline
scores, and outputs plain xarray opens without a warning. Tiny: the shared 16x32 store, one training step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from ensembles.archive import open_archive
from fourcast.forecaster import Forecaster
from ingest.schema import DATA, open_store
from pipeline.config import load_config
from pipeline.lineage import campaign_key, store_fingerprint
from pipeline.paths import Paths
from pipeline.stages import forecast, run_tracked_stages, score
from pipeline.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GIT_COMMIT_TAG,
    PARENT_RUN_TAG,
    default_tracking_uri,
    mlflow_run,
    score_metric_name,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # about 80 s on 2 busy cores, beyond the shared store


@pytest.fixture(scope="module")
def reviewed(store_paths, write_run_config, tmp_path_factory):
    """A pipeline's tracked stages on the shared store: ``(cfg, paths, result)``."""
    workdir = tmp_path_factory.mktemp("review")
    store, climatology = store_paths
    (workdir / "store.zarr").symlink_to(store)
    (workdir / "climatology.zarr").symlink_to(climatology)
    config = write_run_config(
        workdir / "run.yaml",
        workdir,
        train={"validation_lead_hours": [6, 12], "validation_samples": 4, "batch_size": 4},
        forecast={
            "inits": {"start": "2000-02-15T00:00", "end": "2000-02-16T00:00"},
            "init_every_hours": 24,
            "members": 2,
            "members_per_batch": 2,
            "lead_hours": 24,
        },
        score={"lead_hours": [24], "plots": False},
        tracking={"experiment": "review"},
    )
    cfg = load_config(config)
    paths = Paths(cfg.workdir)
    return cfg, paths, run_tracked_stages(cfg, paths, default_tracking_uri(paths.workdir))


def test_the_run_tree_names_and_inputs(reviewed, store_paths):
    _cfg, paths, result = reviewed
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("review")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    runs = {stage: client.get_run(run_id) for stage, run_id in result.run_ids.items()}
    parent = runs.pop("pipeline")
    assert parent.info.run_name == "pipeline afno-tiny synthetic 2000-01-01..2000-02-10"
    assert {stage: run.data.tags[PARENT_RUN_TAG] for stage, run in runs.items()} == dict.fromkeys(
        ("train", "forecast", "score"), parent.info.run_id
    )
    assert all(len(run.data.tags[GIT_COMMIT_TAG]) == 40 for run in (parent, *runs.values()))
    key = runs["score"].data.tags["campaign_key"]
    assert runs["train"].info.run_name == "train afno-tiny 2000-01-01..2000-01-31"
    assert runs["forecast"].info.run_name == "forecast 2 inits × 2 members, 24 h"
    assert runs["score"].info.run_name == f"score {key}: 2 inits × 2 members"
    fingerprint = store_fingerprint(store_paths[0])
    inputs = {
        stage: {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}
        for stage, run in runs.items()
    }
    assert inputs["train"] == {("store.zarr", fingerprint, "training")}
    assert inputs["forecast"] == {("store.zarr", fingerprint, "initial_conditions")}
    archive = open_archive(paths.archive)
    assert inputs["score"] == {
        ("archive.zarr", archive.attrs["campaign_fingerprint"], "forecasts"),
        ("store.zarr", fingerprint, "truth"),
    }
    metrics = runs["train"].data.metrics
    assert {
        "train/loss",
        "train/lr",
        "val/score",
        "val/z500/rmse_12h",
        "val/u500/persistence_rmse_6h",
    } <= set(metrics)
    assert score_metric_name("z500", "rmse", 24, key) == f"score/{key}/z500/rmse_24h" in metrics
    assert parent.data.metrics[f"score/{key}/z500/rmse_24h"] == metrics[f"score/{key}/z500/rmse_24h"]
    assert "score/z500/persistence_rmse_24h" in runs["score"].data.metrics


def test_the_model_loads_as_a_pyfunc_and_forecasts_like_the_checkpoint(reviewed, monkeypatch):
    _cfg, paths, result = reviewed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", result.tracking_uri)
    client = MlflowClient(result.tracking_uri)
    (version,) = client.search_model_versions("name='fourcast-afno-tiny'")
    assert (
        version.run_id == result.run_ids["train"]
        and "z500, u500, v500 on a 16x32 grid" in version.description
    )
    assert {"val/z500/rmse_12h", "val/v500/acc_6h"} <= set(version.tags)
    model = mlflow.pyfunc.load_model("models:/fourcast-afno-tiny/1")
    facts = model.metadata.metadata["fourcast"]
    assert facts["channels"] == ["z500", "u500", "v500"] and facts["step_hours"] == 6
    assert facts["units"]["z500"] == "m**2 s**-2" and [facts["n_lat"], facts["n_lon"]] == [16, 32]
    state = open_store(paths.store)[DATA].sel(time=["2000-02-15T00"]).values.astype(np.float32)
    reference = Forecaster.from_checkpoint(paths.checkpoint, torch.device("cpu"))
    expected, coords = reference.step(torch.from_numpy(state), reference.input_coords)
    expected, _ = reference.step(expected, coords)
    np.testing.assert_array_equal(model.predict(state, params={"steps": 2}), expected.numpy())


def test_a_second_campaign_keeps_the_first_campaigns_scores(reviewed):
    cfg, paths, result = reviewed
    first_key = campaign_key(open_archive(paths.archive))
    name = f"score/{first_key}/z500/rmse_24h"
    before = MlflowClient(result.tracking_uri).get_run(result.run_ids["train"]).data.metrics
    second = paths.workdir / "forecasts" / "second.zarr"
    forecast_cfg = cfg.forecast.model_copy(update={"model": "models:/fourcast-afno-tiny/1", "seed": 7})
    runs = dict(tracking_uri=result.tracking_uri, experiment="review", artifact_root=paths.artifacts)
    with mlflow_run(run_name="forecast", tags={"stage": "forecast"}, **runs) as tracker:
        forecast(
            forecast_cfg, paths.checkpoint, paths.store, second, tracker, tracking_uri=result.tracking_uri
        )
    with mlflow_run(run_name="score", tags={"stage": "score"}, **runs) as tracker:
        score(
            cfg.score,
            second,
            paths.store,
            paths.climatology,
            paths.workdir / "second-scores",
            tracker,
            tracking_uri=result.tracking_uri,
        )
    second_key = campaign_key(open_archive(second))
    after = MlflowClient(result.tracking_uri).get_run(result.run_ids["train"]).data.metrics
    assert second_key != first_key and after[name] == before[name]
    assert after[f"score/{second_key}/z500/rmse_24h"] > 0


_OPEN_ALL = "import sys, xarray as xr\nfor path in sys.argv[1:]:\n    xr.open_zarr(path).load()\n"


def test_outputs_open_with_plain_xarray_and_warnings_as_errors(reviewed):
    _cfg, paths, _result = reviewed
    from pipeline.publish import export_wb2

    v2 = export_wb2(paths.archive, paths.store, paths.climatology, paths.workdir / "wb2-v2", zarr_format=2)
    stores = [
        paths.store,
        paths.climatology,
        paths.archive,
        *(paths.wb2 / f"{role}.zarr" for role in ("forecast", "truth", "climatology")),
        *v2.values(),
    ]
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", _OPEN_ALL, *map(str, stores)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    import xarray as xr

    with xr.open_zarr(paths.store) as store:
        assert store.attrs["Conventions"] == "CF-1.8" and store["lat"].attrs["standard_name"] == "latitude"
        assert store[DATA].attrs["channel_units"] == ["m**2 s**-2", "m s**-1", "m s**-1"]
    with xr.open_zarr(paths.wb2 / "truth.zarr") as truth, xr.open_zarr(v2["climatology"]) as clim:
        assert truth["geopotential"].dims == ("time", "level", "latitude", "longitude")
        assert clim["u_component_of_wind"].dims == ("dayofyear", "hour", "level", "latitude", "longitude")
