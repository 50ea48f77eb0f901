"""The production CRPS and Brier statistics equal their plain definitions on a full-size grid.

The definitions are computed here the direct way: the O(M²) pair sum for the CRPS and the
member fraction above the threshold (the climatology) for the Brier score, then the
area-weighted mean over the globe. The members are float32 around a float64 truth on a
181 x 360 grid; the scores are means of O(1) values, compared to float64 summation order.
"""

from __future__ import annotations

import numpy as np
import pytest

from ensembles.metrics import forecast_statistics
from ensembles.regions import GLOBAL, weight_matrix
from ingest.grid import cell_area_weights, equiangular_lats, regular_lons

#: Float64 sums of O(M · points) terms of size O(1) in another order, relative to the O(1) score.
FLOAT64_REL = 1e-12
N_INIT, N_MEMBERS, N_LAT, N_LON = 4, 8, 181, 360


def _fields():
    rng = np.random.default_rng(4)
    truth = rng.standard_normal((N_INIT, N_LAT * N_LON))
    ensemble = (truth[:, None] + rng.standard_normal((N_INIT, N_MEMBERS, N_LAT * N_LON))).astype(np.float32)
    climatology = 0.3 * rng.standard_normal(N_LAT * N_LON)
    return ensemble, truth, climatology


def _global_mean(pointwise: np.ndarray) -> np.ndarray:
    """Area-weighted mean over the grid of ``pointwise`` (..., point)."""
    weights = np.broadcast_to(cell_area_weights(equiangular_lats(N_LAT))[:, None], (N_LAT, N_LON)).ravel()
    return pointwise @ weights / weights.sum()


def _statistics(name: str) -> np.ndarray:
    ensemble, truth, climatology = _fields()
    w = weight_matrix([GLOBAL], equiangular_lats(N_LAT), regular_lons(N_LON))
    return np.array(
        [
            forecast_statistics(ensemble[i], truth[i], climatology, w, names=[name])[name][0]
            for i in range(N_INIT)
        ]
    )


@pytest.mark.parametrize("kind", ["plain", "fair"])
def test_crps_statistic_equals_the_pairwise_definition(kind):
    ensemble, truth, _ = _fields()
    x = ensemble.astype(np.float64)
    m = x.shape[1]
    skill = np.abs(x - truth[:, None]).mean(1)
    pair = sum(np.abs(x[:, i] - x[:, j]) for i in range(m) for j in range(m))
    expected = _global_mean(skill - pair / (2 * m * (m - 1) if kind == "fair" else 2 * m * m))
    np.testing.assert_allclose(_statistics(f"crps_{kind}"), expected, rtol=FLOAT64_REL)


@pytest.mark.parametrize("fair", [False, True])
def test_brier_statistic_equals_the_member_fraction_definition(fair):
    ensemble, truth, climatology = _fields()
    p = (ensemble.astype(np.float64) > climatology).mean(1)
    score = (p - (truth > climatology)) ** 2 - (p * (1 - p) / (N_MEMBERS - 1) if fair else 0)
    got = _statistics("brier_fair" if fair else "brier")
    np.testing.assert_allclose(got, _global_mean(score), rtol=FLOAT64_REL)
