"""Each finaliser declares exactly the statistics it reads, so the declarations cannot drift."""

from __future__ import annotations

import numpy as np
import pytest

from ensembles.errors import MissingStatisticsError, ScoringError
from ensembles.metrics import (
    ENSEMBLE_STATISTICS,
    FINALISERS,
    METRICS,
    STATISTICS,
    Finaliser,
    StatisticSums,
    finalise,
    forecast_statistics,
)
from ensembles.regions import GLOBAL, TROPICS, weight_matrix

LAT = np.linspace(90, -90, 9)
LON = np.arange(0, 360, 30.0)


def _statistics(n_members: int, seed: int = 7) -> dict[str, np.ndarray]:
    """Statistics of one seeded forecast in two regions (global, tropics)."""
    rng = np.random.default_rng(seed)
    points = LAT.size * LON.size
    truth = rng.standard_normal(points)
    members = truth + rng.standard_normal((n_members, points))
    climatology = 0.3 * rng.standard_normal(points)
    return forecast_statistics(members, truth, climatology, weight_matrix([GLOBAL, TROPICS], LAT, LON))


def test_declared_statistics_are_statistics_and_ensemble_ones_are_those_of_two_members():
    assert all(isinstance(f, Finaliser) for f in FINALISERS.values()) and METRICS == tuple(FINALISERS)
    for finaliser in FINALISERS.values():
        assert set(finaliser.needed(1)) | set(finaliser.needed(5)) <= set(STATISTICS)
    assert set(_statistics(1)) == set(STATISTICS) - ENSEMBLE_STATISTICS
    assert set(_statistics(4)) == set(STATISTICS)


@pytest.mark.parametrize("n_members", [1, 4])
@pytest.mark.parametrize("metric", METRICS)
def test_each_finaliser_works_from_its_declared_statistics_alone(metric, n_members):
    stats = _statistics(n_members)
    full = finalise(StatisticSums.of(stats, n_members), metric)
    needed = FINALISERS[metric].needed(n_members)
    assert full.shape == (2,)
    if n_members == 1 and ENSEMBLE_STATISTICS & set(needed):
        assert np.isnan(full).all()  # an ensemble metric of one member
        return
    only = finalise(StatisticSums.of({k: stats[k] for k in needed}, n_members), metric)
    np.testing.assert_array_equal(only, full)
    assert np.isfinite(only).all()


def test_fair_scores_for_ensembles_plain_ones_for_one_member():
    four, one = _statistics(4), _statistics(1)
    for metric, fair, plain in (
        ("crps", "crps_fair", "crps_plain"),
        ("energy_score", "energy_fair", "energy_plain"),
        ("brier", "brier_fair", "brier"),
    ):
        np.testing.assert_array_equal(finalise(StatisticSums.of(four, 4), metric), four[fair])
        np.testing.assert_array_equal(finalise(StatisticSums.of(one, 1), metric), one[plain])
    # one member: CRPS = MAE
    np.testing.assert_array_equal(finalise(StatisticSums.of(one, 1), "crps"), one["ae"])


def test_a_missing_statistic_is_a_typed_error_naming_it():
    four = _statistics(4)
    without_fair = StatisticSums.of({k: v for k, v in four.items() if k != "crps_fair"}, 4)
    expected = r"'crps' of 4-member forecasts .* missing \['crps_fair'\]"
    with pytest.raises(MissingStatisticsError, match=expected):
        finalise(without_fair, "crps")
    without_se = StatisticSums.of({k: v for k, v in _statistics(1).items() if k != "se"}, 1)
    with pytest.raises(MissingStatisticsError, match=r"missing \['se'\]"):
        finalise(without_se, "rmse")
    assert issubclass(MissingStatisticsError, ScoringError)
    # a one-member metric of the ensemble statistics is NaN whichever statistics are present
    assert np.isnan(finalise(without_se, "spread")).all() and finalise(without_se, "spread").shape == (2,)


def test_a_finaliser_reading_an_undeclared_statistic_fails_at_once(monkeypatch):
    monkeypatch.setitem(FINALISERS, "drifted", Finaliser(("se",), lambda m, n: m["ae"]))
    with pytest.raises(KeyError, match="ae"):
        finalise(StatisticSums.of(_statistics(4), 4), "drifted")
