"""Forecast archives: where an ensemble run writes its fields, and how they are read back.

Layout (one store per campaign, Zarr v3)::

    <variable>[init_time, lead_time, member, lat, lon]   float32, one per lexicon id,
                                                         chunk = 1 x 1 x all members x grid,
                                                         attrs units / long_name (lexicon)
    init_time   datetime64     lead_time   timedelta64    member   int    lat, lon   degrees
    attrs       lineage given by the caller, ``fourcast_forecast_archive = 1`` (the marker
                that lets a later run replace it), plus ``complete = True`` once finalised

A :class:`ZarrArchive` is created with its full extents and written under a temporary sibling
path; :meth:`ZarrArchive.finalize` writes the attributes once and moves the store into place,
replacing a previous archive at that path only then. A run that crashes leaves the previous
archive untouched. Only a forecast archive is ever replaced: anything else at the path (a
training or climatology store, another folder, a file) is refused (:func:`check_replaceable`).
:class:`MemoryArchive` keeps the same layout as an in-memory
:class:`xarray.Dataset`. Both locate every write by coordinate label, never by position.

With all members in one chunk, concurrent writers must not share an ``(init_time,
lead_time)``. A campaign run over several processes uses :class:`ensembles.campaign.CampaignArchive`
instead: chunks of one member block each, resumable, finalised by whichever process finds the
work complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import dask.array
import numpy as np
import torch
import xarray as xr
import zarr

from ensembles.errors import ArchiveError, ArchiveGridError
from ensembles.protocols import Archive, Coords
from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.dims import ARCHIVE_DIMS, CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from ingest.errors import UnknownVariableError
from ingest.grid import check_coords
from ingest.lexicon import get_variables
from ingest.schema import CF_COORDINATE_ATTRS, CLIMATOLOGY, CONVENTIONS, DATA, MEAN, STD, consolidate

#: Root attribute set by ``finalize``; readers refuse an archive without it.
COMPLETE = "complete"
#: Root attribute marking a store as a fourcast forecast archive, the only kind a run may replace.
ARCHIVE_MARKER = "fourcast_forecast_archive"
#: Root attribute holding the fingerprint of the campaign an archive holds (:mod:`ensembles.campaign`);
#: campaign archives written before :data:`ARCHIVE_MARKER` existed are recognised by it.
FINGERPRINT = "campaign_fingerprint"


@dataclass(frozen=True)
class ArchiveLayout:
    """The extents of an archive and the translation of labelled writes into positions.

    Attributes
    ----------
    variables : tuple of str
        Lexicon ids, one archive variable each.
    init_times : numpy.ndarray of datetime64[ns], shape (init_time,)
    lead_times : numpy.ndarray of timedelta64[ns], shape (lead_time,)
    members : numpy.ndarray of int64, shape (member,)
    lat, lon : numpy.ndarray of float64, shapes (lat,), (lon,)
        Degrees north / east.
    member_chunk : int
        Members per chunk (all members by default). A campaign split into member blocks
        over processes uses its block size here, so no two blocks share a chunk.
    """

    variables: tuple[str, ...]
    init_times: np.ndarray
    lead_times: np.ndarray
    members: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    member_chunk: int

    @classmethod
    def build(
        cls,
        variables: Sequence[str],
        init_times: Sequence[np.datetime64] | np.ndarray,
        lead_times: Sequence[np.timedelta64] | np.ndarray,
        n_members: int,
        lat: np.ndarray,
        lon: np.ndarray,
        member_chunk: int | None = None,
    ) -> ArchiveLayout:
        """Check and normalise the extents; raises :class:`ArchiveError` naming the problem."""
        if not variables:
            raise ArchiveError("expected at least one archive variable, found none")
        try:
            get_variables(list(variables))
        except UnknownVariableError as err:
            raise ArchiveError(f"archive variables must be lexicon ids: {err}") from err
        if int(n_members) < 1:
            raise ArchiveError(f"expected at least 1 member, found n_members={n_members}")
        if member_chunk is not None and int(member_chunk) < 1:
            raise ArchiveError(f"expected at least 1 member per chunk, found member_chunk={member_chunk}")
        layout = cls(
            variables=tuple(str(v) for v in variables),
            init_times=_unique_labels(np.asarray(init_times).astype("datetime64[ns]"), INIT_TIME),
            lead_times=_unique_labels(np.asarray(lead_times).astype("timedelta64[ns]"), LEAD_TIME),
            members=np.arange(int(n_members), dtype=np.int64),
            lat=_axis(lat, LAT),
            lon=_axis(lon, LON),
            member_chunk=min(int(member_chunk or n_members), int(n_members)),
        )
        if (layout.lead_times < np.timedelta64(0, "ns")).any():
            raise ArchiveError(
                f"expected non-negative lead times, found {layout.lead_times.astype('timedelta64[h]')}"
            )
        return layout

    @property
    def field_shape(self) -> tuple[int, ...]:
        """Shape of one variable: (init_time, lead_time, member, lat, lon)."""
        return (self.init_times.size, self.lead_times.size, self.members.size, self.lat.size, self.lon.size)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """One chunk per (init_time, lead_time, member block): :attr:`member_chunk` members, whole grid."""
        return (1, 1, self.member_chunk, self.lat.size, self.lon.size)

    def template(self, empty: Callable[[tuple[int, ...]], Any], attrs: Mapping[str, Any]) -> xr.Dataset:
        """A dataset with this layout whose variables are ``empty(field_shape)`` arrays."""
        data_vars = {
            var.id: (ARCHIVE_DIMS, empty(self.field_shape), {"units": var.units, "long_name": var.long_name})
            for var in get_variables(list(self.variables))
        }
        coords = {
            INIT_TIME: (
                INIT_TIME,
                self.init_times,
                {"long_name": "forecast initialisation time", "standard_name": "forecast_reference_time"},
            ),
            LEAD_TIME: (
                LEAD_TIME,
                self.lead_times,
                {"long_name": "time since initialisation", "standard_name": "forecast_period"},
            ),
            MEMBER: (
                MEMBER,
                self.members,
                {
                    "long_name": "ensemble member (0 is the control when run with one)",
                    "standard_name": "realization",
                },
            ),
            LAT: (LAT, self.lat, CF_COORDINATE_ATTRS[LAT]),
            LON: (LON, self.lon, CF_COORDINATE_ATTRS[LON]),
        }
        return xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))

    def locate(
        self, x: torch.Tensor | np.ndarray, coords: Coords
    ) -> tuple[tuple[int, int, np.ndarray], dict[str, np.ndarray]]:
        """Translate one write into an index and the fields to store there.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray, shape (member, channel, lat, lon)
            Physical units.
        coords : Coords
            ``member``, ``channel``, ``lat``, ``lon`` labelling ``x``, plus one-element
            ``init_time`` and ``lead_time`` arrays.

        Returns
        -------
        index : tuple (int, int, numpy.ndarray)
            Positions of the init time, the lead time and the members, in archive order.
        fields : dict of str to numpy.ndarray, shape (member, lat, lon), float32
            One entry per archive variable, selected from ``x`` by channel label; channels of
            ``x`` the archive does not hold are not stored.
        """
        missing = [dim for dim in (INIT_TIME, LEAD_TIME, MEMBER, CHANNEL, LAT, LON) if dim not in coords]
        if missing:
            raise ArchiveError(f"write coords lack {missing}; found {list(coords)}")
        values = _as_numpy(x)
        expected_shape = tuple(len(coords[dim]) for dim in (MEMBER, CHANNEL, LAT, LON))
        if values.shape != expected_shape:
            raise ArchiveError(
                f"expected x of shape (member, channel, lat, lon) = {expected_shape} as its coords say, "
                f"found {values.shape}"
            )
        self._check_grid(coords)
        i_init = _positions(self.init_times, _single(coords, INIT_TIME).astype("datetime64[ns]"), INIT_TIME)[
            0
        ]
        i_lead = _positions(self.lead_times, _single(coords, LEAD_TIME).astype("timedelta64[ns]"), LEAD_TIME)[
            0
        ]
        i_members = _positions(self.members, np.asarray(coords[MEMBER]).astype(np.int64), MEMBER)
        channels = [str(c) for c in coords[CHANNEL]]
        absent = [v for v in self.variables if v not in channels]
        if absent:
            raise ArchiveError(f"write lacks archive variables {absent}; its channels are {channels}")
        fields = {v: values[:, channels.index(v)] for v in self.variables}
        return (int(i_init), int(i_lead), i_members), fields

    def _check_grid(self, coords: Coords) -> None:
        check_coords(
            {LAT: self.lat, LON: self.lon},
            coords,
            (LAT, LON),
            what="the write",
            reference="the archive",
            error=ArchiveGridError,
        )


class ZarrArchive:
    """A campaign's forecast archive as a Zarr v3 store, committed atomically.

    Creating the archive lays out the whole store (coordinates and empty variables) under
    :attr:`partial_path`, a hidden sibling of ``path``; :meth:`write` fills regions;
    :meth:`finalize` sets the attributes, ``complete = True`` among them, and moves the store to
    ``path``. Used as a context manager, the partial store is removed if the block raises.

    Parameters
    ----------
    path : str or pathlib.Path
        Final location of the store; a forecast archive already there is replaced at finalize,
        anything else there is refused (:func:`check_replaceable`).
    variables : sequence of str
        Lexicon ids to archive.
    init_times : array of datetime64, shape (init_time,)
    lead_times : array of timedelta64, shape (lead_time,)
    n_members : int
        Members are labelled ``0 … n_members - 1``.
    lat, lon : numpy.ndarray, shapes (lat,), (lon,)
        Grid in degrees, in the order fields are written.
    attrs : mapping, optional
        JSON-serialisable lineage (model, checkpoint, seed, …) written at finalize.
    """

    def __init__(
        self,
        path: str | Path,
        variables: Sequence[str],
        init_times: Sequence[np.datetime64] | np.ndarray,
        lead_times: Sequence[np.timedelta64] | np.ndarray,
        n_members: int,
        lat: np.ndarray,
        lon: np.ndarray,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.layout = ArchiveLayout.build(variables, init_times, lead_times, n_members, lat, lon)
        self.attrs = checked_attrs(attrs)
        self.path = Path(path)
        self.partial_path = temporary_sibling(self.path)
        self._finalized = False
        check_replaceable(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        template = self.layout.template(self._lazy_empty, attrs={})
        encoding = {v: {"chunks": self.layout.chunk_shape} for v in self.layout.variables}
        try:
            template.to_zarr(
                self.partial_path,
                mode="w-",
                compute=False,
                zarr_format=3,
                consolidated=False,
                encoding=encoding,
            )
            self._group = zarr.open_group(self.partial_path, mode="r+", zarr_format=3)
        except BaseException:
            discard(self.partial_path)  # leave nothing behind, whatever zarr raised (Ctrl-C included)
            raise

    def _lazy_empty(self, shape: tuple[int, ...]) -> dask.array.Array:
        return dask.array.full(shape, np.nan, dtype=np.float32, chunks=self.layout.chunk_shape)

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None:
        """Store ``x`` of shape ``(member, channel, lat, lon)`` at the labels in ``coords``.

        Raises
        ------
        ArchiveError
            If the archive was finalised, or the labels or shape do not fit its extents.
        """
        if self._finalized:
            raise ArchiveError(f"archive {self.path} is already finalised; create a new one to write again")
        (i_init, i_lead, i_members), fields = self.layout.locate(x, coords)
        for variable, field in fields.items():
            self._group[variable].oindex[i_init, i_lead, i_members, :, :] = field

    def finalize(self) -> str:
        """Write the attributes, mark the store complete and move it to :attr:`path`.

        Returns
        -------
        str
            The archive's final location.
        """
        if self._finalized:
            raise ArchiveError(f"archive {self.path} is already finalised")
        check_replaceable(self.path)
        self._group.attrs.update(
            {**self.attrs, ARCHIVE_MARKER: 1, COMPLETE: True, "Conventions": CONVENTIONS}
        )
        consolidate(self.partial_path)
        replace_path(self.partial_path, self.path)
        self._finalized = True
        return str(self.path)

    def discard(self) -> None:
        """Remove the partial store of an archive that will not be finalised."""
        if not self._finalized:
            discard(self.partial_path)

    def __enter__(self) -> ZarrArchive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()


class MemoryArchive:
    """The archive layout held in memory as :attr:`dataset`; for tests and small runs.

    Takes the same extents as :class:`ZarrArchive` (without a path); fields not yet written
    are NaN.
    """

    def __init__(
        self,
        variables: Sequence[str],
        init_times: Sequence[np.datetime64] | np.ndarray,
        lead_times: Sequence[np.timedelta64] | np.ndarray,
        n_members: int,
        lat: np.ndarray,
        lon: np.ndarray,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        self.layout = ArchiveLayout.build(variables, init_times, lead_times, n_members, lat, lon)
        self.attrs = checked_attrs(attrs)
        self.dataset = self.layout.template(lambda shape: np.full(shape, np.nan, dtype=np.float32), attrs={})

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None:
        """Store ``x`` of shape ``(member, channel, lat, lon)`` at the labels in ``coords``."""
        if self.dataset.attrs.get(COMPLETE):
            raise ArchiveError("memory archive is already finalised; create a new one to write again")
        (i_init, i_lead, i_members), fields = self.layout.locate(x, coords)
        for variable, field in fields.items():
            self.dataset[variable].values[i_init, i_lead, i_members] = field

    def finalize(self) -> str:
        """Set the attributes, the archive marker and ``complete = True``; returns ``"memory"``."""
        self.dataset.attrs.update(
            {**self.attrs, ARCHIVE_MARKER: 1, COMPLETE: True, "Conventions": CONVENTIONS}
        )
        return "memory"


class Tee:
    """Several archives fed the same writes: e.g. the Zarr archive and a streaming scorer.

    Satisfies :class:`ensembles.protocols.Archive`; :meth:`finalize` finalises every archive
    in order and returns the first one's location.
    """

    def __init__(self, *archives: Archive) -> None:
        if not archives:
            raise ArchiveError("expected at least one archive to tee writes into, found none")
        self.archives = archives

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None:
        """Hand ``x`` of shape ``(member, channel, lat, lon)`` to every archive."""
        for archive in self.archives:
            archive.write(x, coords)

    def finalize(self) -> str:
        """Finalise every archive; returns the first one's location."""
        locations = [archive.finalize() for archive in self.archives]
        return locations[0]


