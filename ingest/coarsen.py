"""Coarsen a regular latitude/longitude grid by an integer factor, conserving area means.

Every grid point stands for a cell bounded half-way to its neighbours (clipped at ±90°), the
same cells :func:`ingest.grid.cell_area_weights` weights. The coarse grid keeps every
``factor``-th latitude and longitude of the fine one, and each coarse value is the
area-weighted mean of the fine cells it overlaps, with each fine cell weighted by the area it
shares with the coarse cell (a first-order conservative remap, separable in lat and lon
because a cell's area is ``(sin φ_top − sin φ_bottom) × Δλ``).

Grids that include both poles (ERA5's 721 x 1440 at 0.25°) coarsen onto grids that include
them too: 721 rows with factor 4 give 181 rows at 90, 89, …, −90, i.e. ERA5's own 1° grid; a
coarse row then takes the fine row at its latitude, the three rows either side that lie fully
inside its band, and half of the row on each band edge. The pole rows are polar caps of half
a band's height. Longitudes wrap around, so 1440 columns with factor 4 give 360 at 0, 1, …,
359. A grid without poles (e.g. 720 rows offset by half a spacing) coarsens in plain blocks
of ``factor`` rows. The area mean over the sphere is unchanged, up to rounding.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ingest.dims import LAT, LON
from ingest.errors import StoreSchemaError

_FINE_LAT, _FINE_LON = "fine_lat", "fine_lon"


def _latitude_edges(lat: np.ndarray) -> np.ndarray:
    """Band edges (north to south) of points ``lat`` running north to south, clipped at the poles."""
    mid = 0.5 * (lat[1:] + lat[:-1])
    return np.concatenate(
        [
            [min(90.0, lat[0] + 0.5 * (lat[0] - lat[1]))],
            mid,
            [max(-90.0, lat[-1] - 0.5 * (lat[-2] - lat[-1]))],
        ]
    )


def _coarse_latitudes(lat: np.ndarray, factor: int) -> np.ndarray:
    poles = np.isclose(abs(lat[0]), 90.0) and np.isclose(abs(lat[-1]), 90.0)
    if poles:
        if (lat.size - 1) % factor:
            raise StoreSchemaError(
                f"a grid with both poles coarsens by factors dividing nlat - 1 = {lat.size - 1}; "
                f"found factor {factor}"
            )
        return lat[::factor]
    if lat.size % factor:
        raise StoreSchemaError(
            f"a grid without poles coarsens by factors dividing nlat = {lat.size}; found {factor}"
        )
    edges = _latitude_edges(lat)
    top, bottom = edges[:-1:factor], edges[factor::factor]
    return 0.5 * (top + bottom)  # band centres, so midpoints between them fall on the block edges


def latitude_weights(lat: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse latitudes and the matrix averaging fine rows onto them.

    Returns
    -------
    coarse : numpy.ndarray, shape (ncoarse,)
    weights : numpy.ndarray, shape (ncoarse, nfine)
        Rows sum to 1: the share of each coarse band's area lying in each fine band.
    """
    coarse = _coarse_latitudes(lat, factor)
    fine_edges = np.sin(np.deg2rad(_latitude_edges(lat)))
    coarse_edges = np.sin(np.deg2rad(_latitude_edges(coarse)))
    top = np.minimum(coarse_edges[:-1, None], fine_edges[None, :-1])
    bottom = np.maximum(coarse_edges[1:, None], fine_edges[None, 1:])
    overlap = np.clip(top - bottom, 0.0, None)
    return coarse, overlap / overlap.sum(axis=1, keepdims=True)


