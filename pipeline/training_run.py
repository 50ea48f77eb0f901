"""One training run on one rank: the model, its data and settings, progress and metrics, the saved model.

:func:`train_on_rank` is what every rank of the train stage runs
(:func:`pipeline.stages.train_model` joins the process group first). Metrics reach the tracker
in batches (:class:`MetricBuffer`), the progress bar shows loss, learning rate and throughput
(:class:`TrainingReport`), and rank 0 saves the best checkpoint and logs it as an MLflow model
(:func:`log_and_register_model`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
from torch import nn

from ensembles.regions import global_field_scores
from fourcast.checkpoint import CheckpointMeta, save_checkpoint
from fourcast.data import StoreWindows
from fourcast.distributed import DistContext
from fourcast.models.registry import build_model, count_parameters
from fourcast.training import (
    TRAIN_LOSS,
    TRAIN_LR,
    VAL_SCORE,
    CheckpointPlan,
    TrainResult,
    TrainSettings,
    seeded_initialisation,
    train,
)
from ingest.climatology import climatology_at
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.grid import check_coords
from ingest.progress import progress
from ingest.schema import open_climatology, open_store
from pipeline.config import TrainConfig
from pipeline.errors import StageGridError
from pipeline.lineage import day, model_metadata, record_training_inputs, store_fingerprint
from pipeline.settings import train_settings, validation_leads
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

#: Artifact path of the MLflow model in the training run.
MODEL_ARTIFACT = "model"

#: What training's validation scores, globally, through the scorecard's statistic units.
VALIDATION_METRICS = ("rmse", "acc")


def training_state_path(checkpoint: Path) -> Path:
    """Where training keeps its resumable state (``last.pt`` beside the model checkpoint)."""
    return checkpoint.parent / "last.pt"


class MetricBuffer:
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
        """Send the pending metrics, if any."""
        if self.pending:
            self.tracker.log_metric_history(self.pending)
            self.pending = []


class TrainingReport:
    """Training's ``report``: metrics to the tracker (batched), step, loss, lr and samples/s to the progress,
    and
    a log line per validation with each variable's RMSE (and persistence's) per lead time."""

    def __init__(self, buffer: MetricBuffer, bar, batch_size: int) -> None:
        self.buffer, self.bar, self.batch_size = buffer, bar, batch_size
        self.started = time.perf_counter()
        self.first_step: int | None = None

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
            log.info("validation at step %d: %s", step, validation_summary(metrics))


def validation_summary(metrics: Mapping[str, float]) -> str:
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


def normalised_climatology(path: Path | None, windows: StoreWindows):
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


def checkpoint_meta(
    cfg: TrainConfig, validation: StoreWindows, fingerprint: str, run_id: str | None
) -> CheckpointMeta:
    """What the checkpoint records besides the weights: preset, channels, grid, step, statistics, data and
    run."""
    return CheckpointMeta(
        preset=cfg.model,
        channels=validation.channels,
        lat=validation.lat.tolist(),
        lon=validation.lon.tolist(),
        step_hours=int(validation.step / np.timedelta64(1, "h")),
        mean=validation.mean.tolist(),
        std=validation.std.tolist(),
        extra={
            "store_fingerprint": fingerprint,
            "train_start": str(cfg.train.start),
            "train_end": str(cfg.train.end),
            "train_run_id": run_id or "",
        },
    )


def train_on_rank(
    cfg: TrainConfig,
    store: Path,
    checkpoint: Path,
    tracker: Tracker,
    resume: Path | None,
    climatology: Path | None,
    ctx: DistContext,
    restart: bool = False,
) -> Path:
    """Train ``cfg.model`` on ``store`` on this rank; rank 0 saves the best state to ``checkpoint`` and logs
    it.

    The run's inputs, config and environment go to ``tracker`` first
    (:func:`~pipeline.lineage.record_training_inputs`); see :func:`pipeline.stages.train_model`.
    """
    leads_steps = validation_leads(cfg, open_store(store).attrs["step_hours"])
    validation = StoreWindows(store, cfg.validation.start, cfg.validation.end, n_ahead=max(leads_steps))
    with seeded_initialisation(cfg.seed):  # the same initial weights in every run of this config
        model = build_model(cfg.model, (validation.lat.size, validation.lon.size), len(validation.channels))
    fingerprint = store_fingerprint(store)
    record_training_inputs(tracker, cfg, store, fingerprint, count_parameters(model), ctx, resume)
    settings = train_settings(cfg, leads_steps)
    meta = checkpoint_meta(cfg, validation, fingerprint, tracker.run_id)
    plan = CheckpointPlan(
        checkpoint.parent,
        meta,
        cfg.checkpoint_every,
        config=cfg.model_dump(mode="json"),
        resume_from=resume,
        lineage={"run_id": tracker.run_id or ""},
        restart=restart,
    )
    result = _train(cfg, model, store, validation, settings, plan, tracker, ctx, climatology)
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
    if ctx.is_main:
        _save_best(cfg, model, result, meta, checkpoint, tracker)
    return checkpoint


def _train(
    cfg: TrainConfig,
    model: nn.Module,
    store: Path,
    validation: StoreWindows,
    settings: TrainSettings,
    plan: CheckpointPlan,
    tracker: Tracker,
    ctx: DistContext,
    climatology: Path | None,
) -> TrainResult:
    """The training loop under a progress bar (rank 0's), its metrics to ``tracker`` in batches."""
    buffer = MetricBuffer(tracker, cfg.checkpoint_every)
    total = sum(p.optimizer_steps for p in cfg.phases)
    with progress(
        total,
        f"training {cfg.model} on {validation.lat.size}x{validation.lon.size}",
        "steps",
        enabled=ctx.is_main,
    ) as bar:
        try:
            return train(
                model,
                lambda n: StoreWindows(
                    store, cfg.train.start, cfg.train.end, n_ahead=n, cache=cfg.loader.cache
                ),
                validation,
                settings,
                TrainingReport(buffer, bar, cfg.batch_size),
                ctx.device,
                ctx=ctx,
                checkpoints=plan,
                climatology=normalised_climatology(climatology, validation),
                scores=global_field_scores(VALIDATION_METRICS, validation.lat, validation.lon),
            )
        finally:
            buffer.flush()


def _save_best(
    cfg: TrainConfig,
    model: nn.Module,
    result: TrainResult,
    meta: CheckpointMeta,
    checkpoint: Path,
    tracker: Tracker,
) -> None:
    """Save the best state to ``checkpoint``, log its score and log (and register) it as an MLflow model."""
    model.load_state_dict(result.best_state)
    meta.extra.update(best_step=result.best_step, best_score=result.best_score)
    save_checkpoint(checkpoint, model, meta)
    tracker.log_metrics({"val/best_score": result.best_score, "train/seconds": result.seconds}, result.steps)
    log_and_register_model(cfg, tracker, checkpoint, meta, result.history)


def log_and_register_model(
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
        f"{meta.step_hours} h step; trained {day(cfg.train.start)}..{day(cfg.train.end)} on store "
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
            "best_step": str(meta.extra.get("best_step")),
            **scores,
        },
    )
    if version:
        tracker.set_tags({"registered_model": f"fourcast-{cfg.model}/{version}"})
