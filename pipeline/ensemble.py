"""The ensemble a forecast config describes: perturbations and model error by name, and running its members.

:data:`PERTURBATIONS` maps each ``forecast.perturbation.kind`` to a builder and
:data:`MODEL_ERRORS` each ``forecast.model_error.kind``, as
:data:`fourcast.models.registry.PRESETS` maps model presets: a new kind is one entry (and its
name in :mod:`pipeline.config`), not another branch. :func:`run_members` runs this process's
share of a campaign with them (:func:`ensembles.runner.run_campaign`) and
:func:`record_forecast_run` logs what the run did.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ensembles.archive import open_archive
from ensembles.campaign import Campaign, CampaignArchive
from ensembles.model_error import StochasticTendencyPerturbation
from ensembles.perturbations import (
    BalancedRandomFieldPerturbation,
    BredVectorPerturbation,
    GaussianPerturbation,
    GaussianRandomFieldPerturbation,
    NoPerturbation,
)
from ensembles.protocols import ModelError, Perturbation
from ensembles.runner import CampaignRun, run_campaign
from ensembles.streaming import StreamingScorer
from fourcast.distributed import LaunchEnv
from fourcast.forecaster import Forecaster
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.schema import DATA
from pipeline.config import ForecastConfig, ModelErrorConfig, PerturbationConfig
from pipeline.tracking import Tracker

#: ``(settings, forecaster, size, channels) -> Perturbation``: ``size`` is each channel's std times its
#: amplitude.
PerturbationBuilder = Callable[[PerturbationConfig, Forecaster, np.ndarray, list[str]], Perturbation]

#: The initial perturbation of each ``forecast.perturbation.kind``; each is built with amplitude 1 (``size``
#: scales).
PERTURBATIONS: dict[str, PerturbationBuilder] = {
    "none": lambda settings, forecaster, size, channels: NoPerturbation(),
    "gaussian": lambda settings, forecaster, size, channels: GaussianPerturbation(
        size, 1.0, channels=channels
    ),
    "grf": lambda settings, forecaster, size, channels: GaussianRandomFieldPerturbation(
        size, 1.0, alpha=settings.alpha or 2.0, tau=settings.tau, channels=channels
    ),
    "balanced": lambda settings, forecaster, size, channels: BalancedRandomFieldPerturbation(
        size, 1.0, length_scale_km=settings.length_scale_km, alpha=settings.alpha or 3.0, channels=channels
    ),
    "bred": lambda settings, forecaster, size, channels: BredVectorPerturbation(
        forecaster, size, 1.0, cycles=settings.cycles, channels=channels
    ),
}


def build_perturbation(settings: PerturbationConfig, forecaster: Forecaster) -> Perturbation:
    """The initial perturbation ``settings`` describe for ``forecaster``'s channels (physical units).

    Each channel's size is its std times its amplitude (``settings.amplitudes`` where given,
    else ``settings.amplitude``); the perturbation's own amplitude is then 1.
    """
    channels = [str(c) for c in forecaster.input_coords[CHANNEL]]
    amplitudes = np.array([(settings.amplitudes or {}).get(c, settings.amplitude) for c in channels])
    size = forecaster.normaliser.std.flatten().cpu().numpy().astype(np.float64) * amplitudes
    return PERTURBATIONS[settings.kind](settings, forecaster, size, channels)


def _sppt(settings: ModelErrorConfig, step: np.timedelta64) -> ModelError:
    return StochasticTendencyPerturbation(
        settings.amplitude,
        amplitudes=settings.amplitudes,
        step_hours=float(step / np.timedelta64(1, "h")),
        length_scale_km=settings.length_scale_km,
        decorrelation_hours=settings.decorrelation_hours,
    )


#: The stochastic model error of each ``forecast.model_error.kind`` (``None``: none), for a model of ``step``.
MODEL_ERRORS: dict[str, Callable[[ModelErrorConfig, np.timedelta64], ModelError | None]] = {
    "none": lambda settings, step: None,
    "sppt": _sppt,
}


def build_model_error(settings: ModelErrorConfig, step: np.timedelta64) -> ModelError | None:
    """The stochastic model error ``settings`` describe (``None`` for ``none`` or a zero amplitude)."""
    if not any([settings.amplitude, *(settings.amplitudes or {}).values()]):
        return None
    return MODEL_ERRORS[settings.kind](settings, step)


def run_members(
    cfg: ForecastConfig,
    forecaster: Forecaster,
    truth: xr.Dataset,
    campaign: Campaign,
    archive: CampaignArchive,
    launch: LaunchEnv,
    device: torch.device,
    scorer: StreamingScorer | None,
) -> CampaignRun:
    """This process's share of ``campaign`` from the store's states (``truth``) into ``archive``.

    The members are perturbed by ``cfg.perturbation`` and, each step, by ``cfg.model_error``;
    the work items are split over ``launch``'s processes, rank 0 shows the progress, and
    ``scorer`` (if any) receives every member produced.
    """
    coords = {CHANNEL: truth[CHANNEL].values, LAT: truth[LAT].values, LON: truth[LON].values}
    return run_campaign(
        forecaster,
        lambda t: torch.as_tensor(truth[DATA].sel({TIME: t}).values),
        coords,
        campaign,
        archive,
        build_perturbation(cfg.perturbation, forecaster),
        rank=launch.rank,
        world_size=launch.world_size,
        sinks=() if scorer is None else (scorer,),
        device=device,
        progress=launch.rank == 0,
        wait_timeout=cfg.wait_timeout_s,
        model_error=build_model_error(cfg.model_error, forecaster.step_size),
    )


def record_forecast_run(tracker: Tracker, archive: Path, result: CampaignRun) -> None:
    """The archive's start and end times as params, the throughput and work items computed as metrics."""
    attrs = open_archive(archive).attrs
    tracker.log_params({"start_time": attrs["start_time"], "end_time": attrs["end_time"]})
    tracker.log_metrics(
        {
            "forecast/member_steps_per_second": result.member_steps_per_second,
            "forecast/work_items_computed": result.items_computed,
        }
    )
