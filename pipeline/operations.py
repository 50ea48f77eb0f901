"""Operational steps of the Cylc workflows (``workflows/``): wait for data, publish, report, promote.

Each is one ``fourcast`` verb a Cylc task calls (``fourcast cycle …``, ``fourcast archive …``,
``fourcast model …``); the workflows hold no Python.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ingest.atomic import atomic_output
from ingest.dims import TIME
from ingest.schema import open_store
from pipeline.config import RunConfig

if TYPE_CHECKING:
    from ensembles.catalogue import Catalogue, Entry
from pipeline.errors import DataNotArrivedError, OptionError, StageInputError  # re-exported
from pipeline.tracking import (
    mlflow_run,
    model_aliases,
    nest_runs_under,
    resolve_model_version,
    score_metric_name,
    set_model_alias,
    tag_model_version,
)

log = logging.getLogger(__name__)


def catalogue_of(cfg: RunConfig) -> Catalogue:
    """The catalogue of a config (``catalogue.url``, default the workdir's SQLite file)."""
    from ensembles.catalogue import Catalogue, default_url  # opening archives needs the heavy stack

    return Catalogue(cfg.catalogue.url or default_url(cfg.workdir))


def missing_times(store: Path, times: np.ndarray) -> np.ndarray:
    """The ``times`` the store does not hold (all of them when there is no store yet)."""
    if not (store / "zarr.json").exists():
        return np.asarray(times)
    return np.setdiff1d(times, open_store(store)[TIME].values)


def await_data(store: Path, times: np.ndarray, timeout_s: float, poll_s: float) -> None:
    """Return once the store holds every one of ``times``; poll every ``poll_s`` seconds.

    Raises
    ------
    DataNotArrivedError
        After ``timeout_s`` seconds, naming the dates still missing and the store's last time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        missing = missing_times(store, times)
        if missing.size == 0:
            return
        if time.monotonic() >= deadline:
            break
        log.info("waiting for %d analyses (first %s) in %s", missing.size, missing[0], store)
        time.sleep(poll_s)
    last = open_store(store)[TIME].values[-1] if (store / "zarr.json").exists() else None
    dates = ", ".join(np.datetime_as_string(t, unit="h") for t in missing)
    raise DataNotArrivedError(
        f"analyses for {dates} did not arrive in {store} within {timeout_s:g} s "
        f"(the store ends at {np.datetime_as_string(last, unit='h') if last is not None else 'no store'})"
    )


def store_step_hours(store: Path, default: int = 6) -> int:
    """The store's time step in hours (``default`` while there is no store yet)."""
    if not (store / "zarr.json").exists():
        return default
    return int(open_store(store).attrs["step_hours"])


def cycle_times(point: str, back_hours: int, step_hours: int) -> np.ndarray:
    """The analysis times from ``point`` minus ``back_hours`` to ``point``, every ``step_hours``."""
    end = np.datetime64(point, "ns")
    return np.arange(
        end - np.timedelta64(back_hours, "h"), end + np.timedelta64(1, "ns"), np.timedelta64(step_hours, "h")
    )


def cycle_point_time(point: str) -> np.datetime64:
    """A Cylc cycle point (``20010101T0000Z``, ``2001-01-01T00:00Z``) as a ``datetime64``."""
    text = point.rstrip("Z").replace("-", "").replace(":", "")
    try:
        return np.datetime64(
            f"{text[0:4]}-{text[4:6]}-{text[6:8]}T{text[9:11] or '00'}:{text[11:13] or '00'}", "ns"
        )
    except ValueError as err:
        raise OptionError(
            f"expected a cycle point such as 20010101T0000Z or 2001-01-01T00:00Z, found {point!r}"
        ) from err


def report_cycle(cfg: RunConfig, tracking_uri: str, point: str, entries: list[Entry]) -> str | None:
    """The cycle point's parent MLflow run ``cycle <point>`` (stage ``cycle-report``): the cycle's archives
    and
    the catalogue's state, with the cycle's stage runs (tagged with the point) nested under it."""
    with mlflow_run(
        tracking_uri,
        cfg.tracking.experiment,
        f"cycle {point}",
        {"stage": "cycle-report", "cycle_point": point},
        cfg.workdir / "mlartifacts",
    ) as tracker:
        mine = [e for e in entries if e.cycle_point == point]
        tracker.set_tags(
            {
                "archives": ",".join(str(e.id) for e in mine),
                "model_versions": ",".join(f"{e.model_name}/{e.model_version}" for e in mine),
            }
        )
        tracker.log_metrics(
            {
                "catalogue_archives": len(entries),
                "catalogue_bytes": sum(e.bytes for e in entries),
                "cycle_archives": len(mine),
            }
        )
        report = cfg.workdir / "cycles" / f"report-{point}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(report) as tmp:
            tmp.write_text(json.dumps([e.as_dict() for e in mine], indent=2, default=str) + "\n")
        tracker.log_artifact(report, "cycle")
        nest_runs_under(tracking_uri, cfg.tracking.experiment, tracker.run_id, {"cycle_point": point})
        return tracker.run_id


@dataclass(frozen=True)
class Headline:
    """A headline score of the promotion rule: ``variable``, ``metric`` at ``lead_hours``."""

    variable: str
    metric: str
    lead_hours: int

    @classmethod
    def parse(cls, text: str) -> Headline:
        """``z500:rmse:24`` → ``Headline("z500", "rmse", 24)``."""
        parts = text.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise OptionError(
                f"expected a headline score VARIABLE:METRIC:LEAD_HOURS (z500:rmse:24), found {text!r}"
            )
        return cls(parts[0], parts[1], int(parts[2]))

    @property
    def higher_is_better(self) -> bool:
        return self.metric in ("acc",)


def headline_values(scorecard: Path, headlines: list[Headline]) -> dict[Headline, float]:
    """fourcast's global scores of ``headlines`` in a scorecard file (``scorecard.nc``).

    Raises
    ------
    StageInputError
        If the scorecard lacks one of them (naming what it has).
    """
    from ensembles.scorecard import FOURCAST, open_scorecard, scorecard_records

    records = [r for r in scorecard_records(open_scorecard(scorecard)) if r["system"] == FOURCAST]
    values = {(r["variable"], r["metric"], r["lead_hours"]): r["value"] for r in records}
    found = {}
    for h in headlines:
        if (h.variable, h.metric, h.lead_hours) not in values:
            raise StageInputError(
                f"scorecard {scorecard} has no fourcast {h.variable} {h.metric} at "
                f"{h.lead_hours} h; it has {sorted(values)[:12]}"
            )
        found[h] = values[(h.variable, h.metric, h.lead_hours)]
    return found


def promote_if_better(
    cfg: RunConfig,
    tracking_uri: str,
    name: str,
    candidate: str,
    alias: str,
    candidate_scores: Path,
    champion_scores: Path | None,
    headlines: list[Headline],
) -> dict:
    """Move ``alias`` of model ``name`` to ``candidate`` if it beats the current holder on every headline
    score.

    Better means: no headline score worse and at least one strictly better (lower RMSE/CRPS,
    higher ACC). Without a current holder of ``alias`` (``champion_scores`` ``None``) the
    candidate is promoted. The candidate version is tagged with its scores; the decision and
    both scorecards are logged to an MLflow run ``promote``.

    Returns
    -------
    dict
        ``{"promoted", "candidate", "champion", "candidate_scores", "champion_scores"}``.
    """
    _, candidate = resolve_model_version(f"models:/{name}/{candidate}", tracking_uri)
    champion = model_aliases(tracking_uri, name).get(alias)
    new = headline_values(candidate_scores, headlines)
    old = headline_values(champion_scores, headlines) if champion is not None and champion_scores else {}
    if champion == candidate:
        promoted, reason = False, f"version {candidate} already holds {alias!r}"
    elif not old:
        promoted, reason = True, f"no version holds {alias!r}"
    else:
        better = [(new[h] > old[h]) if h.higher_is_better else (new[h] < old[h]) for h in headlines]
        worse = [(new[h] < old[h]) if h.higher_is_better else (new[h] > old[h]) for h in headlines]
        promoted = any(better) and not any(worse)
        reason = f"better on {sum(better)}, worse on {sum(worse)} of {len(headlines)} headline scores"
    tag_model_version(
        tracking_uri,
        name,
        candidate,
        {score_metric_name(h.variable, h.metric, h.lead_hours): v for h, v in new.items()},
    )
    if promoted:
        set_model_alias(tracking_uri, name, alias, candidate)
    decision = {
        "promoted": promoted,
        "reason": reason,
        "model": name,
        "alias": alias,
        "candidate": candidate,
        "champion": champion,
        "candidate_scores": {f"{h.variable}:{h.metric}:{h.lead_hours}": v for h, v in new.items()},
        "champion_scores": {f"{h.variable}:{h.metric}:{h.lead_hours}": v for h, v in old.items()},
    }
    with mlflow_run(
        tracking_uri,
        cfg.tracking.experiment,
        "promote",
        {
            "stage": "promote",
            "model": name,
            "candidate_version": candidate,
            "champion_version": champion or "",
            "promoted": str(promoted),
        },
        cfg.workdir / "mlartifacts",
    ) as tracker:
        tracker.log_metrics(
            {
                **{
                    f"candidate/{score_metric_name(h.variable, h.metric, h.lead_hours)}": v
                    for h, v in new.items()
                },
                **{
                    f"champion/{score_metric_name(h.variable, h.metric, h.lead_hours)}": v
                    for h, v in old.items()
                },
            }
        )
        out = candidate_scores.parent / "promotion.json"
        with atomic_output(out) as tmp:
            tmp.write_text(json.dumps(decision, indent=2) + "\n")
        tracker.log_artifact(out, "promotion")
        tracker.log_artifact(candidate_scores, "scorecards/candidate")
        if champion_scores and champion is not None:
            tracker.log_artifact(champion_scores, "scorecards/champion")
    return decision
