"""Reference forecasts: persistence and climatology in the ensemble-mean layout."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensembles.errors import ScoringError
from ensembles.scorecard import score_archive
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, TIME
from ingest.schema import CLIMATOLOGY_DIMS, DAYOFYEAR, HOUR
from tests.ensembles.reference_baselines import FORECAST_DIMS, climatology_forecast, persistence_forecast
from tests.ensembles.reference_metrics import rmse
from tests.tolerances import assert_close_to_spread

LEADS = np.array([0, 6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")


@pytest.fixture
def init_times(truth):
    return truth[TIME].values[[0, 4]]


def test_persistence_repeats_the_state_at_init_time(truth, init_times):
    forecast = persistence_forecast(truth, init_times, LEADS, ["u500", "z500"])
    assert list(forecast.data_vars) == ["u500", "z500"]
    for variable in ("u500", "z500"):
        assert forecast[variable].dims == FORECAST_DIMS
        for lead in LEADS:
            np.testing.assert_array_equal(
                forecast[variable].sel({LEAD_TIME: lead}).values,
                truth.sel({TIME: init_times, CHANNEL: variable}).values,
            )


def test_persistence_scores_zero_error_at_lead_zero(truth, init_times):
    forecast = persistence_forecast(truth, init_times, LEADS, ["z500"])["z500"].sel(
        {LEAD_TIME: LEADS[0]}, drop=True
    )
    at_init = truth.sel({TIME: init_times, CHANNEL: "z500"}, drop=True).rename({TIME: INIT_TIME})
    assert float(rmse(forecast, at_init)) == 0.0


def test_climatology_is_the_same_field_everywhere(truth, climatology, init_times):
    forecast = climatology_forecast(climatology, init_times, LEADS, ["z500"])["z500"]
    assert forecast.dims == FORECAST_DIMS
    assert forecast.sizes[INIT_TIME] == 2 and forecast.sizes[LEAD_TIME] == 3
    np.testing.assert_array_equal(
        forecast.values, np.broadcast_to(climatology.sel({CHANNEL: "z500"}).values, forecast.shape)
    )


def test_missing_init_times_and_variables_are_named(truth, climatology, init_times):
    late = np.array(["2021-06-01T00"], dtype="datetime64[ns]")
    with pytest.raises(ScoringError, match=r"truth lacks 1 of the 3 time labels needed: 2021-06-01T00"):
        persistence_forecast(truth, np.concatenate([init_times, late]), LEADS, ["z500"])
    with pytest.raises(ScoringError, match=r"climatology lacks 1 of the 2 channel labels needed: t850"):
        climatology_forecast(climatology, init_times, LEADS, ["z500", "t850"])


def _seasonal(climatology: xr.DataArray, hours=(0, 6, 12, 18)) -> xr.DataArray:
    """A day-of-year x hour climatology: the time mean plus ``100·dayofyear + hour`` (recognisable values)."""
    days = np.arange(1, 367)
    offset = xr.DataArray(
        100.0 * days[:, None] + np.array(hours)[None, :],
        dims=(DAYOFYEAR, HOUR),
        coords={DAYOFYEAR: days, HOUR: list(hours)},
    )
    return (climatology + offset).transpose(*CLIMATOLOGY_DIMS)


def test_climatology_forecast_is_the_climatology_at_the_valid_time(truth, climatology, init_times):
    seasonal = _seasonal(climatology)
    forecast = climatology_forecast(
        seasonal, init_times, np.append(LEADS, np.timedelta64(24, "h")), ["z500"]
    )["z500"]
    base = climatology.sel({CHANNEL: "z500"}).values
    # init 2020-01-02T00 (day 2): +0 h is day 2 hour 0, +12 h hour 12, +24 h day 3 hour 0
    second = forecast.sel({INIT_TIME: init_times[1]})
    for lead_hours, offset in ((0, 200), (12, 212), (24, 300)):
        np.testing.assert_allclose(
            second.sel({LEAD_TIME: np.timedelta64(lead_hours, "h")}).values, base + offset
        )


def test_valid_times_between_the_climatology_hours_are_refused(climatology, init_times):
    with pytest.raises(
        ScoringError,
        match=r"cannot take the climatology at the forecasts' valid times: climatology "
        r"holds hours \[.*0.*12.*\]; valid times .* fall between them",
    ):
        climatology_forecast(_seasonal(climatology, hours=(0, 12)), init_times, LEADS, ["z500"])
    with pytest.raises(
        ScoringError, match=r"expected a climatology with dims \(dayofyear, hour, channel, lat, lon\)"
    ):
        climatology_forecast(climatology.expand_dims(month=[1]), init_times, LEADS, ["z500"])


def test_scores_use_the_climatology_at_the_valid_time(truth, climatology, init_times):
    ensemble = persistence_forecast(truth, init_times, LEADS, ["z500", "u500"]).expand_dims(member=[0])
    ensemble = ensemble.transpose(INIT_TIME, LEAD_TIME, "member", LAT, LON)
    flat = score_archive(ensemble, truth, climatology)
    constant = score_archive(ensemble, truth, _seasonal(climatology) * 0 + climatology)
    assert_close_to_spread(flat["score"], constant["score"], rel=1e-9, name="score")
    seasonal = score_archive(ensemble, truth, _seasonal(climatology))
    by_metric = seasonal["score"].sel(variable="z500", region="global", lead_time=LEADS[1])
    expected = climatology_forecast(_seasonal(climatology), init_times, LEADS, ["z500"])["z500"]
    expected = expected.sel({LEAD_TIME: LEADS[1]})
    y = truth.sel({CHANNEL: "z500", TIME: init_times + LEADS[1]}, drop=True).rename({TIME: INIT_TIME})
    y = y.assign_coords({INIT_TIME: init_times})
    climatology_rmse = float(by_metric.sel(metric="rmse", system="climatology"))
    assert climatology_rmse == pytest.approx(float(rmse(expected, y)), rel=1e-9)
    assert not np.allclose(
        by_metric.sel(metric="acc", system="persistence"),
        flat["score"].sel(
            variable="z500", region="global", lead_time=LEADS[1], metric="acc", system="persistence"
        ),
    )


def test_scoring_reports_progress_chunk_by_chunk(truth, climatology, init_times, monkeypatch, caplog):
    monkeypatch.setenv("FOURCAST_PROGRESS", "log")
    monkeypatch.setenv("FOURCAST_PROGRESS_EVERY", "0")
    ensemble = persistence_forecast(truth, init_times, LEADS, ["z500", "u500"]).expand_dims(member=[0])
    ensemble = ensemble.transpose(INIT_TIME, LEAD_TIME, "member", LAT, LON)
    with caplog.at_level("INFO", logger="fourcast.progress"):
        score_archive(ensemble, truth, climatology)
    lines = [record.getMessage() for record in caplog.records if record.name == "fourcast.progress"]
    assert lines and all(line.startswith("scoring 2 variables x 2 inits x 3 leads") for line in lines)
    assert "6/6 chunks (100%)" in lines[-1]  # one chunk per init x lead, the last line when done
