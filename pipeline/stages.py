"""Stage functions chaining the packages: synthesize → ingest → train → forecast → score → publish.

Each stage takes its own config slice and the paths it reads and writes, and returns what it
produced. :func:`run_pipeline` is the whole diagram of DESIGN.md §1 in one function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ensembles.archive import ZarrArchive, open_archive
from ensembles.perturbations import GaussianPerturbation, NoPerturbation
from ensembles.runner import forecast_lead_times, run_campaign
from ensembles.scoring import score_forecasts
from fourcast.checkpoint import CheckpointMeta, save_checkpoint
from fourcast.data import StoreWindows
from fourcast.device import default_device
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model, count_parameters
from fourcast.normaliser import Normaliser
from fourcast.training import Phase, TrainSettings, train
from ingest.atomic import replace_path, temporary_sibling
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.lexicon import get_variable
from ingest.schema import DATA, MEAN, STD, open_climatology, open_store
from ingest.store import StatsPeriod, StoreLayout, open_sources, write_store
from ingest.synthetic import generate_files
from pipeline import plots
from pipeline.cluster import dask_client
from pipeline.config import (ClusterConfig, ForecastConfig, IngestConfig, RunConfig, ScoreConfig, SyntheticConfig,
                             TrainConfig)
from pipeline.tracking import Tracker, attach_run, default_tracking_uri, mlflow_run

log = logging.getLogger(__name__)


class StageInputError(ValueError):
    """A stage's config does not fit the data it is given (store step, init times, …)."""


@dataclass(frozen=True)
class Paths:
    """Where a run keeps what it produces, all under one work directory."""

    workdir: Path

    @property
    def raw(self) -> Path:
        return self.workdir / "era5"

    @property
    def store(self) -> Path:
        return self.workdir / "store.zarr"

    @property
    def climatology(self) -> Path:
        return self.workdir / "climatology.zarr"

    @property
    def checkpoint(self) -> Path:
        return self.workdir / "checkpoints" / "model.pt"

    @property
    def archive(self) -> Path:
        return self.workdir / "forecasts" / "archive.zarr"

    @property
    def scores(self) -> Path:
        return self.workdir / "scores"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "mlartifacts"

    @property
    def summary(self) -> Path:
        return self.workdir / "summary.json"


def _datetime64(value) -> np.datetime64:
    return np.datetime64(value, "ns")


