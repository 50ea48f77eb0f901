"""Score figures from a real scorecard: files written, panels drawn, coastlines only when drawable offline."""

from __future__ import annotations

import logging

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

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
    truth = xr.DataArray(5.4e4 + 800 * rng.standard_normal((12, 1, 9, 16)), dims=(TIME, CHANNEL, LAT, LON),
                         coords={TIME: times, CHANNEL: ["z500"], LAT: lat, LON: lon})
    inits = times[[0, 2, 4]]
    valid = np.stack([truth.sel({TIME: inits + lead}).values[:, 0] for lead in LEADS], axis=1)
    growth = (1 + np.arange(LEADS.size))[None, :, None, None, None]
    members = valid[:, :, None] + 100 * growth * rng.standard_normal((3, LEADS.size, 4, 9, 16))
    archive = xr.Dataset({"z500": ((INIT_TIME, LEAD_TIME, MEMBER, LAT, LON), members)},
                         coords={INIT_TIME: inits, LEAD_TIME: LEADS, MEMBER: np.arange(4), LAT: lat, LON: lon})
    return score_archive(archive, truth, truth.mean(TIME), ScoreOptions(regions=(GLOBAL, TROPICS)))


def _drawn(path) -> bool:
    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image.shape[0] > 100 and float(image[..., :3].std()) > 0.01


def test_every_score_figure_is_drawn(tmp_path, scorecard):
    paths = plots.scorecard_plots(tmp_path, scorecard, region="tropics")
    assert sorted(p.name for p in paths) == ["acc_z500.png", "crps_z500.png", "rank_histogram_z500.png",
                                             "rmse_z500.png", "spread_skill_z500.png"]
    assert all(_drawn(p) for p in paths)


def test_rank_histograms_at_chosen_leads(tmp_path, scorecard):
    path = plots.rank_histograms(tmp_path / "ranks.png", scorecard, "z500", [6, 18])
    assert _drawn(path)
    assert plots._spread_out(scorecard["lead_hours"].values, 2) == [6.0, 18.0]


def test_maps_without_coastlines_say_why(tmp_path, caplog):
    plots.coastline_projection.cache_clear()
    lat, lon = equiangular_lats(9), regular_lons(16)
    rng = np.random.default_rng(1)
    truth, mean = rng.standard_normal((2, 9, 16))
    fields = {"truth": truth, "ensemble mean": mean, "error": mean - truth, "spread": np.abs(mean)}
    with caplog.at_level(logging.INFO, logger="pipeline.plots"):
        path = plots.forecast_map(tmp_path / "map.png", lat, lon, fields, "z500 at +6 h", "m2 s-2")
    assert _drawn(path)
    if plots.coastline_projection() is None:
        assert "maps are drawn without coastlines" in caplog.text
