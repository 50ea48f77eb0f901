"""The source protocol: anything that delivers ERA5 fields in fourcast's canonical form.

A :class:`Source` is one place fields come from — a file in one of the layouts the CDS has
delivered (:mod:`ingest.formats`), or the synthetic flow (:class:`ingest.synthetic.SyntheticSource`).
It gives the datasets as delivered (:meth:`Source.raw`, for diagnostics) and, for a set of
variables and times, those datasets brought into the canonical form of
:func:`ingest.normalise.normalise` (:meth:`Source.open`). :func:`ingest.readers.open_sources`
combines the datasets of many sources into the store's ``[time, channel, lat, lon]`` array.

Every implementation runs the conformance suite in ``tests/ingest/source_suite.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, runtime_checkable

import numpy as np
import xarray as xr

from ingest.dims import TIME
from ingest.errors import IngestError, SourceRequestError
from ingest.lexicon import get_variables
from ingest.normalise import check_assumed_units, normalise

#: Attribute of every dataset :meth:`Source.open` yields: the label of the source it came from.
SOURCE_ATTR = "source"
#: Attribute of every dataset :meth:`Source.open` yields: the :class:`Layout` value of its source.
LAYOUT_ATTR = "source_layout"


class Layout(str, Enum):
    """ERA5 file layouts fourcast reads."""

    NEW_CDS_NETCDF = "new-cds-netcdf"
    OLD_CDS_NETCDF = "old-cds-netcdf"
    CDS_ZIP = "cds-zip"
    GRIB = "grib"


@dataclass(frozen=True)
class RawDataset:
    """One dataset opened (lazily) from a source, before normalisation.

    Attributes
    ----------
    label : str
        The file path, or ``archive.zip::member.nc`` for a member of a CDS zip.
    layout : Layout
        Layout of the file as delivered (a zip member's layout is ``CDS_ZIP``).
    raw : xarray.Dataset
        The dataset as opened; netCDF is opened with ``mask_and_scale=False`` so that
        :func:`~ingest.normalise.normalise` unpacks it.
    """

    label: str
    layout: Layout
    raw: xr.Dataset


@runtime_checkable
class Source(Protocol):
    """Where ERA5 fields come from.

    Attributes
    ----------
    label : str
        What errors and provenance call the source (a file path).
    layout : Layout
        The layout its data is delivered in.
    """

    label: str
    layout: Layout

    def raw(self) -> list[RawDataset]:
        """The datasets as delivered, opened lazily (the same objects on every call).

        Raises
        ------
        SourceLayoutError
            If the source is unreadable; :class:`~ingest.errors.TruncatedFileError` and
            :class:`~ingest.errors.CorruptFileError` for damaged files.
        """
        ...

    def open(
        self,
        variable_ids: Sequence[str],
        times: np.ndarray | None = None,
        *,
        time_chunk: int = 1,
        assume_units: Mapping[str, str] | None = None,
    ) -> Iterator[xr.Dataset]:
        """The requested fields this source holds, in canonical form.

        Parameters
        ----------
        variable_ids : sequence of str
            Lexicon ids wanted; the source may hold only some of them (others may come from
            another source).
        times : numpy.ndarray of datetime64, shape (n,), optional
            Valid times wanted; ``None`` for every time the source holds.
        time_chunk : int
            Time steps per Dask chunk.
        assume_units : mapping of str to str, optional
            As for :func:`~ingest.normalise.normalise`.

        Yields
        ------
        xarray.Dataset
            As :func:`~ingest.normalise.normalise` returns: one float32 ``(time, lat, lon)``
            variable per requested id held, Dask-backed, ``time`` limited to the requested
            times the source holds (none of others), ``lat`` 90 → −90, ``lon`` [0, 360), an
            ``expver`` coordinate along time; attributes :data:`SOURCE_ATTR` (the label) and
            :data:`LAYOUT_ATTR` (the layout's value). Datasets holding none of the requested
            variables or times are not yielded.

        Raises
        ------
        UnknownVariableError
            If an id is not in the lexicon (before anything is read).
        SourceRequestError
            If ``times`` is not a 1-d array of dates, or ``time_chunk`` < 1.
        SourceLayoutError
            As :meth:`raw`, and the errors of :func:`~ingest.normalise.normalise`, each naming
            the source.
        """
        ...


def check_request(
    variable_ids: Sequence[str],
    times: np.ndarray | None,
    time_chunk: int,
    assume_units: Mapping[str, str] | None,
) -> tuple[np.ndarray | None, dict[str, str]]:
    """Validate a :meth:`Source.open` request before anything is read.

    Returns
    -------
    times : numpy.ndarray of datetime64[ns], or None
    assume_units : dict of str to str

    Raises
    ------
    UnknownVariableError, UnitsError
        For unknown ids or impossible assumed units.
    SourceRequestError
        If ``times`` is not a 1-d array of dates (NaT included), or ``time_chunk`` < 1.
    """
    get_variables(list(variable_ids))
    if not isinstance(time_chunk, int) or time_chunk < 1:
        raise SourceRequestError(f"time_chunk must be an integer >= 1, found {time_chunk!r}")
    assumed = check_assumed_units(assume_units)
    if times is None:
        return None, assumed
    array = np.asarray(times)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.datetime64) or np.isnat(array).any():
        raise SourceRequestError(
            f"times must be a 1-d array of datetime64 dates without NaT, found "
            f"{array.dtype} of shape {array.shape}"
        )
    return array.astype("datetime64[ns]"), assumed


def normalised(
    raw: RawDataset,
    variable_ids: Sequence[str],
    times: np.ndarray | None,
    time_chunk: int,
    assume_units: Mapping[str, str],
    source: Source,
) -> xr.Dataset | None:
    """One raw dataset in canonical form, limited to ``times``; ``None`` if nothing requested is in it.

    Errors of :func:`~ingest.normalise.normalise` are raised again with the dataset's label in front.
    """
    try:
        ds = normalise(raw.raw, variable_ids, time_chunk=time_chunk, assume_units=assume_units)
    except IngestError as err:
        raise type(err)(f"{raw.label}: {err}") from err
    if times is not None:
        held = np.isin(ds[TIME].values, times)
        if not held.all():
            ds = ds.isel({TIME: np.flatnonzero(held)})
    if not ds.data_vars or ds.sizes[TIME] == 0:
        return None
    return ds.assign_attrs({SOURCE_ATTR: raw.label, LAYOUT_ATTR: source.layout.value})


class RawSource:
    """Base of sources whose :meth:`open` normalises what :meth:`raw` opens (every file format).

    Subclasses set :attr:`label` and :attr:`layout` and implement :meth:`_open_raw`; the raw
    datasets are opened once and kept.
    """

    label: str
    layout: Layout
    _raws: list[RawDataset] | None = None

    def _open_raw(self) -> list[RawDataset]:
        raise NotImplementedError

    def raw(self) -> list[RawDataset]:
        """The datasets as delivered (see :meth:`Source.raw`)."""
        if self._raws is None:
            self._raws = self._open_raw()
        return self._raws

    def open(
        self,
        variable_ids: Sequence[str],
        times: np.ndarray | None = None,
        *,
        time_chunk: int = 1,
        assume_units: Mapping[str, str] | None = None,
    ) -> Iterator[xr.Dataset]:
        """The requested fields in canonical form (see :meth:`Source.open`); the request is
        checked on the call, the datasets are opened as they are taken."""
        wanted, assumed = check_request(variable_ids, times, time_chunk, assume_units)
        return self._normalised(variable_ids, wanted, time_chunk, assumed)

    def _normalised(
        self,
        variable_ids: Sequence[str],
        times: np.ndarray | None,
        time_chunk: int,
        assume_units: dict[str, str],
    ) -> Iterator[xr.Dataset]:
        for raw in self.raw():
            ds = normalised(raw, variable_ids, times, time_chunk, assume_units, self)
            if ds is not None:
                yield ds

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"
