"""Figures for MLflow: maps of a forecast, skill against lead time, spread against skill, rank histograms.

Scores come from a scorecard (:mod:`ensembles.scorecard`); every figure is written to a PNG
and its path returned. Maps get coastlines where the grid is geographic and cartopy can draw
them offline: cartopy fetches Natural Earth shapefiles on first use, which an offline machine
cannot, and no PyPI package ships them for cartopy's data directory. Without cartopy or without
those files the maps are drawn on plain longitude/latitude axes and the reason is logged once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

log = logging.getLogger(__name__)

#: Panels drawn with a colour scale symmetric about zero.
DIVERGING = ("error",)
#: Panels of non-negative quantities with their own scale.
POSITIVE = ("spread",)
COASTLINE_FILE = Path("shapefiles", "natural_earth", "physical", "ne_110m_coastline.shp")


@functools.cache
def coastline_projection() -> object | None:
    """Cartopy's PlateCarree if coastlines can be drawn offline, else ``None`` (reason logged once)."""
    try:
        import cartopy
        import cartopy.crs as ccrs
    except ImportError:
        log.info("maps are drawn without coastlines: cartopy is not installed")
        return None
    folders = [cartopy.config.get("pre_existing_data_dir"), cartopy.config.get("data_dir")]
    if not any(folder and (Path(folder) / COASTLINE_FILE).is_file() for folder in folders):
        log.info("maps are drawn without coastlines: no Natural Earth coastline %s under %s, and it cannot be "
                 "downloaded offline", COASTLINE_FILE, [f for f in folders if f])
        return None
    return ccrs.PlateCarree()


def _geographic(lat: np.ndarray, lon: np.ndarray) -> bool:
    return bool(np.all(np.abs(lat) <= 90.0) and lon.min() >= -180.0 and lon.max() <= 360.0)


def forecast_map(path: Path, lat: np.ndarray, lon: np.ndarray, fields: Mapping[str, np.ndarray], title: str,
                 units: str) -> Path:
    """Side-by-side maps, e.g. ``{"truth", "ensemble mean", "error", "spread"}``, each ``(lat, lon)``.

    Panels other than ``error`` and ``spread`` share one colour scale; ``error`` gets a scale
    symmetric about 0, ``spread`` its own from 0.
    """
    projection = coastline_projection() if _geographic(lat, lon) else None
    fig = plt.figure(figsize=(4.2 * len(fields), 2.9), layout="constrained")
    shared = [v for k, v in fields.items() if k not in DIVERGING + POSITIVE]
    vmin = min((float(np.nanmin(v)) for v in shared), default=0.0)
    vmax = max((float(np.nanmax(v)) for v in shared), default=1.0)
    for i, (name, field) in enumerate(fields.items()):
        ax = fig.add_subplot(1, len(fields), i + 1, **({"projection": projection} if projection else {}))
        if name in DIVERGING:
            limit = float(np.nanmax(np.abs(field))) or 1.0
            style = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
        elif name in POSITIVE:
            style = {"cmap": "magma", "vmin": 0.0, "vmax": float(np.nanmax(field)) or 1.0}
        else:
            style = {"cmap": "viridis", "vmin": vmin, "vmax": vmax}
        extra = {"transform": projection} if projection else {}
        mesh = ax.pcolormesh(lon, lat, field, shading="auto", **style, **extra)
        if projection:
            ax.coastlines(linewidth=0.5)
        else:
            ax.set_xlabel("longitude (°E)")
            ax.set_ylabel("latitude (°N)")
            ax.set_ylim(*_lat_extent(lat))
        ax.set_title(name)
        fig.colorbar(mesh, ax=ax, label=units, shrink=0.85)
    fig.suptitle(title)
    return _save(fig, path)


def _lat_extent(lat: np.ndarray) -> tuple[float, float]:
    """South and north edges of the rows' cells, clipped to the poles."""
    half = 0.5 * float(np.abs(np.diff(lat)).max()) if lat.size > 1 else 0.5
    return max(-90.0, float(lat.min()) - half), min(90.0, float(lat.max()) + half)


