"""ERA5 experiments (``expver``): which copy of a time step to keep when sources overlap.

ERA5 is produced twice. **ERA5T** (experiment ``0005``) is the near-real-time run, published
about five days behind real time; some two to three months later the same period is
published as **final ERA5** (experiment ``0001``), which normally equals ERA5T but replaces it
where ERA5T had to be corrected. A request reaching into the last few months therefore returns
a mix: final data for older steps, ERA5T for the newest. How the CDS says which is which has
changed with its layouts:

* new CDS netCDF: a string coordinate ``expver`` along ``valid_time`` (``"0001"``/``"0005"``);
* old CDS netCDF: an ``expver`` *dimension* (``1``, ``5``) where a request mixed both, each
  step holding data in one slot and fill values in the other (resolved in
  :mod:`ingest.normalise`);
* GRIB: the ``expver`` key of every message;
* old files without any of these: the experiment is unknown (label ``""``).

:func:`ingest.normalise.normalise` labels every time step of a dataset with its experiment
(:func:`expver_label`). When several sources hold the same valid time — ERA5T downloaded last
month and final ERA5 downloaded today, overlapping monthly files, a GRIB file holding both
experiments — :func:`merge_along_time` keeps one copy per step: the most preferred experiment
(:func:`expver_rank`: final, then unknown, then ERA5T, then anything else), and among equally
preferred copies the one from the earliest source, after checking that those copies hold the
same values (:class:`~ingest.errors.DuplicateTimeError` otherwise). :func:`expver_runs`
summarises the experiment of each run of steps for the store's provenance.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ingest.dims import TIME
from ingest.errors import DuplicateTimeError
from ingest.lexicon import Variable

#: The coordinate along ``time`` naming the ERA5 experiment of each step.
EXPVER = "expver"
#: Final ERA5 data.
EXPVER_FINAL = "0001"
#: ERA5T, the preliminary data of the last ~3 months, later replaced by final data.
EXPVER_ERA5T = "0005"
#: Label of steps whose experiment the file does not say (old files without ``expver``).
EXPVER_UNKNOWN = ""
_MAX_LISTED = 5


def expver_rank(label: str) -> int:
    """Preference of an experiment label, lower is better.

    Final ERA5 (``0001``) beats a step whose experiment is not recorded, which beats ERA5T
    (``0005``), which beats any other experiment.
    """
    return {EXPVER_FINAL: 0, EXPVER_UNKNOWN: 1, EXPVER_ERA5T: 2}.get(label, 3)


def expver_label(value: object) -> str:
    """Normalise an ``expver`` value (``1``, ``b"0001"``, ``"1"``, ``"0001"``) to four digits."""
    if isinstance(value, bytes):
        value = value.decode()
    text = str(value).strip()
    if not text:
        return EXPVER_UNKNOWN
    return text.zfill(4) if text.isdigit() else text


def choose_copies(times: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick one copy of every time step among copies of several sources.

    Parameters
    ----------
    times : numpy.ndarray, shape (n,), datetime64
        Valid time of every copy: the sources' time axes concatenated in source order, so a
        lower index means an earlier source.
    ranks : numpy.ndarray, shape (n,), int
        :func:`expver_rank` of every copy.

    Returns
    -------
    keep : numpy.ndarray, shape (ntime,), int
        Index of the copy kept for each distinct time, in time order.
    dropped : numpy.ndarray, shape (n - ntime,), int
        Index of every other copy.
    winner : numpy.ndarray, shape (n - ntime,), int
        For each entry of ``dropped``, the index of the copy kept for its time.

    Notes
    -----
    Sorting the copies by (time, rank, index) — :func:`numpy.lexsort` sorts by its *last* key
    first — puts the copies of each time together, the preferred experiment first and, among
    equal ranks, the earliest source first. The first copy of each group is kept. To find the
    kept copy of every later member of a group, each position in the sorted order carries the
    position of its group's start (its own position where a group starts, 0 elsewhere), and a
    running maximum (``np.maximum.accumulate``) carries that start forward over the group.
    """
    order = np.lexsort((np.arange(times.size), ranks, times))
    starts_group = np.r_[True, times[order][1:] != times[order][:-1]]
    group_start = np.maximum.accumulate(np.where(starts_group, np.arange(order.size), 0))
    winner = order[group_start]
    return order[starts_group], order[~starts_group], winner[~starts_group]


