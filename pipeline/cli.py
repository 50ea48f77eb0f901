"""The ``fourcast`` command: the only place arguments are parsed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

if (
    TYPE_CHECKING
):  # the heavy imports (torch, dask, pydantic models) wait until a command runs: --help stays fast
    from pipeline.config import RunConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
CONFIG_ENV = "FOURCAST_CONFIG"
METRIC_ORDER = ("rmse", "acc", "crps", "mae", "ssr", "reliability", "crpss_climatology", "crpss_persistence")
RESUME_LAST = "last"
DEBUG_ENV = "FOURCAST_DEBUG"


def _version() -> str:
    """The installed fourcast version (the source tree's ``pyproject.toml`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fourcast")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or its help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fourcast",
        description="ML weather forecasting pipeline: ERA5 → Zarr v3 → "
        "AFNO training → ensembles → verification, tracked in MLflow.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help=f"let errors through with their traceback (also ${DEBUG_ENV}=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, help_text: str, group=commands) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text, formatter_class=_Help)
        sub.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"YAML run config (default: ${CONFIG_ENV} or {DEFAULT_CONFIG.name}, the synthetic demo)",
        )
        sub.add_argument(
            "--workdir",
            type=Path,
            default=None,
            help="override the config's workdir (also $FOURCAST_WORKDIR)",
        )
        return sub

    add("demo", "run every stage on the embedded synthetic default and print a scorecard")
    _cluster_options(
        add("run", "run every stage of a config: synthesize, ingest, train, forecast, score, publish")
    )
    add("check-config", "validate a config and print it resolved, without doing any work")
    add("synthesize", "write shallow-water synthetic ERA5 netCDF files (new CDS layout)")
    ingest = commands.add_parser(
        "ingest",
        help="ERA5 → Zarr v3 training store: run | plan | inspect | validate",
        description="ERA5 → Zarr v3 training store (Dask)",
    )
    ingest_actions = ingest.add_subparsers(dest="action", required=True, metavar="action")
    _cluster_options(
        add(
            "run",
            "ingest the ERA5 files into the Zarr v3 training store and its climatology store (Dask)",
            ingest_actions,
        )
    )
    add(
        "plan",
        "print the CDS requests (ingest.source: cds) and their cost in fields, without sending anything",
        ingest_actions,
    )
    for action, help_text in (
        (
            "inspect",
            ("print a training store's dates, gaps, shape, layout, size on disk and per-variable statistics"),
        ),
        (
            "validate",
            ("check a training store's schema, times, NaNs and physical ranges; exits 1 on any problem"),
        ),
    ):
        ingest_actions.add_parser(action, help=help_text, description=help_text).add_argument(
            "store", type=Path, help="path of the Zarr v3 training store"
        )
    train = add(
        "train", "train the configured model preset on the store (under torchrun: data-parallel on all ranks)"
    )
    start = train.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        nargs="?",
        const=RESUME_LAST,
        default=None,
        metavar="PATH",
        help="continue exactly from a training state (default: checkpoints/last.pt in the workdir)",
    )
    start.add_argument(
        "--restart",
        action="store_true",
        help="start over although the workdir holds an earlier run: its checkpoints are moved to "
        "checkpoints/replaced-<time>/ (without --resume or --restart such a workdir is refused)",
    )
    add(
        "calibrate",
        "choose the perturbation amplitudes (and SPPT model error) on the validation period so that the "
        "debiased spread/skill is 1; writes <workdir>/calibration.json, which forecast then uses",
    )
    _forecast_options(
        add(
            "forecast",
            "run the ensemble campaign into a Zarr archive; under torchrun its (init time, "
            "member block) work items are split over the processes; a relaunch resumes it",
        )
    )
    _score_options(
        add(
            "score",
            "score the archive and the baselines against the store into a scorecard (netCDF, "
            "CSV) and plots, logged to MLflow and onto the model's training run",
        )
    )
    export = commands.add_parser(
        "export",
        help="write outputs in other tools' layouts: wb2",
        description="write outputs in other tools' layouts",
    )
    export_formats = export.add_subparsers(dest="action", required=True, metavar="format")
    wb2 = add(
        "wb2",
        "write the forecast archive, the truth at its valid times and the climatology in WeatherBench 2's "
        "layout (forecast.zarr, truth.zarr, climatology.zarr)",
        export_formats,
    )
    wb2.add_argument(
        "--archive", type=Path, help="archive to export (default: <workdir>/forecasts/archive.zarr)"
    )
    wb2.add_argument("--out", type=Path, help="output folder (default: <workdir>/wb2)")
    wb2.add_argument(
        "--zarr-format",
        type=int,
        choices=[2, 3],
        default=3,
        help="Zarr format of the stores (2 for tools that read only Zarr v2)",
    )
    _operations_parsers(commands, add)
    return parser