def open_archive(path: str | Path, allow_partial: bool = False) -> xr.Dataset:
    """Open a forecast archive lazily (Dask-backed) as a labelled :class:`xarray.Dataset`.

    Parameters
    ----------
    path : str or pathlib.Path
        Location returned by :meth:`ZarrArchive.finalize`.
    allow_partial : bool
        Also open a store without ``complete = True`` (e.g. a :attr:`ZarrArchive.partial_path`
        to inspect a crashed run); its unwritten fields read as NaN.

    Raises
    ------
    ArchiveError
        If nothing is at ``path`` (naming the unfinished campaign store beside it, if any), it is
        not a Zarr v3 store with the archive layout, or it was never finalised and
        ``allow_partial`` is false.
    """
    path = Path(path)
    if not path.exists():
        unfinished = unfinished_stores(path)
        if unfinished:
            raise ArchiveError(
                f"the archive at {path} is unfinished: {unfinished[0]} was never committed (its "
                "writer is running "
                "or was stopped; relaunching a campaign resumes it); open that store with "
                "allow_partial=True to "
                "read what is written"
            )
        raise ArchiveError(f"no forecast archive at {path}")
    try:
        ds = xr.open_zarr(path, zarr_format=3, consolidated=False)
    except (OSError, ValueError, KeyError) as err:
        raise ArchiveError(f"{path} is not a readable Zarr v3 store: {err}") from err
    if not allow_partial and ds.attrs.get(COMPLETE) is not True:
        raise ArchiveError(
            f"archive {path} was never finalised (no {COMPLETE}=True attribute): its writer is running "
            "or crashed; pass allow_partial=True to inspect it"
        )
    wrong = {name: tuple(ds[name].dims) for name in ds.data_vars if tuple(ds[name].dims) != ARCHIVE_DIMS}
    if not ds.data_vars or wrong:
        raise ArchiveError(
            f"{path}: expected variables with dims {ARCHIVE_DIMS}, found {wrong or 'no variables'}"
        )
    return ds


