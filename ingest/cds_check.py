"""Check that a CDS result holds what its request asked for, before it is cached or ingested.

The CDS has answered requests with other fields than asked for (an hourly morning of one day
for the noons of three days). A file is read as :mod:`ingest.readers` reads it (:mod:`ingest.formats`),
brought into
the canonical form, and compared with its request on four things:

* **variables**: the lexicon ids it holds are exactly the request's (a field at another
  pressure level is another id: ``z850`` is not ``z500``);
* **pressure levels**: the levels on its level axes are exactly the requested ones (this also
  catches levels the lexicon has no id for);
* **times**: every variable holds exactly the request's valid times (dates × times of day);
* **grid**: the latitude and longitude spacing is the requested ``grid`` (ERA5's native 0.25°
  without one), and the points span the requested ``area`` (the globe without one) to within
  one grid step, since the CDS may align the edges of an area to its grid.

Only coordinates and names are read, never the fields.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from ingest.cds import NATIVE_GRID, CdsRequest, request_times
from ingest.dims import LAT, LON, TIME
from ingest.errors import CdsResultMismatchError
from ingest.formats import file_source
from ingest.normalise import normalise

_LEVEL_AXES = ("pressure_level", "isobaricInhPa", "level")
_LISTED = 4
#: Tolerance on coordinates (degrees): float32 grids differ from the float64 request by ~1e-6.
_DEGREES_TOLERANCE = 1e-4


def check_result(path: Path, item: CdsRequest, label: str | None = None) -> None:
    """Raise unless the file at ``path`` holds exactly what ``item`` requested.

    Parameters
    ----------
    path : pathlib.Path
        The downloaded file (netCDF, GRIB or a CDS zip of them).
    item : CdsRequest
        The request it answers.
    label : str, optional
        Name of the file in the message (default ``path``'s name; a download still under its
        temporary name is named by its cache name).

    Raises
    ------
    CdsResultMismatchError
        Naming the file, the request and, for each of variables, levels, times and grid that
        differ, what was expected and what was found.
    SourceLayoutError
        If the file cannot be read as ERA5 at all.
    """
    with tempfile.TemporaryDirectory(prefix=".check-", dir=path.parent) as unpack_dir:
        raws = [raw.raw for raw in file_source(path, unpack_dir=unpack_dir).raw()]
        try:
            problems = _differences(raws, item)
        finally:
            for raw in raws:
                raw.close()
    if problems:
        raise CdsResultMismatchError(
            f"{label or path.name}: the CDS result does not hold what was requested ({item.dataset}, "
            f"{item.month}, variables {item.request['variable']}): {'; '.join(problems)}"
        )


def _differences(raws: list[xr.Dataset], item: CdsRequest) -> list[str]:
    """One sentence per aspect of the result that differs from the request."""
    canonical = [normalise(raw) for raw in raws]
    found_ids = sorted({str(name) for ds in canonical for name in ds.data_vars})
    problems = []
    if found_ids != sorted(item.variable_ids):
        problems.append(f"variables: expected {sorted(item.variable_ids)}, found {found_ids}")
    wanted_levels = sorted(int(level) for level in item.request.get("pressure_level", []))
    found_levels = sorted(
        {
            int(round(float(level)))
            for raw in raws
            for axis in _LEVEL_AXES
            if axis in raw.coords
            for level in np.atleast_1d(raw[axis].values)
        }
    )
    if found_levels != wanted_levels:
        problems.append(f"pressure levels: expected {wanted_levels} hPa, found {found_levels} hPa")
    problems += _time_differences(canonical, request_times(item.request))
    problems += _grid_differences(canonical, item.request)
    return problems


def _time_differences(canonical: list[xr.Dataset], expected: np.ndarray) -> list[str]:
    """Differences between each variable's times and ``expected`` (one sentence per distinct set)."""
    problems = []
    for found in {tuple(_times_of(name, canonical)) for ds in canonical for name in ds.data_vars}:
        found = np.array(found, dtype="datetime64[ns]")
        if not np.array_equal(found, expected):
            missing, unexpected = np.setdiff1d(expected, found), np.setdiff1d(found, expected)
            problems.append(
                f"times: expected {_describe_times(expected)}, found {_describe_times(found)}; "
                f"missing {_listed(missing)}, unexpected {_listed(unexpected)}"
            )
    return problems


def _times_of(name: str, canonical: list[xr.Dataset]) -> np.ndarray:
    """Sorted unique times of variable ``name`` across the datasets that hold it."""
    return np.unique(np.concatenate([ds[TIME].values for ds in canonical if name in ds.data_vars]))


def _describe_times(times: np.ndarray) -> str:
    if times.size == 0:
        return "no times"
    return f"{times.size} times {_minutes(times[0])} .. {_minutes(times[-1])}"


def _listed(times: np.ndarray) -> str:
    shown = ", ".join(_minutes(t) for t in times[:_LISTED])
    return f"[{shown}{', …' if times.size > _LISTED else ''}]"


def _minutes(time: np.datetime64) -> str:
    return str(np.datetime64(time, "m"))


def _grid_differences(canonical: list[xr.Dataset], request: dict) -> list[str]:
    """Whether each dataset's grid has the requested spacing and spans the requested area."""
    dlat, dlon = (float(step) for step in request.get("grid", NATIVE_GRID))
    area = request.get("area")
    north, west, south, east = (float(edge) for edge in area) if area else (90.0, 0.0, -90.0, 360.0 - dlon)
    width = min(
        np.mod(east - west, 360.0) if east - west < 360.0 else 360.0, 360.0 - dlon
    )  # eastwards from west
    where = f"area N {north:g} W {west:g} S {south:g} E {east:g}" if area else "global"
    problems = set()
    for ds in canonical:
        lat, lon = ds[LAT].values, ds[LON].values
        east_of_west = np.sort(np.mod(lon - west, 360.0))
        if not (
            _spaced(lat, dlat)
            and _spaced(east_of_west, dlon)
            and _spans(lat, south, north, dlat)
            and _spans(east_of_west, 0.0, width, dlon)
        ):
            problems.add(
                f"grid: expected {dlat:g}° x {dlon:g}°, {where}; found {lat.size} latitudes {lat[0]:g} .. "
                f"{lat[-1]:g} every {_spacing(lat):g}°, {lon.size} longitudes {lon.min():g} .. "
                f"{lon.max():g} every {_spacing(np.sort(lon)):g}°"
            )
    return sorted(problems)


def _spaced(values: np.ndarray, step: float) -> bool:
    """Consecutive ``values`` (monotonic) are ``step`` apart; a single value passes."""
    return values.size < 2 or bool(np.allclose(np.abs(np.diff(values)), step, atol=_DEGREES_TOLERANCE))


def _spans(values: np.ndarray, low: float, high: float, step: float) -> bool:
    """``values`` lie in ``[low, high]`` and reach both ends, each to within one ``step``."""
    slack = step + _DEGREES_TOLERANCE
    return bool(
        values.min() >= low - slack
        and values.max() <= high + slack
        and values.min() <= low + slack
        and values.max() >= high - slack
    )


def _spacing(values: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(values)))) if values.size > 1 else float("nan")