def _operations_parsers(commands, add) -> None:
    """``fourcast archive | model | cycle | tracking``: the verbs the Cylc workflows call."""

    def group(name: str, help_text: str):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest="action", required=True, metavar="action")

    def with_catalogue(sub):
        sub.add_argument(
            "--catalogue",
            metavar="URL",
            help="SQLAlchemy URL of the catalogue (default: the config's "
            "catalogue.url, else sqlite:///<workdir>/catalogue.db)",
        )
        return sub

    archive = group("archive", "the forecast-archive catalogue: publish | list | show | prune | release")
    publish = with_catalogue(
        add("publish", "record a finalised archive in the catalogue (idempotent)", archive)
    )
    publish.add_argument("archive", type=Path)
    publish.add_argument("--cycle-point", help="the workflow cycle point that produced it")
    publish.add_argument(
        "--hold",
        action="append",
        default=[],
        metavar="HOLDER",
        help="keep it from retention until HOLDER releases it (e.g. the score task that needs it)",
    )
    with_catalogue(add("list", "list the catalogued archives", archive)).add_argument(
        "--status", choices=["published", "reduced", "deleted"]
    )
    with_catalogue(add("show", "print one catalogue entry as JSON", archive)).add_argument(
        "key", help="catalogue id or archive path"
    )
    prune = with_catalogue(
        add(
            "prune",
            "apply the retention policy (catalogue.keep_members_days, "
            "catalogue.delete_after_days); held archives are left alone",
            archive,
        )
    )
    prune.add_argument("--keep-members-days", type=float)
    prune.add_argument("--delete-after-days", type=float)
    prune.add_argument("--now", help="reference time, ISO 8601 (default: the newest init time catalogued)")
    prune.add_argument("--dry-run", action="store_true")
    release = with_catalogue(add("release", "drop a holder's hold on an archive", archive))
    release.add_argument("key", help="catalogue id or archive path")
    release.add_argument("--holder", required=True)

    model = group("model", "the MLflow model registry: aliases | promote | promote-if-better")
    add("aliases", "print a registered model's aliases and versions", model).add_argument("name")
    promote = add("promote", "point an alias of a registered model at a version", model)
    promote.add_argument("name")
    promote.add_argument("version", help="a version number or 'latest'")
    promote.add_argument("--alias", default="champion")
    better = add(
        "promote-if-better",
        "move the alias to the candidate only if it beats the current holder on every "
        "headline score (decision and scorecards logged to MLflow)",
        model,
    )
    better.add_argument("name")
    better.add_argument("candidate", help="candidate version number or 'latest'")
    better.add_argument("--alias", default="champion")
    better.add_argument("--candidate-scores", type=Path, required=True, help="the candidate's scorecard.nc")
    better.add_argument(
        "--champion-scores", type=Path, help="the alias holder's scorecard.nc on the same inits"
    )
    better.add_argument(
        "--headline",
        nargs="+",
        required=True,
        metavar="VAR:METRIC:LEAD",
        help="headline scores, e.g. z500:rmse:24 z500:acc:48",
    )

    cycle = group("cycle", "steps of the forecast cycle: await-data | report")
    wait = add(
        "await-data",
        "wait until the store holds the analyses up to a cycle point; fail naming the "
        "missing dates after the timeout",
        cycle,
    )
    wait.add_argument("--point", required=True, help="cycle point (ISO 8601)")
    wait.add_argument(
        "--back-hours", type=int, default=0, help="also wait for this many hours before the point"
    )
    wait.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS")
    wait.add_argument("--poll", type=float, default=10.0, metavar="SECONDS")
    with_catalogue(
        add("report", "log a cycle-report run tagged with the cycle point to MLflow", cycle)
    ).add_argument("--point", required=True)
    hindcast = add(
        "hindcast",
        "install and play (cylc play --no-detach) a bounded forecast-cycle hindcast on the "
        "workdir's store and registered model; print where the archives and runs are",
        cycle,
    )
    hindcast.add_argument(
        "--points", type=int, default=4, help="cycle points (one a day from forecast.inits.start)"
    )
    hindcast.add_argument("--lead-hours", type=int, default=48)
    hindcast.add_argument("--members", type=int, default=4)
    hindcast.add_argument("--name", default="fourcast-cycle", help="Cylc workflow name (each run a new runN)")

    tracking = group("tracking", "an MLflow tracking server for concurrent writers: serve | stop")
    serve = add(
        "serve", "start `mlflow server` over the config's tracking store, detached; print its URI", tracking
    )
    serve.add_argument("--state-dir", type=Path, required=True, help="where the server's uri, pid and log go")
    add("stop", "stop the server recorded in --state-dir", tracking).add_argument(
        "--state-dir", type=Path, required=True
    )


