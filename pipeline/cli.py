"""The ``fourcast`` command: the only place arguments are parsed."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ensembles.errors import EnsembleError
from fourcast.errors import FourcastError
from ingest.errors import IngestError
from pipeline.config import ConfigError, RunConfig, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
CONFIG_ENV = "FOURCAST_CONFIG"
METRIC_ORDER = ("rmse", "acc", "crps", "ssr")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourcast", description="ML weather forecasting pipeline: ERA5 → Zarr v3 → "
                                     "AFNO training → ensembles → verification, tracked in MLflow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, help_text: str, group=commands) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", type=Path, default=None,
                         help=f"YAML run config (default: ${CONFIG_ENV} or {DEFAULT_CONFIG.name}, the synthetic demo)")
        sub.add_argument("--workdir", type=Path, default=None,
                         help="override the config's workdir (also $FOURCAST_WORKDIR)")
        return sub

    add("demo", "run every stage on the embedded synthetic default and print a scorecard")
    add("run", "run every stage of a config: synthesize, ingest, train, forecast, score, publish")
    add("check-config", "validate a config and print it resolved, without doing any work")
    add("synthesize", "write shallow-water synthetic ERA5 netCDF files (new CDS layout)")
    ingest = commands.add_parser("ingest", help="ERA5 → Zarr v3 training store: run | plan | inspect | validate",
                                 description="ERA5 → Zarr v3 training store (Dask)")
    ingest_actions = ingest.add_subparsers(dest="action", required=True, metavar="action")
    add("run", "ingest the ERA5 files into the Zarr v3 training store and its climatology store (Dask)",
        ingest_actions)
    add("train", "train the configured model preset on the store")
    add("forecast", "run the ensemble campaign into a Zarr archive")
    add("score", "score the archive and the baselines against the store")
    return parser


def _config(args: argparse.Namespace) -> RunConfig:
    path = args.config or Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG))
    return load_config(path, workdir=args.workdir)


def _print_scorecard(records: list[dict], lead_hours: list[int]) -> None:
    rows = [r for r in records if r["lead_hours"] in lead_hours]
    keys = sorted({(r["variable"], r["metric"], r["system"]) for r in rows},
                  key=lambda k: (k[0], METRIC_ORDER.index(k[1]) if k[1] in METRIC_ORDER else len(METRIC_ORDER), k[2]))
    value = {(r["variable"], r["metric"], r["system"], r["lead_hours"]): r["value"] for r in rows}
    print(f"{'variable':<9}{'metric':<7}{'system':<13}" + "".join(f"{h:>10d}h" for h in lead_hours))
    for variable, metric, system in keys:
        cells = "".join(f"{value.get((variable, metric, system, h), float('nan')):>11.4g}" for h in lead_hours)
        print(f"{variable:<9}{metric:<7}{system:<13}{cells}")


def _run_stage(command: str, cfg: RunConfig) -> None:
    from pipeline import stages  # heavy imports only once a stage runs

    paths = stages.Paths(cfg.workdir)
    if command in ("demo", "run"):
        result = stages.run_pipeline(cfg)
        _print_scorecard(result.records, cfg.score.lead_hours)
        print(f"\nsummary: {result.summary.resolve()}")
        print(f"MLflow runs {result.run_ids}; browse them with:\n  mlflow ui --backend-store-uri {result.tracking_uri}")
    elif command == "synthesize":
        print("\n".join(str(p) for p in stages.synthesize(cfg.synthetic, paths.raw)))
    elif command == "ingest run":
        files = sorted(paths.raw.glob("*.nc"))
        print(stages.ingest(cfg.ingest, cfg.cluster, files, paths.store, paths.climatology))
    else:
        _run_tracked_stage(command, cfg, paths, stages)


def _run_tracked_stage(command: str, cfg: RunConfig, paths, stages) -> None:
    from pipeline.tracking import default_tracking_uri, mlflow_run

    uri = cfg.tracking.tracking_uri or default_tracking_uri(paths.workdir)
    with mlflow_run(uri, cfg.tracking.experiment, command, {"stage": command}, paths.artifacts) as tracker:
        if command == "train":
            print(stages.train_model(cfg.train, paths.store, paths.checkpoint, tracker))
        elif command == "forecast":
            print(stages.forecast(cfg.forecast, paths.checkpoint, paths.store, paths.archive, tracker))
        else:
            records = stages.score(cfg.score, paths.archive, paths.store, paths.climatology, paths.scores, tracker)
            _print_scorecard(records, cfg.score.lead_hours)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        cfg = _config(args)
    except ConfigError as err:
        print(f"fourcast: {err}", file=sys.stderr)
        return 2
    command = f"{args.command} {args.action}" if getattr(args, "action", None) else args.command
    if command == "check-config":
        print(cfg.model_dump_json(indent=2))
        return 0
    from pipeline.stages import StageInputError

    try:
        _run_stage(command, cfg)
    except (IngestError, FourcastError, EnsembleError, StageInputError) as err:
        print(f"fourcast {command}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
