"""Scorecards: every metric of a forecast archive and its baselines, by region and lead time.

A scorecard is an :class:`xarray.Dataset`::

    score[metric, variable, region, lead_time, system]   float64, NaN where a metric does not
                                                        apply (spread of a single forecast)
    rank_histogram[variable, region, lead_time, rank]    fourcast's rank frequencies (sum 1)
    n_forecasts[variable, lead_time, system]             init times that went into each score
    n_skipped[variable, lead_time]                       init times skipped for NaNs
    n_unwritten[variable, lead_time]                     init times never written (partial archive)
    coords: metric, variable, region, lead_time (timedelta64), lead_hours, system, rank,
            units(variable)

It is built from mergeable partial results (:class:`ScoreAccumulator`, holding a
:class:`~ensembles.metrics.StatisticSums` per system, variable and lead): each forecast — one
``(init_time, lead_time)`` chunk of the archive — is scored on its own by
:func:`score_chunk`, and the partial results are summed. :func:`score_archive` does so with
Dask, one archive chunk per task, so an archive is never loaded whole;
:class:`ensembles.streaming.StreamingScorer` does the same while the runner produces members.

Systems: ``fourcast`` (the archive's ensemble), ``persistence`` (the truth at init time),
``climatology`` (the day-of-year × hour climatology at the valid time), ``time_mean`` (the
per-point time mean of the statistics period, when given: the stronger climatology of a flow
without seasons) and ``control`` (member 0 of the ensemble alone, its control forecast), scored at
the same points by the same statistics. The ACC of the climatology forecast is 0 by convention (its anomaly is
identically
zero, the correlation 0/0).

NaN policy (``ScoreOptions.nan_policy``): ``"fail"`` (default) raises
:class:`~ensembles.errors.ScoringError` naming variable, init and lead of the first forecast
whose forecast, truth or climatology holds a NaN; ``"skip"`` leaves such a forecast out for
every system alike (so systems stay comparable) and counts it in ``n_skipped``. Partial
archives (``allow_partial``): a forecast that is NaN everywhere was never written; it is left
out and counted in ``n_unwritten`` instead of failing.

Unfinished campaign archives (:func:`open_for_scoring` with ``partial``): the per-item
completion records decide what is scored, not NaNs. Only the init times whose every member
block is recorded complete are kept (so every score averages over the same full ensemble); the
others are left out and counted. The NaN policy then applies to the NaNs of those completed
forecasts, which are real ones (``ScoreOptions.recorded_complete``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import pandas as pd
import xarray as xr
from dask.callbacks import Callback

from ensembles.archive import open_archive, unfinished_stores
from ensembles.baselines import climatology_at, require_labels
from ensembles.campaign import CAMPAIGN, recorded_items
from ensembles.errors import ArchiveError, ScoringError, ScoringGridError
from ensembles.metrics import (
    METRICS,
    RANK,
    StatisticSums,
    finalise,
    forecast_statistics,
    rank_histogram_frequencies,
)
from ensembles.regions import REGIONS, Region, weight_matrix
from ingest.atomic import atomic_output
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME
from ingest.formats.netcdf_lock import NETCDF_LOCK
from ingest.grid import check_coords
from ingest.lexicon import get_variable
from ingest.progress import progress

FOURCAST = "fourcast"
PERSISTENCE = "persistence"
CLIMATOLOGY = "climatology"
TIME_MEAN = "time_mean"
CONTROL = "control"
SYSTEMS = (FOURCAST, PERSISTENCE, CLIMATOLOGY, TIME_MEAN, CONTROL)
#: The two climatological baselines; the stronger (lower RMSE) of them is the one to beat.
CLIMATOLOGIES = (CLIMATOLOGY, TIME_MEAN)
NAN_POLICIES = ("fail", "skip")
METRIC, VARIABLE, REGION, SYSTEM = "metric", "variable", "region", "system"
SCORE_DIMS = (METRIC, VARIABLE, REGION, LEAD_TIME, SYSTEM)
#: Metrics without units (the others are in the variable's units, ``mse`` in its square).
DIMENSIONLESS = ("acc", "ssr", "brier", "reliability")
#: Chunks summed per task of the Dask reduction tree.
_FAN_IN = 16

Key = tuple[str, str, np.timedelta64]


@dataclass(frozen=True)
class ScoreOptions:
    """How to score.

    Attributes
    ----------
    regions : tuple of Region
        Regions to average over (default: global, both extra-tropics, tropics).
    nan_policy : {"fail", "skip"}
        What a NaN in a forecast, the truth or the climatology does (module docstring).
    allow_partial : bool
        Leave out forecasts that were never written (all NaN) instead of failing.
    baselines : bool
        Also score persistence and climatology.
    recorded_complete : bool
        Every forecast given is recorded complete by the archive (:func:`open_for_scoring`), so
        a NaN in it, even everywhere, is a real NaN under ``nan_policy``, never "unwritten".
    """

    regions: tuple[Region, ...] = tuple(REGIONS.values())
    nan_policy: Literal["fail", "skip"] = "fail"
    allow_partial: bool = False
    baselines: bool = True
    recorded_complete: bool = False

    def __post_init__(self) -> None:
        if self.nan_policy not in NAN_POLICIES:
            raise ScoringError(f"unknown NaN policy {self.nan_policy!r}; expected one of {NAN_POLICIES}")
        names = [r.name for r in self.regions]
        if not names or len(set(names)) != len(names):
            raise ScoringError(f"expected at least one region and distinct region names, found {names}")


@dataclass
class ScoreAccumulator:
    """Partial scorecard: statistic sums per ``(system, variable, lead)`` and what was left out.

    ``a + b`` merges the partial results of disjoint sets of forecasts (chunks, ranks).
    """

    sums: dict[Key, StatisticSums] = field(default_factory=dict)
    skipped: dict[tuple[str, np.timedelta64], int] = field(default_factory=lambda: defaultdict(int))
    unwritten: dict[tuple[str, np.timedelta64], int] = field(default_factory=lambda: defaultdict(int))

    def add(
        self,
        system: str,
        variable: str,
        lead: np.timedelta64,
        statistics: dict[str, np.ndarray],
        n_members: int,
    ) -> None:
        """Add the statistics of one forecast (:func:`~ensembles.metrics.forecast_statistics`)."""
        key = (system, variable, np.timedelta64(lead, "ns"))
        one = StatisticSums.of(statistics, n_members)
        self.sums[key] = self.sums[key] + one if key in self.sums else one

    def __add__(self, other: ScoreAccumulator) -> ScoreAccumulator:
        merged = ScoreAccumulator(dict(self.sums))
        for key, sums in other.sums.items():
            merged.sums[key] = merged.sums[key] + sums if key in merged.sums else sums
        for mine, theirs, into in (
            (self.skipped, other.skipped, merged.skipped),
            (self.unwritten, other.unwritten, merged.unwritten),
        ):
            for key, count in [*mine.items(), *theirs.items()]:
                into[key] += count
        return merged

    def to_dataset(
        self,
        variables: Sequence[str],
        lead_times: np.ndarray,
        regions: Sequence[Region],
        attrs: dict[str, Any] | None = None,
    ) -> xr.Dataset:
        """The scorecard (module docstring) of everything accumulated: the systems scored, in :data:`SYSTEMS`
        order."""
        leads = np.asarray(lead_times).astype("timedelta64[ns]")
        held = {key[0] for key in self.sums}
        systems = [s for s in SYSTEMS if s in held or s in (FOURCAST, PERSISTENCE, CLIMATOLOGY)]
        shape = (len(METRICS), len(variables), len(regions), leads.size, len(systems))
        score = np.full(shape, np.nan)
        n_members = max((s.n_members for k, s in self.sums.items() if k[0] == FOURCAST), default=1)
        ranks = np.full((len(variables), len(regions), leads.size, n_members + 1), np.nan)
        counts = np.zeros((len(variables), leads.size, len(systems)), dtype=np.int64)
        for (system, variable, lead), sums in self.sums.items():
            v, l, s = (
                list(variables).index(variable),
                int(np.flatnonzero(leads == lead)[0]),
                systems.index(system),
            )
            counts[v, l, s] = sums.count
            for m, metric in enumerate(METRICS):
                score[m, v, :, l, s] = finalise(sums, metric)
            frequencies = rank_histogram_frequencies(sums) if system == FOURCAST else None
            if frequencies is not None:
                ranks[v, :, l, :] = frequencies.T
        left_out = {
            name: np.array([[table.get((v, lead), 0) for lead in leads] for v in variables], dtype=np.int64)
            for name, table in (("n_skipped", self.skipped), ("n_unwritten", self.unwritten))
        }
        coords = {
            METRIC: list(METRICS),
            VARIABLE: list(variables),
            REGION: [r.name for r in regions],
            LEAD_TIME: leads,
            SYSTEM: systems,
            RANK: np.arange(n_members + 1),
            "lead_hours": (LEAD_TIME, leads / np.timedelta64(1, "h")),
            "units": (VARIABLE, [get_variable(v).units for v in variables]),
        }
        return xr.Dataset(
            {
                "score": (
                    SCORE_DIMS,
                    score,
                    {"long_name": "verification score", "dimensionless": list(DIMENSIONLESS)},
                ),
                "rank_histogram": (
                    (VARIABLE, REGION, LEAD_TIME, RANK),
                    ranks,
                    {"long_name": "frequency of the truth's rank among the fourcast members"},
                ),
                "n_forecasts": ((VARIABLE, LEAD_TIME, SYSTEM), counts),
                "n_skipped": ((VARIABLE, LEAD_TIME), left_out["n_skipped"]),
                "n_unwritten": ((VARIABLE, LEAD_TIME), left_out["n_unwritten"]),
            },
            coords=coords,
            attrs={"n_members": n_members, **(attrs or {})},
        )


def score_chunk(
    init_time: np.datetime64,
    lead: np.timedelta64,
    variables: Sequence[str],
    members: np.ndarray,
    truth_valid: np.ndarray,
    truth_init: np.ndarray,
    climatology_valid: np.ndarray,
    region_weights: np.ndarray,
    options: ScoreOptions,
    time_mean: np.ndarray | None = None,
) -> ScoreAccumulator:
    """Score one forecast (one init and lead, every variable) for every system and region.

    Parameters
    ----------
    init_time, lead : numpy.datetime64, numpy.timedelta64
        Labels of the forecast (for accounting and messages).
    variables : sequence of str
        Channel ids, in the order of the channel axes below.
    members : numpy.ndarray, shape (member, channel, lat, lon)
        The ensemble forecast.
    truth_valid, truth_init, climatology_valid : numpy.ndarray, shape (channel, lat, lon)
        Truth at the valid time, truth at the init time (persistence), climatology at the
        valid time.
    region_weights : numpy.ndarray, shape (region, lat·lon)
        :func:`ensembles.regions.weight_matrix`.
    options : ScoreOptions
    time_mean : numpy.ndarray, shape (channel, lat, lon), optional
        Per-point time mean of the statistics period: scored as the ``time_mean`` baseline.

    Raises
    ------
    ScoringError
        For NaNs under ``nan_policy="fail"``, or an unwritten forecast without ``allow_partial``.
    """
    accumulator = ScoreAccumulator()
    n_members = members.shape[0]
    for c, variable in enumerate(variables):
        forecast = members[:, c].reshape(n_members, -1)
        inputs = {"truth": truth_valid[c].ravel(), "climatology": climatology_valid[c].ravel()}
        if options.baselines:
            inputs["truth at init time"] = truth_init[c].ravel()
            if time_mean is not None:
                inputs["time mean"] = time_mean[c].ravel()
        if not _usable(accumulator, variable, init_time, lead, forecast, inputs, options):
            continue
        y, clim = inputs["truth"], inputs["climatology"]
        accumulator.add(
            FOURCAST, variable, lead, forecast_statistics(forecast, y, clim, region_weights), n_members
        )
        if options.baselines:
            persistence = inputs["truth at init time"][None]
            accumulator.add(
                PERSISTENCE, variable, lead, forecast_statistics(persistence, y, clim, region_weights), 1
            )
            accumulator.add(
                CLIMATOLOGY, variable, lead, forecast_statistics(clim[None], y, clim, region_weights), 1
            )
            if time_mean is not None:
                accumulator.add(
                    TIME_MEAN,
                    variable,
                    lead,
                    forecast_statistics(inputs["time mean"][None], y, clim, region_weights),
                    1,
                )
            if n_members >= 2:
                accumulator.add(
                    CONTROL, variable, lead, forecast_statistics(forecast[:1], y, clim, region_weights), 1
                )
    return accumulator


def _usable(
    accumulator: ScoreAccumulator,
    variable: str,
    init_time: np.datetime64,
    lead: np.timedelta64,
    forecast: np.ndarray,
    inputs: dict[str, np.ndarray],
    options: ScoreOptions,
) -> bool:
    """Apply the partial-archive and NaN policies to one forecast; False if it is to be left out."""
    where = f"{variable} from {str(init_time)[:16]} at lead {_hours(lead):g} h"
    key = (variable, np.timedelta64(lead, "ns"))
    missing = np.isnan(forecast)
    if missing.all() and not options.recorded_complete:
        if options.allow_partial:
            accumulator.unwritten[key] += 1
            return False
        raise ScoringError(
            f"the forecast of {where} is NaN everywhere: it was never written; score a partial archive "
            "with allow_partial (fourcast score --partial) or rerun the forecast"
        )
    n_nan = {"forecast": int(missing.sum()), **{name: int(np.isnan(v).sum()) for name, v in inputs.items()}}
    if not any(n_nan.values()):
        return True
    if options.nan_policy == "skip":
        accumulator.skipped[key] += 1
        return False
    found = ", ".join(
        f"{name} {count} of {forecast.size if name == 'forecast' else inputs[name].size}"
        for name, count in n_nan.items()
        if count
    )
    hint = ""
    if n_nan["climatology"]:
        valid = np.datetime64(init_time, "ns") + np.timedelta64(lead, "ns")
        day = int((valid.astype("datetime64[D]") - valid.astype("datetime64[Y]")).astype(int)) + 1
        hint = (
            f"; a NaN climatology at the valid time {str(valid)[:16]} (day of year {day}) means "
            "the period it "
            "was computed from does not cover that day: compute it from a longer period"
        )
    raise ScoringError(
        f"NaN values in {where}: {found}{hint}; expected none (nan_policy='fail'; 'skip' leaves "
        "such forecasts out)"
    )


@dataclass(frozen=True)
class CompletedPart:
    """What :func:`open_for_scoring` kept of an unfinished campaign archive.

    Attributes
    ----------
    location : pathlib.Path
        The store read (the unfinished sibling of the archive path when it was never committed).
    scored, left_out : numpy.ndarray of datetime64[ns]
        Init times every member block of which is recorded complete, and the others.
    items_done, items_total : int
        Work items (init time x member block) recorded complete, and in the campaign.
    """

    location: Path
    scored: np.ndarray
    left_out: np.ndarray
    items_done: int
    items_total: int

    def describe(self) -> str:
        """One sentence: how much is scored and what is left out."""
        left = ", ".join(str(t)[:16] for t in self.left_out[:5]) + (", …" if self.left_out.size > 5 else "")
        return (
            f"scoring {self.scored.size} of {self.scored.size + self.left_out.size} init times of "
            f"{self.location} "
            f"({self.items_done} of {self.items_total} work items recorded complete); left out "
            + (
                f"{self.left_out.size} init times with member blocks not recorded complete ({left})"
                if self.left_out.size
                else "nothing"
            )
        )


def open_for_scoring(path: str | Path, partial: bool = False) -> tuple[xr.Dataset, CompletedPart | None]:
    """The archive at ``path`` to score; with ``partial``, only what an unfinished campaign completed.

    Parameters
    ----------
    path : str or pathlib.Path
        The archive's location. With ``partial``, when nothing was committed there, the
        unfinished campaign store beside it (e.g. of a killed run) is read instead.
    partial : bool
        Score an archive that was never finalised. A campaign store's completion records
        decide what is kept: the init times whose every member block is recorded complete.
        A store without records (not written by a campaign) is returned whole; its unwritten
        forecasts are left out by ``ScoreOptions.allow_partial``.

    Returns
    -------
    archive : xarray.Dataset
    completed : CompletedPart or None
        What was kept, when completion records chose it (score with
        ``ScoreOptions(recorded_complete=True)`` then).

    Raises
    ------
    ArchiveError
        If there is no archive (or several unfinished stores) at ``path``, or it is not finalised
        and ``partial`` is false.
    ScoringError
        If no init time has every member block recorded complete.
    """
    path = Path(path)
    if not partial:
        return open_archive(path), None
    unfinished = [] if path.exists() else unfinished_stores(path)
    if len(unfinished) > 1:
        raise ArchiveError(
            f"no archive was committed at {path} and several unfinished stores lie beside it "
            f"({[p.name for p in unfinished]}); score one of them by its path"
        )
    location = unfinished[0] if unfinished else path
    archive = open_archive(location, allow_partial=True)
    done = recorded_items(location)
    if done is None:
        return archive, None
    inits = archive[INIT_TIME].values.astype("datetime64[ns]")
    complete = done.all(axis=1)
    if not complete.any():
        raise ScoringError(
            f"no init time of {location} has every member block recorded complete ({int(done.sum())} "
            f"of {done.size} work items done): nothing to score yet; resume the campaign"
        )
    return (
        archive.isel({INIT_TIME: np.flatnonzero(complete)}),
        CompletedPart(location, inits[complete], inits[~complete], int(done.sum()), int(done.size)),
    )


def score_archive(
    archive: xr.Dataset,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    options: ScoreOptions = ScoreOptions(),
    *,
    variables: Sequence[str] | None = None,
    lead_times: Sequence[np.timedelta64] | np.ndarray | None = None,
    time_mean: xr.DataArray | None = None,
) -> xr.Dataset:
    """Scorecard of an archive and its baselines against the truth, computed chunk by chunk with Dask.

    Every ``(init_time, lead_time)`` chunk of the archive becomes one task reading that chunk,
    the truth at its init and valid times and the climatology at its valid time, and returning
    a :class:`ScoreAccumulator`; the accumulators are summed in a tree of Dask tasks. Only
    chunks and partial sums are ever in memory. The active Dask scheduler runs it (a
    ``dask.distributed`` client if one is set up, else threads). A loaded (numpy-backed)
    archive goes through the same tasks.

    Parameters
    ----------
    archive : xarray.Dataset
        Variables ``[init_time, lead_time, member, lat, lon]`` (:func:`ensembles.archive.open_archive`).
    truth : xarray.DataArray, dims (time, channel, lat, lon)
        Analyses on the archive's grid holding every init and valid time (the store's ``data``).
    climatology : xarray.DataArray
        ``[dayofyear, hour, channel, lat, lon]`` or ``[channel, lat, lon]``
        (:func:`ensembles.baselines.climatology_at`).
    options : ScoreOptions
    variables : sequence of str, optional
        Archive variables to score (default all).
    lead_times : array of timedelta64, optional
        Archive lead times to score (default all).
    time_mean : xarray.DataArray, dims (channel, lat, lon), optional
        Per-point time mean of the statistics period (:func:`time_mean_field`), scored as the
        ``time_mean`` baseline.

    Raises
    ------
    ScoringError
        Before any computation if the grids differ, the truth lacks a variable, or the truth
        ends before the valid time of a lead (the leads and the truth's end are named); while
        computing, for NaNs (``nan_policy="fail"``) or unwritten forecasts (no ``allow_partial``).
    """
    variables = _variables(archive, variables)
    leads = _lead_times(archive, lead_times)
    inits = archive[INIT_TIME].values.astype("datetime64[ns]")
    truth = on_grid(truth, archive[LAT].values, archive[LON].values, "truth")
    climatology = on_grid(climatology, archive[LAT].values, archive[LON].values, "climatology")
    require_labels(truth, CHANNEL, np.asarray(variables), "truth")
    require_labels(climatology, CHANNEL, np.asarray(variables), "climatology")
    require_valid_times(truth, inits, leads)
    if time_mean is not None:
        time_mean = on_grid(time_mean, archive[LAT].values, archive[LON].values, "time mean")
        require_labels(time_mean, CHANNEL, np.asarray(variables), "time mean")
        time_mean = dask.delayed(
            time_mean.sel({CHANNEL: variables}).transpose(CHANNEL, LAT, LON).values, pure=True
        )
    weights = dask.delayed(
        weight_matrix(options.regions, archive[LAT].values, archive[LON].values), pure=True
    )
    members = (
        archive[variables].to_dataarray(CHANNEL).transpose(INIT_TIME, LEAD_TIME, MEMBER, CHANNEL, LAT, LON)
    )
    members = members.sel({LEAD_TIME: leads})
    truth = truth.sel({CHANNEL: variables}).transpose(TIME, CHANNEL, LAT, LON)
    position = pd.Index(truth[TIME].values)
    valid = xr.DataArray(inits[:, None] + leads[None, :], dims=(INIT_TIME, LEAD_TIME))
    climate = climatology_at(climatology.sel({CHANNEL: variables}), valid).transpose(
        INIT_TIME, LEAD_TIME, CHANNEL, LAT, LON
    )
    chunk = dask.delayed(score_chunk)
    tasks = [
        chunk(
            init,
            lead,
            variables,
            members.data[i, l],
            truth.data[position.get_loc(init + lead)],
            truth.data[position.get_loc(init)],
            climate.data[i, l],
            weights,
            options,
            time_mean,
        )
        for i, init in enumerate(inits)
        for l, lead in enumerate(leads)
    ]
    label = f"scoring {len(variables)} variables x {len(inits)} inits x {len(leads)} leads"
    with progress(len(tasks), label, "chunks") as reporter, _ChunksDone(reporter):
        (total,) = dask.compute(_tree_sum(tasks))
    attrs = {"nan_policy": options.nan_policy, "allow_partial": int(options.allow_partial)}
    return total.to_dataset(variables, leads, options.regions, attrs)


class _ChunksDone(Callback):
    """Counts finished :func:`score_chunk` tasks into a progress reporter (Dask's local schedulers)."""

    def __init__(self, reporter: Any) -> None:
        super().__init__()
        self._reporter = reporter

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith(score_chunk.__name__):
            self._reporter.update(1)


def _tree_sum(tasks: list) -> Any:
    """Sum Dask-delayed accumulators in a tree of fan-in :data:`_FAN_IN`."""
    add = dask.delayed(_sum_all)
    while len(tasks) > 1:
        tasks = [add(tasks[i : i + _FAN_IN]) for i in range(0, len(tasks), _FAN_IN)]
    return tasks[0] if tasks else dask.delayed(ScoreAccumulator)()


def _sum_all(accumulators: list[ScoreAccumulator]) -> ScoreAccumulator:
    total = accumulators[0]
    for accumulator in accumulators[1:]:
        total = total + accumulator
    return total


def time_mean_field(truth: xr.DataArray, start: np.datetime64, end: np.datetime64) -> xr.DataArray:
    """Per-point time mean ``[channel, lat, lon]`` of ``truth`` (time, channel, lat, lon) over ``start..end``,
    loaded.

    Raises
    ------
    ScoringError
        If the truth holds no time in the period.
    """
    period = truth.sel({TIME: slice(np.datetime64(start, "ns"), np.datetime64(end, "ns"))})
    if not period.sizes[TIME]:
        raise ScoringError(
            f"the truth holds no time in the statistics period {str(start)[:16]}..{str(end)[:16]} "
            "for the time-mean baseline"
        )
    return period.mean(TIME).astype(np.float64).load()


def require_valid_times(truth: xr.DataArray, inits: np.ndarray, leads: np.ndarray) -> None:
    """Raise :class:`ScoringError` unless the truth holds every init time and valid time.

    Leads whose valid times run past the end of the truth are named as such.
    """
    times = truth[TIME].values
    last_valid = inits.max() + leads
    beyond = leads[last_valid > times.max()]
    if beyond.size:
        raise ScoringError(
            f"lead times {[_whole(_hours(x)) for x in beyond]} h reach beyond the truth "
            "available: the last init "
            f"{str(inits.max())[:16]} needs truth up to {str(last_valid.max())[:16]}, the truth ends at "
            f"{str(times.max())[:16]}; score fewer lead times or extend the store"
        )
    needed = np.union1d(inits, (inits[:, None] + leads[None, :]).ravel())
    require_labels(truth, TIME, needed, "truth")


def on_grid(
    field: xr.DataArray, lat: np.ndarray, lon: np.ndarray, what: str, reference: str = "the forecasts"
) -> xr.DataArray:
    """``field`` relabelled with ``lat``/``lon`` (the grid of ``reference``) after checking they agree to
    rounding."""
    for dim in (LAT, LON):
        if dim not in field.dims:
            raise ScoringError(f"{what}: expected a {dim!r} dim, found dims {field.dims}")
    check_coords(
        {LAT: lat, LON: lon}, field.coords, (LAT, LON), what=what, reference=reference, error=ScoringGridError
    )
    return field.assign_coords({LAT: lat, LON: lon})


def _variables(archive: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    """``variables``, checked against the archive; by default all, in the campaign's channel order."""
    held = [str(v) for v in archive.data_vars]
    campaign_order = [str(v) for v in archive.attrs.get(CAMPAIGN, {}).get("variables", []) if str(v) in held]
    available = campaign_order + [v for v in held if v not in campaign_order]
    chosen = available if variables is None else [str(v) for v in variables]
    unknown = [v for v in chosen if v not in available]
    if unknown or not chosen:
        raise ScoringError(f"cannot score variables {unknown or chosen}: the archive holds {available}")
    return chosen


def _lead_times(archive: xr.Dataset, lead_times: Sequence[np.timedelta64] | np.ndarray | None) -> np.ndarray:
    available = archive[LEAD_TIME].values.astype("timedelta64[ns]")
    if lead_times is None:
        return available
    leads = np.atleast_1d(np.asarray(lead_times).astype("timedelta64[ns]"))
    unknown = leads[~np.isin(leads, available)]
    if unknown.size or not leads.size:
        raise ScoringError(
            f"the archive has no lead times {[_whole(_hours(x)) for x in unknown]} h; it holds "
            f"{[_whole(_hours(x)) for x in available]} h"
        )
    return leads


def _hours(lead: np.timedelta64) -> float:
    return float(np.timedelta64(lead, "ns") / np.timedelta64(1, "h"))


def scorecard_records(scorecard: xr.Dataset, region: str = "global") -> list[dict[str, Any]]:
    """The finite scores of one region as flat records, ordered by lead, variable, system, metric.

    Returns
    -------
    list of dict
        ``{"variable", "lead_hours", "system", "metric", "value"}`` (lead hours an int when whole).
    """
    if region not in scorecard[REGION].values:
        raise ScoringError(f"the scorecard has no region {region!r}; it has {list(scorecard[REGION].values)}")
    table = scorecard["score"].sel({REGION: region}).transpose(LEAD_TIME, VARIABLE, SYSTEM, METRIC)
    records = []
    for l, hours in enumerate(scorecard["lead_hours"].values):
        for v, variable in enumerate(table[VARIABLE].values):
            for s, system in enumerate(table[SYSTEM].values):
                for m, metric in enumerate(table[METRIC].values):
                    value = float(table.values[l, v, s, m])
                    if np.isfinite(value):
                        records.append(
                            {
                                "variable": str(variable),
                                "lead_hours": _whole(hours),
                                "system": str(system),
                                "metric": str(metric),
                                "value": value,
                            }
                        )
    return records


def _whole(hours: float) -> int | float:
    return int(hours) if float(hours).is_integer() else float(hours)


def scorecard_table(scorecard: xr.Dataset) -> pd.DataFrame:
    """Long table ``metric, variable, region, lead_hours, system, value`` of the finite scores."""
    frame = scorecard["score"].to_dataframe().reset_index()
    frame["lead_hours"] = frame[LEAD_TIME] / np.timedelta64(1, "h")
    frame = frame[np.isfinite(frame["score"])].rename(columns={"score": "value"})
    return frame[[METRIC, VARIABLE, REGION, "lead_hours", SYSTEM, "value"]].reset_index(drop=True)


def write_scorecard(
    scorecard: xr.Dataset, directory: str | Path, name: str = "scorecard"
) -> tuple[Path, Path]:
    """Write the scorecard as ``<name>.nc`` (netCDF4) and ``<name>.csv``, each atomically.

    Returns
    -------
    tuple of pathlib.Path
        The netCDF and the CSV file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / f"{name}.nc", directory / f"{name}.csv"
    writers = (
        lambda tmp: _write_netcdf(scorecard, tmp),
        lambda tmp: scorecard_table(scorecard).to_csv(tmp, index=False, float_format="%.9g"),
    )
    for path, write in zip(paths, writers, strict=True):
        with atomic_output(path) as tmp:
            write(tmp)
    return paths


def _write_netcdf(scorecard: xr.Dataset, path: Path) -> None:
    """Write ``scorecard`` as netCDF4 to ``path``, under the netCDF library lock."""
    with NETCDF_LOCK:
        scorecard.to_netcdf(path, engine="netcdf4")


def open_scorecard(path: str | Path) -> xr.Dataset:
    """Read a scorecard written by :func:`write_scorecard` (netCDF), loaded into memory."""
    with NETCDF_LOCK, xr.open_dataset(path, engine="netcdf4", lock=NETCDF_LOCK) as ds:
        return ds.load()


#: The scores a summary shows per system: fourcast's ensemble-mean skill, ACC, CRPS, spread-skill
#: ratio, reliability index and CRPS skill scores; the baselines' RMSE, ACC and CRPS (the
#: control member's MAE, the stronger climatology's RMSE and CRPS).
HEADLINE_METRICS = {
    FOURCAST: ("rmse", "acc", "crps", "ssr", "reliability", "crpss_climatology", "crpss_persistence"),
    PERSISTENCE: ("rmse", "acc", "crps"),
    CLIMATOLOGY: ("rmse", "acc", "crps"),
    TIME_MEAN: ("rmse", "acc", "crps"),
    CONTROL: ("mae",),
    "best_climatology": ("rmse", "crps"),
}


def headline_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of :data:`HEADLINE_METRICS`, in their order, with the skill scores of
    :func:`skill_records`."""
    records = [*records, *skill_records(records)]
    return [r for r in records if r["metric"] in HEADLINE_METRICS.get(r["system"], ())]


def skill_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Derived records: the stronger climatology and fourcast's CRPS skill scores.

    - ``best_climatology``: per variable, lead and metric (RMSE, CRPS), the lower of the
      ``climatology`` and ``time_mean`` baselines;
    - fourcast's ``crpss_climatology`` = ``1 − CRPS / CRPS(best climatology)`` and
      ``crpss_persistence`` = ``1 − CRPS / CRPS(persistence)`` (a deterministic forecast's CRPS is its MAE).
    """
    value = {(r["variable"], r["lead_hours"], r["system"], r["metric"]): r["value"] for r in records}
    derived = []
    for variable, lead in sorted({(r["variable"], r["lead_hours"]) for r in records}):
        for metric in ("rmse", "crps"):
            held = [
                value[(variable, lead, s, metric)]
                for s in CLIMATOLOGIES
                if (variable, lead, s, metric) in value
            ]
            if held:
                derived.append(
                    {
                        "variable": variable,
                        "lead_hours": lead,
                        "system": "best_climatology",
                        "metric": metric,
                        "value": min(held),
                    }
                )
                value[(variable, lead, "best_climatology", metric)] = min(held)
        crps = value.get((variable, lead, FOURCAST, "crps"))
        for name, baseline in (("crpss_climatology", "best_climatology"), ("crpss_persistence", PERSISTENCE)):
            reference = value.get((variable, lead, baseline, "crps"))
            if crps is not None and reference:
                derived.append(
                    {
                        "variable": variable,
                        "lead_hours": lead,
                        "system": FOURCAST,
                        "metric": name,
                        "value": 1.0 - crps / reference,
                    }
                )
    return derived
