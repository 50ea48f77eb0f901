"""Open ERA5 files in every layout the Climate Data Store has delivered, lazily, as one array.

:func:`open_sources` is the entry point the store writer uses: it opens each file with the
:class:`~ingest.source.Source` of its format (:mod:`ingest.formats`), which checks the file
against its own header for truncation (:mod:`ingest.integrity`) and brings every dataset into
the canonical form of :func:`ingest.normalise.normalise`; it then checks that the files agree
on the grid, keeps one copy of every time step (:mod:`ingest.expver`: final ERA5 over ERA5T),
and stacks the requested variables into ``DataArray[time, channel, lat, lon]``.

Layouts, recognised from the file's first bytes and its variables:

========================  ================================================================
``new-cds-netcdf``        netCDF4/HDF5 with ``valid_time`` (CDS since September 2024)
``old-cds-netcdf``        netCDF3 or netCDF4 with ``time`` (legacy CDS, ``grib_to_netcdf``)
``cds-zip``               zip of netCDF (or GRIB) files, one per stream/step type, as the new
                          CDS returns when instantaneous and accumulated fields are mixed
``grib``                  GRIB 1 or 2, read with cfgrib/ecCodes
========================  ================================================================

Values are checked against each variable's physical range (:func:`ingest.lexicon.valid_range`)
twice: the first and last time step of every file when it is opened (eagerly, before any work
starts; see :func:`ingest.normalise.normalise`), and every chunk as Dask computes it, together
with the check for NaN/infinity.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import (
    MissingVariableError,
    NonFiniteValueError,
    PhysicalRangeError,
    SourceGridError,
    SourceLayoutError,
)
from ingest.expver import expver_runs, merge_along_time
from ingest.formats import file_source
from ingest.grid import check_coords
from ingest.lexicon import get_variables, valid_range
from ingest.normalise import check_assumed_units, describe_missing, stack_channels
from ingest.source import SOURCE_ATTR, Source

_MAX_LISTED = 5


def open_sources(
    files: Sequence[str | Path],
    variable_ids: Sequence[str],
    shard_steps: int,
    *,
    unpack_dir: str | Path | None = None,
    assume_units: Mapping[str, str] | None = None,
) -> xr.DataArray:
    """Lazily open ERA5 files of any supported layout as the canonical ``[time, channel, lat, lon]``.

    Parameters
    ----------
    files : sequence of path-like
        netCDF (new or old CDS), GRIB, or CDS zip files, in any order; together they must hold
        every requested variable at the same times on one grid. A time step may come from
        several files: the most preferred experiment wins (final ERA5 ``0001`` over ERA5T
        ``0005``); equally preferred copies must hold identical values.
    variable_ids : sequence of str
        Lexicon ids, in the channel order wanted.
    shard_steps : int
        Time steps per Dask chunk, so each chunk is written into exactly one store shard.
    unpack_dir : path-like, optional
        Where the members of CDS zips are unpacked (reused while the zip is unchanged);
        default a hidden folder ``.NAME.zip.unpacked`` beside each zip.
    assume_units : mapping of str to str, optional
        ``{lexicon id: units}`` for fields stored without a ``units`` attribute, which are
        otherwise refused (see :func:`ingest.normalise.normalise`).

    Returns
    -------
    xarray.DataArray, shape (time, channel, lat, lon)
        float32, Dask-backed with chunks of ``shard_steps`` time steps and all of the other
        dims; times sorted and unique; latitude 90 → −90, longitude [0, 360). Attributes
        record the experiment chosen for each run of time steps (``expver``), how many
        ``(channel, time)`` fields were superseded by a more preferred experiment
        (``expver_superseded``), and how many files of each layout were read
        (``source_layouts``). Computing it raises :class:`NonFiniteValueError` where a
        field holds NaN or infinity, :class:`PhysicalRangeError` where it leaves its physical
        range.

    Raises
    ------
    UnknownVariableError
        If an id is not in the lexicon (raised before any file is opened).
    MissingVariableError
        If no file holds a requested variable or level, or a variable lacks time steps that
        another one has.
    SourceLayoutError
        If a file is missing, empty, or in no supported layout; subclasses
        :class:`TruncatedFileError`, :class:`CorruptFileError`, :class:`GridMismatchError`,
        :class:`DuplicateTimeError`, :class:`UnitsError`, :class:`StepTypeError` say more.
    PhysicalRangeError
        If the first or last time step of a file leaves a variable's physical range.
    """
    variables = get_variables(list(variable_ids))
    if not variables:
        raise MissingVariableError("expected at least one variable id to read, found none")
    if shard_steps < 1:
        raise SourceLayoutError(f"shard_steps must be >= 1, found {shard_steps}")
    assume_units = check_assumed_units(assume_units)
    sources = _file_sources(files, unpack_dir)
    canonical = _on_one_grid(
        [
            ds
            for source in sources
            for ds in source.open(variable_ids, time_chunk=shard_steps, assume_units=assume_units)
        ]
    )
    fields, labels, superseded = {}, {}, 0
    for variable in variables:
        pieces = [(ds.attrs[SOURCE_ATTR], ds[variable.id]) for ds in canonical if variable.id in ds]
        if not pieces:
            raws = [raw.raw for source in sources for raw in source.raw()]
            raise MissingVariableError(describe_missing(variable, raws))
        fields[variable.id], labels[variable.id], dropped = merge_along_time(variable, pieces)
        superseded += dropped
    _check_same_times(fields)
    data = stack_channels(xr.Dataset(fields), list(variable_ids))
    data = data.chunk({TIME: shard_steps, CHANNEL: -1, LAT: -1, LON: -1})
    data = _require_finite_and_physical(data)
    data.attrs = {
        "expver": expver_runs(data[TIME].values, labels),
        "expver_superseded": int(superseded),
        "source_layouts": _files_per_layout(sources),
    }
    return data


def _file_sources(files: Sequence[str | Path], unpack_dir: str | Path | None) -> list[Source]:
    """One source per file, every file opened (and checked for truncation) before any is normalised."""
    if not files:
        raise SourceLayoutError("no input files to ingest")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise SourceLayoutError(f"input files do not exist: {missing}")
    sources: list[Source] = [file_source(f, unpack_dir=unpack_dir) for f in files]
    for source in sources:
        source.raw()
    return sources


def _files_per_layout(sources: list[Source]) -> dict[str, int]:
    return dict(sorted(Counter(source.layout.value for source in sources).items()))


# --- combining files -----------------------------------------------------------------------


def _on_one_grid(canonical: list[xr.Dataset]) -> list[xr.Dataset]:
    """Check every dataset is on the first one's grid (:func:`ingest.grid.check_coords`), then give
    them all its coordinates, so float32 and float64 copies of one grid concatenate exactly.

    Raises
    ------
    SourceGridError
        Naming both files, the axis, its sizes and ends, and the largest difference.
    """
    if not canonical:
        return canonical
    first = canonical[0]
    for ds in canonical[1:]:
        check_coords(
            first.coords,
            ds.coords,
            (LAT, LON),
            what=ds.attrs[SOURCE_ATTR],
            reference=f"the grid of {first.attrs[SOURCE_ATTR]}",
            error=SourceGridError,
        )
    return [ds.assign_coords({LAT: first[LAT], LON: first[LON]}) for ds in canonical]


def _format_times(times: np.ndarray) -> str:
    shown = ", ".join(np.datetime_as_string(times[:_MAX_LISTED], unit="h"))
    return f"{shown}{', …' if times.size > _MAX_LISTED else ''}"


def _check_same_times(fields: dict[str, xr.DataArray]) -> None:
    reference_id, reference = next(iter(fields.items()))
    for vid, field in fields.items():
        lacking = np.setdiff1d(reference[TIME].values, field[TIME].values)
        extra = np.setdiff1d(field[TIME].values, reference[TIME].values)
        if lacking.size or extra.size:
            short, long_, missing = (
                (vid, reference_id, lacking) if lacking.size else (reference_id, vid, extra)
            )
            raise MissingVariableError(
                f"{short} is missing at {missing.size} time steps that {long_} has: {_format_times(missing)} "
                "(every variable must cover the same times)"
            )


def _raise_if_not_finite_or_unphysical(
    block: np.ndarray,
    times: np.ndarray,
    *,
    channels: tuple[str, ...],
    bounds: tuple[tuple[float, float], ...],
) -> np.ndarray:
    """Raise on NaN/inf, then on values outside each channel's physical range, in one chunk."""
    bad = ~np.isfinite(block)
    if bad.any():
        per_field = bad.sum(axis=(2, 3))
        t, c = np.argwhere(per_field)[0]
        raise NonFiniteValueError(
            f"{channels[c]} must be finite everywhere; found {int(per_field[t, c])} NaN/inf grid points at "
            f"{_hour(times, t)} ({int(np.count_nonzero(per_field))} (time, channel) fields "
            "affected in this chunk) "
            "— a fill value where data is expected, e.g. an experiment absent at that time"
        )
    low, high = np.array(bounds, dtype=np.float64).T
    lowest, highest = block.min(axis=(2, 3)), block.max(axis=(2, 3))
    outside = (lowest < low) | (highest > high)
    if outside.any():
        t, c = np.argwhere(outside)[0]
        raise PhysicalRangeError(
            f"{channels[c]} spans {lowest[t, c]:.6g}..{highest[t, c]:.6g} at {_hour(times, t)}, outside its "
            f"physical range {low[c]:g}..{high[c]:g} ({int(np.count_nonzero(outside))} (time, "
            "channel) fields "
            "affected in this chunk) — wrong units or corrupt data"
        )
    return block


def _hour(times: np.ndarray, step: int) -> str:
    return str(np.datetime_as_string(times.ravel()[step].astype("datetime64[s]"), unit="h"))


def _require_finite_and_physical(data: xr.DataArray) -> xr.DataArray:
    """Make computing ``data`` raise :class:`NonFiniteValueError` on NaN/inf and
    :class:`PhysicalRangeError` outside a channel's physical range, chunk by chunk."""
    array = data.data
    seconds = data[TIME].values.astype("datetime64[s]").astype(np.int64)
    times = da.from_array(seconds, chunks=(array.chunks[0],))[:, None, None, None]
    channels = tuple(str(c) for c in data[CHANNEL].values)
    bounds = tuple(valid_range(c) for c in channels)
    checked = da.map_blocks(
        _raise_if_not_finite_or_unphysical,
        array,
        times,
        channels=channels,
        bounds=bounds,
        dtype=array.dtype,
        meta=np.empty((0, 0, 0, 0), dtype=array.dtype),
    )
    return data.copy(data=checked)
