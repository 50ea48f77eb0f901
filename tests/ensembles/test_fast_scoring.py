"""The vectorised CRPS and Brier kernels equal the metrics' plain definitions, threaded or not.

The definitions are computed here the direct way: the O(M²) pair sum for the CRPS and the
member fraction above the threshold for the Brier score. Fields are large enough
(> :data:`ensembles.metrics.THREADED_MIN_VALUES` values) for the kernels to split them over
threads, hold float32 members and a few NaNs; differences are judged against the spread of
the expected values (:func:`tests.tolerances.assert_close_to_spread`, float64 summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensembles import metrics
from ensembles.metrics import brier_score, crps_pointwise
from ingest.dims import INIT_TIME, LAT, LON, MEMBER
from tests.tolerances import assert_close_to_spread

#: Float64 sums of O(M) terms in another order: far below any real difference (O(spread)).
FLOAT64_REL = 1e-12


def _fields(members: int = 8, n_init: int = 9, nlat: int = 181, nlon: int = 360):
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((n_init, nlat, nlon))
    ensemble = (truth[:, None] + rng.standard_normal((n_init, members, nlat, nlon))).astype(np.float32)
    ensemble[1, 3, 10, 20] = np.nan
    truth[2, 5, 7] = np.nan
    coords = {
        INIT_TIME: np.arange(n_init),
        LAT: np.linspace(90, -90, nlat),
        LON: np.arange(nlon) * 360.0 / nlon,
    }
    return (
        xr.DataArray(ensemble, dims=(INIT_TIME, MEMBER, LAT, LON), coords=coords),
        xr.DataArray(truth, dims=(INIT_TIME, LAT, LON), coords=coords),
    )


def _crps_definition(ensemble: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    x = ensemble.astype(np.float64)
    m = x.shape[1]
    skill = np.abs(x - truth[:, None]).mean(1)
    pair = sum(np.abs(x[:, i] - x[:, j]) for i in range(m) for j in range(m))
    return skill - pair / (2 * m * (m - 1) if fair else 2 * m * m)


@pytest.mark.parametrize("kind", ["plain", "fair"])
def test_fast_crps_equals_the_pairwise_definition(kind):
    ensemble, truth = _fields()
    assert ensemble.size >= metrics.THREADED_MIN_VALUES
    fast = crps_pointwise(ensemble, truth, kind=kind).transpose(INIT_TIME, LAT, LON).values
    expected = _crps_definition(ensemble.values, truth.values, fair=kind == "fair")
    assert np.isnan(fast[1, 10, 20]) and np.isnan(fast[2, 5, 7])
    assert_close_to_spread(fast, expected, rel=FLOAT64_REL, name=f"{kind} CRPS")


@pytest.mark.parametrize("fair", [False, True])
def test_fast_brier_equals_the_member_fraction_definition(fair):
    ensemble, truth = _fields()
    threshold = 0.3
    x = ensemble.values.astype(np.float64)
    p = (x > threshold).mean(1)
    score = (p - (truth.values > threshold)) ** 2 - (p * (1 - p) / (x.shape[1] - 1) if fair else 0)
    score[np.isnan(x).any(1) | np.isnan(truth.values)] = np.nan
    weights = metrics.area_weights(truth[LAT]).values[None, :, None]
    defined = ~np.isnan(score)
    expected = np.nanmean(
        [
            np.sum(np.where(defined[t], score[t], 0) * weights[0]) / (weights.sum() * score.shape[2])
            if defined[t].all()
            else np.nan
            for t in range(score.shape[0])
        ]
    )
    fast = brier_score(ensemble, truth, threshold, fair=fair)
    assert np.isnan(fast)  # NaN in one init time propagates to the time mean
    per_time = [
        float(
            brier_score(ensemble.isel({INIT_TIME: [t]}), truth.isel({INIT_TIME: [t]}), threshold, fair=fair)
        )
        for t in range(9)
        if t not in (1, 2)
    ]
    np.testing.assert_allclose(np.mean(per_time), expected, rtol=FLOAT64_REL)


@pytest.mark.parametrize("score", ["crps", "brier"])
def test_threaded_and_single_thread_kernels_agree_exactly(monkeypatch, score):
    ensemble, truth = _fields(members=5, nlat=46, nlon=90)

    def run():
        if score == "crps":
            return crps_pointwise(ensemble, truth, kind="fair").values
        return brier_score(ensemble, truth, 0.0, time_dim="none").values

    monkeypatch.setattr(metrics, "THREADED_MIN_VALUES", 1)
    threaded = run()
    monkeypatch.setattr(metrics, "THREADED_MIN_VALUES", 2**62)
    np.testing.assert_array_equal(threaded, run())
