"""Time fourcast's CRPS and weighted RMSE against xskillscore on the same arrays, side by side.

Run from the repository root (needs ``xskillscore``, not a fourcast dependency)::

    .venv/bin/python benchmarks/scoring_vs_xskillscore.py

For every case in :data:`CASES` it builds seeded random float64 fields ``(init_time, member,
lat, lon)`` and a truth ``(init_time, lat, lon)``, then times, best of :data:`REPEAT` runs:

* ``crps plain``: :func:`ensembles.metrics.crps` ``kind="plain"`` vs ``xskillscore.crps_ensemble``
  (both the CRPS of the members' empirical distribution, area-weighted mean over
  init time × lat × lon), and checks they agree to :data:`RTOL`;
* ``crps fair``: ours ``kind="fair"`` vs the same ``xskillscore.crps_ensemble`` call
  (xskillscore has no fair CRPS, so no agreement check: the row times the same job);
* ``rmse``: :func:`ensembles.metrics.rmse` of member 0 vs ``xskillscore.rmse`` with the same
  latitude weights (broadcast to ``(init_time, lat, lon)`` once, outside the timing, as
  ``xskillscore.rmse`` requires), checked to agree to :data:`RTOL`.

* ``scorecard statistics``: everything the scorecard computes per chunk
  (:func:`ensembles.metrics.forecast_statistics`, see :func:`scorecard_row`) vs the subset of
  those metrics xskillscore has, on the same arrays; the plain CRPS is checked to agree.

Case names given as arguments restrict the run to those cases. It prints a table with
``ratio = ours / xskillscore`` (below 1: ours is faster). Ratios are the
point: absolute times depend on the machine and its load. A call that raises ``MemoryError``
is reported as "out of memory": without numba, properscoring (under xskillscore's CRPS) holds
an (…, M, M) array, about 24 GiB for the 50-member 181×360 case. The header says which
properscoring path ran. It exits with status 1 if a checked pair disagrees.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xarray as xr
import xskillscore

from ensembles.metrics import area_weights, crps, forecast_statistics, rmse
from ensembles.regions import GLOBAL, weight_matrix
from ingest.dims import INIT_TIME, LAT, LON, MEMBER
from ingest.grid import equiangular_lats, regular_lons

REPEAT = 3
RTOL = 1e-10
SEED = 0


@dataclass(frozen=True)
class Case:
    """One problem size: init times × members × lat × lon."""

    name: str
    n_init: int
    n_members: int
    n_lat: int
    n_lon: int


CASES = (
    Case("20x50x32x64", 20, 50, 32, 64),
    Case("20x10x181x360", 20, 10, 181, 360),
    Case("20x50x181x360", 20, 50, 181, 360),
)


@dataclass(frozen=True)
class Timing:
    """Fastest wall time of a call and its value; ``None`` for both when it ran out of memory."""

    seconds: float | None
    value: float | None


@dataclass(frozen=True)
class Row:
    """One line of the table: our time and xskillscore's for the same job, and how far they differ."""

    case: str
    metric: str
    ours: Timing
    theirs: Timing
    checked: bool  # whether the two values are the same quantity and must agree

    @property
    def ratio(self) -> float | None:
        if self.ours.seconds is None or self.theirs.seconds is None:
            return None
        return self.ours.seconds / self.theirs.seconds

    @property
    def rel_diff(self) -> float | None:
        if not self.checked or self.ours.value is None or self.theirs.value is None:
            return None
        return abs(self.ours.value / self.theirs.value - 1)


def fields(case: Case, seed: int = SEED) -> tuple[xr.DataArray, xr.DataArray]:
    """Seeded ``(ensemble[init_time, member, lat, lon], truth[init_time, lat, lon])``, float64."""
    rng = np.random.default_rng(seed)
    coords = {
        INIT_TIME: np.arange(case.n_init),
        LAT: equiangular_lats(case.n_lat),
        LON: regular_lons(case.n_lon),
    }
    truth = xr.DataArray(
        rng.standard_normal((case.n_init, case.n_lat, case.n_lon)), dims=(INIT_TIME, LAT, LON), coords=coords
    )
    members = truth.values[:, None] + 0.8 * rng.standard_normal(
        (case.n_init, case.n_members, case.n_lat, case.n_lon)
    )
    ensemble = xr.DataArray(members, dims=(INIT_TIME, MEMBER, LAT, LON), coords=coords)
    return ensemble, truth


def best_time(call: Callable[[], xr.DataArray], repeat: int = REPEAT) -> Timing:
    """Fastest of ``repeat`` calls of ``call`` and its value, or an empty timing if memory runs out.

    properscoring's pure-numpy CRPS holds an (…, M, M) array, which does not fit for large M.
    """
    times, value = [], float("nan")
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            value = float(call())
        except MemoryError:
            return Timing(None, None)
        times.append(time.perf_counter() - start)
    return Timing(min(times), value)


