"""Reference forecasts: persistence and climatology in the ensemble-mean layout."""

from __future__ import annotations

import numpy as np
import pytest

from ensembles.baselines import FORECAST_DIMS, climatology_forecast, persistence_forecast
from ensembles.errors import ScoringError
from ensembles.metrics import rmse
from ingest.dims import CHANNEL, INIT_TIME, LEAD_TIME, TIME

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
    forecast = persistence_forecast(truth, init_times, LEADS, ["z500"])["z500"].sel({LEAD_TIME: LEADS[0]}, drop=True)
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
