"""Latitude/longitude grids, their area weights, and the one check that two grids agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ingest.dims import LAT, LON
from ingest.errors import CoordinateMismatchError

#: Coordinates closer than this fraction of the expected axis's spacing are the same point: float32
#: rounding of degrees (~2e-5 at 360) passes on any grid coarser than ~0.02 degrees, a shifted row does not.
SPACING_FRACTION = 1e-3


def equiangular_lats(nlat: int) -> np.ndarray:
    """Latitudes of an equiangular grid that includes both poles, north to south.

    Returns
    -------
    numpy.ndarray, shape (nlat,)
        Degrees north, from 90 to −90.
    """
    return np.linspace(90.0, -90.0, nlat)


def regular_lons(nlon: int) -> np.ndarray:
    """Longitudes ``0, 360/nlon, …`` in degrees east, shape (nlon,)."""
    return np.arange(nlon) * (360.0 / nlon)


def cell_area_weights(lat: np.ndarray) -> np.ndarray:
    """Area of each latitude row's cells, normalised to mean 1.

    Each row ``i`` stands for the band between the midpoints to its neighbours (clipped at
    the poles), so its weight is ``sin(φ_upper) − sin(φ_lower)``: exact areas, which stay
    positive at the poles where ``cos φ`` would vanish.

    Parameters
    ----------
    lat : numpy.ndarray, shape (nlat,)
        Latitudes in degrees, monotonic (either direction).

    Returns
    -------
    numpy.ndarray, shape (nlat,)
        Weights with ``weights.mean() == 1``.
    """
    lat = np.asarray(lat, dtype=np.float64)
    if lat.ndim != 1 or lat.size < 2:
        raise ValueError(f"expected a 1-D latitude array of at least 2 values, found shape {lat.shape}")
    mid = 0.5 * (lat[1:] + lat[:-1])
    upper = np.concatenate([[np.sign(lat[0] - lat[-1]) * 90.0], mid])
    lower = np.concatenate([mid, [np.sign(lat[-1] - lat[0]) * 90.0]])
    band = np.abs(np.sin(np.deg2rad(upper)) - np.sin(np.deg2rad(lower)))
    return band / band.mean()


def check_coords(
    expected: Mapping,
    found: Mapping,
    dims: Sequence[str] = (LAT, LON),
    *,
    what: str = "the input",
    reference: str = "the expected grid",
    error: type[CoordinateMismatchError] = CoordinateMismatchError,
    spacing_fraction: float = SPACING_FRACTION,
) -> None:
    """Raise ``error`` unless ``found`` has ``expected``'s coordinates along every dim of ``dims``.

    The one coordinate handshake: every door where data meets a model, archive, store,
    checkpoint or truth calls it, so grids agree (or fail) by one rule. Numeric axes agree when
    they have the same length and differ nowhere by more than ``spacing_fraction`` times the
    expected axis's median spacing (1 for a single point); labels (channels) must be equal.
    Nothing is relabelled: the caller keeps ``found`` as it is.

    Parameters
    ----------
    expected, found : Mapping of str to array-like
        Coordinates by dim name (a coords dict, ``Dataset.coords``, …), each 1-D.
    dims : sequence of str
        The dims to compare, e.g. ``(LAT, LON)`` or ``(CHANNEL, LAT, LON)``.
    what, reference : str
        How the message names ``found`` and ``expected`` ("the truth", "the forecasts").
    error : type
        :class:`~ingest.errors.CoordinateMismatchError` or a subclass that also belongs to the
        caller's package hierarchy.

    Raises
    ------
    CoordinateMismatchError
        (as ``error``) naming the dim, both axes, and the largest difference against the
        tolerance; its ``dim``, ``expected``, ``found`` and ``max_difference`` attributes hold
        the same facts.
    """
    for dim in dims:
        problem = _axis_mismatch(dim, expected[dim], found, spacing_fraction)
        if problem is not None:
            sentence, max_difference = problem
            labels = not np.issubdtype(np.asarray(expected[dim]).dtype, np.number)
            differs = f"has other {dim} labels than" if labels else "is on another grid than"
            err = error(f"{what} {differs} {reference}: {sentence}")
            err.dim, err.max_difference = dim, max_difference
            err.expected = np.asarray(expected[dim])
            err.found = np.asarray(found[dim]) if dim in found else None
            raise err


def same_coords(
    expected: Mapping,
    found: Mapping,
    dims: Sequence[str] = (LAT, LON),
    *,
    spacing_fraction: float = SPACING_FRACTION,
) -> bool:
    """Whether :func:`check_coords` would accept ``found`` (for callers that choose, not refuse)."""
    return all(_axis_mismatch(dim, expected[dim], found, spacing_fraction) is None for dim in dims)


def axis_tolerance(axis: np.ndarray, spacing_fraction: float = SPACING_FRACTION) -> float:
    """Largest difference (axis units) at which two values of ``axis`` are the same point."""
    axis = np.asarray(axis, dtype=np.float64)
    steps = np.abs(np.diff(axis))
    steps = steps[steps > 0]
    return spacing_fraction * (float(np.median(steps)) if steps.size else 1.0)


def _axis_mismatch(
    dim: str, expected, found: Mapping, spacing_fraction: float
) -> tuple[str, float | None] | None:
    """``(sentence, max difference)`` saying how ``found[dim]`` differs from ``expected``; ``None`` if not."""
    if dim not in found:
        return f"expected a {dim!r} coordinate, found only {sorted(map(str, found))}", None
    want, got = np.asarray(expected), np.asarray(found[dim])
    if want.ndim != 1 or got.ndim != 1:
        return f"expected 1-D {dim} axes, found shapes {want.shape} and {got.shape}", None
    sizes = f"expected {dim} of {want.size} values {_ends(want)}, found {got.size} values {_ends(got)}"
    if want.size != got.size:
        return sizes, None
    if not (np.issubdtype(want.dtype, np.number) and np.issubdtype(got.dtype, np.number)):
        differ = [
            i for i, (a, b) in enumerate(zip(want.tolist(), got.tolist(), strict=True)) if str(a) != str(b)
        ]
        if not differ:
            return None
        return (
            f"expected {dim} {want.tolist()}, found {got.tolist()} (first difference at position {differ[0]})"
        ), None
    difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float(difference.max()) if difference.size else 0.0  # NaN if any coordinate is NaN
    tolerance = axis_tolerance(want, spacing_fraction)
    if worst <= tolerance:
        return None
    where = int(np.argmax(np.nan_to_num(difference, nan=np.inf)))
    return (
        f"{sizes}; max difference {worst:.3g} at position {where} exceeds the tolerance {tolerance:.3g} "
        f"({spacing_fraction:g} of the spacing)"
    ), worst


def _ends(values: np.ndarray) -> str:
    if values.size == 0:
        return "[]"
    if np.issubdtype(values.dtype, np.number):
        return f"{values[0]:g}…{values[-1]:g}"
    return f"{values[0]}…{values[-1]}"
