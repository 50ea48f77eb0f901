"""The figures the stages make from an archive and its truth, drawn by :mod:`pipeline.plots`.

:mod:`pipeline.plots` (matplotlib, cartopy: the ``[plots]`` extra) draws; this module chooses
what to draw — which init time, lead and fields, in which units, under which title — and logs
the files to the run. Without the extra there are no figures, and a warning says so
(:func:`load_plots`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from ensembles.archive import open_archive
from ensembles.campaign import Campaign
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.lexicon import get_variable
from ingest.schema import DATA, open_store
from pipeline.config import ScoreConfig
from pipeline.errors import StageInputError
from pipeline.lineage import day
from pipeline.settings import config_time
from pipeline.tracking import Tracker

log = logging.getLogger(__name__)

#: g (m s⁻²): geopotential / (10 g) is geopotential height in decametres.
GRAVITY = 9.80665


def load_plots():
    """:mod:`pipeline.plots`, or ``None`` (with a warning) when the [plots] extra (matplotlib, cartopy) is
    missing."""
    try:
        from pipeline import plots
    except ImportError as err:
        log.warning("no plots: %s; install them with pip install 'fourcast[plots]'", err)
        return None
    return plots


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
        f"{data} · {inits.size} inits {day(inits.min())}..{day(inits.max())} · "
        f"{forecasts.sizes.get('member', 1)} members"
    )


def in_map_units(variable: str, fields: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str, str]:
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


def rank_leads(cfg: ScoreConfig, scorecard) -> list[int] | None:
    """``cfg.lead_hours`` the scorecard holds, or ``None`` (let the plot choose) if it holds none."""
    held = [h for h in cfg.lead_hours if h in scorecard["lead_hours"].values]
    return held or None


def score_maps(cfg: ScoreConfig, forecasts, truth, out_dir: Path, plots, subtitle: str = "") -> list[Path]:
    """Maps of truth, ensemble mean, error and spread per variable at ``cfg.map_init`` +
    ``cfg.map_lead_hours``.

    Defaults: the first init time, and the first of ``cfg.lead_hours`` the archive holds (else
    its last lead).

    Raises
    ------
    StageInputError
        If ``cfg.map_init`` or ``cfg.map_lead_hours`` is not in the archive.
    """
    inits, leads = forecasts["init_time"].values, forecasts["lead_time"].values
    init = config_time(cfg.map_init) if cfg.map_init is not None else inits[0]
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
        fields, units, name = in_map_units(variable, fields)
        title = f"{name} at +{hours} h from {str(init)[:13]}" + (f"\n{subtitle}" if subtitle else "")
        paths.append(
            plots.forecast_map(
                path, forecasts[LAT].values, forecasts[LON].values, fields, title, units, contours=True
            )
        )
    return paths


def log_score_plots(
    tracker: Tracker,
    cfg: ScoreConfig,
    forecasts: xr.Dataset,
    truth: xr.Dataset,
    scorecard: xr.Dataset,
    out_dir: Path,
) -> None:
    """Draw the scorecard's plots and the score maps (:func:`score_maps`) into ``out_dir``; log them as
    ``plots``.

    Each figure's PDF twin, where there is one, is logged under ``plots/pdf``. Nothing is drawn
    without the [plots] extra.
    """
    plots = load_plots()
    if plots is None:
        return
    subtitle = plot_subtitle(forecasts, truth)
    figures = plots.scorecard_plots(
        out_dir, scorecard, rank_lead_hours=rank_leads(cfg, scorecard), subtitle=subtitle
    )
    figures += score_maps(cfg, forecasts, truth[DATA], out_dir, plots, subtitle)
    for figure in figures:
        tracker.log_artifact(figure, "plots")
        if figure.with_suffix(".pdf").is_file():
            tracker.log_artifact(figure.with_suffix(".pdf"), "plots/pdf")


def log_forecast_map(tracker: Tracker, archive: Path, store: Path, campaign: Campaign) -> None:
    """A map of the first variable's ensemble mean at ``campaign``'s first init time and 4th (or last) step.

    Truth and error are drawn too where the store holds the valid time. The map goes beside the
    archive and is logged as ``plots``.
    """
    plots = load_plots()
    if plots is None:
        return
    init, lead = campaign.init_times[0], min(campaign.n_steps, 4) * campaign.step
    forecasts, truth = open_archive(archive), open_store(store)
    variable = str(truth[CHANNEL].values[0])
    mean = forecasts[variable].sel(init_time=init, lead_time=lead).mean("member").values
    fields = {"ensemble mean": mean}
    valid = (init + lead).astype("datetime64[ns]")
    if np.isin(valid, truth[TIME].values):  # an operational forecast outruns the truth
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
