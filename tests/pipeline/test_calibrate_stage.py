"""The calibrate stage: validation period only, recorded with the model, used by the forecast by default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import pipeline.calibration as calibration_module
from ensembles.archive import open_archive
from ingest.schema import DATA
from pipeline.calibration import CalibrationError, apply_calibration, calibrate_stage, calibration_init_times
from pipeline.cli import main
from pipeline.config import CalibrationConfig, Period, load_config
from pipeline.lineage import file_sha256
from pipeline.paths import Paths
from pipeline.tracking import NullTracker, default_tracking_uri
from tests.pipeline.test_forecast_cli import _checkpoint

CALIBRATE = {
    "n_inits": 2,
    "members": 3,
    "reference_lead_hours": 6,
    "long_lead_hours": 24,
    "iterations": 1,
    "tolerance": 0.99,
}
FORECAST = {
    "inits": {"start": "2000-02-15T00:00", "end": "2000-02-15T06:00"},
    "init_every_hours": 6,
    "members": 3,
    "lead_hours": 12,
    "perturbation": {"kind": "balanced", "amplitude": 0.05},
    "model_error": {"kind": "sppt", "amplitude": 0.3},
}


@pytest.fixture(scope="module")
def workdir(store_paths, write_run_config, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("calibrate")
    paths = Paths(work)
    paths.store.symlink_to(store_paths[0])
    paths.climatology.symlink_to(store_paths[1])
    _checkpoint(paths.checkpoint, store_paths[0])
    write_run_config(
        work / "config.yaml",
        work,
        forecast=FORECAST,
        calibrate=CALIBRATE,
        tracking={"experiment": "calibrate"},
    )
    return work


def _calibrate(workdir: Path, out: Path, **forecast) -> dict:
    cfg = load_config(workdir / "config.yaml")
    cfg = cfg.model_copy(update={"forecast": cfg.forecast.model_copy(update=forecast)})
    paths = Paths(workdir)
    calibrate_stage(cfg, paths.checkpoint, paths.store, out, NullTracker())
    return json.loads(out.read_text())


def test_moving_the_scored_period_leaves_the_amplitudes_unchanged(workdir, tmp_path):
    first = _calibrate(workdir, tmp_path / "a.json")
    moved = _calibrate(workdir, tmp_path / "b.json", inits=Period(start="2000-02-20T00", end="2000-02-25T00"))
    assert first["amplitudes"] == moved["amplitudes"] and first["model_error"] == moved["model_error"]
    assert all(np.isfinite(list(first["amplitudes"].values())))
    assert first["init_times"] == moved["init_times"]
    assert all("2000-02-01" <= t <= "2000-02-10T18" for t in first["init_times"])


def test_calibration_never_reads_outside_the_validation_period(workdir, tmp_path, monkeypatch):
    """With every state outside train.validation made NaN, the calibration is the same (and finite)."""
    reference = _calibrate(workdir, tmp_path / "reference.json")
    real_open = calibration_module.open_store

    def validation_only(path):
        ds = real_open(path)
        times = ds["time"]
        inside = (times >= np.datetime64("2000-02-01T00")) & (times <= np.datetime64("2000-02-10T18"))
        return ds.assign({DATA: ds[DATA].where(inside)})

    monkeypatch.setattr(calibration_module, "open_store", validation_only)
    blinded = _calibrate(workdir, tmp_path / "blinded.json")
    assert blinded["amplitudes"] == reference["amplitudes"]


def test_init_times_keep_the_long_lead_inside_the_period():
    times = np.arange(np.datetime64("2000-02-01T00"), np.datetime64("2000-02-11T00"), np.timedelta64(6, "h"))
    validation = Period(start="2000-02-01T00", end="2000-02-10T18")
    inits = calibration_init_times(CalibrationConfig(n_inits=4), validation, times, np.timedelta64(120, "h"))
    assert inits.size == 4 and inits[0] == np.datetime64("2000-02-01T00")
    assert (inits + np.timedelta64(120, "h") <= np.datetime64("2000-02-10T18")).all()
    with pytest.raises(CalibrationError, match="holds no init time whose 480 h forecast ends inside it"):
        calibration_init_times(CalibrationConfig(), validation, times, np.timedelta64(480, "h"))


def test_forecast_uses_the_calibration_of_its_checkpoint_by_default(workdir, tmp_path, capsys):
    paths = Paths(workdir)
    assert main(["calibrate", "--config", str(workdir / "config.yaml")]) == 0
    document = json.loads(paths.calibration.read_text())
    cfg = load_config(workdir / "config.yaml").forecast
    applied, lineage = apply_calibration(cfg, paths.calibration, file_sha256(paths.checkpoint))
    assert applied.perturbation.amplitudes == document["amplitudes"]
    assert applied.model_error.amplitudes == document["model_error"]
    assert lineage["calibration"] == str(paths.calibration.resolve())
    unchanged, none = apply_calibration(cfg, paths.calibration, "another checkpoint")
    assert unchanged == cfg and none == {}

    archive = tmp_path / "archive.zarr"
    assert main(["forecast", "--config", str(workdir / "config.yaml"), "--archive", str(archive)]) == 0
    attrs = open_archive(archive).attrs
    assert json.loads(attrs["amplitudes"]) == document["amplitudes"]
    assert (
        attrs["calibration_sha256"] and json.loads(attrs["model_error_amplitudes"]) == document["model_error"]
    )

    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs(
        [client.get_experiment_by_name("calibrate").experiment_id], "tags.stage = 'calibrate'"
    )
    assert (
        runs and runs[0].data.params["calibration/z500/amplitude"] == f"{document['amplitudes']['z500']:.6g}"
    )
