"""Scoring glue: which leads are scored, what is recorded on the runs, and scoring while forecasting.

The scores themselves come from :mod:`ensembles.scorecard`; this module reads the score config,
writes and logs the scorecard (:func:`record_scorecard`), says what the scores leave out, and
copies the headline scores onto the model's training run (:func:`report_to_training_run`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import xarray as xr

from ensembles.campaign import Campaign, CampaignArchive
from ensembles.regions import GLOBAL
from ensembles.scorecard import (
    CompletedPart,
    ScoreOptions,
    headline_records,
    scorecard_records,
    time_mean_field,
    write_scorecard,
)
from ensembles.streaming import StreamingScorer
from ingest.schema import DATA, open_climatology
from pipeline.config import RunConfig, ScoreConfig
from pipeline.errors import StageInputError
from pipeline.paths import Paths
from pipeline.settings import score_options
from pipeline.tracking import Tracker, attach_run, score_metric_name

log = logging.getLogger(__name__)


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
        Regions and NaN policy, as batch scoring uses (:func:`pipeline.settings.score_options`).
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


def streaming_scorer(
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
        time_mean=statistics_time_mean(truth),
    )


def scored_leads(cfg: ScoreConfig, forecasts: xr.Dataset, archive: Path) -> np.ndarray:
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


def log_left_out(tracker: Tracker, scorecard: xr.Dataset, completed: CompletedPart | None) -> None:
    """Log (and warn of) the forecasts the scores leave out: skipped for NaN, unwritten, incomplete init
    times.

    ``completed`` is what :func:`~ensembles.scorecard.open_for_scoring` kept of an unfinished
    archive (its left-out init times are counted), ``None`` for a finalised one.
    """
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


def record_streamed_scores(
    tracker: Tracker, scorer: StreamingScorer | None, stream: ScoreStream | None
) -> None:
    """Write and log the scorecard ``scorer`` streamed, as ``streamed`` files and metrics, if there is one.

    The scorer's scorecard is there once the campaign it was fed is done (its archive committed).
    """
    if stream is not None and scorer is not None:
        scorecard = cast(xr.Dataset, scorer.scorecard)
        record_scorecard(tracker, scorecard, stream.out_dir, artifact_path="streamed", prefix="streamed")


def _system_metric(record: dict) -> str:
    """A record's metric as named in MLflow: ``rmse`` for fourcast, ``persistence_rmse`` for a baseline."""
    return record["metric"] if record["system"] == "fourcast" else f"{record['system']}_{record['metric']}"


def headline_scores(records: list[dict], lead_hours: list[int], campaign: str) -> dict[str, float]:
    """fourcast's headline scores at ``lead_hours`` as metric names for the training run.

    The names carry the :func:`~pipeline.lineage.campaign_key` (``score/<campaign>/z500/rmse_24h``,
    :func:`~pipeline.tracking.score_metric_name`): a model verified on several campaigns keeps
    every campaign's scores.
    """
    return {
        score_metric_name(r["variable"], r["metric"], r["lead_hours"], campaign): r["value"]
        for r in headline_records(records)
        if r["system"] == "fourcast" and r["lead_hours"] in lead_hours
    }


def report_to_training_run(
    tracking_uri: str,
    train_run_id: str,
    records: list[dict],
    lead_hours: list[int],
    campaign: str,
    score_run_id: str | None,
) -> None:
    """Log the :func:`headline_scores` on the training run; tag it ``score_run_<campaign>`` with the score
    run."""
    train = attach_run(tracking_uri, train_run_id)
    train.log_metrics(headline_scores(records, lead_hours, campaign))
    if score_run_id:
        train.set_tags({f"score_run_{campaign}": score_run_id})
