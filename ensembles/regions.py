r"""Latitude/longitude boxes over which any metric of :mod:`ensembles.metrics` can be averaged.

A :class:`Region` is a box with inclusive edges; its :meth:`Region.weights` are the area
weights restricted to the box and rescaled to mean 1 over it,

.. math:: w^R_{jk} = \frac{w_j\, m_{jk}}{\sum_{jk} w_j m_{jk} / \sum_{jk} m_{jk}},

with :math:`m_{jk} \in \{0, 1\}` the box mask (points outside the box count for nothing, even
where NaN); :func:`weight_matrix` stacks the regions' weights, normalised, for the statistic
units. Presets: :data:`REGIONS`, by name through :func:`get_region`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ensembles.errors import RegionError
from ensembles.metrics import FieldScores, Weights, resolve_weights
from ingest.dims import LAT, LON


@dataclass(frozen=True)
class Region:
    """A latitude/longitude box, edges included.

    Attributes
    ----------
    name : str
        Label of the region in scores and messages.
    lat : tuple of float
        ``(south, north)`` in degrees north, ``-90 ≤ south ≤ north ≤ 90``.
    lon : tuple of float
        ``(west, east)`` in degrees east, read eastwards from ``west`` and taken modulo 360:
        ``(330, 30)`` and ``(-30, 30)`` are the same 60° box across the prime meridian,
        ``(170, -170)`` a 20° box across the date line. A span of 360° or more, e.g. the
        default ``(0, 360)``, is every longitude.
    """

    name: str
    lat: tuple[float, float]
    lon: tuple[float, float] = (0.0, 360.0)

    def __post_init__(self) -> None:
        south, north = self.lat
        if not -90.0 <= south <= north <= 90.0:
            raise RegionError(
                f"region {self.name!r}: expected -90 <= south <= north <= 90, found lat {self.lat}"
            )
        if not np.all(np.isfinite(self.lon)):
            raise RegionError(f"region {self.name!r}: expected finite longitudes, found lon {self.lon}")

    @classmethod
    def box(cls, south: float, north: float, west: float, east: float, name: str | None = None) -> Region:
        """The box ``south..north`` °N, ``west..east`` °E, named after its edges unless ``name`` is given."""
        label = name if name is not None else f"{south:g}..{north:g}N,{west:g}..{east:g}E"
        return cls(label, (float(south), float(north)), (float(west), float(east)))

    def mask(self, lat: xr.DataArray | np.ndarray, lon: xr.DataArray | np.ndarray) -> xr.DataArray:
        """1.0 at the grid points inside the box, 0.0 elsewhere.

        Parameters
        ----------
        lat : array, shape (lat,)
            Latitudes of the grid, degrees north, any order.
        lon : array, shape (lon,)
            Longitudes of the grid, degrees east, any convention (0..360 or -180..180).

        Returns
        -------
        xarray.DataArray, dims (lat, lon)
            Labelled by the given coordinates, float64.
        """
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        south, north = self.lat
        inside = (lat >= south) & (lat <= north)
        mask = inside[:, None] & self._lon_inside(lon)[None, :]
        return xr.DataArray(
            mask.astype(np.float64), dims=(LAT, LON), coords={LAT: lat, LON: lon}, name=self.name
        )

    def weights(
        self, lat: xr.DataArray | np.ndarray, lon: xr.DataArray | np.ndarray, weights: Weights = None
    ) -> xr.DataArray:
        """Weights restricted to the box and rescaled to mean 1 over its points: ``w_j m_jk / mean_R(w)``.

        Parameters
        ----------
        lat, lon : array, shapes (lat,), (lon,)
            Coordinates of the fields to score, degrees (pass the fields' own coordinates:
            metrics align them exactly).
        weights : None, xarray.DataArray or numpy.ndarray
            Weights to restrict, as the metrics take them (default: area weights of ``lat``).

        Returns
        -------
        xarray.DataArray, dims (lat, lon)
            Zero outside the box; pass as ``weights=`` to any metric.

        Raises
        ------
        RegionError
            If no grid point of positive weight lies in the box (the box and the grid extent
            are named).
        """
        mask = self.mask(lat, lon)
        restricted = resolve_weights(weights, mask[LAT]) * mask
        total = float(restricted.sum())
        if not total > 0:
            raise RegionError(
                f"region {self.name!r} (lat {self.lat[0]:g}..{self.lat[1]:g}, lon "
                f"{self.lon[0]:g}..{self.lon[1]:g}) "
                f"holds no grid point of positive weight; the grid spans lat {_extent(mask[LAT].values)}, "
                f"lon {_extent(mask[LON].values)}"
            )
        return (restricted * (float(mask.sum()) / total)).rename(f"{self.name} weight")

    def _lon_inside(self, lon: np.ndarray) -> np.ndarray:
        """Whether each longitude lies eastwards of ``west`` by at most the box's width."""
        west, east = self.lon
        if east - west >= 360.0:
            return np.ones(lon.shape, dtype=bool)
        width = (east - west) % 360.0
        return (lon - west) % 360.0 <= width


def _extent(values: np.ndarray) -> str:
    return f"{values.min():g}..{values.max():g} ({values.size} values)"


GLOBAL = Region("global", (-90.0, 90.0))
EXTRA_TROPICS_NORTH = Region("extra-tropics-north", (20.0, 90.0))
EXTRA_TROPICS_SOUTH = Region("extra-tropics-south", (-90.0, -20.0))
TROPICS = Region("tropics", (-20.0, 20.0))

#: Preset regions by name (WeatherBench 2's latitude bands; edges included).
REGIONS: dict[str, Region] = {r.name: r for r in (GLOBAL, EXTRA_TROPICS_NORTH, EXTRA_TROPICS_SOUTH, TROPICS)}


def get_region(name: str) -> Region:
    """The preset region called ``name``; :class:`RegionError` listing the presets if unknown."""
    try:
        return REGIONS[name]
    except KeyError as err:
        raise RegionError(f"unknown region {name!r}; expected one of {sorted(REGIONS)}") from err


def weight_matrix(regions: list[Region] | tuple[Region, ...], lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Area weights of each region over the flattened grid, each row summing to 1.

    Parameters
    ----------
    regions : sequence of Region
    lat, lon : numpy.ndarray, shapes (lat,), (lon,)
        Grid of the fields, degrees.

    Returns
    -------
    numpy.ndarray, shape (region, lat·lon)
        Row ``r`` is ``Region.weights`` of region ``r`` divided by its sum, in the order of a
        C-order flattened ``(lat, lon)`` field, so ``W @ field.ravel()`` gives the area-weighted
        mean over each region (:func:`ensembles.metrics.forecast_statistics`).

    Raises
    ------
    RegionError
        If a region holds no point of the grid.
    """
    rows = []
    for region in regions:
        w = region.weights(lat, lon).transpose(LAT, LON).values.ravel()
        rows.append(w / w.sum())
    return np.stack(rows)


def global_field_scores(metrics: Sequence[str], lat: np.ndarray, lon: np.ndarray) -> FieldScores:
    """Deterministic ``metrics`` area-weighted over the whole grid, by the scorecard's statistic units.

    What training's validation sums (``rmse`` and ``acc``): the same units and the same
    :data:`GLOBAL` weights as the scorecard's global rows.

    Parameters
    ----------
    metrics : sequence of str
        Metrics of :data:`ensembles.metrics.FINALISERS`, e.g. ``("rmse", "acc")``.
    lat, lon : numpy.ndarray, shapes (lat,), (lon,)
        Grid of the fields, degrees.
    """
    return FieldScores(metrics, weight_matrix([GLOBAL], lat, lon)[0])
