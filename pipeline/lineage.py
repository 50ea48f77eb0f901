"""What a run records about where its outputs came from: versions, fingerprints, run names, lineage.

Fingerprints name data by content (:func:`store_fingerprint`, :func:`file_sha256`,
:func:`campaign_key`); run names say what a run did (:func:`train_run_name`, …); the
``record_*`` functions put a stage's inputs and lineage on its :class:`~pipeline.tracking.Tracker`,
with paths relative to the work directory (:func:`workdir_relative`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr

from ensembles.campaign import Campaign
from fourcast.checkpoint import CheckpointMeta
from fourcast.distributed import DistContext
from fourcast.forecaster import Forecaster
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.lexicon import get_variable
from ingest.schema import MEAN, STD, open_store
from pipeline.config import ForecastConfig, RunConfig, ScoreConfig, TrainConfig
from pipeline.settings import config_time, init_times
from pipeline.tracking import MODEL_URI_SCHEMES, Tracker, run_exists

if TYPE_CHECKING:
    from pipeline.model_loading import LoadedModel

log = logging.getLogger(__name__)


def code_version() -> str:
    """Git commit of the working tree, or ``unknown`` outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def store_fingerprint(store: Path) -> str:
    """Short hash of the store's coordinates, statistics and attributes (not its bulk data)."""
    ds = open_store(store)
    digest = hashlib.sha256()
    for name in (TIME, CHANNEL, LAT, LON, MEAN, STD):
        digest.update(np.ascontiguousarray(ds[name].values).tobytes())
    digest.update(json.dumps(ds.attrs, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, in hex (a checkpoint's identity)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def campaign_key(forecasts: xr.Dataset) -> str:
    """8 hex digits naming an archive's campaign: the start of its ``campaign_fingerprint``.

    An archive written without a fingerprint is named by a hash of its init times, lead times,
    member count and variables.
    """
    fingerprint = forecasts.attrs.get("campaign_fingerprint")
    if fingerprint:
        return str(fingerprint)[:8]
    digest = hashlib.sha256()
    for name in ("init_time", "lead_time"):
        digest.update(np.ascontiguousarray(forecasts[name].values).tobytes())
    digest.update(
        json.dumps([forecasts.sizes.get("member", 0), sorted(map(str, forecasts.data_vars))]).encode()
    )
    return digest.hexdigest()[:8]


def day(time) -> str:
    """``2000-01-31``: a time to the day, as run names and titles show it."""
    return np.datetime_as_string(config_time(time), unit="D")


def minute(time) -> str:
    """``2000-01-31T18:00``: a time to the minute, as messages show it."""
    return np.datetime_as_string(config_time(time), unit="m")


def pipeline_run_name(cfg: RunConfig) -> str:
    """``pipeline afno-tiny synthetic 2000-01-01..2000-12-31``: the parent run of one pipeline invocation."""
    period = f"{day(cfg.train.train.start)}..{day(cfg.train.validation.end)}"
    return f"pipeline {cfg.train.model} {cfg.ingest.source} {period}"


def train_run_name(cfg: TrainConfig) -> str:
    """``train afno-tiny 2000-01-01..2000-10-31``: the preset and training period."""
    return f"train {cfg.model} {day(cfg.train.start)}..{day(cfg.train.end)}"


def forecast_run_name(cfg: ForecastConfig) -> str:
    """``forecast 42 inits × 8 members, 120 h``."""
    return f"forecast {len(init_times(cfg))} inits × {cfg.members} members, {cfg.lead_hours} h"


def score_run_name(campaign: str, forecasts: xr.Dataset) -> str:
    """``score 1a2b3c4d: 42 inits × 8 members``: the campaign key and its size."""
    return (
        f"score {campaign}: {forecasts.sizes['init_time']} inits × {forecasts.sizes.get('member', 1)} members"
    )


def workdir_relative(values: Mapping[str, object], workdir: Path) -> dict[str, object]:
    """``values`` with each path written relative to ``workdir``, for MLflow params and tags.

    Paths (:class:`pathlib.Path` values, and strings that are absolute paths) become relative to
    the work directory (``store.zarr``, ``checkpoints/model.pt``, ``../shared/archive.zarr``), so
    what MLflow records names no home folder and stays true when the workdir moves.
    """

    def relative(value: object) -> object:
        if isinstance(value, Path) or (isinstance(value, str) and os.path.isabs(value)):
            return os.path.relpath(os.path.abspath(value), os.path.abspath(workdir))
        return value

    return {key: relative(value) for key, value in values.items()}


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested config dump as one level of dotted keys (``loader.cache``), as MLflow params are named."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def log_store_input(tracker: Tracker, store: Path, fingerprint: str, context: str) -> None:
    """Record a training store as an MLflow input of the run (name, fingerprint as digest, shape as
    profile)."""
    ds = open_store(store)
    tracker.log_input(
        store.name,
        fingerprint,
        str(store.resolve()),
        context,
        {
            "times": ds.sizes[TIME],
            "channels": [str(c) for c in ds[CHANNEL].values],
            "grid": [ds.sizes[LAT], ds.sizes[LON]],
            "period": f"{minute(ds[TIME].values[0])}..{minute(ds[TIME].values[-1])}",
        },
    )


def record_training_inputs(
    tracker: Tracker,
    cfg: TrainConfig,
    store: Path,
    fingerprint: str,
    parameters: int,
    ctx: DistContext,
    resume: Path | None,
) -> None:
    """The training run's input store, its config and parameter count as params, and where it ran as tags.

    Paths are recorded relative to the store's folder, the work directory.
    """
    workdir = store.parent
    log_store_input(tracker, store, fingerprint, "training")
    tracker.log_params(
        workdir_relative({**flatten(cfg.model_dump(mode="json")), "parameters": parameters}, workdir)
    )
    tags = {
        "git_commit": code_version(),
        "device": str(ctx.device),
        "world_size": str(ctx.world_size),
        "backend": ctx.backend or "none",
        "dataset_fingerprint": fingerprint,
        "torch": torch.__version__,
        **({"resumed_from": Path(resume)} if resume else {}),
    }
    tracker.set_tags({key: str(value) for key, value in workdir_relative(tags, workdir).items()})


def model_metadata(meta: CheckpointMeta) -> dict[str, object]:
    """fourcast facts recorded with the MLflow model: preset, channels and units, grid, step, data, best
    step."""
    return {
        "preset": meta.preset,
        "channels": list(meta.channels),
        "units": {c: get_variable(c).units for c in meta.channels},
        "n_lat": len(meta.lat),
        "n_lon": len(meta.lon),
        "lat_range": [meta.lat[0], meta.lat[-1]],
        "lon_range": [meta.lon[0], meta.lon[-1]],
        "step_hours": meta.step_hours,
        "input_layout": "(batch, channel, lat, lon) float32, physical units",
        **{
            key: meta.extra[key]
            for key in (
                "store_fingerprint",
                "train_start",
                "train_end",
                "train_run_id",
                "best_step",
                "best_score",
            )
            if key in meta.extra
        },
    }


def campaign_identity(
    cfg: ForecastConfig, checkpoint_sha256: str, store: Path, device: torch.device, forecaster: Forecaster
) -> dict:
    """What makes a campaign's forecasts what they are besides its shape: model, data, perturbations,
    precision."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "initial_conditions_fingerprint": store_fingerprint(store),
        "perturbation": cfg.perturbation.model_dump(mode="json"),
        "model_error": cfg.model_error.model_dump(mode="json"),
        "precision": f"{device.type}-{'bfloat16-autocast' if forecaster.autocast else 'float32'}",
    }


def forecast_lineage(
    cfg: ForecastConfig,
    loaded: LoadedModel,
    store: Path,
    campaign: Campaign,
    forecast_run_id: str | None,
    calibrated: dict,
) -> dict:
    """The archive's lineage: model and checkpoint, data, perturbations, code, runs and calibration.

    Paths are absolute (the archive outlives the workdir); a registered model adds its name and
    version, a calibration its file (:func:`pipeline.calibration.apply_calibration`).
    """
    model = loaded.model
    return {
        "model": model if model.startswith(MODEL_URI_SCHEMES) else str(Path(model).resolve()),
        "checkpoint_sha256": loaded.sha256,
        "training_store_fingerprint": str(loaded.meta.extra.get("store_fingerprint", "unknown")),
        "initial_conditions": str(store.resolve()),
        "initial_conditions_fingerprint": campaign.identity["initial_conditions_fingerprint"],
        "perturbation": cfg.perturbation.kind,
        "amplitude": cfg.perturbation.amplitude,
        "seed": cfg.seed,
        "amplitudes": json.dumps(cfg.perturbation.amplitudes or {}, sort_keys=True),
        "model_error": cfg.model_error.kind,
        "model_error_amplitude": cfg.model_error.amplitude,
        "model_error_amplitudes": json.dumps(cfg.model_error.amplitudes or {}, sort_keys=True),
        "code_version": code_version(),
        "train_run_id": str(loaded.meta.extra.get("train_run_id", "")),
        "forecast_run_id": forecast_run_id or "",
        **loaded.registered,
        **calibrated,
    }


def record_forecast_inputs(
    tracker: Tracker,
    cfg: ForecastConfig,
    loaded: LoadedModel,
    lineage: dict,
    store: Path,
    campaign: Campaign,
    world_size: int,
    workdir: Path,
) -> None:
    """The forecast run's registered model as tags, its initial conditions as input, config and lineage as
    params.

    The params name paths relative to ``workdir`` (:func:`workdir_relative`); the archive's
    ``lineage`` keeps them absolute.
    """
    if loaded.registered:
        tracker.set_tags(loaded.registered)
    model = loaded.model
    recorded = {
        **lineage,
        "model": model if model.startswith(MODEL_URI_SCHEMES) else Path(model),
        "initial_conditions": store,
    }
    log_store_input(tracker, store, campaign.identity["initial_conditions_fingerprint"], "initial_conditions")
    tracker.log_params(
        workdir_relative(
            {
                **flatten(cfg.model_dump(mode="json")),
                **recorded,
                "world_size": world_size,
                "campaign_fingerprint": campaign.fingerprint(),
            },
            workdir,
        )
    )


def missing_lineage_runs(tracking_uri: str, run_ids: Mapping[str, str]) -> list[str]:
    """The run ids of ``run_ids`` that the store of ``tracking_uri`` does not hold, each logged as a
    warning."""
    missing = [run_id for run_id in run_ids.values() if run_id and not run_exists(tracking_uri, run_id)]
    for key, run_id in run_ids.items():
        if run_id in missing:
            log.warning(
                "the %s %s is not in the tracking store %s (recorded in another store?); the score run "
                "is not linked to it",
                key,
                run_id,
                tracking_uri,
            )
    return missing


def lineage_run_ids(
    forecasts: xr.Dataset, forecast_run_id: str | None, train_run_id: str | None
) -> dict[str, str]:
    """An archive's forecast and training run ids: as given, else as its lineage records them (else empty)."""
    return {
        "forecast_run_id": forecast_run_id or str(forecasts.attrs.get("forecast_run_id") or ""),
        "train_run_id": train_run_id or str(forecasts.attrs.get("train_run_id") or ""),
    }


def record_score_inputs(
    tracker: Tracker,
    cfg: ScoreConfig,
    forecasts: xr.Dataset,
    campaign: str,
    inputs: Mapping[str, Path],
    run_ids: Mapping[str, str],
    tracking_uri: str | None,
    workdir: Path,
) -> list[str]:
    """The score run's lineage: run ids and campaign as tags, archive and truth as inputs, config as params.

    Parameters
    ----------
    tracker : Tracker
        The score run.
    cfg : ScoreConfig
    forecasts : xarray.Dataset
        The archive opened for scoring.
    campaign : str
        Its :func:`campaign_key`.
    inputs : mapping of str to pathlib.Path
        The ``archive``, ``store`` and ``climatology`` scored, recorded relative to ``workdir``.
    run_ids : mapping of str to str
        ``forecast_run_id`` and ``train_run_id`` (empty when unknown).
    tracking_uri : str, optional
        With it, run ids the tracking store does not hold are tagged ``missing_lineage_runs``.
    workdir : pathlib.Path

    Returns
    -------
    list of str
        The run ids of ``run_ids`` the tracking store does not hold (:func:`missing_lineage_runs`).
    """
    archive, store = inputs["archive"], inputs["store"]
    tracker.set_tags(
        {
            **{key: value for key, value in run_ids.items() if value},
            "campaign_key": campaign,
            "mlflow.runName": score_run_name(campaign, forecasts),
        }
    )
    tracker.log_input(
        archive.name,
        str(forecasts.attrs.get("campaign_fingerprint") or campaign),
        str(archive.resolve()),
        "forecasts",
        {
            "init_times": forecasts.sizes["init_time"],
            "lead_times": forecasts.sizes["lead_time"],
            "members": forecasts.sizes.get("member", 1),
            "variables": sorted(map(str, forecasts.data_vars)),
        },
    )
    log_store_input(tracker, store, store_fingerprint(store), "truth")
    missing = missing_lineage_runs(tracking_uri, run_ids) if tracking_uri else []
    if missing:
        tracker.set_tags({"missing_lineage_runs": ", ".join(missing)})
    tracker.log_params(workdir_relative({**flatten(cfg.model_dump(mode="json")), **inputs}, workdir))
    return missing