def longitude_weights(lon: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Coarse longitudes (every ``factor``-th) and the periodic matrix averaging onto them.

    Returns
    -------
    coarse : numpy.ndarray, shape (nlon // factor,)
    weights : numpy.ndarray, shape (ncoarse, nfine)
        Rows sum to 1; coarse cell ``j`` spans ``factor`` fine spacings centred on ``coarse[j]``.
    """
    if lon.size % factor:
        raise StoreSchemaError(
            f"longitudes coarsen by factors dividing nlon = {lon.size}; found factor {factor}"
        )
    spacing = 360.0 / lon.size
    coarse = lon[::factor]
    offset = (lon[None, :] - coarse[:, None] + 180.0) % 360.0 - 180.0  # fine minus coarse centre, wrapped
    half = 0.5 * factor * spacing
    overlap = np.clip(
        np.minimum(offset + 0.5 * spacing, half) - np.maximum(offset - 0.5 * spacing, -half), 0.0, None
    )
    return coarse, overlap / overlap.sum(axis=1, keepdims=True)


def coarsen(data: xr.DataArray, factor: int) -> xr.DataArray:
    """Area-weighted coarsening of the ``lat``/``lon`` dims by an integer ``factor``, lazily.

    Parameters
    ----------
    data : xarray.DataArray, dims (..., lat, lon)
        Regular grid, latitude north to south, longitude evenly spaced over 360°.
    factor : int
        1 returns ``data`` unchanged.

    Returns
    -------
    xarray.DataArray, dims (..., lat, lon)
        Same dtype; Dask-backed where ``data`` is, chunk by chunk (each chunk must hold the
        whole grid, as store chunks do). NaNs spread to the coarse cells they overlap.
    """
    if factor < 1:
        raise StoreSchemaError(f"coarsen factor must be >= 1, found {factor}")
    if factor == 1:
        return data
    lat, lon = data[LAT].values.astype(np.float64), data[LON].values.astype(np.float64)
    coarse_lat, lat_w = latitude_weights(lat, factor)
    coarse_lon, lon_w = longitude_weights(lon, factor)
    lat_matrix = xr.DataArray(lat_w.astype(np.float32), dims=(LAT, _FINE_LAT))
    lon_matrix = xr.DataArray(lon_w.astype(np.float32), dims=(LON, _FINE_LON))
    fine = data.rename({LAT: _FINE_LAT, LON: _FINE_LON}).drop_vars([_FINE_LAT, _FINE_LON])
    coarse = xr.dot(xr.dot(fine, lat_matrix, dim=_FINE_LAT), lon_matrix, dim=_FINE_LON)
    dims = [d if d not in (_FINE_LAT, _FINE_LON) else {_FINE_LAT: LAT, _FINE_LON: LON}[d] for d in fine.dims]
    coarse = coarse.transpose(*dims).assign_coords({LAT: coarse_lat, LON: coarse_lon}).astype(data.dtype)
    coarse.attrs = {**data.attrs, "coarsened_by": factor}
    return coarse


def _band_overlaps(source_edges: np.ndarray, target_edges: np.ndarray) -> np.ndarray:
    """Overlap of target bands (rows) with source bands (columns), edges running north to south in ``sin
    φ``."""
    top = np.minimum(target_edges[:-1, None], source_edges[None, :-1])
    bottom = np.maximum(target_edges[1:, None], source_edges[None, 1:])
    return np.clip(top - bottom, 0.0, None)


def remap_weights(
    lat: np.ndarray, lon: np.ndarray, nlat: int, nlon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First-order conservative remap from one global grid to an equiangular ``nlat × nlon`` grid.

    Unlike :func:`coarsen`, the target need not share points with the source: 64 × 128 → 32 × 64
    (both with poles) works, though 63 rows do not divide by 2. Each target cell takes the
    area-weighted mean of the source cells it overlaps, weighted by the shared area.

    Parameters
    ----------
    lat, lon : numpy.ndarray
        Source grid in degrees, latitude north to south, longitude evenly spaced over 360°.
    nlat, nlon : int
        Target grid: latitudes 90 → −90 with both poles, longitudes ``0, 360/nlon, …``.

    Returns
    -------
    target_lat, target_lon : numpy.ndarray, shapes (nlat,), (nlon,)
    lat_weights : numpy.ndarray, shape (nlat, lat.size)
    lon_weights : numpy.ndarray, shape (nlon, lon.size)
        Rows sum to 1.
    """
    target_lat = np.linspace(90.0, -90.0, nlat)
    target_lon = np.arange(nlon) * (360.0 / nlon)
    overlap = _band_overlaps(
        np.sin(np.deg2rad(_latitude_edges(np.asarray(lat, dtype=np.float64)))),
        np.sin(np.deg2rad(_latitude_edges(target_lat))),
    )
    lat_w = overlap / overlap.sum(axis=1, keepdims=True)
    spacing, target_spacing = 360.0 / len(lon), 360.0 / nlon
    offset = (np.asarray(lon, dtype=np.float64)[None, :] - target_lon[:, None] + 180.0) % 360.0 - 180.0
    half = 0.5 * target_spacing
    lon_overlap = np.clip(
        np.minimum(offset + 0.5 * spacing, half) - np.maximum(offset - 0.5 * spacing, -half), 0.0, None
    )
    return target_lat, target_lon, lat_w, lon_overlap / lon_overlap.sum(axis=1, keepdims=True)


def remap(data: np.ndarray, lat: np.ndarray, lon: np.ndarray, nlat: int, nlon: int) -> np.ndarray:
    """Conservatively remap ``data`` of shape ``(..., lat, lon)`` to an equiangular ``nlat × nlon`` grid.

    See :func:`remap_weights`. The area mean over the sphere is kept up to rounding when the
    target is no finer than the source (each source cell then lies in target cells whole or in parts).

    Returns
    -------
    numpy.ndarray, shape (..., nlat, nlon), the dtype of ``data``.
    """
    _, _, lat_w, lon_w = remap_weights(lat, lon, nlat, nlon)
    out = np.einsum("ij,...jk,lk->...il", lat_w, np.asarray(data, dtype=np.float64), lon_w, optimize=True)
    return out.astype(np.asarray(data).dtype)