def _forecast_options(sub: argparse.ArgumentParser) -> None:
    """Options of ``fourcast forecast``; each one given replaces that key of the config's ``forecast``."""
    sub.add_argument(
        "--model",
        help="checkpoint path or MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, "
        "runs:/RUN_ID/PATH); default: the workdir's checkpoint",
    )
    inits = sub.add_mutually_exclusive_group()
    inits.add_argument(
        "--init-times", nargs="+", metavar="TIME", help="init times, ISO 8601 UTC (2001-01-01T00)"
    )
    inits.add_argument(
        "--init-range",
        nargs=2,
        metavar=("START", "END"),
        help="init times from START to END inclusive, every --init-every hours",
    )
    sub.add_argument(
        "--init-every", type=int, metavar="HOURS", help="hours between init times of --init-range"
    )
    sub.add_argument("--members", type=int, help="ensemble size")
    sub.add_argument("--lead-hours", type=int, help="forecast length; a multiple of the model step")
    sub.add_argument("--step-hours", type=int, help="expected model step; refused if the model's differs")
    sub.add_argument(
        "--perturbation", choices=["none", "gaussian", "grf", "balanced", "bred"], help="initial perturbation"
    )
    sub.add_argument("--amplitude", type=float, help="perturbation size in units of each channel's std")
    sub.add_argument(
        "--seed", type=int, help="campaign seed (a member depends on seed, init time, member only)"
    )
    sub.add_argument(
        "--members-per-batch", type=int, help="members stepped together (the work-item block size)"
    )
    sub.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available)")
    sub.add_argument("--archive", type=Path, help="archive path (default: <workdir>/forecasts/archive.zarr)")
    sub.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace an archive of a different campaign at the archive path",
    )
    sub.add_argument(
        "--no-stream-scores", action="store_true", help="do not score members as they are produced"
    )
    _tag_option(sub)


def _tag_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tag the stage's MLflow run (e.g. cycle_point=20010101T00); repeatable",
    )