def skill_vs_lead(path: Path, scorecard: xr.Dataset, variable: str, metric: str, region: str = "global") -> Path:
    """``metric`` of ``variable`` against lead time, one line per system (fourcast and the baselines)."""
    scores = scorecard["score"].sel(metric=metric, variable=variable, region=region)
    hours = scorecard["lead_hours"].values
    fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for system in scores["system"].values:
        values = scores.sel(system=system).values
        if np.isfinite(values).any():
            ax.plot(hours, values, marker="o", label=str(system))
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"{metric} ({_units(scorecard, variable, metric)})")
    ax.set_title(f"{variable} {metric}, {region}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def spread_vs_skill(path: Path, scorecard: xr.Dataset, variable: str, region: str = "global") -> Path:
    """fourcast's ensemble-mean RMSE and spread against lead time, with the spread-skill ratio beside."""
    scores = scorecard["score"].sel(variable=variable, region=region, system="fourcast")
    hours = scorecard["lead_hours"].values
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6), layout="constrained")
    left.plot(hours, scores.sel(metric="rmse"), marker="o", label="ensemble-mean RMSE (skill)")
    left.plot(hours, scores.sel(metric="spread"), marker="s", label="spread")
    left.set_ylabel(_units(scorecard, variable, "rmse"))
    left.set_title(f"{variable} spread and skill, {region}")
    right.plot(hours, scores.sel(metric="ssr"), marker="o", color="C2")
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set_ylabel("spread-skill ratio")
    right.set_title("spread / skill · √((M+1)/M)")
    for ax in (left, right):
        ax.set_xlabel("lead time (h)")
        ax.grid(alpha=0.3)
    left.legend()
    return _save(fig, path)


def rank_histograms(path: Path, scorecard: xr.Dataset, variable: str, lead_hours: Sequence[float],
                    region: str = "global") -> Path:
    """fourcast's rank histograms (frequencies) of ``variable`` at each of ``lead_hours``; flat is consistent."""
    frequencies = scorecard["rank_histogram"].sel(variable=variable, region=region)
    hours = scorecard["lead_hours"].values
    fig, axes = plt.subplots(1, len(lead_hours), figsize=(3.2 * len(lead_hours), 2.9), layout="constrained",
                             sharey=True, squeeze=False)
    for ax, lead in zip(axes[0], lead_hours, strict=True):
        values = frequencies.isel(lead_time=int(np.flatnonzero(hours == lead)[0])).values
        ax.bar(frequencies["rank"].values, values, color="C0")
        ax.axhline(1.0 / values.size, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"+{lead:g} h")
        ax.set_xlabel("rank of the truth")
    axes[0, 0].set_ylabel("frequency")
    fig.suptitle(f"{variable} rank histograms, {region}")
    return _save(fig, path)


def scorecard_plots(out_dir: Path, scorecard: xr.Dataset, metrics: Sequence[str] = ("rmse", "acc", "crps"),
                    region: str = "global", rank_lead_hours: Sequence[float] | None = None) -> list[Path]:
    """Every score figure of a scorecard, per variable: skill vs lead per metric, spread vs skill, ranks.

    Files are named ``<metric>_<variable>.png``, ``spread_skill_<variable>.png`` and
    ``rank_histogram_<variable>.png`` (the last two only for an ensemble of 2 members or more).
    ``rank_lead_hours`` default to up to four lead times spread over the scorecard's.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    hours = scorecard["lead_hours"].values
    chosen = list(rank_lead_hours) if rank_lead_hours is not None else _spread_out(hours, 4)
    ensemble = int(scorecard.attrs.get("n_members", 1)) >= 2
    paths = []
    for variable in scorecard["variable"].values:
        for metric in metrics:
            paths.append(skill_vs_lead(out_dir / f"{metric}_{variable}.png", scorecard, variable, metric, region))
        if ensemble:
            paths.append(spread_vs_skill(out_dir / f"spread_skill_{variable}.png", scorecard, variable, region))
            paths.append(rank_histograms(out_dir / f"rank_histogram_{variable}.png", scorecard, variable, chosen,
                                         region))
    return paths


def _spread_out(hours: np.ndarray, n: int) -> list[float]:
    """Up to ``n`` of ``hours`` evenly spread, skipping lead 0 when there are others."""
    candidates = hours[hours > 0] if (hours > 0).any() else hours
    picks = np.unique(np.linspace(0, candidates.size - 1, min(n, candidates.size)).round().astype(int))
    return [float(candidates[i]) for i in picks]


def _units(scorecard: xr.Dataset, variable: str, metric: str) -> str:
    if metric in scorecard["score"].attrs.get("dimensionless", ()):
        return "1"
    units = str(scorecard["units"].sel(variable=variable).values)
    return f"({units})²" if metric == "mse" else units


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
