"""Plan ERA5 requests to the Climate Data Store (CDS), in the request form of the new CDS (2024).

A plan turns what a user wants — canonical variable ids (``z500``, ``t850``, ``t2m``), a period,
a time step, an optional ``grid`` and ``area`` — into requests for
``reanalysis-era5-pressure-levels`` and ``reanalysis-era5-single-levels`` that the CDS accepts:

* one calendar month per request (the CDS stores ERA5 by month, so monthly requests are the
  cheapest to serve and the natural unit to cache and resume);
* within a month, pressure-level variables are grouped by the set of levels they are wanted at,
  so the variable × level cross product of each request holds exactly the requested fields
  (``z500`` and ``t850`` go into two requests, not one request that also fetches ``z850`` and
  ``t500``);
* groups are cut further, by variables and then by levels, until each request holds at most
  ``max_fields`` fields. The CDS refuses requests over its cost limit ("cost limits
  exceeded"); the default limit here stays well below it, and lower for netCDF than for GRIB
  because the CDS converts GRIB to netCDF on its side and allows less of it.

The cost of a request is its field count: variables × levels × dates × times, what the CDS
counts. Nothing here talks to the network; :mod:`ingest.cds_download` sends the requests.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np

from ingest.errors import CdsRequestError, RequestTooLargeError
from ingest.lexicon import PRESSURE_LEVELS_DATASET, SINGLE_LEVELS_DATASET, Variable, get_variables

#: Formats the CDS delivers ERA5 in.
DATA_FORMATS = ("netcdf", "grib")
#: How the CDS packs the result: one file, or a zip (which it uses anyway when a netCDF request
#: mixes instantaneous and accumulated fields).
DOWNLOAD_FORMATS = ("unarchived", "zip")
#: Default field limit per request: the CDS's ERA5 cost limit has been 120,000 fields for GRIB,
#: and since 2025 it is lower (and not published as one number) for netCDF, which the CDS
#: converts on its side. Monthly requests of a training set stay far below both.
DEFAULT_MAX_FIELDS = {"grib": 60_000, "netcdf": 10_000}
#: File name suffix of a download per (data_format, download_format).
SUFFIXES = {
    ("netcdf", "unarchived"): ".nc",
    ("grib", "unarchived"): ".grib",
    ("netcdf", "zip"): ".zip",
    ("grib", "zip"): ".zip",
}
#: ERA5's native grid spacing (dlat, dlon) in degrees: what the CDS delivers for a request without ``grid``.
NATIVE_GRID = (0.25, 0.25)
_DATASET_TAGS = {PRESSURE_LEVELS_DATASET: "era5-pl", SINGLE_LEVELS_DATASET: "era5-sl"}


@dataclass(frozen=True)
class PlanOptions:
    """How requests are formed and cut.

    Attributes
    ----------
    data_format : {"netcdf", "grib"}
        Format the CDS delivers.
    download_format : {"unarchived", "zip"}
        One file per request, or a zip of files.
    grid : tuple of float, optional
        ``(dlat, dlon)`` in degrees; the CDS interpolates to this regular grid. ``None`` keeps
        ERA5's native 0.25°.
    area : tuple of float, optional
        ``(north, west, south, east)`` in degrees; ``None`` is the whole globe.
    max_fields : int, optional
        Field limit per request; ``None`` takes :data:`DEFAULT_MAX_FIELDS` of the format.
    product_type : str
        ERA5 product; ``"reanalysis"`` (the HRES member).
    """

    data_format: str = "netcdf"
    download_format: str = "unarchived"
    grid: tuple[float, float] | None = None
    area: tuple[float, float, float, float] | None = None
    max_fields: int | None = None
    product_type: str = "reanalysis"

    def __post_init__(self) -> None:
        if self.data_format not in DATA_FORMATS:
            raise CdsRequestError(f"data_format must be one of {DATA_FORMATS}, found {self.data_format!r}")
        if self.download_format not in DOWNLOAD_FORMATS:
            raise CdsRequestError(
                f"download_format must be one of {DOWNLOAD_FORMATS}, found {self.download_format!r}"
            )
        if self.max_fields is not None and self.max_fields < 1:
            raise CdsRequestError(f"max_fields must be >= 1, found {self.max_fields}")
        _check_grid_and_area(self.grid, self.area)

    @property
    def field_limit(self) -> int:
        """The limit in force: :attr:`max_fields` or the format's default."""
        return self.max_fields if self.max_fields is not None else DEFAULT_MAX_FIELDS[self.data_format]

    @property
    def suffix(self) -> str:
        """File name suffix of one download (``.nc``, ``.grib`` or ``.zip``)."""
        return SUFFIXES[(self.data_format, self.download_format)]