def _tags(args: argparse.Namespace) -> dict[str, str]:
    from pipeline.config import ConfigError

    tags = {}
    for item in getattr(args, "tag", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--tag expects KEY=VALUE, found {item!r}")
        tags[key] = value
    return tags


def _with_forecast_options(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``cfg`` with the ``fourcast forecast`` options given on the command line, validated again."""
    from pipeline.config import parse_config

    forecast = cfg.forecast.model_dump(mode="json")
    keys = {
        "model": "model",
        "init_every": "init_every_hours",
        "members": "members",
        "lead_hours": "lead_hours",
        "step_hours": "step_hours",
        "seed": "seed",
        "members_per_batch": "members_per_batch",
        "device": "device",
        "overwrite": "overwrite",
    }
    forecast.update(
        {key: getattr(args, option) for option, key in keys.items() if getattr(args, option) is not None}
    )
    if args.no_stream_scores:
        forecast["stream_scores"] = False
    if args.archive is not None:
        forecast["archive"] = str(args.archive)
    if args.init_times is not None:  # times are parsed by the config (pipeline.config.parse_time), as in YAML
        forecast["init_times"] = args.init_times
    if args.init_range is not None:
        forecast.update(inits={"start": args.init_range[0], "end": args.init_range[1]}, init_times=None)
    if args.perturbation is not None:
        forecast["perturbation"] = {**forecast["perturbation"], "kind": args.perturbation}
    if args.amplitude is not None:
        forecast["perturbation"] = {**forecast["perturbation"], "amplitude": args.amplitude}
    return parse_config(
        {**cfg.model_dump(mode="json"), "forecast": forecast}, source="config with forecast options"
    )


def _cluster_options(sub: argparse.ArgumentParser) -> None:
    """Options choosing the Dask cluster of the ingest; each one given replaces that key of ``cluster``."""
    sub.add_argument(
        "--scheduler-address",
        metavar="ADDRESS",
        help="use a running Dask scheduler (tcp://host:8786) instead of a LocalCluster",
    )


def _score_options(sub: argparse.ArgumentParser) -> None:
    """Options of ``fourcast score``; each one given replaces that key of the config's ``score``."""
    sub.add_argument(
        "--archive", type=Path, help="archive to score (default: <workdir>/forecasts/archive.zarr)"
    )
    sub.add_argument(
        "--partial",
        action="store_true",
        default=None,
        help="score an archive that is not finalised, leaving its unwritten forecasts out",
    )
    sub.add_argument(
        "--nan-policy", choices=["fail", "skip"], help="stop at a NaN, or leave such forecasts out"
    )
    sub.add_argument(
        "--lead-hours",
        type=int,
        nargs="+",
        help="headline lead times (summary, training run); each must be a lead time of the archive",
    )
    sub.add_argument(
        "--max-lead-hours",
        type=int,
        metavar="HOURS",
        help="score only lead times up to HOURS (default: all the archive holds)",
    )
    sub.add_argument(
        "--map-init", metavar="TIME", help="init time of the maps, ISO 8601 UTC (default: the first)"
    )
    sub.add_argument(
        "--map-lead-hours", type=int, help="lead time of the maps (default: the first --lead-hours)"
    )
    sub.add_argument("--no-plots", action="store_true", help="write no plots (score.plots: false)")
    sub.add_argument(
        "--scores-dir", type=Path, help="where the scorecard and plots go (default: <workdir>/scores)"
    )
    sub.add_argument(
        "--release",
        metavar="HOLDER",
        help="after scoring, release HOLDER's hold on the archive in the "
        "catalogue and record this score run there",
    )
    _tag_option(sub)


def _with_score_options(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``cfg`` with the ``fourcast score`` options given on the command line, validated again."""
    from pipeline.config import parse_config

    score = cfg.score.model_dump(mode="json")
    keys = {
        "partial": "partial",
        "nan_policy": "nan_policy",
        "lead_hours": "lead_hours",
        "max_lead_hours": "max_lead_hours",
        "map_init": "map_init",
        "map_lead_hours": "map_lead_hours",
    }
    score.update(
        {key: getattr(args, option) for option, key in keys.items() if getattr(args, option) is not None}
    )
    if args.archive is not None:
        score["archive"] = str(args.archive)
    if args.no_plots:
        score["plots"] = False
    return parse_config({**cfg.model_dump(mode="json"), "score": score}, source="config with score options")


def _config(args: argparse.Namespace) -> RunConfig:
    from pipeline.config import load_config, parse_config

    path = args.config or Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    cfg = load_config(path, workdir=args.workdir)
    if getattr(args, "scheduler_address", None):
        cluster = {**cfg.cluster.model_dump(mode="json"), "scheduler_address": args.scheduler_address}
        cfg = parse_config(
            {**cfg.model_dump(mode="json"), "cluster": cluster}, source="config with cluster options"
        )
    if args.command == "score":
        return _with_score_options(cfg, args)
    if args.command in ("archive", "cycle") and getattr(args, "catalogue", None):
        catalogue = {**cfg.catalogue.model_dump(mode="json"), "url": args.catalogue}
        return parse_config(
            {**cfg.model_dump(mode="json"), "catalogue": catalogue}, source="config with --catalogue"
        )
    return _with_forecast_options(cfg, args) if args.command == "forecast" else cfg


def _print_scorecard(records: list[dict], lead_hours: list[int]) -> None:
    from ensembles.scorecard import headline_records

    rows = [r for r in headline_records(records) if r["lead_hours"] in lead_hours]
    keys = sorted(
        {(r["variable"], r["metric"], r["system"]) for r in rows},
        key=lambda k: (k[0], METRIC_ORDER.index(k[1]) if k[1] in METRIC_ORDER else len(METRIC_ORDER), k[2]),
    )
    value = {(r["variable"], r["metric"], r["system"], r["lead_hours"]): r["value"] for r in rows}
    print(f"{'variable':<9}{'metric':<18}{'system':<17}" + "".join(f"{h:>10d}h" for h in lead_hours))
    for variable, metric, system in keys:
        cells = "".join(
            f"{value.get((variable, metric, system, h), float('nan')):>11.4g}" for h in lead_hours
        )
        print(f"{variable:<9}{metric:<18}{system:<17}{cells}")


def _outputs(command: str, cfg: RunConfig, paths) -> dict[str, Path]:
    """The folders ``command`` writes to, by what they are (for
    :func:`pipeline.preflight.require_writable`)."""
    cds = cfg.ingest.cds if cfg.ingest.source == "cds" else None
    downloads = {"CDS download folder": cds.cache_dir or paths.cds_cache} if cds is not None else {}
    archive = cfg.forecast.archive or paths.archive
    streamed = {"scores folder": paths.scores} if cfg.forecast.stream_scores else {}
    return {
        "demo": {"workdir": paths.workdir, **downloads},
        "run": {"workdir": paths.workdir, **downloads},
        "synthesize": {"ERA5 folder": paths.raw},
        "ingest run": {
            "store folder": paths.store.parent,
            "climatology folder": paths.climatology.parent,
            **downloads,
        },
        "train": {"checkpoint folder": paths.checkpoint.parent, "MLflow artifact folder": paths.artifacts},
        "calibrate": {"workdir": paths.workdir, "MLflow artifact folder": paths.artifacts},
        "forecast": {"archive folder": archive.parent, "MLflow artifact folder": paths.artifacts, **streamed},
        "score": {"scores folder": paths.scores, "MLflow artifact folder": paths.artifacts},
        "export wb2": {"WB2 export folder": paths.wb2},
    }.get(command, {})


def _preflight(command: str, cfg: RunConfig, paths) -> None:
    """Before any work: the devices asked for exist here, and every folder the command writes is writable."""
    from pipeline import preflight

    if command in ("demo", "run", "train"):
        preflight.require_device(cfg.train.device, "train.device")
    if command in ("demo", "run", "forecast"):
        preflight.require_device(cfg.forecast.device, "forecast.device")
    outputs = _outputs(command, cfg, paths)
    if command in ("demo", "run", "train", "calibrate", "forecast", "score"):
        from pipeline.tracking import default_tracking_uri

        store = preflight.tracking_folder(cfg.tracking.tracking_uri or default_tracking_uri(paths.workdir))
        outputs.update({"MLflow tracking store folder": store} if store is not None else {})
    for what, folder in outputs.items():
        preflight.require_writable(folder, what)


def _run_stage(
    command: str,
    cfg: RunConfig,
    resume: str | None = None,
    restart: bool = False,
    export_args: dict | None = None,
    args: argparse.Namespace | None = None,
) -> None:
    if command.split()[0] in ("archive", "model", "cycle", "tracking"):
        _run_operation(command, cfg, args)
        return
    from pipeline import publish, sources, stages  # heavy imports only once a stage runs
    from pipeline.errors import StageInputError
    from pipeline.paths import Paths

    paths = Paths(cfg.workdir)
    export_args = export_args or {}
    _preflight(command, cfg, paths)
    if command in ("demo", "run"):
        result = stages.run_pipeline(cfg)
        _print_scorecard(result.records, cfg.score.lead_hours)
        print(f"\nsummary: {result.summary.resolve()}")
        print(
            f"MLflow runs {result.run_ids}; browse them with:\n  mlflow ui --backend-store-uri "
            f"{result.tracking_uri}"
        )
    elif command == "synthesize":
        if cfg.synthetic is None:
            raise StageInputError("the config has no synthetic section to synthesize from")
        print("\n".join(str(p) for p in sources.synthesize(cfg.synthetic, paths.raw)))
    elif command == "ingest plan":
        if cfg.ingest.source != "cds":
            raise StageInputError(f"ingest plan needs ingest.source: cds, found {cfg.ingest.source!r}")
        from ingest.cds import describe_plan

        print(describe_plan(sources.cds_plan(cfg.ingest.cds, cfg.ingest.variables)), end="")
    elif command == "ingest run":
        if cfg.ingest.source == "cds":
            files = sources.download(cfg.ingest.cds, cfg.ingest.variables, paths.cds_cache)
        else:
            files = sources.raw_files(paths.raw)
        print(stages.ingest(cfg.ingest, cfg.cluster, files, paths.store, paths.climatology))
    elif command == "export wb2":
        archive = export_args.get("archive") or cfg.score.archive or cfg.forecast.archive or paths.archive
        written = publish.export_wb2(
            archive,
            paths.store,
            paths.climatology,
            export_args.get("out") or paths.wb2,
            export_args.get("zarr_format", 3),
        )
        print("\n".join(str(p) for p in written.values()))
    else:
        _run_tracked_stage(command, cfg, paths, stages, resume, restart, args)


def _run_tracked_stage(
    command: str,
    cfg: RunConfig,
    paths,
    stages,
    resume: str | None = None,
    restart: bool = False,
    args: argparse.Namespace | None = None,
) -> None:
    from fourcast.distributed import LaunchEnv
    from pipeline import lineage, scoring, training_run
    from pipeline.calibration import calibrate_stage
    from pipeline.tracking import NullTracker, default_tracking_uri, mlflow_run

    uri = cfg.tracking.tracking_uri or default_tracking_uri(paths.workdir)
    main_rank = LaunchEnv.from_environ().rank == 0  # under torchrun only rank 0 opens the MLflow run
    name = {
        "train": lambda: lineage.train_run_name(cfg.train),
        "forecast": lambda: lineage.forecast_run_name(cfg.forecast),
    }.get(command, lambda: command)()
    tags = {**(_tags(args) if args is not None else {}), "stage": command}
    tracked = (
        mlflow_run(uri, cfg.tracking.experiment, name, tags, paths.artifacts)
        if main_rank
        else nullcontext(NullTracker())
    )
    with tracked as tracker:
        if command == "train":
            state = (
                training_run.training_state_path(paths.checkpoint)
                if resume == RESUME_LAST
                else resume and Path(resume)
            )
            checkpoint = stages.train_model(
                cfg.train,
                paths.store,
                paths.checkpoint,
                tracker,
                resume=state,
                climatology=paths.climatology,
                restart=restart,
            )
            if main_rank:
                print(checkpoint)
        elif command == "forecast":
            archive = stages.forecast(
                cfg.forecast,
                paths.checkpoint,
                paths.store,
                cfg.forecast.archive or paths.archive,
                tracker,
                overwrite=cfg.forecast.overwrite,
                tracking_uri=uri,
                stream=scoring.score_stream(cfg, paths),
                climatology=paths.climatology,
                workdir=paths.workdir,
                calibration=paths.calibration,
            )
            if main_rank:
                print(archive)
        elif command == "calibrate":
            print(
                calibrate_stage(
                    cfg, paths.checkpoint, paths.store, paths.calibration, tracker, tracking_uri=uri
                )
            )
        else:
            archive = cfg.score.archive or cfg.forecast.archive or paths.archive
            scores_dir = getattr(args, "scores_dir", None) or paths.scores
            records = stages.score(
                cfg.score,
                archive,
                paths.store,
                paths.climatology,
                scores_dir,
                tracker,
                tracking_uri=uri,
                workdir=paths.workdir,
            )
            _print_scorecard(records, cfg.score.lead_hours)
            if getattr(args, "release", None):
                from pipeline.operations import catalogue_of

                catalogue = catalogue_of(cfg)
                catalogue.release(catalogue.get(archive).id, args.release, tracker.run_id)


def _run_operation(command: str, cfg: RunConfig, args: argparse.Namespace) -> None:
    """``fourcast archive | model | cycle | tracking …``: the verbs the Cylc workflows call."""
    import json

    from pipeline import operations, tracking

    uri = cfg.tracking.tracking_uri or tracking.default_tracking_uri(cfg.workdir)
    store, artifacts = (
        cfg.workdir / "store.zarr",
        cfg.workdir / "mlartifacts",
    )  # as pipeline.paths.Paths names them
    group, action = command.split()
    if group == "archive":
        from ensembles.catalogue import catalogue_location

        catalogue = operations.catalogue_of(cfg)
        if action == "publish":
            entry = catalogue.publish(args.archive, args.cycle_point, args.hold)
            print(
                f"archive {entry.id} {entry.path} ({entry.model_name or entry.model} version "
                f"{entry.model_version or '-'}) in the catalogue {catalogue_location(catalogue.url)}"
            )
        elif action == "list":
            print(
                f"{'id':>4} {'cycle point':<16} {'first init':<20} {'model':<26} {'mem':>4} {'MB':>8} "
                f"{'status':<10} holds  path"
            )
            for e in catalogue.entries(args.status):
                model = f"{e.model_name}/{e.model_version}" if e.model_name else Path(e.model).name
                print(
                    f"{e.id:>4} {e.cycle_point or '-':<16} {e.first_init:<20} {model:<26} {e.members:>4} "
                    f"{e.bytes / 1e6:>8.2f} {e.status:<10} {','.join(e.holds) or '-':<6} {e.path}"
                )
        elif action == "show":
            print(json.dumps(catalogue.get(args.key).as_dict(), indent=2, default=str))
        elif action == "prune":
            keep = (
                cfg.catalogue.keep_members_days if args.keep_members_days is None else args.keep_members_days
            )
            delete = (
                cfg.catalogue.delete_after_days if args.delete_after_days is None else args.delete_after_days
            )
            now = None if args.now is None else operations.cycle_point_time(args.now)
            done = catalogue.prune(keep, delete, now=now, dry_run=args.dry_run)
            for entry, what in done:
                print(f"{'would ' if args.dry_run else ''}{what} archive {entry.id} {entry.path}")
            held = [e for e in catalogue.entries() if e.holds]
            print(
                f"{len(done)} archive(s) {'to prune' if args.dry_run else 'pruned'}; "
                f"{len(held)} held by unfinished work left alone"
            )
        else:
            catalogue.release(catalogue.get(args.key).id, args.holder)
    elif group == "model":
        if action == "aliases":
            aliases = tracking.model_aliases(uri, args.name)
            print(
                json.dumps(
                    {
                        "model": args.name,
                        "aliases": aliases,
                        "versions": tracking.model_versions(uri, args.name),
                    },
                    indent=2,
                )
            )
        elif action == "promote":
            _, version = tracking.resolve_model_version(f"models:/{args.name}/{args.version}", uri)
            before = tracking.set_model_alias(uri, args.name, args.alias, version)
            print(f"{args.name}@{args.alias}: version {before or '-'} -> {version}")
        else:
            headlines = [operations.Headline.parse(h) for h in args.headline]
            decision = operations.promote_if_better(
                cfg,
                uri,
                args.name,
                args.candidate,
                args.alias,
                args.candidate_scores,
                args.champion_scores,
                headlines,
            )
            print(json.dumps(decision, indent=2))
    elif group == "cycle":
        if action == "await-data":
            point = operations.cycle_point_time(args.point)
            step = int(operations.store_step_hours(store))
            operations.await_data(
                store, operations.cycle_times(str(point), args.back_hours, step), args.timeout, args.poll
            )
            print(f"analyses up to {args.point} are in {store}")
        elif action == "hindcast":
            _hindcast(cfg, args, uri)
        else:
            from ensembles.catalogue import catalogue_location

            catalogue = operations.catalogue_of(cfg)
            run_id = operations.report_cycle(cfg, uri, args.point, catalogue.entries())
            print(
                f"cycle {args.point}: report run {run_id} in {uri}; catalogue "
                f"{catalogue_location(catalogue.url)}"
            )
    elif action == "serve":
        print(tracking.start_tracking_server(uri, artifacts, args.state_dir))
    else:
        print("stopped" if tracking.stop_tracking_server(args.state_dir) else "no server was running")


def _hindcast(cfg: RunConfig, args: argparse.Namespace, uri: str) -> None:
    """``fourcast cycle hindcast``: the forecast cycle over ``--points`` days of the workdir's store,
    timed."""
    import time

    from pipeline import cylc, operations, tracking
    from pipeline.errors import StageInputError
    from pipeline.paths import Paths

    paths = Paths(cfg.workdir)
    model = f"fourcast-{cfg.train.model}"
    if not (paths.store / "zarr.json").exists():
        raise StageInputError(
            f"no store at {paths.store}: run `make demo` (or `fourcast run --config ...`) first"
        )
    if "champion" not in tracking.model_aliases(uri, model):
        latest = tracking.model_versions(uri, model)[-1]
        tracking.set_model_alias(uri, model, "champion", latest)
        print(f"{model}@champion did not exist: set to the newest version, {latest}")
    config = args.config or Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    variables = cylc.hindcast_variables(
        config,
        paths.workdir,
        str(cfg.forecast.inits.start)[:13],
        args.points,
        lead_hours=args.lead_hours,
        members=args.members,
        model=model,
    )
    env = cylc.cylc_environment()
    started = time.perf_counter()
    workflow = cylc.install("forecast-cycle", args.name, env)
    run = cylc.run_dir(env, workflow).resolve()
    print(
        f"cylc play --no-detach {workflow} ({variables['INITIAL']} .. {variables['FINAL']}, run dir {run})",
        flush=True,
    )
    result = cylc.play(workflow, env, variables)
    seconds = time.perf_counter() - started
    catalogue = operations.catalogue_of(cfg)
    mine = [e for e in catalogue.entries() if str(run.name) in e.path and f"/{args.name}/" in e.path]
    for entry in mine:
        print(
            f"  {entry.cycle_point}: archive {entry.id} {entry.model_name}/{entry.model_version} {entry.path}"
        )
    print(
        f"hindcast of {args.points} cycle points {'finished' if result.returncode == 0 else 'FAILED'} in "
        f"{seconds:.0f} s\ncatalogue: {catalogue.url} (fourcast archive list --config {config})\n"
        f"MLflow: mlflow ui --backend-store-uri {uri}  (runs tagged cycle_point; experiment "
        f"{cfg.tracking.experiment})\nCylc logs: cylc cat-log {workflow}   |   {run}/log"
    )
    if result.returncode != 0:
        raise StageInputError(
            f"cylc play ended with status {result.returncode}:\n{result.stdout[-3000:]}"
            f"{result.stderr[-3000:]}"
        )


def _inspect_store(action: str, store: Path) -> int:
    """``fourcast ingest inspect|validate STORE``: print, and return the exit status."""
    from ingest.inspect import describe_store, format_description, validate_store

    store = store.expanduser()
    if action == "inspect":
        print(format_description(describe_store(store)))
        return 0
    problems = validate_store(store)
    for problem in problems:
        print(problem)
    print(f"{store}: " + (f"{len(problems)} problem(s)" if problems else "valid"))
    return 1 if problems else 0


def _run_errors() -> tuple[type[Exception], ...]:
    """Errors of a run that failed on its inputs or environment (exit 1): our packages' types and
    ``OSError``."""
    from ensembles.errors import EnsembleError
    from fourcast.errors import FourcastError
    from ingest.errors import IngestError
    from pipeline.errors import PipelineError

    return (IngestError, FourcastError, EnsembleError, PipelineError, OSError)


def _one_line(err: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """``fourcast``: a bad config or option ends as one line on stderr and exit 2, a failed run as one line
    and exit 1.

    Every error a user can trigger is a typed error of a package hierarchy (``IngestError``,
    ``FourcastError``, ``EnsembleError``, ``PipelineError``) or an ``OSError``; a
    :class:`~pipeline.errors.UsageError` (bad option value) exits 2.

    ``--traceback`` (or ``$FOURCAST_DEBUG=1``) lets the error through with its traceback instead.
    """
    args = _parser().parse_args(argv)
    import yaml
    from pydantic import ValidationError

    from pipeline.config import ConfigError

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    debug = args.traceback or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    command = f"{args.command} {args.action}" if getattr(args, "action", None) else args.command
    try:
        if command in ("ingest inspect", "ingest validate"):  # ingest inspect | validate STORE need no config
            return _inspect_store(args.action, args.store)
        try:
            cfg = _config(args)
        except (ConfigError, ValidationError, yaml.YAMLError) as err:
            if debug:
                raise
            print(f"fourcast: {_one_line(err)}", file=sys.stderr)
            return 2
        if command == "check-config":
            print(cfg.model_dump_json(indent=2))
            return 0
        export_args = {
            key: getattr(args, key)
            for key in ("archive", "out", "zarr_format")
            if command == "export wb2" and getattr(args, key, None) is not None
        }
        _run_stage(
            command, cfg, getattr(args, "resume", None), getattr(args, "restart", False), export_args, args
        )
    except Exception as err:
        if debug or not isinstance(err, _run_errors()):
            raise
        from pipeline.errors import UsageError

        print(f"fourcast {command}: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
