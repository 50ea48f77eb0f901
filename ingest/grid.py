"""Latitude/longitude grids and their area weights."""

from __future__ import annotations

import numpy as np


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