def unfinished_stores(path: str | Path) -> list[Path]:
    """The stores being written, or left unfinished by a killed run, for the archive at ``path``."""
    path = Path(path)
    return sorted(p for tag in ("partial", "finalising") for p in path.parent.glob(f".{path.name}.{tag}-*"))


def check_replaceable(path: str | Path) -> None:
    """Refuse to replace ``path`` unless nothing is there or it holds a fourcast forecast archive.

    A forecast archive carries :data:`ARCHIVE_MARKER` (or, written before the marker existed,
    :data:`FINGERPRINT`) in its root attributes. Anything else — the training store, the
    climatology store, another Zarr store, a folder, a file — is never replaced.

    Raises
    ------
    ArchiveError
        Naming ``path`` and what it holds.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    attrs = _zarr_root_attributes(path)
    if attrs is not None and (ARCHIVE_MARKER in attrs or FINGERPRINT in attrs):
        return
    raise ArchiveError(
        f"refusing to replace {path}: it is {describe_path(path)}, not a fourcast forecast archive "
        f"(no {ARCHIVE_MARKER!r} attribute); choose another archive path"
    )


def describe_path(path: str | Path) -> str:
    """What is at ``path``, in a few words: a training store, a climatology store, a folder, a file, …"""
    path = Path(path)
    link = f" (a link to {path.resolve()})" if path.is_symlink() else ""
    if not path.exists():
        return "nothing" + link
    if not path.is_dir():
        return f"a file of {path.stat().st_size} bytes{link}"
    attrs = _zarr_root_attributes(path)
    if attrs is None:
        return f"a folder that is not a Zarr v3 store ({len(list(path.iterdir()))} entries){link}"
    arrays = sorted(p.name for p in path.iterdir() if (p / "zarr.json").is_file())
    if {DATA, MEAN, STD} <= set(arrays):
        kind = "a fourcast training store"
    elif CLIMATOLOGY in arrays:
        kind = "a fourcast climatology store"
    else:
        kind = "a Zarr v3 store"
    return f"{kind} (arrays {arrays}){link}"


def _zarr_root_attributes(path: Path) -> dict[str, Any] | None:
    """Root attributes of the Zarr v3 store at ``path``, or None if it is not one."""
    try:
        metadata = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    attributes = metadata.get("attributes", {}) if isinstance(metadata, dict) else None
    return attributes if isinstance(attributes, dict) else None


def _unique_labels(labels: np.ndarray, dim: str) -> np.ndarray:
    if labels.ndim != 1 or labels.size == 0:
        raise ArchiveError(f"expected a non-empty 1-D {dim} array, found shape {labels.shape}")
    if np.unique(labels).size != labels.size:
        raise ArchiveError(f"expected distinct {dim} labels, found repeats in {labels}")
    return labels


def _axis(values: np.ndarray, dim: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ArchiveError(f"expected a non-empty 1-D {dim} array, found shape {values.shape}")
    return values


def _single(coords: Coords, dim: str) -> np.ndarray:
    labels = np.atleast_1d(np.asarray(coords[dim]))
    if labels.size != 1:
        raise ArchiveError(f"expected exactly one {dim} per write, found {labels.size}: {labels}")
    return labels


def _positions(axis: np.ndarray, labels: np.ndarray, dim: str) -> np.ndarray:
    """Positions of ``labels`` along ``axis``; raises naming the labels the archive lacks."""
    unknown = labels[~np.isin(labels, axis)]
    if unknown.size:
        raise ArchiveError(
            f"{dim} labels {unknown} are not in the archive, which holds {axis.size} labels "
            f"{axis[0]} … {axis[-1]}"
        )
    lookup = {label: i for i, label in enumerate(axis.tolist())}
    return np.array([lookup[label] for label in labels.tolist()], dtype=np.int64)


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def checked_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """``attrs`` as a plain dict, refusing the reserved ``complete`` key and non-JSON values."""
    attrs = dict(attrs or {})
    reserved = [key for key in (COMPLETE, ARCHIVE_MARKER) if key in attrs]
    if reserved:
        raise ArchiveError(f"attributes {reserved} are reserved: the archive sets them")
    try:
        json.dumps(attrs)
    except TypeError as err:
        raise ArchiveError(f"archive attrs must be JSON-serialisable: {err}") from err
    return attrs