def code_version() -> str:
    """Git commit of the working tree, or ``unknown`` outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def synthesize(cfg: SyntheticConfig, out_dir: Path) -> list[Path]:
    """Shallow-water synthetic ERA5 as new-CDS netCDF files (reused if already there)."""
    return generate_files(out_dir, _datetime64(cfg.period.start), _datetime64(cfg.period.end), nlat=cfg.nlat,
                          nlon=cfg.nlon, seed=cfg.seed, spinup_days=cfg.spinup_days)


def ingest(cfg: IngestConfig, cluster: ClusterConfig, files: list[Path], store: Path, climatology: Path) -> Path:
    """ERA5 files → training store and climatology store, with Dask."""
    period = StatsPeriod(_datetime64(cfg.statistics.start), _datetime64(cfg.statistics.end),
                         provenance={"sources": [f.name for f in files], "fourcast_version": code_version()})
    layout = StoreLayout(shard_steps=cfg.shard_steps, compressor=cfg.compressor)
    with dask_client(cluster):
        data = open_sources(files, cfg.variables, cfg.shard_steps)
        return write_store(data, store, period, layout, climatology_path=climatology)


def store_fingerprint(store: Path) -> str:
    """Short hash of the store's coordinates, statistics and attributes (not its bulk data)."""
    ds = open_store(store)
    digest = hashlib.sha256()
    for name in (TIME, CHANNEL, LAT, LON, MEAN, STD):
        digest.update(np.ascontiguousarray(ds[name].values).tobytes())
    digest.update(json.dumps(ds.attrs, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def train_model(cfg: TrainConfig, store: Path, checkpoint: Path, tracker: Tracker) -> Path:
    """Train a preset on the store; writes the best checkpoint and logs to ``tracker``."""
    device = default_device(cfg.device)
    leads_steps = _validation_leads(cfg, store)
    validation = StoreWindows(store, cfg.validation.start, cfg.validation.end, n_ahead=max(leads_steps))
    model = build_model(cfg.model, (validation.lat.size, validation.lon.size), len(validation.channels))
    fingerprint = store_fingerprint(store)
    tracker.log_params({**_flatten(cfg.model_dump(mode="json")), "parameters": count_parameters(model)})
    tracker.set_tags({"git_commit": code_version(), "device": str(device), "world_size": "1",
                      "dataset_fingerprint": fingerprint, "torch": torch.__version__, "host": platform.node()})
    settings = TrainSettings(
        phases=tuple(Phase(p.rollout_steps, p.optimizer_steps, p.learning_rate) for p in cfg.phases),
        batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip, validate_every=cfg.validate_every, validation_leads=leads_steps,
        validation_samples=cfg.validation_samples, seed=cfg.seed)
    result = train(model, lambda n: StoreWindows(store, cfg.train.start, cfg.train.end, n_ahead=n), validation,
                   settings, tracker.log_metrics, device)
    log.info("trained %d steps in %.0f s; best validation score %.4f at step %d", result.steps, result.seconds,
             result.best_score, result.best_step)
    model.load_state_dict(result.best_state)
    step_hours = int(validation.step / np.timedelta64(1, "h"))
    meta = CheckpointMeta(preset=cfg.model, channels=validation.channels, lat=validation.lat.tolist(),
                          lon=validation.lon.tolist(), step_hours=step_hours, mean=validation.mean.tolist(),
                          std=validation.std.tolist(),
                          extra={"store_fingerprint": fingerprint, "best_step": result.best_step,
                                 "train_start": str(cfg.train.start), "train_end": str(cfg.train.end)})
    save_checkpoint(checkpoint, model, meta)
    tracker.log_metrics({"best_val_score": result.best_score, "train_seconds": result.seconds}, result.steps)
    tracker.log_artifact(checkpoint, "checkpoint")
    return checkpoint


def _validation_leads(cfg: TrainConfig, store: Path) -> tuple[int, ...]:
    step_hours = open_store(store).attrs["step_hours"]
    bad = [h for h in cfg.validation_lead_hours if h % step_hours]
    if bad:
        raise StageInputError(f"train.validation_lead_hours {bad} are not multiples of the store step {step_hours} h")
    return tuple(h // step_hours for h in cfg.validation_lead_hours)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _init_times(cfg: ForecastConfig) -> np.ndarray:
    start, end = _datetime64(cfg.inits.start), _datetime64(cfg.inits.end)
    return np.arange(start, end + np.timedelta64(1, "ns"), np.timedelta64(cfg.init_every_hours, "h"))


def _perturbation(cfg: ForecastConfig, forecaster: Forecaster):
    if cfg.perturbation.kind == "none":
        return NoPerturbation()
    std = forecaster.normaliser.std.flatten().cpu().numpy()
    return GaussianPerturbation(std, cfg.perturbation.amplitude, channels=list(forecaster.input_coords[CHANNEL]))


def forecast(cfg: ForecastConfig, checkpoint: Path, store: Path, archive: Path, tracker: Tracker) -> Path:
    """Ensemble campaign from the store's initial conditions into a Zarr archive."""
    forecaster = Forecaster.from_checkpoint(checkpoint, default_device(cfg.device))
    truth = open_store(store)
    forecaster.meta_of(checkpoint).check_matches(list(truth[CHANNEL].values), truth[LAT].values, truth[LON].values)
    step = forecaster.step_size
    if np.timedelta64(cfg.lead_hours, "h") % step:
        raise StageInputError(f"forecast.lead_hours {cfg.lead_hours} is not a multiple of the model step {step}")
    n_steps = int(np.timedelta64(cfg.lead_hours, "h") // step)
    inits = _init_times(cfg)
    lineage = {"checkpoint": str(checkpoint), "checkpoint_sha256": _sha256(checkpoint),
               "store_fingerprint": store_fingerprint(store), "initial_conditions": str(store),
               "perturbation": cfg.perturbation.kind, "amplitude": cfg.perturbation.amplitude, "seed": cfg.seed,
               "fourcast_version": code_version()}
    tracker.log_params({**_flatten(cfg.model_dump(mode="json")), **lineage})
    archive_out = ZarrArchive(archive, list(forecaster.input_coords[CHANNEL]), inits,
                              forecast_lead_times(step, n_steps), cfg.members, truth[LAT].values, truth[LON].values,
                              attrs=lineage)
    missing = np.setdiff1d(inits, truth[TIME].values)
    if missing.size:
        raise StageInputError(f"initial conditions for {missing[:3]}… ({missing.size} init times) are not in the store, "
                         f"which covers {truth[TIME].values[0]}..{truth[TIME].values[-1]}")
    coords = {CHANNEL: truth[CHANNEL].values, LAT: truth[LAT].values, LON: truth[LON].values}
    started = time.perf_counter()
    with archive_out:
        run_campaign(forecaster, lambda t: torch.as_tensor(truth[DATA].sel({TIME: t}).values), coords, inits,
                     n_members=cfg.members, n_steps=n_steps, perturbation=_perturbation(cfg, forecaster),
                     archive=archive_out, seed=cfg.seed, members_per_batch=cfg.members_per_batch,
                     control_member=cfg.control_member)
        archive_out.finalize()
    seconds = time.perf_counter() - started
    tracker.log_metrics({"member_steps_per_second": len(inits) * cfg.members * n_steps / max(seconds, 1e-9)})
    _log_forecast_map(tracker, archive, store, inits[0], min(n_steps, 4) * step)
    return archive


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _log_forecast_map(tracker: Tracker, archive: Path, store: Path, init: np.datetime64, lead: np.timedelta64) -> None:
    forecasts, truth = open_archive(archive), open_store(store)
    variable = str(truth[CHANNEL].values[0])
    mean = forecasts[variable].sel(init_time=init, lead_time=lead).mean("member").values
    observed = truth[DATA].sel({TIME: init + lead, CHANNEL: variable}).values
    hours = int(lead / np.timedelta64(1, "h"))
    path = archive.parent / f"map_{variable}_{hours}h.png"
    plots.forecast_map(path, truth[LAT].values, truth[LON].values,
                       {"truth": observed, "ensemble mean": mean, "error": mean - observed},
                       f"{variable} at +{hours} h from {str(init)[:13]}", get_variable(variable).units)
    tracker.log_artifact(path, "plots")


def score(cfg: ScoreConfig, archive: Path, store: Path, climatology: Path, out_dir: Path,
          tracker: Tracker) -> list[dict]:
    """Scores of the archive and the persistence/climatology baselines against the store's truth."""
    tracker.log_params({**_flatten(cfg.model_dump(mode="json")), "archive": str(archive), "store": str(store),
                        "climatology": str(climatology)})
    forecasts, truth = open_archive(archive), open_store(store)
    records = score_forecasts(forecasts, truth[DATA], open_climatology(climatology), variables=cfg.variables)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _write_scorecard(records, out_dir / "scorecard.csv")
    tracker.log_artifact(table, "scores")
    for lead in sorted({r["lead_hours"] for r in records}):
        tracker.log_metrics({f"{r['variable']}_{r['system']}_{r['metric']}": r["value"]
                             for r in records if r["lead_hours"] == lead}, step=lead)
    for variable in sorted({r["variable"] for r in records}):
        units = get_variable(variable).units
        tracker.log_artifact(plots.skill_vs_lead(out_dir / f"rmse_{variable}.png", records, variable, "rmse", units),
                             "plots")
    return records


def _write_scorecard(records: list[dict], path: Path) -> Path:
    tmp = temporary_sibling(path)
    lines = ["variable,lead_hours,system,metric,value"]
    lines += [f"{r['variable']},{r['lead_hours']},{r['system']},{r['metric']},{r['value']!r}" for r in records]
    tmp.write_text("\n".join(lines) + "\n")
    return replace_path(tmp, path)


def publish(path: Path, records: list[dict], lead_hours: list[int], store: Path, archive: Path, tracking_uri: str,
            run_ids: dict[str, str]) -> Path:
    """Write ``summary.json`` (scores at ``lead_hours`` and where everything lives) atomically."""
    summary = {"scores": [r for r in records if r["lead_hours"] in lead_hours], "store": str(store.resolve()),
               "archive": str(archive.resolve()), "mlflow_tracking_uri": tracking_uri, "mlflow_run_ids": run_ids}
    tmp = temporary_sibling(path)
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return replace_path(tmp, path)


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` produced."""

    summary: Path
    records: list[dict]
    tracking_uri: str
    run_ids: dict[str, str] = field(default_factory=dict)


@contextmanager
def _stage(name: str) -> Iterator[None]:
    started = time.perf_counter()
    log.info("stage %s: started", name)
    yield
    log.info("stage %s: done in %.0f s", name, time.perf_counter() - started)


def headline_scores(records: list[dict], lead_hours: list[int]) -> dict[str, float]:
    """fourcast's scores at ``lead_hours`` as metric names for the training run (``score_z500_rmse_24h``)."""
    return {f"score_{r['variable']}_{r['metric']}_{r['lead_hours']}h": r["value"] for r in records
            if r["system"] == "fourcast" and r["lead_hours"] in lead_hours}


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    """Every stage in order, each in its own MLflow run where it has something to record.

    The headline scores are also logged back onto the training run of the model, so the run
    that produced a model shows how its forecasts verified.
    """
    paths = Paths(cfg.workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    uri = cfg.tracking.tracking_uri or default_tracking_uri(paths.workdir)
    with _stage("synthesize"):
        files = synthesize(cfg.synthetic, paths.raw)
    with _stage("ingest"):
        ingest(cfg.ingest, cfg.cluster, files, paths.store, paths.climatology)
    run_ids: dict[str, str] = {}
    experiment = dict(tracking_uri=uri, experiment=cfg.tracking.experiment, artifact_root=paths.artifacts)
    with _stage("train"), mlflow_run(run_name="train", tags={"stage": "train"}, **experiment) as tracker:
        train_model(cfg.train, paths.store, paths.checkpoint, tracker)
        run_ids["train"] = tracker.run_id
    with _stage("forecast"), mlflow_run(run_name="forecast", tags={"stage": "forecast", "train_run_id": run_ids["train"]},
                                        **experiment) as tracker:
        forecast(cfg.forecast, paths.checkpoint, paths.store, paths.archive, tracker)
        run_ids["forecast"] = tracker.run_id
    with _stage("score"), mlflow_run(run_name="score", tags={"stage": "score", "forecast_run_id": run_ids["forecast"],
                                                             "train_run_id": run_ids["train"]},
                                     **experiment) as tracker:
        records = score(cfg.score, paths.archive, paths.store, paths.climatology, paths.scores, tracker)
        run_ids["score"] = tracker.run_id
    attach_run(uri, run_ids["train"]).log_metrics(headline_scores(records, cfg.score.lead_hours))
    summary = publish(paths.summary, records, cfg.score.lead_hours, paths.store, paths.archive, uri, run_ids)
    return PipelineResult(summary, records, uri, run_ids)
