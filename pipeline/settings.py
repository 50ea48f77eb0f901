"""Config slices turned into the settings objects of the packages, each built in one place.

The pydantic models of :mod:`pipeline.config` describe a run as the YAML does; the packages take
their own small frozen values (:class:`~ingest.cds.PlanOptions`,
:class:`~fourcast.training.TrainSettings`, :class:`~ensembles.scorecard.ScoreOptions`,
:class:`~ensembles.campaign.Campaign`, …). Each adapter here reads one slice and builds one of
them, checking what only the data or the model can tell (steps, init times).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ensembles.campaign import Campaign
from ensembles.regions import Region, get_region
from ensembles.scorecard import ScoreOptions
from fourcast.forecaster import Forecaster
from fourcast.training import ModeSchedule, Phase, TrainSettings
from ingest.cds import PlanOptions
from ingest.dims import CHANNEL, TIME
from ingest.store import StatsPeriod, StoreLayout
from pipeline.config import CdsConfig, ForecastConfig, IngestConfig, ScoreConfig, TrainConfig
from pipeline.errors import StageInputError


def config_time(value) -> np.datetime64:
    """A config's date or time as ``datetime64[ns]``."""
    return np.datetime64(value, "ns")


def plan_options(cfg: CdsConfig) -> PlanOptions:
    """How the CDS requests of ``cfg`` are cut and what they ask for."""
    return PlanOptions(
        data_format=cfg.data_format,
        download_format=cfg.download_format,
        grid=cfg.grid,
        area=cfg.area,
        max_fields=cfg.max_fields,
    )


def download_settings(cfg: CdsConfig, cache_dir: Path):
    """The CDS client's settings of ``cfg``, caching in ``cfg.cache_dir`` (default ``cache_dir``).

    Needs the CDS client, the ``[ingest]`` extra (:func:`pipeline.sources.download` checks it is installed).
    """
    from ingest.cds_download import DownloadSettings

    return DownloadSettings(
        cache_dir=cfg.cache_dir or cache_dir,
        max_fields=plan_options(cfg).field_limit,
        concurrency=cfg.concurrency,
        retries=cfg.retries,
        backoff_seconds=cfg.backoff_seconds,
        poll_max_seconds=cfg.poll_max_seconds,
    )


def store_layout(cfg: IngestConfig) -> StoreLayout:
    """The training store's sharding and compression."""
    return StoreLayout(shard_steps=cfg.shard_steps, compressor=cfg.compressor)


_STATISTICS_REMEDY = (
    "widen ingest.statistics to at least 2 time steps inside the data, or remove it to take the "
    "default (the data less its last ingest.statistics_leave_out_years years)"
)


def stats_period(cfg: IngestConfig, times: np.ndarray, provenance: dict) -> StatsPeriod:
    """The statistics period: ``cfg.statistics``, else the data's ``times`` less the last leave-out years."""
    if cfg.statistics is None:
        return StatsPeriod.default(times, cfg.statistics_leave_out_years, provenance)
    return StatsPeriod(
        config_time(cfg.statistics.start),
        config_time(cfg.statistics.end),
        provenance,
        remedy=_STATISTICS_REMEDY,
    )


def validation_leads(cfg: TrainConfig, step_hours: int) -> tuple[int, ...]:
    """``cfg.validation_lead_hours`` in steps of the store's ``step_hours``.

    Raises
    ------
    StageInputError
        If a lead is not a multiple of the store step.
    """
    bad = [h for h in cfg.validation_lead_hours if h % step_hours]
    if bad:
        raise StageInputError(
            f"train.validation_lead_hours {bad} are not multiples of the store step {step_hours} h"
        )
    return tuple(h // step_hours for h in cfg.validation_lead_hours)


def train_settings(cfg: TrainConfig, leads_steps: tuple[int, ...]) -> TrainSettings:
    """The training loop's settings of ``cfg``, validating at ``leads_steps`` (:func:`validation_leads`)."""
    return TrainSettings(
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


def init_times(cfg: ForecastConfig) -> np.ndarray:
    """The forecast's init times: ``cfg.init_times``, else every ``cfg.init_every_hours`` over
    ``cfg.inits``."""
    if cfg.init_times:
        return np.array([config_time(t) for t in cfg.init_times])
    start, end = config_time(cfg.inits.start), config_time(cfg.inits.end)
    return np.arange(start, end + np.timedelta64(1, "ns"), np.timedelta64(cfg.init_every_hours, "h"))


def forecast_campaign(
    cfg: ForecastConfig, forecaster: Forecaster, truth: xr.Dataset, identity: dict
) -> Campaign:
    """The campaign of ``cfg``, after checking its step, lead time and init times against model and store.

    Raises
    ------
    StageInputError
        If ``cfg.step_hours`` differs from the model step, the lead time is not a multiple of
        it, or init times are not in the store (``truth``).
    """
    step = forecaster.step_size
    if cfg.step_hours is not None and np.timedelta64(cfg.step_hours, "h") != step:
        raise StageInputError(f"forecast.step_hours {cfg.step_hours} differs from the model's step {step}")
    if np.timedelta64(cfg.lead_hours, "h") % step:
        raise StageInputError(
            f"forecast.lead_hours {cfg.lead_hours} is not a multiple of the model step {step}"
        )
    inits = init_times(cfg)
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


def score_regions(cfg: ScoreConfig) -> tuple[Region, ...]:
    """The preset regions named in ``cfg.regions`` followed by the boxes of ``cfg.boxes``."""
    boxes = [Region.box(b.lat[0], b.lat[1], b.lon[0], b.lon[1], name=b.name) for b in cfg.boxes]
    return tuple(get_region(name) for name in cfg.regions) + tuple(boxes)


def score_options(cfg: ScoreConfig) -> ScoreOptions:
    """Regions, NaN policy and partial-archive choice of ``cfg`` (shared by batch and streaming scoring)."""
    return ScoreOptions(regions=score_regions(cfg), nan_policy=cfg.nan_policy, allow_partial=cfg.partial)
