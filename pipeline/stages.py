"""Stage functions chaining the packages: ingest → train → calibrate → forecast → score → publish.

Each stage takes its own config slice and the paths it reads and writes, and returns what it
produced. :func:`run_pipeline` is the whole diagram of DESIGN.md §1 in one function; the work
of each stage is done by the modules it calls (:mod:`pipeline.sources`,
:mod:`pipeline.training_run`, :mod:`pipeline.model_loading`, :mod:`pipeline.ensemble`,
:mod:`pipeline.scoring`, :mod:`pipeline.figures`, :mod:`pipeline.publish`), and what it records
comes from :mod:`pipeline.lineage`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ensembles.archive import open_archive
from ensembles.campaign import CampaignArchive
from ensembles.scorecard import open_for_scoring, score_archive
from fourcast.distributed import LaunchEnv, main_first, process_group
from ingest.coarsen import coarsen
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.schema import DATA, open_climatology, open_store
from ingest.store import open_sources, write_store
from pipeline.calibration import apply_calibration, calibrate_stage
from pipeline.cluster import check_task_memory, dask_client, shard_task_bytes
from pipeline.config import ClusterConfig, ForecastConfig, IngestConfig, RunConfig, ScoreConfig, TrainConfig
from pipeline.ensemble import record_forecast_run, run_members
from pipeline.figures import log_forecast_map, log_score_plots
from pipeline.lineage import (
    campaign_identity,
    campaign_key,
    code_version,
    forecast_lineage,
    forecast_run_name,
    lineage_run_ids,
    pipeline_run_name,
    record_forecast_inputs,
    record_score_inputs,
    train_run_name,
    workdir_relative,
)
from pipeline.model_loading import forecast_device, forecast_model, on_store_grid
from pipeline.paths import Paths
from pipeline.preflight import check_archive_path, require_one_process_to_stream, require_periods_in_store
from pipeline.publish import export_wb2, publish
from pipeline.scoring import (
    ScoreStream,
    headline_scores,
    log_left_out,
    record_scorecard,
    record_streamed_scores,
    report_to_training_run,
    score_stream,
    scored_leads,
    statistics_time_mean,
    streaming_scorer,
)
from pipeline.settings import forecast_campaign, score_options, stats_period, store_layout
from pipeline.sources import SOURCES, source_files
from pipeline.tracking import NullTracker, Tracker, default_tracking_uri, mlflow_run
from pipeline.training_run import train_on_rank

log = logging.getLogger(__name__)


def ingest(
    cfg: IngestConfig, cluster: ClusterConfig, files: list[Path], store: Path, climatology: Path
) -> Path:
    """ERA5 files → training store and climatology store, with Dask."""
    provenance = {
        "sources": [f.name for f in files],
        "fourcast_version": code_version(),
        "coarsen": cfg.coarsen,
    }
    layout = store_layout(cfg)
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
        period = stats_period(cfg, data[TIME].values, provenance)
        return write_store(data, store, period, layout, climatology_path=climatology, progress=True)


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
    ``resume`` continues exactly from a training state
    (see :func:`pipeline.training_run.training_state_path`); ``climatology`` (the climatology
    store) is the reference of the validation ACC. Without ``resume``, a checkpoint folder
    holding an earlier run is refused unless ``restart`` is given, which moves that run's
    checkpoints aside (:class:`fourcast.training.CheckpointPlan`).

    Raises
    ------
    StageInputError
        Before any work, if the training or validation period reaches outside the store (it
        would be clipped while the run records the dates asked for).
    """
    require_periods_in_store(cfg, store)
    with process_group(cfg.device) as ctx:
        return train_on_rank(
            cfg,
            store,
            checkpoint,
            tracker if ctx.is_main else NullTracker(),
            resume,
            climatology,
            ctx,
            restart,
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
        The tracker records paths relative to it (:func:`pipeline.lineage.workdir_relative`);
        default: the store's folder. The archive's lineage keeps them absolute.
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
    check_archive_path(
        archive, {"store": store, "climatology": climatology or (stream.climatology if stream else None)}
    )
    launch = launch or LaunchEnv.from_environ()
    device = forecast_device(cfg, launch)
    loaded = forecast_model(cfg, checkpoint, tracking_uri, device)
    cfg, calibrated = apply_calibration(cfg, calibration, loaded.sha256)
    truth = open_store(store)
    forecaster = on_store_grid(loaded.forecaster, loaded.meta, truth)
    identity = campaign_identity(cfg, loaded.sha256, store, device, forecaster)
    campaign = forecast_campaign(cfg, forecaster, truth, identity)
    lineage = forecast_lineage(cfg, loaded, store, campaign, tracker.run_id, calibrated)
    record_forecast_inputs(
        tracker, cfg, loaded, lineage, store, campaign, launch.world_size, workdir or store.parent
    )
    require_one_process_to_stream(stream is not None, launch.world_size)
    with main_first():  # rank 0 creates the archive, so its lineage names rank 0's run; the others join it
        out = CampaignArchive(
            archive, campaign, truth[LAT].values, truth[LON].values, lineage, overwrite=overwrite
        )
    scorer = streaming_scorer(stream, out, truth, campaign)
    result = run_members(cfg, forecaster, truth, campaign, out, launch, device, scorer)
    record_streamed_scores(tracker, scorer, stream)
    record_forecast_run(tracker, archive, result)
    if launch.rank == 0:
        log_forecast_map(tracker, archive, store, campaign)
    return archive


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
    (``forecast_run_id``, ``train_run_id``) — and with the archive's
    :func:`~pipeline.lineage.campaign_key`. With ``tracking_uri``, the headline scores
    (:func:`~pipeline.scoring.headline_scores` at ``cfg.lead_hours``, named by the campaign key)
    are logged on the training run too, which is tagged ``score_run_<campaign key>`` with this
    run's id. A lineage run the store does not hold (the model was trained against another
    store) is a warning, recorded in the tag ``missing_lineage_runs``, not a failure. Paths are
    recorded relative to ``workdir`` (default: the store's folder).

    Returns
    -------
    list of dict
        The global scores as records (:func:`ensembles.scorecard.scorecard_records`).
    """
    (forecasts, completed), truth = open_for_scoring(archive, cfg.partial), open_store(store)
    lead_times = scored_leads(cfg, forecasts, archive)
    options = score_options(cfg) if completed is None else replace(score_options(cfg), recorded_complete=True)
    if completed is not None:
        log.warning("%s", completed.describe())
    run_ids = lineage_run_ids(forecasts, forecast_run_id, train_run_id)
    campaign = campaign_key(forecasts)
    inputs = {"archive": archive, "store": store, "climatology": climatology}
    missing = record_score_inputs(
        tracker, cfg, forecasts, campaign, inputs, run_ids, tracking_uri, workdir or store.parent
    )
    scorecard = score_archive(
        forecasts,
        truth[DATA],
        open_climatology(climatology),
        options,
        variables=cfg.variables,
        lead_times=lead_times,
        time_mean=statistics_time_mean(truth),
    )
    log_left_out(tracker, scorecard, completed)
    records = record_scorecard(tracker, scorecard, out_dir)
    if cfg.plots:
        log_score_plots(tracker, cfg, forecasts, truth, scorecard, out_dir / "plots")
    if tracking_uri and run_ids["train_run_id"] and run_ids["train_run_id"] not in missing:
        report_to_training_run(
            tracking_uri, run_ids["train_run_id"], records, cfg.lead_hours, campaign, tracker.run_id
        )
    return records


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


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    """Every stage in order, each in its own MLflow run where it has something to record.

    The headline scores are also logged back onto the training run of the model (named by the
    campaign, :func:`~pipeline.scoring.headline_scores`), so the run that produced a model shows
    how its forecasts verified.
    """
    paths = Paths(cfg.workdir)
    paths.workdir.mkdir(parents=True, exist_ok=True)
    uri = cfg.tracking.tracking_uri or default_tracking_uri(paths.workdir)
    with _stage(SOURCES[cfg.ingest.source].step):
        files = source_files(cfg, paths)
    with _stage("ingest"):
        ingest(cfg.ingest, cfg.cluster, files, paths.store, paths.climatology)
    return run_tracked_stages(cfg, paths, uri)


@dataclass
class _StageRuns:
    """The stages of one pipeline run on its paths, each in an MLflow run nested under the pipeline's.

    ``run_ids["pipeline"]`` is the parent run. Each stage run is tagged with its ``stage`` and
    the run ids it follows from; its own id is kept in ``run_ids`` under the stage's name once
    the stage is done.
    """

    cfg: RunConfig
    paths: Paths
    uri: str
    run_ids: dict[str, str]

    @contextmanager
    def _run(self, name: str, run_name: str, **lineage: str) -> Iterator[Tracker]:
        tags = {"stage": name, **lineage}
        experiment, parent = self.cfg.tracking.experiment, self.run_ids["pipeline"]
        with (
            _stage(name),
            mlflow_run(
                self.uri, experiment, run_name, tags, self.paths.artifacts, parent_run_id=parent
            ) as tracker,
        ):
            yield tracker
            self.run_ids[name] = tracker.run_id

    def train(self) -> None:
        cfg, paths = self.cfg, self.paths
        with self._run("train", train_run_name(cfg.train)) as tracker:
            # a pipeline run starts over: an earlier run's checkpoints are moved aside
            train_model(
                cfg.train, paths.store, paths.checkpoint, tracker, climatology=paths.climatology, restart=True
            )

    def calibrate(self) -> None:
        paths, train_run_id = self.paths, self.run_ids["train"]
        with self._run("calibrate", "calibrate", train_run_id=train_run_id) as tracker:
            calibrate_stage(
                self.cfg,
                paths.checkpoint,
                paths.store,
                paths.calibration,
                tracker,
                tracking_uri=self.uri,
                train_run_id=train_run_id,
            )

    def forecast(self) -> None:
        cfg, paths = self.cfg, self.paths
        calibration = paths.calibration if cfg.calibrate.enabled else None
        with self._run(
            "forecast", forecast_run_name(cfg.forecast), train_run_id=self.run_ids["train"]
        ) as tracker:
            forecast(
                cfg.forecast,
                paths.checkpoint,
                paths.store,
                paths.archive,
                tracker,
                overwrite=True,
                tracking_uri=self.uri,
                stream=score_stream(cfg, paths),
                climatology=paths.climatology,
                workdir=paths.workdir,
                calibration=calibration,
            )

    def score(self) -> list[dict]:
        paths = self.paths
        ids = {"forecast_run_id": self.run_ids["forecast"], "train_run_id": self.run_ids["train"]}
        with self._run("score", "score", **ids) as tracker:
            return score(
                self.cfg.score,
                paths.archive,
                paths.store,
                paths.climatology,
                paths.scores,
                tracker,
                tracking_uri=self.uri,
                workdir=paths.workdir,
                **ids,
            )


def run_tracked_stages(cfg: RunConfig, paths: Paths, uri: str) -> PipelineResult:
    """Train, forecast, score, export, publish an ingested store: a parent MLflow run, a nested run per stage.

    The parent (:func:`~pipeline.lineage.pipeline_run_name`) gets the headline scores, the
    summary and the WB2 export's paths; each stage run is named by what it did
    (:func:`~pipeline.lineage.train_run_name`, :func:`~pipeline.lineage.forecast_run_name`,
    :func:`~pipeline.lineage.score_run_name`).
    """
    run_ids: dict[str, str] = {}
    tags = {"stage": "pipeline"}
    with mlflow_run(uri, cfg.tracking.experiment, pipeline_run_name(cfg), tags, paths.artifacts) as parent:
        run_ids["pipeline"] = parent.run_id
        params = {
            "workdir": paths.workdir,
            "source": cfg.ingest.source,
            "variables": ",".join(cfg.ingest.variables),
        }
        parent.log_params(workdir_relative(params, paths.workdir))
        stages = _StageRuns(cfg, paths, uri, run_ids)
        stages.train()
        if cfg.calibrate.enabled:
            stages.calibrate()
        stages.forecast()
        records = stages.score()
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