@dataclass(frozen=True)
class CdsRequest:
    """One request to the CDS and what it delivers.

    Attributes
    ----------
    dataset : str
        CDS dataset (collection) id.
    request : dict
        The request exactly as sent, in the new CDS form.
    variable_ids : tuple of str
        Canonical ids whose fields the request delivers.
    month : str
        Calendar month covered, ``"YYYY-MM"``.
    fields : int
        Cost: number of fields (variables × levels × dates × times).
    suffix : str
        File name suffix of the download.
    """

    dataset: str
    request: dict = field(hash=False)
    variable_ids: tuple[str, ...]
    month: str
    fields: int
    suffix: str

    @property
    def key(self) -> str:
        """SHA-256 (hex) of the dataset and the request: the identity of its result."""
        return request_key(self.dataset, self.request)

    @property
    def filename(self) -> str:
        """Cache file name, e.g. ``era5-pl_2000-01_3f2a9c0d1b7e.nc``: readable, and unique per request."""
        return f"{_DATASET_TAGS.get(self.dataset, self.dataset)}_{self.month}_{self.key[:12]}{self.suffix}"


def request_key(dataset: str, request: Mapping) -> str:
    """SHA-256 (hex) of a dataset id and a request, independent of key order.

    Parameters
    ----------
    dataset : str
        CDS dataset id.
    request : mapping
        JSON-serialisable request.
    """
    canonical = json.dumps({"dataset": dataset, "request": request}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def plan_requests(
    variable_ids: Sequence[str],
    start: datetime,
    end: datetime,
    step_hours: int = 6,
    options: PlanOptions | None = None,
) -> list[CdsRequest]:
    """Requests that fetch ``variable_ids`` from ``start`` to ``end`` (inclusive) every ``step_hours``.

    Parameters
    ----------
    variable_ids : sequence of str
        Lexicon ids; pressure-level ids (``z500``) carry their level.
    start, end : datetime.datetime
        First and last valid time; ``start`` must be the first and ``end`` the last time of
        its day on the ``step_hours`` grid (00:00 and 18:00 for 6-hourly), so that every
        request — a cross product of days and times — holds exactly the period.
    step_hours : int
        Hours between times; must divide 24.
    options : PlanOptions, optional
        Format, grid, area and field limit; default netCDF, native grid, global.

    Returns
    -------
    list of CdsRequest
        By month, then pressure levels before single levels, then variable group. Each
        requested field is in exactly one request.

    Raises
    ------
    UnknownVariableError
        If an id is not in the lexicon, or listed twice.
    CdsRequestError
        If the period or time step does not fit the rules above.
    RequestTooLargeError
        If one variable at one level for one month exceeds the field limit (the smallest
        request this planner makes).
    """
    options = options or PlanOptions()
    variables = get_variables(list(variable_ids))
    times = times_of_day(start, end, step_hours)
    plan = []
    for month, days in _months(start.date(), end.date()):
        date_fields = len(days) * len(times)
        for dataset, names, levels in _variable_groups(variables):
            for name_chunk, level_chunk in _cut(names, levels, date_fields, options.field_limit, month):
                request = _request(options, name_chunk, level_chunk, month, days, times)
                ids = _delivered_ids(variables, name_chunk, level_chunk)
                fields = len(name_chunk) * max(len(level_chunk), 1) * date_fields
                plan.append(CdsRequest(dataset, request, ids, month, fields, options.suffix))
    return plan


def times_of_day(start: datetime, end: datetime, step_hours: int) -> list[str]:
    """The ``"HH:MM"`` times of each day, after checking the period fits whole days.

    Raises
    ------
    CdsRequestError
        If ``step_hours`` does not divide 24, ``end`` is not after ``start``, or the period
        does not start at the first and end at the last time of a day on the step grid.
    """
    if step_hours < 1 or 24 % step_hours:
        raise CdsRequestError(f"step_hours must divide 24 (1, 2, 3, 4, 6, 8, 12, 24), found {step_hours}")
    if end <= start:
        raise CdsRequestError(f"end {end} must be after start {start}")
    first = start.hour % step_hours
    hours = list(range(first, 24, step_hours))
    if start.minute or end.minute or start.hour != hours[0] or end.hour != hours[-1]:
        raise CdsRequestError(
            f"a CDS request is a cross product of days and times, so the period must start at "
            f"{hours[0]:02d}:00 and end at {hours[-1]:02d}:00 of a day for {step_hours}-hourly data; "
            f"found {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M}"
        )
    return [f"{hour:02d}:00" for hour in hours]


def request_fields(request: Mapping) -> int:
    """Field count (the CDS's cost) of a request in the new CDS form.

    Counts variables × pressure levels (1 for single levels) × valid calendar dates of the
    ``year``/``month``/``day`` cross product × times, as the CDS does (30 February counts 0).

    Raises
    ------
    CdsRequestError
        If a key the count needs is missing or a date part is not a number.
    """
    try:
        counts = [len(_as_list(request[key])) for key in ("variable", "time")]
    except KeyError as err:
        raise CdsRequestError(
            f"a CDS request needs 'variable' and 'time' lists; could not count fields of "
            f"{dict(request)}: {err}"
        ) from err
    levels = len(_as_list(request.get("pressure_level", [None])))
    return counts[0] * levels * len(_request_dates(request)) * counts[1]


def request_times(request: Mapping) -> np.ndarray:
    """The valid times a request asks for: its valid dates × its times of day.

    Returns
    -------
    numpy.ndarray of datetime64[ns]
        Sorted and unique.

    Raises
    ------
    CdsRequestError
        If a date part is missing or not a number, or a time is not ``"HH:MM"``.
    """
    try:
        stamps = [
            np.datetime64(f"{day.isoformat()}T{time}", "ns")
            for day in _request_dates(request)
            for time in _as_list(request["time"])
        ]
    except (KeyError, ValueError) as err:
        raise CdsRequestError(
            f"a CDS request needs a 'time' list of 'HH:MM' strings, found {request.get('time')!r}: {err}"
        ) from err
    return np.unique(np.array(stamps, dtype="datetime64[ns]"))


def _request_dates(request: Mapping) -> list[date]:
    """Valid calendar dates of the ``year``/``month``/``day`` cross product (30 February is none)."""
    try:
        years, months, days = (_as_ints(request[key]) for key in ("year", "month", "day"))
    except (KeyError, ValueError) as err:
        raise CdsRequestError(
            "a CDS request needs 'year', 'month' and 'day' lists of numbers; found those of "
            f"{dict(request)}: {err}"
        ) from err
    return [
        date(y, m, d)
        for y in years
        for m in months
        for d in days
        if 1 <= m <= 12 and 1 <= d <= calendar.monthrange(y, m)[1]
    ]


def check_request(request: Mapping, limit: int) -> int:
    """Field count of ``request``, refusing it before it is sent if it is over ``limit``.

    Raises
    ------
    RequestTooLargeError
        If the request holds more than ``limit`` fields.
    """
    fields = request_fields(request)
    if fields > limit:
        raise RequestTooLargeError(
            f"request of {fields} fields is over the limit of {limit} fields per request "
            f"(variables {_as_list(request.get('variable'))}, months {_as_list(request.get('month'))}); "
            f"split it with ingest.cds.plan_requests or raise the limit"
        )
    return fields


def describe_plan(plan: Sequence[CdsRequest]) -> str:
    """One line per request (month, dataset, variables, levels, cost, cache name) and the total.

    Returns
    -------
    str
        Human-readable table, newline-terminated.
    """
    lines = [f"{'#':>3}  {'month':<7}  {'dataset':<32}  {'fields':>7}  variables"]
    for number, item in enumerate(plan, start=1):
        levels = item.request.get("pressure_level")
        at = f" at {'/'.join(levels)} hPa" if levels else ""
        lines.append(
            f"{number:>3}  {item.month:<7}  {item.dataset:<32}  {item.fields:>7}  "
            f"{', '.join(item.request['variable'])}{at} -> {item.filename}"
        )
    total = sum(item.fields for item in plan)
    lines.append(f"total: {len(plan)} requests, {total} fields")
    return "\n".join(lines) + "\n"


def _check_grid_and_area(grid, area) -> None:
    if grid is not None and (len(grid) != 2 or any(not 0 < step <= 90 for step in grid)):
        raise CdsRequestError(f"grid must be (dlat, dlon) in degrees, each in (0, 90], found {grid}")
    if area is not None:
        if len(area) != 4:
            raise CdsRequestError(f"area must be (north, west, south, east) in degrees, found {area}")
        north, _, south, _ = area
        if not -90 <= south < north <= 90:
            raise CdsRequestError(
                f"area needs -90 <= south < north <= 90, found north={north}, south={south}"
            )


def _months(first: date, last: date) -> list[tuple[str, list[int]]]:
    """``("YYYY-MM", days)`` for each calendar month from ``first`` to ``last`` (inclusive)."""
    months = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        ndays = calendar.monthrange(year, month)[1]
        low = first.day if (year, month) == (first.year, first.month) else 1
        high = last.day if (year, month) == (last.year, last.month) else ndays
        months.append((f"{year:04d}-{month:02d}", list(range(low, high + 1))))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def _variable_groups(variables: list[Variable]) -> list[tuple[str, list[str], tuple[int, ...]]]:
    """``(dataset, cds names, levels)`` groups whose name × level product is exactly what is wanted.

    Pressure-level names are grouped by the set of levels requested for them; single-level
    names form one group with no levels.
    """
    levels_of: dict[str, set[int]] = {}
    singles: list[str] = []
    for variable in variables:
        if variable.level is None:
            singles.append(variable.cds_name)
        else:
            levels_of.setdefault(variable.cds_name, set()).add(variable.level)
    by_levels: dict[tuple[int, ...], list[str]] = {}
    for name, levels in levels_of.items():
        by_levels.setdefault(tuple(sorted(levels)), []).append(name)
    groups = [(PRESSURE_LEVELS_DATASET, names, levels) for levels, names in by_levels.items()]
    if singles:
        groups.append((SINGLE_LEVELS_DATASET, singles, ()))
    return groups


def _cut(
    names: list[str], levels: tuple[int, ...], date_fields: int, limit: int, month: str
) -> list[tuple[list[str], tuple[int, ...]]]:
    """Cut a group into ``(names, levels)`` pieces of at most ``limit`` fields each.

    Levels are cut first only when one variable at all its levels is over the limit; then as
    many variables as fit share each request.
    """
    if date_fields > limit:
        raise RequestTooLargeError(
            f"one variable at one level for {month} is {date_fields} fields, over the limit of {limit} "
            f"fields per request; raise max_fields (the CDS allows far more for GRIB) or shorten the period"
        )
    level_count = max(len(levels), 1)
    per_request_levels = min(level_count, limit // date_fields)
    level_chunks = [
        levels[i : i + per_request_levels] for i in range(0, len(levels), per_request_levels)
    ] or [()]
    pieces = []
    for level_chunk in level_chunks:
        per_request_names = max(1, limit // (max(len(level_chunk), 1) * date_fields))
        for i in range(0, len(names), per_request_names):
            pieces.append((names[i : i + per_request_names], level_chunk))
    return pieces


def _request(
    options: PlanOptions,
    names: list[str],
    levels: tuple[int, ...],
    month: str,
    days: list[int],
    times: list[str],
) -> dict:
    year, month_number = month.split("-")
    request: dict = {"product_type": [options.product_type], "variable": list(names)}
    if levels:
        request["pressure_level"] = [str(level) for level in levels]
    request.update(
        {
            "year": [year],
            "month": [month_number],
            "day": [f"{day:02d}" for day in days],
            "time": list(times),
            "data_format": options.data_format,
            "download_format": options.download_format,
        }
    )
    if options.grid is not None:
        request["grid"] = [float(step) for step in options.grid]
    if options.area is not None:
        request["area"] = [float(edge) for edge in options.area]
    return request


def _delivered_ids(variables: list[Variable], names: list[str], levels: tuple[int, ...]) -> tuple[str, ...]:
    wanted = set(names)
    return tuple(
        v.id
        for v in variables
        if v.cds_name in wanted and (v.level is None if not levels else v.level in levels)
    )


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _as_ints(value) -> list[int]:
    return [int(item) for item in _as_list(value)]
