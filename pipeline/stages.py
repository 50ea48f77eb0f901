"""Stage functions chaining the packages: synthesize → ingest → train → forecast → score → publish.

Each stage takes its own config slice and the paths it reads and writes, and returns what it
produced. :func:`run_pipeline` is the whole diagram of DESIGN.md §1 in one function.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ensembles.archive import open_archive
from ensembles.campaign import Campaign, CampaignArchive
from ensembles.export import climatology_to_weatherbench2, to_weatherbench2, truth_to_weatherbench2, write_wb2
from ensembles.model_error import StochasticTendencyPerturbation
from ensembles.perturbations import (
    BalancedRandomFieldPerturbation,
    BredVectorPerturbation,
    GaussianPerturbation,
    GaussianRandomFieldPerturbation,
    NoPerturbation,
)
from ensembles.protocols import ModelError, Perturbation
from ensembles.regions import GLOBAL, Region, get_region
from ensembles.runner import run_campaign
from ensembles.scorecard import (
    ScoreOptions,
    headline_records,
    open_for_scoring,
    score_archive,
    scorecard_records,
    time_mean_field,
    write_scorecard,
)
from ensembles.streaming import StreamingScorer
from fourcast.checkpoint import CheckpointMeta, save_checkpoint
from fourcast.data import StoreWindows
from fourcast.device import default_device
from fourcast.distributed import DistContext, LaunchEnv, main_first, process_group
from fourcast.errors import CheckpointError
from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model, count_parameters
from fourcast.training import (
    TRAIN_LOSS,
    TRAIN_LR,
    VAL_SCORE,
    CheckpointPlan,
    ModeSchedule,
    Phase,
    TrainSettings,
    seeded_initialisation,
    train,
)
from ingest.atomic import atomic_output
from ingest.cds import CdsRequest, PlanOptions, plan_requests
from ingest.climatology import climatology_at
from ingest.coarsen import coarsen
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.grid import check_coords
from ingest.lexicon import get_variable
from ingest.progress import progress
from ingest.schema import DATA, MEAN, STD, open_climatology, open_store
from ingest.store import StatsPeriod, StoreLayout, open_sources, write_store
from ingest.synthetic import generate_files
from pipeline.calibration import CALIBRATION_FILE, apply_calibration, calibrate_stage
from pipeline.cluster import SHARD_COPIES, check_task_memory, dask_client
from pipeline.config import (
    CdsConfig,
    ClusterConfig,
    ForecastConfig,
    IngestConfig,
    ModelErrorConfig,
    PerturbationConfig,
    RunConfig,
    ScoreConfig,
    SyntheticConfig,
    TrainConfig,
)
from pipeline.errors import OutputPathError, StageGridError, StageInputError  # re-exported
from pipeline.tracking import (
    MODEL_URI_SCHEMES,
    ModelUriError,
    NullTracker,
    Tracker,
    attach_run,
    default_tracking_uri,
    download_checkpoint,
    mlflow_run,
    resolve_model_version,
    run_exists,
    score_metric_name,
)

log = logging.getLogger(__name__)


def require_writable(folder: Path, what: str) -> None:
    """Raise :class:`OutputPathError` unless files can be created in ``folder``.

    A folder that does not exist yet is judged by the nearest existing one it would be created
    in. The probe creates and deletes a file there: permission bits say nothing of a read-only
    filesystem, nor of what root may do. Nothing is left behind.

    Parameters
    ----------
    folder : pathlib.Path
        Where the stage will write.
    what : str
        What the folder is, for the message (``"workdir"``, ``"archive folder"``).
    """
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise OutputPathError(f"{what} {folder} cannot be written: {existing} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".fourcast-write-probe-")
    except OSError as err:
        raise OutputPathError(f"{what} {folder} cannot be written: {err.strerror} in {existing}") from err
    os.close(handle)
    os.unlink(probe)


def tracking_folder(tracking_uri: str) -> Path | None:
    """The local folder an MLflow tracking URI writes to (a SQLite file's folder, a file store), else
    ``None``."""
    if tracking_uri.startswith("sqlite:///"):
        database = tracking_uri.removeprefix("sqlite:///").split("?")[0]
        return None if database in ("", ":memory:") else Path(database).parent
    if tracking_uri.startswith("file:"):
        return Path(tracking_uri.removeprefix("file:").removeprefix("//"))
    return None if "://" in tracking_uri else Path(tracking_uri)


def require_device(name: str | None, key: str) -> None:
    """Raise :class:`StageInputError` unless this machine has the device ``key`` asks for (``None``: any
    machine)."""
    if name is None:
        return
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StageInputError(
                f"{key} {name!r} requested but torch.cuda.is_available() is False on this machine; "
                "use cpu, or leave it unset to take CUDA when present"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StageInputError(
                f"{key} {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StageInputError(
            f"{key} {name!r} requested but torch.backends.mps.is_available() is False on this machine"
        )


@dataclass(frozen=True)
class Paths:
    """Where a run keeps what it produces, all under one work directory."""

    workdir: Path

    @property
    def raw(self) -> Path:
        return self.workdir / "era5"

    @property
    def cds_cache(self) -> Path:
        return self.raw / "cds"

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
    def calibration(self) -> Path:
        return self.workdir / CALIBRATION_FILE

    @property
    def summary(self) -> Path:
        return self.workdir / "summary.json"

    @property
    def wb2(self) -> Path:
        return self.workdir / "wb2"


def _datetime64(value) -> np.datetime64:
    return np.datetime64(value, "ns")


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


def synthesize(cfg: SyntheticConfig, out_dir: Path) -> list[Path]:
    """Shallow-water synthetic ERA5 as new-CDS netCDF files (reused if already there); progress in simulated
    days."""
    start, end = _datetime64(cfg.period.start), _datetime64(cfg.period.end)
    days = int(math.ceil(cfg.spinup_days + (end - start) / np.timedelta64(1, "D")))
    with progress(
        days,
        f"simulating {days} days of shallow-water weather on {cfg.nlat}x{cfg.nlon} (spin-up "
        f"{cfg.spinup_days:g} d)",
        "days",
    ) as bar:
        return generate_files(
            out_dir,
            start,
            end,
            nlat=cfg.nlat,
            nlon=cfg.nlon,
            seed=cfg.seed,
            spinup_days=cfg.spinup_days,
            progress=lambda done: bar.update(int(done * days) - bar.n),
        )


def _plan_options(cfg: CdsConfig) -> PlanOptions:
    return PlanOptions(
        data_format=cfg.data_format,
        download_format=cfg.download_format,
        grid=cfg.grid,
        area=cfg.area,
        max_fields=cfg.max_fields,
    )


def cds_plan(cfg: CdsConfig, variables: list[str]) -> list[CdsRequest]:
    """The CDS requests that fetch ``variables`` over ``cfg.period``, each with its cost; nothing is sent."""
    return plan_requests(variables, cfg.period.start, cfg.period.end, cfg.step_hours, _plan_options(cfg))


def download(cfg: CdsConfig, variables: list[str], cache_dir: Path) -> list[Path]:
    """ERA5 from the CDS into ``cfg.cache_dir`` (default ``cache_dir``); only what is not cached is fetched.

    The key comes from ``CDSAPI_URL``/``CDSAPI_KEY`` or ``~/.cdsapirc``, never from the config.
    """
    try:  # the CDS client is the [ingest] extra
        from ingest.cds_download import DownloadSettings, download_plan
    except ImportError as err:
        raise StageInputError(
            f"ingest.source 'cds' needs the CDS client: pip install 'fourcast[ingest]' ({err})"
        ) from err
    settings = DownloadSettings(
        cache_dir=cfg.cache_dir or cache_dir,
        max_fields=_plan_options(cfg).field_limit,
        concurrency=cfg.concurrency,
        retries=cfg.retries,
        backoff_seconds=cfg.backoff_seconds,
        poll_max_seconds=cfg.poll_max_seconds,
    )
    return download_plan(cds_plan(cfg, variables), settings)


def source_files(cfg: RunConfig, paths: Paths) -> list[Path]:
    """The ERA5 files to ingest: fetched from the CDS, synthesized, or found in ``paths.raw`` (``files``)."""
    if cfg.ingest.source == "cds":
        return download(cfg.ingest.cds, cfg.ingest.variables, paths.cds_cache)
    if cfg.ingest.source == "synthetic":
        return synthesize(cfg.synthetic, paths.raw)
    return raw_files(paths.raw)


#: File name endings of the layouts :func:`ingest.readers.open_sources` reads (netCDF, GRIB, CDS zip).
RAW_SUFFIXES = (".nc", ".grib", ".grb", ".grib2", ".grb2", ".zip")


def raw_files(folder: Path) -> list[Path]:
    """The ERA5 files in ``folder`` (not its subfolders or hidden files), sorted by name.

    Raises
    ------
    StageInputError
        If the folder is missing or holds no file ending in one of :data:`RAW_SUFFIXES`.
    """
    if not folder.is_dir():
        raise StageInputError(f"ingest.source 'files' reads ERA5 files from {folder}, which does not exist")
    present = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in present if p.suffix.lower() in RAW_SUFFIXES]
    if not files:
        found = ", ".join(p.name for p in present[:5]) + (", …" if len(present) > 5 else "") or "nothing"
        raise StageInputError(
            f"expected ERA5 files ending in {', '.join(RAW_SUFFIXES)} (netCDF, GRIB or CDS zip) "
            f"in {folder}; found {found}"
        )
    return files


_STATISTICS_REMEDY = (
    "widen ingest.statistics to at least 2 time steps inside the data, or remove it to take the "
    "default (the data less its last ingest.statistics_leave_out_years years)"
)


def ingest(
    cfg: IngestConfig, cluster: ClusterConfig, files: list[Path], store: Path, climatology: Path
) -> Path:
    """ERA5 files → training store and climatology store, with Dask."""
    provenance = {
        "sources": [f.name for f in files],
        "fourcast_version": code_version(),
        "coarsen": cfg.coarsen,
    }
    layout = StoreLayout(shard_steps=cfg.shard_steps, compressor=cfg.compressor)
    with dask_client(cluster) as client:
        data = coarsen(
            open_sources(files, cfg.variables, cfg.shard_steps, assume_units=cfg.assume_units), cfg.coarsen
        )
        check_task_memory(
            client,
            shard_task_bytes(data, cfg.shard_steps),
            f"a shard of {cfg.shard_steps} steps of "
            f"{data.sizes[CHANNEL]} x {data.sizes[LAT]} x {data.sizes[LON]} {data.dtype}",
        )
        period = (
            StatsPeriod.default(data[TIME].values, cfg.statistics_leave_out_years, provenance)
            if cfg.statistics is None
            else StatsPeriod(
                _datetime64(cfg.statistics.start),
                _datetime64(cfg.statistics.end),
                provenance,
                remedy=_STATISTICS_REMEDY,
            )
        )
        return write_store(data, store, period, layout, climatology_path=climatology, progress=True)


def shard_task_bytes(data: xr.DataArray, shard_steps: int) -> int:
    """Peak memory of one shard-writing task: :data:`~pipeline.cluster.SHARD_COPIES` copies of a shard."""
    step_bytes = data.sizes[CHANNEL] * data.sizes[LAT] * data.sizes[LON] * data.dtype.itemsize
    return SHARD_COPIES * min(shard_steps, data.sizes[TIME]) * step_bytes


def store_fingerprint(store: Path) -> str:
    """Short hash of the store's coordinates, statistics and attributes (not its bulk data)."""
    ds = open_store(store)
    digest = hashlib.sha256()
    for name in (TIME, CHANNEL, LAT, LON, MEAN, STD):
        digest.update(np.ascontiguousarray(ds[name].values).tobytes())
    digest.update(json.dumps(ds.attrs, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def training_state_path(checkpoint: Path) -> Path:
    """Where training keeps its resumable state (``last.pt`` beside the model checkpoint)."""
    return checkpoint.parent / "last.pt"


def train_model(
    cfg: TrainConfig,
    store: Path,
    checkpoint: Path,
    tracker: Tracker,
    resume: Path | None = None,
    climatology: Path | None = None,
    restart: bool = False,
) -> Path:
    """Train a preset on the store; writes the best checkpoint and logs to ``tracker``.

    Launched by ``torchrun``, every rank calls this: the ranks train data-parallel, and only
    rank 0 writes checkpoints and reports to ``tracker`` (the others get a :class:`NullTracker`).
    ``resume`` continues exactly from a training state (see :func:`training_state_path`);
    ``climatology`` (the climatology store) is the reference of the validation ACC. Without
    ``resume``, a checkpoint folder holding an earlier run is refused unless ``restart`` is
    given, which moves that run's checkpoints aside (:class:`fourcast.training.CheckpointPlan`).

    Raises
    ------
    StageInputError
        Before any work, if the training or validation period reaches outside the store (it
        would be clipped while the run records the dates asked for).
    """
    _require_periods_in_store(cfg, store)
    with process_group(cfg.device) as ctx:
        return _train_on_rank(
            cfg,
            store,
            checkpoint,
            tracker if ctx.is_main else NullTracker(),
            resume,
            climatology,
            ctx,
            restart,
        )


def _require_periods_in_store(cfg: TrainConfig, store: Path) -> None:
    """Refuse ``train.train``/``train.validation`` periods that start before or end after the store's
    times."""
    times = open_store(store)[TIME].values
    first, last = _datetime64(times[0]), _datetime64(times[-1])
    for key, period in (("train.train", cfg.train), ("train.validation", cfg.validation)):
        if _datetime64(period.start) < first or _datetime64(period.end) > last:
            raise StageInputError(
                f"{key} {_minutes(period.start)}..{_minutes(period.end)} reaches outside the store, "
                "which covers "
                f"{_minutes(first)}..{_minutes(last)}; training would silently use less: choose dates "
                "within the store"
            )


def _minutes(time) -> str:
    return np.datetime_as_string(_datetime64(time), unit="m")


class _MetricBuffer:
    """Per-step metrics, sent to the tracker ``size`` steps at a time (one request, not one per step).

    Also sent at every multiple of ``checkpoint_every``, when training writes its resumable
    state, so a run killed and resumed has every step's metrics up to its last state in MLflow.
    """

    def __init__(self, tracker: Tracker, checkpoint_every: int, size: int = 50) -> None:
        self.tracker, self.checkpoint_every, self.size = tracker, checkpoint_every, size
        self.pending: list[tuple[int, dict[str, float]]] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.pending.append((step, dict(metrics)))
        if len(self.pending) >= self.size or step % self.checkpoint_every == 0:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.tracker.log_metric_history(self.pending)
            self.pending = []


class _TrainingReport:
    """Training's ``report``: metrics to the tracker (batched), step, loss, lr and samples/s to the progress,
    and
    a log line per validation with each variable's RMSE (and persistence's) per lead time."""

    def __init__(self, buffer: _MetricBuffer, bar, batch_size: int) -> None:
        self.buffer, self.bar, self.batch_size = buffer, bar, batch_size
        self.started, self.first_step = time.perf_counter(), None

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.buffer(metrics, step)
        if TRAIN_LOSS in metrics:
            if self.first_step is None:
                self.first_step = step - 1
            rate = (step - self.first_step) * self.batch_size / max(time.perf_counter() - self.started, 1e-9)
            self.bar.set_postfix(
                {
                    "loss": f"{metrics[TRAIN_LOSS]:.4g}",
                    "lr": f"{metrics.get(TRAIN_LR, 0):.2e}",
                    "rollout": int(metrics.get("train/rollout_steps", 1)),
                    "samples/s": f"{rate:.3g}",
                },
                refresh=False,
            )
            self.bar.update(step - self.bar.n)
        if VAL_SCORE in metrics:
            log.info("validation at step %d: %s", step, _validation_summary(metrics))


def _validation_summary(metrics: Mapping[str, float]) -> str:
    """``z500 RMSE 123 (persistence 456) at 24h; …; score 0.41`` from ``val/<var>/<metric>_<lead>h``
    metrics."""
    parts = []
    for name, value in metrics.items():
        pieces = name.split("/")
        if len(pieces) == 3 and pieces[2].startswith("rmse_"):
            lead = pieces[2].removeprefix("rmse_")
            persistence = metrics.get(f"val/{pieces[1]}/persistence_rmse_{lead}", float("nan"))
            parts.append(f"{pieces[1]} RMSE {value:.4g} (persistence {persistence:.4g}) at {lead}")
    return "; ".join(parts) + f"; score {metrics[VAL_SCORE]:.4g}"


def _train_on_rank(
    cfg: TrainConfig,
    store: Path,
    checkpoint: Path,
    tracker: Tracker,
    resume: Path | None,
    climatology: Path | None,
    ctx: DistContext,
    restart: bool = False,
) -> Path:
    leads_steps = _validation_leads(cfg, store)
    validation = StoreWindows(store, cfg.validation.start, cfg.validation.end, n_ahead=max(leads_steps))
    with seeded_initialisation(cfg.seed):  # the same initial weights in every run of this config
        model = build_model(cfg.model, (validation.lat.size, validation.lon.size), len(validation.channels))
    fingerprint = store_fingerprint(store)
    workdir = store.parent
    log_store_input(tracker, store, fingerprint, "training")
    tracker.log_params(
        workdir_relative(
            {**_flatten(cfg.model_dump(mode="json")), "parameters": count_parameters(model)}, workdir
        )
    )
    tracker.set_tags(
        workdir_relative(
            {
                "git_commit": code_version(),
                "device": str(ctx.device),
                "world_size": str(ctx.world_size),
                "backend": ctx.backend or "none",
                "dataset_fingerprint": fingerprint,
                "torch": torch.__version__,
                **({"resumed_from": Path(resume)} if resume else {}),
            },
            workdir,
        )
    )
    settings = TrainSettings(
        phases=tuple(Phase(p.rollout_steps, p.optimizer_steps, p.learning_rate) for p in cfg.phases),
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_steps,
        grad_clip=cfg.grad_clip,
        validate_every=cfg.validate_every,
        validation_leads=leads_steps,
        validation_samples=cfg.validation_samples,
        seed=cfg.seed,
        precision=cfg.precision,
        compile=cfg.compile,
        activation_checkpointing=cfg.activation_checkpointing,
        loader_workers=cfg.loader_workers,
        prefetch_factor=cfg.loader.prefetch_factor,
        modes=None if cfg.modes is None else ModeSchedule(**cfg.modes.model_dump()),
        physics_weight=cfg.physics_weight,
    )
    step_hours = int(validation.step / np.timedelta64(1, "h"))
    meta = CheckpointMeta(
        preset=cfg.model,
        channels=validation.channels,
        lat=validation.lat.tolist(),
        lon=validation.lon.tolist(),
        step_hours=step_hours,
        mean=validation.mean.tolist(),
        std=validation.std.tolist(),
        extra={
            "store_fingerprint": fingerprint,
            "train_start": str(cfg.train.start),
            "train_end": str(cfg.train.end),
            "train_run_id": tracker.run_id or "",
        },
    )
    plan = CheckpointPlan(
        checkpoint.parent,
        meta,
        cfg.checkpoint_every,
        config=cfg.model_dump(mode="json"),
        resume_from=resume,
        lineage={"run_id": tracker.run_id or ""},
        restart=restart,
    )
    buffer = _MetricBuffer(tracker, cfg.checkpoint_every)
    total = sum(p.optimizer_steps for p in cfg.phases)
    with progress(
        total,
        f"training {cfg.model} on {validation.lat.size}x{validation.lon.size}",
        "steps",
        enabled=ctx.is_main,
    ) as bar:
        try:
            result = train(
                model,
                lambda n: StoreWindows(
                    store, cfg.train.start, cfg.train.end, n_ahead=n, cache=cfg.loader.cache
                ),
                validation,
                settings,
                _TrainingReport(buffer, bar, cfg.batch_size),
                ctx.device,
                ctx=ctx,
                checkpoints=plan,
                climatology=_normalised_climatology(climatology, validation),
            )
        finally:
            buffer.flush()
    log.info(
        "trained %d steps in %.0f s; best validation score %.4f at step %d",
        result.steps,
        result.seconds,
        result.best_score,
        result.best_step,
    )
    if result.resumed_from_step is not None:
        tracker.set_tags(
            {
                "resumed_from_step": str(result.resumed_from_step),
                "resumed_from_run_id": result.resumed_lineage.get("run_id", ""),
            }
        )
    if not ctx.is_main:
        return checkpoint
    model.load_state_dict(result.best_state)
    meta.extra.update(best_step=result.best_step, best_score=result.best_score)
    save_checkpoint(checkpoint, model, meta)
    tracker.log_metrics({"val/best_score": result.best_score, "train/seconds": result.seconds}, result.steps)
    _log_and_register_model(cfg, tracker, checkpoint, meta, result.history)
    return checkpoint


#: Artifact path of the MLflow model in the training run.
MODEL_ARTIFACT = "model"


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


def _log_and_register_model(
    cfg: TrainConfig, tracker: Tracker, checkpoint: Path, meta: CheckpointMeta, history: list[dict]
) -> None:
    """Log the checkpoint as an MLflow pyfunc model and, with ``cfg.register_model``, register it.

    The registered version carries a description (what it forecasts, on which data) and the
    validation scores of its best step as tags.
    """
    uri = tracker.log_model(checkpoint, MODEL_ARTIFACT, model_metadata(meta))
    if not cfg.register_model or uri is None:
        return
    best = next((h for h in history if h.get("step") == meta.extra.get("best_step")), {})
    scores = {key: f"{value:.6g}" for key, value in best.items() if key.startswith("val/")}
    description = (
        f"fourcast {meta.preset}: {', '.join(meta.channels)} on a {len(meta.lat)}x{len(meta.lon)} grid, "
        f"{meta.step_hours} h step; trained {_day(cfg.train.start)}..{_day(cfg.train.end)} on store "
        f"{meta.extra.get('store_fingerprint', 'unknown')}; best validation score "
        f"{meta.extra.get('best_score', float('nan')):.4g} at step {meta.extra.get('best_step')}. "
        "Load with mlflow.pyfunc.load_model (input (batch, channel, lat, lon) float32 in physical units) "
        "or `fourcast forecast --model models:/...`."
    )
    version = tracker.register_model(
        f"fourcast-{cfg.model}",
        MODEL_ARTIFACT,
        description=description,
        tags={
            "dataset_fingerprint": meta.extra.get("store_fingerprint", ""),
            "best_step": meta.extra.get("best_step"),
            **scores,
        },
    )
    if version:
        tracker.set_tags({"registered_model": f"fourcast-{cfg.model}/{version}"})


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
            "period": f"{_minutes(ds[TIME].values[0])}..{_minutes(ds[TIME].values[-1])}",
        },
    )


def _day(time) -> str:
    return np.datetime_as_string(_datetime64(time), unit="D")


def train_run_name(cfg: TrainConfig) -> str:
    """``train afno-tiny 2000-01-01..2000-10-31``: the preset and training period."""
    return f"train {cfg.model} {_day(cfg.train.start)}..{_day(cfg.train.end)}"


def forecast_run_name(cfg: ForecastConfig) -> str:
    """``forecast 42 inits × 8 members, 120 h``."""
    return f"forecast {len(_init_times(cfg))} inits × {cfg.members} members, {cfg.lead_hours} h"


def _normalised_climatology(path: Path | None, windows: StoreWindows):
    """Valid times → the climatology store's fields in the model's normalised units; ``None`` if there is
    none."""
    if path is None or not Path(path).exists():
        return None
    clim = open_climatology(path)
    check_coords(
        {CHANNEL: windows.channels, LAT: windows.lat, LON: windows.lon},
        clim.coords,
        (CHANNEL, LAT, LON),
        what=f"climatology {path}",
        reference="the store",
        error=StageGridError,
    )
    mean, std = windows.mean[:, None, None], windows.std[:, None, None]

    def at(times: np.ndarray) -> np.ndarray:
        return (climatology_at(clim, xr.DataArray(times, dims=[TIME])).values - mean) / std

    return at


def _validation_leads(cfg: TrainConfig, store: Path) -> tuple[int, ...]:
    step_hours = open_store(store).attrs["step_hours"]
    bad = [h for h in cfg.validation_lead_hours if h % step_hours]
    if bad:
        raise StageInputError(
            f"train.validation_lead_hours {bad} are not multiples of the store step {step_hours} h"
        )
    return tuple(h // step_hours for h in cfg.validation_lead_hours)


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


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _init_times(cfg: ForecastConfig) -> np.ndarray:
    if cfg.init_times:
        return np.array([_datetime64(t) for t in cfg.init_times])
    start, end = _datetime64(cfg.inits.start), _datetime64(cfg.inits.end)
    return np.arange(start, end + np.timedelta64(1, "ns"), np.timedelta64(cfg.init_every_hours, "h"))


def _perturbation(cfg: ForecastConfig, forecaster: Forecaster) -> Perturbation:
    """The initial perturbation of ``cfg.perturbation``; per-variable ``amplitudes`` scale each channel's
    std."""
    return build_perturbation(cfg.perturbation, forecaster)


def build_perturbation(settings: PerturbationConfig, forecaster: Forecaster) -> Perturbation:
    """The initial perturbation ``settings`` describe for ``forecaster``'s channels (physical units).

    Each channel's size is its std times its amplitude (``settings.amplitudes`` where given,
    else ``settings.amplitude``); the perturbation's own amplitude is then 1.
    """
    if settings.kind == "none":
        return NoPerturbation()
    channels = [str(c) for c in forecaster.input_coords[CHANNEL]]
    amplitudes = np.array([(settings.amplitudes or {}).get(c, settings.amplitude) for c in channels])
    size = forecaster.normaliser.std.flatten().cpu().numpy().astype(np.float64) * amplitudes
    if settings.kind == "grf":
        return GaussianRandomFieldPerturbation(
            size, 1.0, alpha=settings.alpha or 2.0, tau=settings.tau, channels=channels
        )
    if settings.kind == "balanced":
        return BalancedRandomFieldPerturbation(
            size,
            1.0,
            length_scale_km=settings.length_scale_km,
            alpha=settings.alpha or 3.0,
            channels=channels,
        )
    if settings.kind == "bred":
        return BredVectorPerturbation(forecaster, size, 1.0, cycles=settings.cycles, channels=channels)
    return GaussianPerturbation(size, 1.0, channels=channels)


def build_model_error(settings: ModelErrorConfig, step: np.timedelta64) -> ModelError | None:
    """The stochastic model error ``settings`` describe (``None`` for ``none`` or a zero amplitude)."""
    if settings.kind == "none" or not any([settings.amplitude, *(settings.amplitudes or {}).values()]):
        return None
    return StochasticTendencyPerturbation(
        settings.amplitude,
        amplitudes=settings.amplitudes,
        step_hours=float(step / np.timedelta64(1, "h")),
        length_scale_km=settings.length_scale_km,
        decorrelation_hours=settings.decorrelation_hours,
    )


def _forecast_device(cfg: ForecastConfig, launch: LaunchEnv) -> torch.device:
    if cfg.device is None and torch.cuda.is_available():
        return torch.device("cuda", launch.local_rank % torch.cuda.device_count())
    return default_device(cfg.device)


def resolved_model(model: str, tracking_uri: str | None) -> dict[str, str]:
    """``{"model_name", "model_version"}`` a ``models:/`` URI names now (an alias resolved once); else ``{}``.

    Raises
    ------
    StageInputError
        If the URI names a model, version or alias the registry does not hold (the message
        names the model and its aliases), or no tracking URI is given.
    """
    if not model.startswith("models:/"):
        return {}
    if tracking_uri is None:
        raise StageInputError(f"model {model} is an MLflow URI but no tracking URI was given")
    try:
        name, version = resolve_model_version(model, tracking_uri)
    except ModelUriError as err:
        raise StageInputError(str(err)) from err
    return {"model_name": name, "model_version": version}


def _load_model(
    model: str,
    tracking_uri: str | None,
    device: torch.device,
    autocast: bool,
    cuda_graphs: bool = False,
    compile: bool = False,
) -> tuple[Forecaster, CheckpointMeta, str]:
    """The forecaster, its checkpoint metadata and the checkpoint's SHA-256, from a path or an MLflow model
    URI.

    A ``models:/NAME@ALIAS`` URI should be resolved first (:func:`resolved_model`) and given as
    ``models:/NAME/VERSION``, so that an alias moved meanwhile cannot change what was loaded.
    """
    with tempfile.TemporaryDirectory(prefix="fourcast-model-") as scratch:
        if model.startswith(MODEL_URI_SCHEMES):
            if tracking_uri is None:
                raise StageInputError(f"model {model} is an MLflow URI but no tracking URI was given")
            try:
                path = download_checkpoint(model, tracking_uri, Path(scratch))
            except ModelUriError as err:
                raise StageInputError(str(err)) from err
        else:
            path = Path(model)
        meta = Forecaster.meta_of(path)
        return (
            Forecaster.from_checkpoint(
                path, device, autocast=autocast, cuda_graphs=cuda_graphs, compile=compile
            ),
            meta,
            _sha256(path),
        )


@dataclass(frozen=True)
class ScoreStream:
    """Scoring while the forecast stage produces members (``forecast.stream_scores``).

    Attributes
    ----------
    climatology : pathlib.Path
        Climatology store for ACC and the climatology baseline.
    out_dir : pathlib.Path
        Where ``scorecard.nc``/``scorecard.csv`` of the streamed scores go.
    options : ScoreOptions
        Regions and NaN policy, as batch scoring uses (:func:`score_options`).
    variables : list of str, optional
        Channels to score (default: all the model forecasts).
    """

    climatology: Path
    out_dir: Path
    options: ScoreOptions
    variables: list[str] | None = None


def score_stream(cfg: RunConfig, paths: Paths) -> ScoreStream | None:
    """The :class:`ScoreStream` of ``cfg`` (into ``<workdir>/scores/streamed``), or ``None`` when streaming is
    off."""
    if not cfg.forecast.stream_scores:
        return None
    return ScoreStream(
        paths.climatology, paths.scores / "streamed", score_options(cfg.score), cfg.score.variables
    )


def forecast(
    cfg: ForecastConfig,
    checkpoint: Path,
    store: Path,
    archive: Path,
    tracker: Tracker,
    *,
    overwrite: bool = False,
    tracking_uri: str | None = None,
    launch: LaunchEnv | None = None,
    stream: ScoreStream | None = None,
    climatology: Path | None = None,
    workdir: Path | None = None,
    calibration: Path | None = None,
) -> Path:
    """Ensemble campaign from the store's initial conditions into a Zarr archive; this process's share of it.

    Every process of a ``torchrun`` launch calls this; the (init time, member block) work items
    are split over them, items already in the archive are skipped (resume), and the archive is
    committed once all are done. Only rank 0 should be given a recording ``tracker``; rank 0
    creates (or joins) the archive before the others join it, so its lineage names rank 0's run.

    Parameters
    ----------
    cfg : ForecastConfig
        ``cfg.model`` (checkpoint path or MLflow model URI) replaces ``checkpoint`` when set.
    checkpoint : pathlib.Path
        The pipeline's checkpoint, used when ``cfg.model`` is not set.
    store : pathlib.Path
        Training store providing the initial conditions.
    archive : pathlib.Path
        Where the campaign's archive goes.
    tracker : Tracker
        Receives the lineage and throughput.
    overwrite : bool
        Replace an archive of a different campaign at ``archive`` (refused otherwise). Nothing
        but a forecast archive is ever replaced.
    tracking_uri : str, optional
        Where MLflow model URIs are resolved.
    launch : fourcast.distributed.LaunchEnv, optional
        Rank and world size; read from the environment by default.
    stream : ScoreStream, optional
        Also score the members as they are produced, against the store's truth, and record the
        scorecard (``streamed_``-prefixed metrics, ``streamed`` artifacts). One process only;
        when resuming a campaign whose archive already holds work items, streaming is skipped
        with a warning (those members are not produced again): score the archive instead.
    climatology : pathlib.Path, optional
        The climatology store, protected like ``store``: ``archive`` may not be, hold or lie in either.
    workdir : pathlib.Path, optional
        The tracker records paths relative to it (:func:`workdir_relative`); default: the
        store's folder. The archive's lineage keeps them absolute.
    calibration : pathlib.Path, optional
        ``calibration.json`` of the calibrate stage: with ``cfg.calibrated``, its amplitudes
        replace the configured ones when it was made for this checkpoint
        (:func:`pipeline.calibration.apply_calibration`); the lineage names it.

    Raises
    ------
    StageInputError
        Before anything is written: the model step differs from ``cfg.step_hours``, the lead
        time is not a multiple of it, init times are not in the store, the model URI is bad,
        streaming is asked of several processes, the archive path is, holds or lies in the store
        or the climatology.
    ArchiveError
        If ``archive`` holds something that is not a forecast archive.
    CheckpointError
        If the checkpoint's channels differ from the store's, or its grid does and the model
        cannot move to the store's grid (:class:`~fourcast.errors.ResolutionTransferError`:
        an AFNO). An SFNO forecasts zero-shot on another equiangular grid.
    CampaignMismatchError
        If ``archive`` holds another campaign and ``overwrite`` is false.
    """
    _check_archive_path(
        archive, {"store": store, "climatology": climatology or (stream and stream.climatology)}
    )
    launch = launch or LaunchEnv.from_environ()
    device = _forecast_device(cfg, launch)
    model = str(cfg.model or checkpoint)
    registered = resolved_model(model, tracking_uri)
    pinned = f"models:/{registered['model_name']}/{registered['model_version']}" if registered else model
    forecaster, meta, checkpoint_sha256 = _load_model(
        pinned, tracking_uri, device, cfg.autocast and device.type == "cuda", cfg.cuda_graphs, cfg.compile
    )
    cfg, calibrated = apply_calibration(cfg, calibration, checkpoint_sha256)
    truth = open_store(store)
    forecaster = _on_store_grid(forecaster, meta, truth)
    campaign = _campaign(
        cfg,
        forecaster,
        truth,
        {
            "checkpoint_sha256": checkpoint_sha256,
            "initial_conditions_fingerprint": store_fingerprint(store),
            "perturbation": cfg.perturbation.model_dump(mode="json"),
            "model_error": cfg.model_error.model_dump(mode="json"),
            "precision": f"{device.type}-{'bfloat16-autocast' if forecaster.autocast else 'float32'}",
        },
    )
    lineage = {
        "model": model if model.startswith(MODEL_URI_SCHEMES) else str(Path(model).resolve()),
        "checkpoint_sha256": checkpoint_sha256,
        "training_store_fingerprint": str(meta.extra.get("store_fingerprint", "unknown")),
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
        "train_run_id": str(meta.extra.get("train_run_id", "")),
        "forecast_run_id": tracker.run_id or "",
        **registered,
        **calibrated,
    }
    if registered:
        tracker.set_tags(registered)
    recorded = {
        **lineage,
        "model": model if model.startswith(MODEL_URI_SCHEMES) else Path(model),
        "initial_conditions": store,
    }
    log_store_input(tracker, store, campaign.identity["initial_conditions_fingerprint"], "initial_conditions")
    tracker.log_params(
        workdir_relative(
            {
                **_flatten(cfg.model_dump(mode="json")),
                **recorded,
                "world_size": launch.world_size,
                "campaign_fingerprint": campaign.fingerprint(),
            },
            workdir or store.parent,
        )
    )
    if stream is not None and launch.world_size > 1:
        raise StageInputError(
            f"forecast.stream_scores needs every member of an init time in one process, but "
            f"{launch.world_size} processes share this campaign; run one process, or score the "
            "archive afterwards with `fourcast score`"
        )
    with main_first():  # rank 0 creates the archive, so its lineage names rank 0's run; the others join it
        out = CampaignArchive(
            archive, campaign, truth[LAT].values, truth[LON].values, lineage, overwrite=overwrite
        )
    scorer = _streaming_scorer(stream, out, truth, campaign)
    coords = {CHANNEL: truth[CHANNEL].values, LAT: truth[LAT].values, LON: truth[LON].values}
    result = run_campaign(
        forecaster,
        lambda t: torch.as_tensor(truth[DATA].sel({TIME: t}).values),
        coords,
        campaign,
        out,
        _perturbation(cfg, forecaster),
        rank=launch.rank,
        world_size=launch.world_size,
        sinks=() if scorer is None else (scorer,),
        device=device,
        progress=launch.rank == 0,
        wait_timeout=cfg.wait_timeout_s,
        model_error=build_model_error(cfg.model_error, forecaster.step_size),
    )
    if scorer is not None:
        record_scorecard(
            tracker, scorer.scorecard, stream.out_dir, artifact_path="streamed", prefix="streamed"
        )
    attrs = open_archive(archive).attrs
    tracker.log_params({"start_time": attrs["start_time"], "end_time": attrs["end_time"]})
    tracker.log_metrics(
        {
            "forecast/member_steps_per_second": result.member_steps_per_second,
            "forecast/work_items_computed": result.items_computed,
        }
    )
    if launch.rank == 0:
        _log_forecast_map(
            tracker, archive, store, campaign.init_times[0], min(campaign.n_steps, 4) * campaign.step
        )
    return archive


def _on_store_grid(forecaster: Forecaster, meta: CheckpointMeta, truth: xr.Dataset) -> Forecaster:
    """The forecaster on the store's grid: as it is, or moved there without retraining (SFNO only).

    Raises
    ------
    CheckpointError
        If the channels differ; :class:`~fourcast.errors.ResolutionTransferError` if the grid
        differs and the model cannot move (AFNO), naming why.
    """
    lat, lon = truth[LAT].values, truth[LON].values
    try:
        meta.check_matches(list(truth[CHANNEL].values), lat, lon)
    except CheckpointError:
        if list(meta.channels) != [str(c) for c in truth[CHANNEL].values]:
            raise
        log.warning(
            "the model was trained on a %dx%d grid; forecasting zero-shot on the store's %dx%d grid",
            len(meta.lat),
            len(meta.lon),
            lat.size,
            lon.size,
        )
        return forecaster.on_grid(lat, lon)
    return forecaster


def _check_archive_path(archive: Path, protected: Mapping[str, Path | None]) -> None:
    """Refuse an archive path that is, holds or lies inside one of the ``protected`` inputs (links followed or
    not)."""
    for name, path in protected.items():
        if not path:
            continue
        for target, kept in (
            (Path(os.path.abspath(archive)), Path(os.path.abspath(path))),
            (Path(archive).resolve(), Path(path).resolve()),
        ):
            if target == kept or kept in target.parents or target in kept.parents:
                relation = "is" if target == kept else "lies inside" if kept in target.parents else "holds"
                raise StageInputError(
                    f"the archive path {archive} {relation} the {name} {path}; the forecast would "
                    "replace it: choose another archive path"
                )


def _streaming_scorer(
    stream: ScoreStream | None, archive: CampaignArchive, truth: xr.Dataset, campaign: Campaign
) -> StreamingScorer | None:
    """A scorer fed every member the campaign produces, or ``None`` (no stream, or a resumed campaign)."""
    if stream is None:
        return None
    if archive.complete or len(archive.missing()) < len(campaign.work_items()):
        log.warning(
            "forecast.stream_scores: the archive at %s already holds work items of this campaign, which are "
            "not produced again, so nothing is streamed; score the archive with `fourcast score`",
            archive.path,
        )
        return None
    return StreamingScorer(
        truth[DATA],
        open_climatology(stream.climatology),
        stream.variables or list(campaign.variables),
        campaign.n_members,
        stream.options,
    )


def _campaign(cfg: ForecastConfig, forecaster: Forecaster, truth, identity: dict) -> Campaign:
    """The campaign of ``cfg``, after checking its step, lead time and init times against model and store."""
    step = forecaster.step_size
    if cfg.step_hours is not None and np.timedelta64(cfg.step_hours, "h") != step:
        raise StageInputError(f"forecast.step_hours {cfg.step_hours} differs from the model's step {step}")
    if np.timedelta64(cfg.lead_hours, "h") % step:
        raise StageInputError(
            f"forecast.lead_hours {cfg.lead_hours} is not a multiple of the model step {step}"
        )
    inits = _init_times(cfg)
    missing = np.setdiff1d(inits, truth[TIME].values)
    if missing.size:
        raise StageInputError(
            f"initial conditions for {missing[:3]} ({missing.size} init times) are not in the "
            f"store, which covers {truth[TIME].values[0]}..{truth[TIME].values[-1]}"
        )
    return Campaign(
        variables=tuple(str(c) for c in forecaster.input_coords[CHANNEL]),
        init_times=inits,
        step=step,
        n_steps=int(np.timedelta64(cfg.lead_hours, "h") // step),
        n_members=cfg.members,
        members_per_batch=cfg.members_per_batch,
        seed=cfg.seed,
        control_member=cfg.control_member,
        identity=identity,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plots():
    """:mod:`pipeline.plots`, or ``None`` (with a warning) when the [plots] extra (matplotlib, cartopy) is
    missing."""
    try:
        from pipeline import plots
    except ImportError as err:
        log.warning("no plots: %s; install them with pip install 'fourcast[plots]'", err)
        return None
    return plots


def _log_forecast_map(
    tracker: Tracker, archive: Path, store: Path, init: np.datetime64, lead: np.timedelta64
) -> None:
    plots = _plots()
    if plots is None:
        return
    forecasts, truth = open_archive(archive), open_store(store)
    variable = str(truth[CHANNEL].values[0])
    mean = forecasts[variable].sel(init_time=init, lead_time=lead).mean("member").values
    fields = {"ensemble mean": mean}
    if np.isin(
        np.datetime64(init + lead, "ns"), truth[TIME].values
    ):  # an operational forecast outruns the truth
        observed = truth[DATA].sel({TIME: init + lead, CHANNEL: variable}).values
        fields = {"truth": observed, "ensemble mean": mean, "error": mean - observed}
    hours = int(lead / np.timedelta64(1, "h"))
    path = archive.parent / f"map_{variable}_{hours}h.png"
    plots.forecast_map(
        path,
        truth[LAT].values,
        truth[LON].values,
        fields,
        f"{variable} at +{hours} h from {str(init)[:13]}",
        get_variable(variable).units,
    )
    tracker.log_artifact(path, "plots")


def score(
    cfg: ScoreConfig,
    archive: Path,
    store: Path,
    climatology: Path,
    out_dir: Path,
    tracker: Tracker,
    *,
    tracking_uri: str | None = None,
    forecast_run_id: str | None = None,
    train_run_id: str | None = None,
    workdir: Path | None = None,
) -> list[dict]:
    """Scorecard of the archive and the persistence/climatology baselines against the store's truth.

    Writes ``scorecard.nc``/``scorecard.csv`` and the plots under ``out_dir`` and logs them to
    ``tracker`` with every global score per lead time (step = lead hours). The score run is
    tagged with the forecast and training run ids — given, or read from the archive's lineage
    (``forecast_run_id``, ``train_run_id``) — and with the archive's :func:`campaign_key`. With
    ``tracking_uri``, the headline scores (:func:`headline_scores` at ``cfg.lead_hours``, named
    by the campaign key) are logged on the training run too, which is tagged
    ``score_run_<campaign key>`` with this run's id. A lineage run the store does not hold (the
    model was trained against another store) is a warning, recorded in the tag
    ``missing_lineage_runs``, not a failure. Paths are recorded relative to ``workdir``
    (default: the store's folder).

    Returns
    -------
    list of dict
        The global scores as records (:func:`ensembles.scorecard.scorecard_records`).
    """
    (forecasts, completed), truth = open_for_scoring(archive, cfg.partial), open_store(store)
    lead_times = _scored_leads(cfg, forecasts, archive)
    options = score_options(cfg) if completed is None else replace(score_options(cfg), recorded_complete=True)
    if completed is not None:
        log.warning("%s", completed.describe())
    run_ids = {
        "forecast_run_id": forecast_run_id or str(forecasts.attrs.get("forecast_run_id") or ""),
        "train_run_id": train_run_id or str(forecasts.attrs.get("train_run_id") or ""),
    }
    campaign = campaign_key(forecasts)
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
    missing = _missing_lineage_runs(tracking_uri, run_ids) if tracking_uri else []
    if missing:
        tracker.set_tags({"missing_lineage_runs": ", ".join(missing)})
    tracker.log_params(
        workdir_relative(
            {
                **_flatten(cfg.model_dump(mode="json")),
                "archive": archive,
                "store": store,
                "climatology": climatology,
            },
            workdir or store.parent,
        )
    )
    clim = open_climatology(climatology)
    scorecard = score_archive(
        forecasts,
        truth[DATA],
        clim,
        options,
        variables=cfg.variables,
        lead_times=lead_times,
        time_mean=statistics_time_mean(truth),
    )
    left_out = {
        "forecasts_skipped_for_nan": int(scorecard["n_skipped"].sum()),
        "forecasts_unwritten": int(scorecard["n_unwritten"].sum()),
        **({"init_times_left_out_incomplete": int(completed.left_out.size)} if completed else {}),
    }
    tracker.log_metrics({f"score/{key}": value for key, value in left_out.items()})
    if any(left_out.values()):
        log.warning(
            "scores leave out %s (variable x init x lead); see n_skipped / n_unwritten in the scorecard",
            left_out,
        )
    records = record_scorecard(tracker, scorecard, out_dir)
    plots = _plots() if cfg.plots else None
    if plots is not None:
        subtitle = plot_subtitle(forecasts, truth)
        figures = plots.scorecard_plots(
            out_dir / "plots", scorecard, rank_lead_hours=_rank_leads(cfg, scorecard), subtitle=subtitle
        )
        figures += _score_maps(cfg, forecasts, truth[DATA], clim, out_dir / "plots", plots, subtitle)
        for figure in figures:
            tracker.log_artifact(figure, "plots")
            if figure.with_suffix(".pdf").is_file():
                tracker.log_artifact(figure.with_suffix(".pdf"), "plots/pdf")
    if tracking_uri and run_ids["train_run_id"] and run_ids["train_run_id"] not in missing:
        train = attach_run(tracking_uri, run_ids["train_run_id"])
        train.log_metrics(headline_scores(records, cfg.lead_hours, campaign))
        if tracker.run_id:
            train.set_tags({f"score_run_{campaign}": tracker.run_id})
    return records


def statistics_time_mean(truth: xr.Dataset) -> xr.DataArray | None:
    """The per-point time mean of the store's statistics period (``stats_start..stats_end``), or ``None``
    without one.

    The ``time_mean`` baseline: for a flow without seasons it beats the day-of-year × hour
    climatology, which is estimated from one sample per day and hour.
    """
    start, end = truth.attrs.get("stats_start"), truth.attrs.get("stats_end")
    if not start or not end:
        log.warning("the store records no statistics period; the time-mean baseline is left out")
        return None
    return time_mean_field(truth[DATA], np.datetime64(start), np.datetime64(end))


def _scored_leads(cfg: ScoreConfig, forecasts: xr.Dataset, archive: Path) -> np.ndarray:
    """The archive's lead times up to ``cfg.max_lead_hours``, after checking it holds every one of
    ``cfg.lead_hours``.

    Raises
    ------
    StageInputError
        If a headline lead time (``score.lead_hours``) is not in the archive.
    """
    held = forecasts["lead_time"].values.astype("timedelta64[ns]")
    hours = [int(h) for h in held / np.timedelta64(1, "h")]
    missing = [h for h in cfg.lead_hours if h not in hours]
    if missing:
        raise StageInputError(
            f"score.lead_hours {missing} are not lead times of the archive {archive}, which holds {hours} h"
        )
    if cfg.max_lead_hours is None:
        return held
    return held[held <= np.timedelta64(cfg.max_lead_hours, "h")]


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


def _missing_lineage_runs(tracking_uri: str, run_ids: Mapping[str, str]) -> list[str]:
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


def score_run_name(campaign: str, forecasts: xr.Dataset) -> str:
    """``score 1a2b3c4d: 42 inits × 8 members``: the campaign key and its size."""
    return (
        f"score {campaign}: {forecasts.sizes['init_time']} inits × {forecasts.sizes.get('member', 1)} members"
    )


def record_scorecard(
    tracker: Tracker,
    scorecard: xr.Dataset,
    out_dir: Path,
    artifact_path: str = "scores",
    prefix: str = "score",
) -> list[dict]:
    """Write the scorecard under ``out_dir``, log it as artifacts and its global scores.

    The files go to the run's ``artifact_path``; metric names are
    :func:`~pipeline.tracking.score_metric_name` (``score/z500/rmse_24h``; a baseline's metric
    is prefixed by the baseline: ``score/z500/persistence_rmse_24h``), with ``prefix`` in place
    of ``score`` (``streamed/z500/rmse_24h`` for scores streamed during the forecast).

    Returns
    -------
    list of dict
        The global scores as records (:func:`ensembles.scorecard.scorecard_records`).
    """
    for path in write_scorecard(scorecard, out_dir):
        tracker.log_artifact(path, artifact_path)
    records = scorecard_records(scorecard, GLOBAL.name)
    names = {id(r): score_metric_name(r["variable"], _system_metric(r), r["lead_hours"]) for r in records}
    tracker.log_metrics({prefix + names[id(r)].removeprefix("score"): r["value"] for r in records})
    return records


def _system_metric(record: dict) -> str:
    """A record's metric as named in MLflow: ``rmse`` for fourcast, ``persistence_rmse`` for a baseline."""
    return record["metric"] if record["system"] == "fourcast" else f"{record['system']}_{record['metric']}"


def score_options(cfg: ScoreConfig) -> ScoreOptions:
    """Regions, NaN policy and partial-archive choice of ``cfg`` (shared by batch and streaming scoring)."""
    return ScoreOptions(regions=score_regions(cfg), nan_policy=cfg.nan_policy, allow_partial=cfg.partial)


def score_regions(cfg: ScoreConfig) -> tuple[Region, ...]:
    """The preset regions named in ``cfg.regions`` followed by the boxes of ``cfg.boxes``."""
    boxes = [Region.box(b.lat[0], b.lat[1], b.lon[0], b.lon[1], name=b.name) for b in cfg.boxes]
    return tuple(get_region(name) for name in cfg.regions) + tuple(boxes)


def _rank_leads(cfg: ScoreConfig, scorecard) -> list[float] | None:
    """``cfg.lead_hours`` the scorecard holds, or ``None`` (let the plot choose) if it holds none."""
    held = [h for h in cfg.lead_hours if h in scorecard["lead_hours"].values]
    return held or None


#: g (m s⁻²): geopotential / (10 g) is geopotential height in decametres.
GRAVITY = 9.80665


def plot_subtitle(forecasts: xr.Dataset, truth: xr.Dataset) -> str:
    """``synthetic data (shallow-water stand-in for ERA5) · 42 inits 2001-01-01..2001-03-25 · 8 members``."""
    sources = [str(s) for s in truth.attrs.get("sources", [])]
    data = (
        "synthetic data (shallow-water stand-in for ERA5)"
        if sources and all("synthetic" in s for s in sources)
        else "ERA5"
    )
    inits = forecasts["init_time"].values
    return (
        f"{data} · {inits.size} inits {_day(inits.min())}..{_day(inits.max())} · "
        f"{forecasts.sizes.get('member', 1)} members"
    )


def _in_map_units(variable: str, fields: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str, str]:
    """Fields, units and name as maps show them: geopotential as geopotential height in dam, others as
    stored."""
    units = get_variable(variable).units
    if get_variable(variable).cds_name == "geopotential":
        return (
            {name: value / (10 * GRAVITY) for name, value in fields.items()},
            "dam",
            f"{variable} geopotential height",
        )
    return fields, units, variable


def _score_maps(
    cfg: ScoreConfig, forecasts, truth, climatology, out_dir: Path, plots, subtitle: str = ""
) -> list[Path]:
    """Maps of truth, ensemble mean, error and spread per variable at ``cfg.map_init`` +
    ``cfg.map_lead_hours``.

    Defaults: the first init time, and the first of ``cfg.lead_hours`` the archive holds (else
    its last lead).
    """
    inits, leads = forecasts["init_time"].values, forecasts["lead_time"].values
    init = _datetime64(cfg.map_init) if cfg.map_init is not None else inits[0]
    wanted = [
        np.timedelta64(h, "h")
        for h in ([cfg.map_lead_hours] if cfg.map_lead_hours is not None else cfg.lead_hours)
    ]
    held = [lead for lead in wanted if lead in leads]
    if init not in inits or (cfg.map_lead_hours is not None and not held):
        raise StageInputError(
            f"score.map_init {init} / map_lead_hours {cfg.map_lead_hours} are not in the archive, "
            f"which holds init times {inits[0]}..{inits[-1]} and leads "
            f"{(leads / np.timedelta64(1, 'h')).tolist()} h"
        )
    lead = held[0] if held else leads[-1]
    hours = int(lead / np.timedelta64(1, "h"))
    paths = []
    for variable in cfg.variables or [str(v) for v in forecasts.data_vars]:
        members = forecasts[variable].sel(init_time=init, lead_time=lead).astype(np.float64).load()
        observed = truth.sel({TIME: init + lead, CHANNEL: variable}).values.astype(np.float64)
        mean = members.mean("member").values
        fields = {"truth": observed, "ensemble mean": mean, "error": mean - observed}
        if members.sizes["member"] >= 2:
            fields["spread"] = members.std("member", ddof=1).values
        path = out_dir / f"map_{variable}_{hours}h.png"
        fields, units, name = _in_map_units(variable, fields)
        paths.append(
            plots.forecast_map(
                path,
                forecasts[LAT].values,
                forecasts[LON].values,
                fields,
                f"{name} at +{hours} h from {str(init)[:13]}" + (f"\n{subtitle}" if subtitle else ""),
                units,
                contours=True,
            )
        )
    return paths


def export_wb2(
    archive: Path, store: Path, climatology: Path, out_dir: Path, zarr_format: int = 3
) -> dict[str, Path]:
    """The archive, the truth at its valid times and the climatology in WeatherBench 2's layout, under
    ``out_dir``.

    Writes ``forecast.zarr``, ``truth.zarr`` (the store's fields from the first init time to
    the last valid time) and ``climatology.zarr``, each atomically, with consolidated metadata,
    in Zarr ``zarr_format`` (3, or 2 for tools that read only v2). Returns their paths by role.
    """
    forecasts = open_archive(archive)
    inits, leads = forecasts["init_time"].values, forecasts["lead_time"].values
    truth = open_store(store)[DATA].sel({TIME: slice(inits.min(), inits.max() + leads.max())})
    written = {
        "forecast": write_wb2(to_weatherbench2(forecasts), out_dir / "forecast.zarr", zarr_format),
        "truth": write_wb2(truth_to_weatherbench2(truth), out_dir / "truth.zarr", zarr_format),
        "climatology": write_wb2(
            climatology_to_weatherbench2(open_climatology(climatology)),
            out_dir / "climatology.zarr",
            zarr_format,
        ),
    }
    return {role: Path(path) for role, path in written.items()}


def publish(
    path: Path,
    records: list[dict],
    lead_hours: list[int],
    store: Path,
    archive: Path,
    tracking_uri: str,
    run_ids: dict[str, str],
) -> Path:
    """Write ``summary.json`` (headline scores at ``lead_hours`` and where everything lives) atomically."""
    summary = {
        "scores": [r for r in headline_records(records) if r["lead_hours"] in lead_hours],
        "store": str(store.resolve()),
        "archive": str(archive.resolve()),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_ids": run_ids,
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return path


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


def headline_scores(records: list[dict], lead_hours: list[int], campaign: str) -> dict[str, float]:
    """fourcast's headline scores at ``lead_hours`` as metric names for the training run.

    The names carry the :func:`campaign_key` (``score/<campaign>/z500/rmse_24h``,
    :func:`~pipeline.tracking.score_metric_name`): a model verified on several campaigns keeps
    every campaign's scores.
    """
    return {
        score_metric_name(r["variable"], r["metric"], r["lead_hours"], campaign): r["value"]
        for r in headline_records(records)
        if r["system"] == "fourcast" and r["lead_hours"] in lead_hours
    }


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    """Every stage in order, each in its own MLflow run where it has something to record.

    The headline scores are also logged back onto the training run of the model (named by the
    campaign, :func:`headline_scores`), so the run that produced a model shows how its forecasts
    verified.
    """
    paths = Paths(cfg.workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    uri = cfg.tracking.tracking_uri or default_tracking_uri(paths.workdir)
    with _stage({"synthetic": "synthesize", "cds": "download"}.get(cfg.ingest.source, "find files")):
        files = source_files(cfg, paths)
    with _stage("ingest"):
        ingest(cfg.ingest, cfg.cluster, files, paths.store, paths.climatology)
    return run_tracked_stages(cfg, paths, uri)


def run_tracked_stages(cfg: RunConfig, paths: Paths, uri: str) -> PipelineResult:
    """Train, forecast, score, export and publish on an ingested store: one parent MLflow run, a nested run
    per stage.

    The parent (:func:`pipeline_run_name`) gets the headline scores, the summary and the WB2
    export's paths; each stage run is named by what it did (:func:`train_run_name`,
    :func:`forecast_run_name`, :func:`score_run_name`).
    """
    run_ids: dict[str, str] = {}
    experiment = dict(tracking_uri=uri, experiment=cfg.tracking.experiment, artifact_root=paths.artifacts)
    with mlflow_run(run_name=pipeline_run_name(cfg), tags={"stage": "pipeline"}, **experiment) as parent:
        run_ids["pipeline"] = parent.run_id
        parent.log_params(
            workdir_relative(
                {
                    "workdir": paths.workdir,
                    "source": cfg.ingest.source,
                    "variables": ",".join(cfg.ingest.variables),
                },
                paths.workdir,
            )
        )
        nested = dict(experiment, parent_run_id=parent.run_id)
        with (
            _stage("train"),
            mlflow_run(run_name=train_run_name(cfg.train), tags={"stage": "train"}, **nested) as tracker,
        ):
            train_model(
                cfg.train, paths.store, paths.checkpoint, tracker, climatology=paths.climatology, restart=True
            )  # a pipeline run starts over: an earlier run's checkpoints are moved aside
            run_ids["train"] = tracker.run_id
        if cfg.calibrate.enabled:
            with (
                _stage("calibrate"),
                mlflow_run(
                    run_name="calibrate",
                    tags={"stage": "calibrate", "train_run_id": run_ids["train"]},
                    **nested,
                ) as tracker,
            ):
                calibrate_stage(
                    cfg,
                    paths.checkpoint,
                    paths.store,
                    paths.calibration,
                    tracker,
                    tracking_uri=uri,
                    train_run_id=run_ids["train"],
                )
                run_ids["calibrate"] = tracker.run_id
        with (
            _stage("forecast"),
            mlflow_run(
                run_name=forecast_run_name(cfg.forecast),
                tags={"stage": "forecast", "train_run_id": run_ids["train"]},
                **nested,
            ) as tracker,
        ):
            forecast(
                cfg.forecast,
                paths.checkpoint,
                paths.store,
                paths.archive,
                tracker,
                overwrite=True,
                tracking_uri=uri,
                stream=score_stream(cfg, paths),
                climatology=paths.climatology,
                workdir=paths.workdir,
                calibration=paths.calibration if cfg.calibrate.enabled else None,
            )
            run_ids["forecast"] = tracker.run_id
        with (
            _stage("score"),
            mlflow_run(
                run_name="score",
                tags={
                    "stage": "score",
                    "forecast_run_id": run_ids["forecast"],
                    "train_run_id": run_ids["train"],
                },
                **nested,
            ) as tracker,
        ):
            records = score(
                cfg.score,
                paths.archive,
                paths.store,
                paths.climatology,
                paths.scores,
                tracker,
                tracking_uri=uri,
                forecast_run_id=run_ids["forecast"],
                train_run_id=run_ids["train"],
                workdir=paths.workdir,
            )
            run_ids["score"] = tracker.run_id
        parent.log_metrics(
            headline_scores(records, cfg.score.lead_hours, campaign_key(open_archive(paths.archive)))
        )
        with _stage("export wb2"):
            exported = export_wb2(paths.archive, paths.store, paths.climatology, paths.wb2)
        parent.set_tags(
            {f"wb2_{role}": os.path.relpath(path, paths.workdir) for role, path in exported.items()}
        )
        summary = publish(
            paths.summary, records, cfg.score.lead_hours, paths.store, paths.archive, uri, run_ids
        )
        parent.log_artifact(summary)
    return PipelineResult(summary, records, uri, run_ids)


def pipeline_run_name(cfg: RunConfig) -> str:
    """``pipeline afno-tiny synthetic 2000-01-01..2000-12-31``: the parent run of one pipeline invocation."""
    period = f"{_day(cfg.train.train.start)}..{_day(cfg.train.validation.end)}"
    return f"pipeline {cfg.train.model} {cfg.ingest.source} {period}"