def merge_along_time(
    variable: Variable, pieces: list[tuple[str, xr.DataArray]]
) -> tuple[xr.DataArray, np.ndarray, int]:
    """Concatenate one variable's pieces along time, keeping one copy per time step.

    Parameters
    ----------
    variable : Variable
        The variable (named in errors).
    pieces : list of (str, xarray.DataArray)
        ``(source label, field)`` with ``field`` canonical ``(time, lat, lon)`` carrying an
        ``expver`` coordinate along time, all on one grid, in source order.

    Returns
    -------
    merged : xarray.DataArray, shape (ntime, lat, lon)
        Times sorted and unique, without the ``expver`` coordinate.
    labels : numpy.ndarray, shape (ntime,), object
        The experiment of each kept step.
    superseded : int
        How many copies were dropped for a more preferred experiment.

    Raises
    ------
    DuplicateTimeError
        If equally preferred copies of a step hold different values.
    """
    times = np.concatenate([field[TIME].values for _, field in pieces])
    labels = np.concatenate([field[EXPVER].values for _, field in pieces]).astype(object)
    origin = np.concatenate([np.full(field.sizes[TIME], i) for i, (_, field) in enumerate(pieces)])
    ranks = np.array([expver_rank(label) for label in labels])
    keep, dropped, winner = choose_copies(times, ranks)
    merged = xr.concat(
        [field.drop_vars(EXPVER) for _, field in pieces],
        dim=TIME,
        coords="minimal",
        compat="override",
        join="override",
    )
    ties = [(int(w), int(o)) for w, o in zip(winner, dropped, strict=True) if ranks[w] == ranks[o]]
    _check_duplicates_agree(variable, merged, ties, times, [pieces[i][0] for i in origin])
    superseded = int(np.sum(ranks[dropped] > ranks[winner]))
    if keep.size == times.size and np.all(np.diff(keep) > 0):
        return merged, labels[keep], superseded
    return merged.isel({TIME: keep}), labels[keep], superseded


def _check_duplicates_agree(
    variable: Variable,
    merged: xr.DataArray,
    ties: list[tuple[int, int]],
    times: np.ndarray,
    origin_labels: list[str],
) -> None:
    """Equally preferred copies ``(kept, other)`` of a time step must hold the same values.

    These few steps are read eagerly (their chunks only).
    """
    conflicts = []
    for kept, other in ties:
        a, b = merged.isel({TIME: kept}).values, merged.isel({TIME: other}).values
        if not np.array_equal(a, b, equal_nan=True):
            conflicts.append(
                f"{np.datetime_as_string(times[kept], unit='h')} in {origin_labels[kept]} and "
                f"{origin_labels[other]} (max difference {np.nanmax(np.abs(a - b)):g})"
            )
    if conflicts:
        raise DuplicateTimeError(
            f"{variable.id}: expected each time step once, or repeated with identical values, or from a more "
            f"preferred experiment (expver 0001 over 0005); found {len(conflicts)} conflicting duplicates: "
            f"{'; '.join(conflicts[:_MAX_LISTED])}"
        )


def expver_runs(times: np.ndarray, labels: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Runs of consecutive time steps with the same experiment(s), for provenance.

    Parameters
    ----------
    times : numpy.ndarray, shape (ntime,), datetime64
    labels : dict of str to numpy.ndarray, each shape (ntime,)
        The experiment of each step, per variable (variables may differ: ``"0001+0005"``).

    Returns
    -------
    list of dict
        ``{"expver", "first", "last", "steps"}`` per run, in time order.
    """
    per_time = np.array(
        ["+".join(sorted({str(lab[t]) or "unknown" for lab in labels.values()})) for t in range(times.size)],
        dtype=object,
    )
    starts = np.r_[0, np.flatnonzero(per_time[1:] != per_time[:-1]) + 1]
    stops = np.r_[starts[1:], times.size]
    return [
        {
            "expver": str(per_time[a]),
            "first": str(np.datetime_as_string(times[a], unit="s")),
            "last": str(np.datetime_as_string(times[b - 1], unit="s")),
            "steps": int(b - a),
        }
        for a, b in zip(starts, stops, strict=True)
    ]