def run_case(case: Case) -> list[Row]:
    """Time the three comparisons of one case, each pair on the same arrays."""
    ensemble, truth = fields(case)
    weights = area_weights(truth[LAT])
    dims = [INIT_TIME, LAT, LON]
    forecast = ensemble.isel({MEMBER: 0}, drop=True)
    full_weights = weights.broadcast_like(forecast)  # xskillscore.rmse wants weights over every reduced dim

    theirs_crps = best_time(
        lambda: xskillscore.crps_ensemble(truth, ensemble, member_dim=MEMBER, dim=dims, weights=weights)
    )
    return [
        scorecard_row(case, ensemble, truth, weights),
        Row(
            case.name, "crps plain", best_time(lambda: crps(ensemble, truth, kind="plain")), theirs_crps, True
        ),
        Row(
            case.name, "crps fair", best_time(lambda: crps(ensemble, truth, kind="fair")), theirs_crps, False
        ),
        Row(
            case.name,
            "rmse (area-weighted)",
            best_time(lambda: rmse(forecast, truth)),
            best_time(lambda: xskillscore.rmse(forecast, truth, dim=dims, weights=full_weights)),
            True,
        ),
    ]


def scorecard_row(case: Case, ensemble: xr.DataArray, truth: xr.DataArray, weights: xr.DataArray) -> Row:
    """Every scorecard statistic (chunk by chunk, as batch and streaming scoring run) vs xskillscore's subset.

    Ours: :func:`ensembles.metrics.forecast_statistics` for each init time, one region — the
    statistics of all 12 scorecard metrics (RMSE/MSE, MAE, bias, ACC, fair and plain CRPS,
    fair and plain energy score, Brier, spread, SSR, debiased RMSE) and the rank histogram —
    summed over init times. Theirs: the metrics of that list xskillscore has, on the same
    arrays: ``rmse``, ``mae``, ``me`` of the ensemble mean, ``crps_ensemble``, ``brier_score``
    of the event "above 0" and ``rank_histogram``. The plain CRPS of both is checked to agree.
    """
    n_points = case.n_lat * case.n_lon
    w = weight_matrix([GLOBAL], truth[LAT].values, truth[LON].values)
    members = ensemble.values.reshape(case.n_init, case.n_members, n_points)
    observed = truth.values.reshape(case.n_init, n_points)
    climatology = np.zeros(n_points)

    def ours() -> float:
        crps_sum = 0.0
        for i in range(case.n_init):
            crps_sum += forecast_statistics(members[i], observed[i], climatology, w)["crps_plain"][0]
        return crps_sum / case.n_init

    dims = [INIT_TIME, LAT, LON]
    mean = ensemble.mean(MEMBER)
    full_weights = weights.broadcast_like(truth)

    def theirs() -> float:
        for metric in (xskillscore.rmse, xskillscore.mae, xskillscore.me):
            metric(mean, truth, dim=dims, weights=full_weights)
        xskillscore.brier_score(truth > 0, (ensemble > 0).mean(MEMBER), dim=dims, weights=full_weights)
        xskillscore.rank_histogram(truth, ensemble, dim=dims, member_dim=MEMBER)
        return xskillscore.crps_ensemble(truth, ensemble, member_dim=MEMBER, dim=dims, weights=weights)

    return Row(
        case.name,
        "scorecard statistics (all 12 metrics + ranks) vs xs subset",
        best_time(ours),
        best_time(theirs),
        True,
    )


def table(rows: list[Row]) -> str:
    """Markdown table of the rows."""
    lines = [
        (
            "| case (init x member x lat x lon) | metric | ours (s) | xskillscore (s) | ratio "
            "ours/xs | rel. diff |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}"
        if not r.checked:
            diff = "n/a (xs has no fair CRPS)"
        else:
            diff = "n/a" if r.rel_diff is None else f"{r.rel_diff:.1e}"
        lines.append(
            f"| {r.case} | {r.metric} | {_seconds(r.ours)} | {_seconds(r.theirs)} | {ratio} | {diff} |"
        )
    return "\n".join(lines)


def _seconds(timing: Timing) -> str:
    return "out of memory" if timing.seconds is None else f"{timing.seconds:.3f}"


def crps_backend() -> str:
    """Which properscoring path ``xskillscore.crps_ensemble`` takes: a numba gufunc if numba imports."""
    if importlib.util.find_spec("numba") is None:
        return "xskillscore CRPS via properscoring's pure-numpy path (numba not installed)"
    return "xskillscore CRPS via properscoring's numba gufunc"


def main() -> int:
    print(
        f"best of {REPEAT}; float64; xskillscore {xskillscore.__version__}, xarray {xr.__version__}, "
        f"numpy {np.__version__}; {crps_backend()}",
        flush=True,
    )
    chosen = [case for case in CASES if not sys.argv[1:] or case.name in sys.argv[1:]]
    rows = [row for case in chosen for row in run_case(case)]
    print(table(rows))
    disagree = [r for r in rows if r.rel_diff is not None and r.rel_diff > RTOL]
    for r in disagree:
        print(
            f"DISAGREE: {r.case} {r.metric}: relative difference {r.rel_diff:.3e} > {RTOL:g}", file=sys.stderr
        )
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
