"""Look into a training store (``fourcast ingest inspect``) and check it (``fourcast ingest validate``).

``inspect`` reads only metadata, coordinates and the stored statistics (cheap at any size);
``validate`` also reads the data once, with Dask, to count NaNs and find each channel's extremes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from ingest.dims import CHANNEL, TIME
from ingest.errors import StoreSchemaError, UnknownVariableError
from ingest.lexicon import valid_range
from ingest.schema import (
    DATA,
    MAXIMUM,
    MEAN,
    MINIMUM,
    STATS_END,
    STATS_START,
    STD,
    STEP_HOURS,
    TENDENCY_STD,
    open_store,
)
from ingest.statistics import lazy_moments

_STAT_NAMES = (MEAN, STD, MINIMUM, MAXIMUM, TENDENCY_STD)


@dataclass(frozen=True)
class Gap:
    """Missing steps between two consecutive store times."""

    after: np.datetime64
    before: np.datetime64
    missing_steps: int


@dataclass(frozen=True)
class StoreDescription:
    """What ``fourcast ingest inspect`` prints.

    Attributes
    ----------
    path : Path
    first, last : numpy.datetime64
        First and last time.
    step : numpy.timedelta64
        Most common spacing of the times.
    gaps : list of Gap
        Places where consecutive times are further apart than ``step``.
    shape : dict
        Size of each dim of ``data``.
    chunks, shards : tuple of int
        Zarr chunk and shard shape of ``data`` (``shards`` is ``None`` without sharding).
    compressors : list of str
        Codec names applied to each chunk.
    bytes_on_disk, files : int
        Total size and number of files under the store.
    statistics : dict
        ``{channel: {stat: value}}`` of the stored statistics.
    attrs : dict
        The store's attributes (stats period, step, provenance).
    """

    path: Path
    first: np.datetime64
    last: np.datetime64
    step: np.timedelta64
    gaps: list[Gap]
    shape: dict
    chunks: tuple
    shards: tuple | None
    compressors: list[str]
    bytes_on_disk: int
    files: int
    statistics: dict
    attrs: dict


def find_gaps(times: np.ndarray) -> tuple[np.timedelta64, list[Gap]]:
    """The usual step of ``times`` and every place it is exceeded."""
    steps = np.diff(times)
    values, counts = np.unique(steps, return_counts=True)
    step = values[np.argmax(counts)]
    gaps = [Gap(times[i], times[i + 1], int(steps[i] // step) - 1) for i in np.flatnonzero(steps > step)]
    return step, gaps


def _disk_usage(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def describe_store(path: str | Path) -> StoreDescription:
    """Dates, gaps, shape, layout, size on disk and stored statistics of a training store."""
    path = Path(path)
    ds = open_store(path)
    times = ds[TIME].values
    step, gaps = find_gaps(times) if times.size > 1 else (np.timedelta64(0, "h"), [])
    array = zarr.open_array(path / DATA, mode="r")
    size, files = _disk_usage(path)
    channels = [str(c) for c in ds[CHANNEL].values]
    stats = {
        c: {name: float(ds[name].values[i]) for name in _STAT_NAMES if name in ds}
        for i, c in enumerate(channels)
    }
    return StoreDescription(
        path=path,
        first=times[0],
        last=times[-1],
        step=step,
        gaps=gaps,
        shape=dict(ds[DATA].sizes),
        chunks=tuple(array.chunks),
        shards=None if array.shards is None else tuple(array.shards),
        compressors=[type(c).__name__ for c in array.compressors],
        bytes_on_disk=size,
        files=files,
        statistics=stats,
        attrs=dict(ds.attrs),
    )


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _minutes(time: np.datetime64) -> str:
    return np.datetime_as_string(time, unit="m")


def format_description(d: StoreDescription) -> str:
    """The text ``fourcast ingest inspect`` prints."""
    hours = int(d.step / np.timedelta64(1, "h"))
    lines = [
        f"store        {d.path}",
        f"dates        {_minutes(d.first)} .. {_minutes(d.last)}  every {hours} h, {d.shape[TIME]} steps",
        f"gaps         {len(d.gaps)}"
        + "".join(
            f"\n  after {_minutes(g.after)}: {g.missing_steps} missing, next {_minutes(g.before)}"
            for g in d.gaps[:20]
        ),
        "shape        " + " x ".join(f"{k}={v}" for k, v in d.shape.items()),
        f"chunks       {d.chunks}  shards {d.shards}  compressors {d.compressors or ['none']}",
        f"on disk      {_human(d.bytes_on_disk)} in {d.files} files",
        f"statistics   {d.attrs.get(STATS_START)} .. {d.attrs.get(STATS_END)}",
        f"{'channel':<10}" + "".join(f"{name:>15}" for name in _STAT_NAMES),
    ]
    for channel, values in d.statistics.items():
        lines.append(
            f"{channel:<10}" + "".join(f"{values.get(name, float('nan')):>15.6g}" for name in _STAT_NAMES)
        )
    return "\n".join(lines)


def _layout_problems(path: Path) -> tuple[xr.Dataset | None, list[str]]:
    try:
        return open_store(path), []
    except StoreSchemaError as err:
        return None, [f"schema: {err}"]


def _time_problems(ds: xr.Dataset) -> list[str]:
    times = ds[TIME].values
    problems = []
    steps = np.diff(times)
    if np.any(steps <= np.timedelta64(0)):
        bad = times[1:][steps <= np.timedelta64(0)]
        problems.append(
            f"times: expected increasing unique times, found {bad.size} repeated or unsorted, e.g. {bad[:3]}"
        )
    elif times.size > 1:
        step, gaps = find_gaps(times)
        if gaps:
            problems.append(
                f"times: {len(gaps)} gap(s) in the {int(step / np.timedelta64(1, 'h'))}-hourly series, "
                f"first after {gaps[0].after} ({gaps[0].missing_steps} steps missing)"
            )
        declared = ds.attrs.get(STEP_HOURS)
        if declared is not None and np.timedelta64(int(declared), "h") != step:
            problems.append(
                f"attrs: step_hours is {declared}, the times step by {step.astype('timedelta64[h]')}"
            )
    return problems


def _statistics_problems(ds: xr.Dataset) -> list[str]:
    problems = []
    for name in (MEAN, STD):
        values = ds[name].values
        if not np.all(np.isfinite(values)):
            problems.append(
                f"statistics: {name} is not finite for channels "
                f"{list(ds[CHANNEL].values[~np.isfinite(values)])}"
            )
    if np.any(ds[STD].values <= 0):
        problems.append(f"statistics: std must be positive, found {ds[STD].values.tolist()}")
    for key in (STATS_START, STATS_END):
        if key not in ds.attrs:
            problems.append(f"attrs: missing {key} (the statistics period)")
    return problems


#: What zarr and its codecs raise for bytes they cannot decode (a truncated or damaged file).
_DECODE_ERRORS = (ValueError, RuntimeError, OSError, EOFError)


def _unreadable_shards(path: Path, ds: xr.Dataset, steps: int) -> list[str]:
    """One problem per file of ``data`` (``steps`` time steps each) that cannot be read back."""
    array, times = zarr.open_array(path / DATA, mode="r"), ds[TIME].values
    problems = []
    for start in range(0, times.size, steps):
        stop = min(start + steps, times.size)
        try:
            array[start:stop]
        except _DECODE_ERRORS as err:
            key = "/".join(["c", str(start // steps)] + ["0"] * (array.ndim - 1))
            steps_read = f"{_minutes(times[start])} .. {_minutes(times[stop - 1])}"
            problems.append(
                f"data: {path / DATA / key} (steps {steps_read}) is unreadable: {type(err).__name__}: {err}"
            )
    return problems


def _value_problems(path: Path, ds: xr.Dataset) -> list[str]:
    """NaNs and values outside each variable's physical range (one Dask pass over ``data``).

    If some file of ``data`` cannot be decoded, those files are the problems reported instead.
    """
    shards = ds[DATA].encoding.get("shards")  # read shard by shard, not one time step per task
    data = ds[DATA].chunk({TIME: shards[0] if shards else 64})
    try:
        (moments,) = dask.compute(lazy_moments(data.data))
    except _DECODE_ERRORS as err:
        steps = shards[0] if shards else zarr.open_array(path / DATA, mode="r").chunks[0]
        return _unreadable_shards(path, ds, steps) or [f"data: unreadable: {type(err).__name__}: {err}"]
    per_channel = data.sizes[TIME] * np.prod([data.sizes[d] for d in data.dims[2:]])
    problems = []
    for i, channel in enumerate(str(c) for c in ds[CHANNEL].values):
        missing = int(per_channel - moments.count[i])
        if missing:
            problems.append(f"values: {channel} has {missing} NaN/inf of {per_channel} values")
        try:
            low, high = valid_range(channel)
        except UnknownVariableError as err:
            problems.append(f"values: {err}")
            continue
        if moments.count[i] and (moments.minimum[i] < low or moments.maximum[i] > high):
            problems.append(
                f"values: {channel} spans {moments.minimum[i]:.6g}..{moments.maximum[i]:.6g}, "
                f"outside its physical range {low:g}..{high:g}"
            )
    return problems


def validate_store(path: str | Path) -> list[str]:
    """Every problem found in the training store at ``path``; an empty list means valid.

    Checks the layout (:func:`ingest.schema.open_store`), that times increase, are unique and
    evenly spaced, that the statistics are finite with a positive std and a recorded period,
    that ``data`` holds no NaN/inf and stays within each variable's physical range
    (:func:`ingest.lexicon.valid_range`), and that every file of ``data`` can be decoded (a
    truncated shard is reported by its file name).
    """
    ds, problems = _layout_problems(Path(path))
    if ds is None:
        return problems
    return _time_problems(ds) + _statistics_problems(ds) + _value_problems(Path(path), ds)
