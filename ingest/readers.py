"""Open ERA5 files in every layout the Climate Data Store has delivered, lazily, as one array.

:func:`open_sources` is the entry point the store writer uses: it opens each file with the
reader for its layout, brings every dataset into the canonical form with
:func:`ingest.normalise.normalise`, checks that the files agree, and stacks the requested
variables into ``DataArray[time, channel, lat, lon]``.

Layouts, recognised from the file's first bytes and its variables:

========================  ================================================================
``new-cds-netcdf``        netCDF4/HDF5 with ``valid_time`` (CDS since September 2024)
``old-cds-netcdf``        netCDF3 or netCDF4 with ``time`` (legacy CDS, ``grib_to_netcdf``)
``cds-zip``               zip of netCDF (or GRIB) files, one per stream/step type, as the new
                          CDS returns when instantaneous and accumulated fields are mixed
``grib``                  GRIB 1 or 2, read with cfgrib/ecCodes
========================  ================================================================

Before anything is opened, each file is checked against its own header for truncation (an
interrupted download): the HDF5 superblock's end-of-file address, the netCDF3 header's
variable offsets, the GRIB messages' end markers, the zip central directory. A GRIB message
ecCodes cannot decode refuses the whole file (:class:`CorruptFileError`, naming the message).

Values are checked against each variable's physical range (:func:`ingest.lexicon.valid_range`)
twice: the first and last time step of every file when it is opened (eagerly, before any work
starts; see :func:`ingest.normalise.normalise`), and every chunk as Dask computes it, together
with the check for NaN/infinity.
"""

from __future__ import annotations

import json
import sqlite3  # noqa: F401  the system SQLite must load before ecCodes' bundled 3.26, which MLflow refuses
import struct
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr

from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import (
    CorruptFileError,
    DuplicateTimeError,
    GridMismatchError,
    IngestError,
    MissingVariableError,
    NonFiniteValueError,
    PhysicalRangeError,
    SourceLayoutError,
    TruncatedFileError,
)
from ingest.lexicon import Variable, get_variables, valid_range
from ingest.normalise import EXPVER, check_assumed_units, describe_missing, expver_rank, normalise, stack_channels


class Layout(str, Enum):
    """ERA5 file layouts fourcast reads."""

    NEW_CDS_NETCDF = "new-cds-netcdf"
    OLD_CDS_NETCDF = "old-cds-netcdf"
    CDS_ZIP = "cds-zip"
    GRIB = "grib"


@dataclass(frozen=True)
class Source:
    """One dataset opened (lazily) from an input file.

    Attributes
    ----------
    label : str
        The file path, or ``archive.zip::member.nc`` for a member of a CDS zip.
    layout : Layout
        Layout of the file as delivered (a zip member's layout is ``CDS_ZIP``).
    raw : xarray.Dataset
        The dataset as opened, before normalisation; netCDF is opened with
        ``mask_and_scale=False`` so that :func:`~ingest.normalise.normalise` unpacks it.
    """

    label: str
    layout: Layout
    raw: xr.Dataset


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_SIGNATURES = (_HDF5_SIGNATURE, b"CDF\x01", b"CDF\x02", b"CDF\x05", b"GRIB", *_ZIP_SIGNATURES)
_MAX_LISTED = 5
#: Grids whose coordinates differ by less than this (degrees) are the same grid (float32 vs float64).
GRID_TOLERANCE = 1e-5


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
    sources = _open_all(files, unpack_dir)
    canonical = [(source, _normalise_source(source, variable_ids, shard_steps, assume_units)) for source in sources]
    canonical = [(source, ds) for source, ds in canonical if ds.data_vars]
    canonical = _on_one_grid(canonical)
    fields, labels, superseded = {}, {}, 0
    for variable in variables:
        pieces = [(source.label, ds[variable.id]) for source, ds in canonical if variable.id in ds]
        if not pieces:
            raise MissingVariableError(describe_missing(variable, [source.raw for source in sources]))
        fields[variable.id], labels[variable.id], dropped = _merge_along_time(variable, pieces)
        superseded += dropped
    _check_same_times(fields)
    data = stack_channels(xr.Dataset(fields), list(variable_ids))
    data = data.chunk({TIME: shard_steps, CHANNEL: -1, LAT: -1, LON: -1})
    data = _require_finite_and_physical(data)
    data.attrs = {
        "expver": _expver_runs(data[TIME].values, labels),
        "expver_superseded": int(superseded),
        "source_layouts": _files_per_layout(sources),
    }
    return data


def _normalise_source(source: Source, variable_ids: Sequence[str], shard_steps: int,
                      assume_units: Mapping[str, str]) -> xr.Dataset:
    """:func:`~ingest.normalise.normalise` one source; its errors name the file."""
    try:
        return normalise(source.raw, variable_ids, time_chunk=shard_steps, assume_units=assume_units)
    except IngestError as err:
        raise type(err)(f"{source.label}: {err}") from err


def _files_per_layout(sources: list[Source]) -> dict[str, int]:
    files = {(source.label.split("::")[0], source.layout.value) for source in sources}
    return dict(sorted(Counter(layout for _, layout in files).items()))


def open_raw(path: str | Path, *, unpack_dir: str | Path | None = None) -> list[Source]:
    """Check one file for completeness and open it lazily with the reader for its layout.

    Returns
    -------
    list of Source
        One for a netCDF file, one per member for a zip, one per (experiment, hypercube) for
        GRIB (cfgrib splits heterogeneous files).

    Raises
    ------
    TruncatedFileError
        If the file is empty or shorter than its header says.
    SourceLayoutError
        If it is not netCDF, GRIB or zip, or its library cannot open it.
    """
    path = Path(path)
    kind = _sniff(path)
    if kind == "zip":
        return _open_zip(path, unpack_dir)
    if kind == "grib":
        return _open_grib(path)
    return [_open_netcdf(path, kind)]


def _open_all(files: Sequence[str | Path], unpack_dir: str | Path | None) -> list[Source]:
    if not files:
        raise SourceLayoutError("no input files to ingest")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise SourceLayoutError(f"input files do not exist: {missing}")
    return [source for f in files for source in open_raw(f, unpack_dir=unpack_dir)]


# --- layout detection and completeness -----------------------------------------------------


def _sniff(path: Path) -> str:
    """``"hdf5"``, ``"netcdf3"``, ``"grib"`` or ``"zip"``, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise TruncatedFileError(f"{path}: expected an ERA5 file (netCDF, GRIB or zip), found an empty file")
    if head.startswith(_HDF5_SIGNATURE):
        return "hdf5"
    if head[:3] == b"CDF" and len(head) > 3 and head[3] in (1, 2, 5):
        return "netcdf3"
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith(_ZIP_SIGNATURES):
        return "zip"
    if len(head) < 8 and any(signature.startswith(head) for signature in _SIGNATURES):
        raise TruncatedFileError(f"{path}: truncated — {len(head)} bytes, the start of a netCDF, GRIB or zip "
                                 "signature (an interrupted download or copy; fetch it again)")
    raise SourceLayoutError(
        f"{path}: expected netCDF (HDF5 or CDF signature), GRIB or zip; found first bytes {head!r}"
    )


def _check_length(path: Path, expected: int, what: str) -> None:
    size = path.stat().st_size
    if size < expected:
        raise TruncatedFileError(
            f"{path}: truncated — its {what} says it is {expected} bytes long, found {size} bytes "
            "(an interrupted download or copy; fetch it again)"
        )


def _hdf5_end(path: Path) -> int:
    """End-of-file address from the HDF5 superblock (versions 0–3), in bytes."""
    with open(path, "rb") as f:
        head = f.read(64)
    version = head[8] if len(head) > 8 else None
    if version in (0, 1):
        offset_size, base_at = (head[13] if len(head) > 13 else 8), (24 if version == 0 else 28)
    elif version in (2, 3):
        offset_size, base_at = (head[9] if len(head) > 9 else 8), 12
    elif version is not None:
        raise SourceLayoutError(f"{path}: expected HDF5 superblock version 0–3, found {version}")
    if version is None or len(head) < base_at + 3 * offset_size:
        raise TruncatedFileError(f"{path}: truncated inside its HDF5 superblock, after {len(head)} bytes "
                                 "(an interrupted download or copy; fetch it again)")
    address = [int.from_bytes(head[base_at + i * offset_size: base_at + (i + 1) * offset_size], "little")
               for i in range(3)]
    return address[0] + address[2]  # base address + end-of-file address


_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}


class _Netcdf3Header:
    """Reader of the classic netCDF header (CDF-1, CDF-2 and CDF-5), enough to size the file."""

    def __init__(self, f, version: int) -> None:
        self._f = f
        self._count = ">Q" if version == 5 else ">I"
        self._offset = ">I" if version == 1 else ">Q"

    def _unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        raw = self._f.read(size)
        if len(raw) < size:
            raise EOFError
        return struct.unpack(fmt, raw)[0]

    def count(self) -> int:
        return self._unpack(self._count)

    def skip_name(self) -> None:
        self._skip(self.count())

    def _skip(self, nbytes: int) -> None:
        padded = -(-nbytes // 4) * 4
        if len(self._f.read(padded)) < padded:
            raise EOFError

    def skip_attributes(self) -> None:
        self._unpack(">I")
        for _ in range(self.count()):
            self.skip_name()
            nc_type = self._unpack(">I")
            self._skip(self.count() * _NC_TYPE_SIZES.get(nc_type, 1))

    def expected_size(self) -> int:
        """Bytes the header promises: the end of the last fixed variable or record."""
        numrecs = self.count()
        self._unpack(">I")
        dims = []
        for _ in range(self.count()):
            self.skip_name()
            dims.append(self.count())
        self.skip_attributes()
        self._unpack(">I")
        variables = []
        for _ in range(self.count()):
            self.skip_name()
            dimids = [self.count() for _ in range(self.count())]
            self.skip_attributes()
            itemsize = _NC_TYPE_SIZES.get(self._unpack(">I"), 1)
            vsize, begin = self.count(), self._unpack(self._offset)
            shape = [dims[d] for d in dimids]
            is_record = bool(shape) and shape[0] == 0
            nbytes = int(np.prod(shape[1:] if is_record else shape, dtype=np.int64)) * itemsize
            variables.append((is_record, begin, nbytes, vsize))
        header_end = self._f.tell()
        record_vars = [v for v in variables if v[0]]
        recsize = record_vars[0][2] if len(record_vars) == 1 else sum(v[3] for v in record_vars)
        streaming = numrecs in (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
        ends = [header_end] + [begin + nbytes for is_record, begin, nbytes, _ in variables if not is_record]
        if numrecs and not streaming:
            ends += [begin + (numrecs - 1) * recsize + nbytes for is_record, begin, nbytes, _ in variables if is_record]
        return max(ends)


def _netcdf3_end(path: Path) -> int:
    with open(path, "rb") as f:
        version = f.read(4)[3]
        try:
            return _Netcdf3Header(f, version).expected_size()
        except EOFError as err:
            raise TruncatedFileError(f"{path}: truncated inside its netCDF header") from err


_GRIB_HEADER_KEYS = ("edition", "gridType", "shortName", "typeOfLevel", "level", "validityDate", "validityTime")


def _scan_grib(path: Path) -> tuple[list[str], set[str]]:
    """Experiment (``expver``) of every message and the grid types used.

    Raises :class:`TruncatedFileError` if a message is cut short, :class:`CorruptFileError` if
    ecCodes cannot decode a message (wrong length, no end marker, …) or bytes other than zero
    padding lie between messages (where ecCodes would skip a message whose start is damaged):
    the whole file is refused, naming the message, rather than read without it. Raises
    :class:`DuplicateTimeError` if one field, level, time, experiment and ensemble member comes
    twice with different data (cfgrib would silently keep the first).
    """
    import eccodes  # imported for GRIB only: loading the ecCodes library takes about a second

    experiments, grid_types, digests = [], set(), {}
    end = 0  # where the previous message ended
    with open(path, "rb") as f:
        while True:
            message, offset = len(experiments) + 1, f.tell()
            try:
                handle = eccodes.codes_grib_new_from_file(f)
                if handle is None:
                    break
                try:
                    header = _grib_header(eccodes, handle)
                finally:
                    eccodes.codes_release(handle)
            except eccodes.PrematureEndOfFileError as err:
                raise TruncatedFileError(
                    f"{path}: truncated — GRIB message {message} ends before its declared length "
                    "(an interrupted download or copy; fetch it again)"
                ) from err
            except eccodes.GribInternalError as err:  # the base of every ecCodes decoding error
                raise CorruptFileError(
                    f"{path}: GRIB message {message} (at byte {offset}) is corrupt: ecCodes says {err!s} "
                    f"({len(experiments)} good messages before it); the file is refused — fetch it again"
                ) from err
            _check_padding(path, end, header["offset"], message)
            end = header["offset"] + header["totalLength"]
            grid_types.add(header["gridType"])
            experiments.append(header["expver"])
            key = tuple(header[name] for name in ("expver", "number", "shortName", "typeOfLevel", "level",
                                                  "validityDate", "validityTime"))
            if digests.setdefault(key, header["digest"]) != header["digest"]:
                raise DuplicateTimeError(
                    f"{path}: expected each field once per time, experiment and ensemble member, or repeated "
                    f"identically; found {key[2]} ({key[3]} {key[4]}) at {key[5]} {key[6]:04d} UTC, expver "
                    f"{key[0] or 'unknown'}, member {key[1]}, twice with different data (message {message})"
                )
    _check_padding(path, end, path.stat().st_size, len(experiments) + 1)
    return experiments, grid_types


def _grib_header(eccodes, handle) -> dict:
    """The keys of one GRIB message that :func:`_scan_grib` checks, and the digest of its data."""
    header = {name: eccodes.codes_get(handle, name) for name in _GRIB_HEADER_KEYS}
    header["offset"], header["totalLength"] = (int(eccodes.codes_get(handle, name)) for name in ("offset", "totalLength"))
    header["expver"] = eccodes.codes_get(handle, "expver") if eccodes.codes_is_defined(handle, "expver") else ""
    header["number"] = eccodes.codes_get(handle, "number") if eccodes.codes_is_defined(handle, "number") else 0
    header["digest"] = eccodes.codes_get(handle, "md5Section4" if header["edition"] == 1 else "md5Section7")
    return header


def _check_padding(path: Path, start: int, stop: int, message: int) -> None:
    """Bytes ``start:stop`` lie between GRIB messages (before ``message``): only zero padding
    (MARS pads GRIB 1 to multiples of 120 bytes) may be there."""
    if stop <= start:
        return
    with open(path, "rb") as f:
        f.seek(start)
        rest = f.read(stop - start).lstrip(b"\x00")
    if not rest:
        return
    at = stop - len(rest)
    if at + len(rest) == path.stat().st_size and b"GRIB".startswith(rest):
        raise TruncatedFileError(f"{path}: truncated — GRIB message {message} (at byte {at}) ends after "
                                 f"{len(rest)} bytes (an interrupted download or copy; fetch it again)")
    raise CorruptFileError(
        f"{path}: GRIB message {message} (at byte {at}) is corrupt: {len(rest)} bytes that are neither a GRIB "
        f"message nor zero padding ({message - 1} good messages before them); the file is refused — fetch it again"
    )


# --- per-layout readers --------------------------------------------------------------------


def _open_netcdf(path: Path, kind: str) -> Source:
    if kind == "hdf5":
        _check_length(path, _hdf5_end(path), "HDF5 superblock")
    else:
        _check_length(path, _netcdf3_end(path), "netCDF header")
    try:
        raw = xr.open_dataset(path, engine="netcdf4", mask_and_scale=False, chunks=None, cache=False)
    except (OSError, ValueError) as err:
        raise SourceLayoutError(f"{path}: expected a readable netCDF file; the netCDF library says: {err}") from err
    layout = Layout.NEW_CDS_NETCDF if "valid_time" in raw.variables else Layout.OLD_CDS_NETCDF
    return Source(str(path), layout, raw)


def _open_grib(path: Path) -> list[Source]:
    import cfgrib  # imported for GRIB only, as ecCodes

    experiments, grid_types = _scan_grib(path)
    if not experiments:
        raise SourceLayoutError(f"{path}: expected GRIB messages, found none")
    if grid_types != {"regular_ll"}:
        raise GridMismatchError(
            f"{path}: expected GRIB on a regular latitude/longitude grid (gridType regular_ll), found "
            f"{sorted(grid_types)} — request 'grid' (e.g. [0.25, 0.25]) from the CDS to get one"
        )
    # One experiment at a time: cfgrib cannot hold two messages for the same field and time.
    filters = [None] if "" in experiments else sorted(set(experiments))
    sources = []
    for expver in filters:
        kwargs = {"indexpath": "", "time_dims": ("valid_time",)}
        if expver is not None:
            kwargs["filter_by_keys"] = {"expver": expver}
        try:
            datasets = cfgrib.open_datasets(str(path), backend_kwargs=kwargs, cache=False)
        except cfgrib.dataset.DatasetBuildError as err:
            raise SourceLayoutError(
                f"{path}: expected GRIB messages that form regular hypercubes (one message per field, level "
                f"and time{'' if expver is None else f' for expver {expver}'}); cfgrib says: {err}"
            ) from err
        for raw in datasets:
            if expver is not None:
                raw = raw.assign_coords({EXPVER: expver})
            sources.append(Source(str(path), Layout.GRIB, raw))
    return sources


def _zip_manifest(archive: zipfile.ZipFile) -> dict[str, list[int]]:
    return {info.filename: [info.file_size, info.CRC] for info in archive.infolist() if not info.is_dir()}


def _open_zip(path: Path, unpack_dir: str | Path | None) -> list[Source]:
    target = Path(unpack_dir) / f"{path.name}.unpacked" if unpack_dir else path.with_name(f".{path.name}.unpacked")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _zip_manifest(archive)
            if not _unpacked_matches(target, manifest):
                _unpack(archive, target, manifest)
    except zipfile.BadZipFile as err:
        raise TruncatedFileError(
            f"{path}: expected a complete zip archive (as the CDS returns for mixed instantaneous and "
            f"accumulated fields); it cannot be read: {err} — an interrupted download?"
        ) from err
    if not manifest:
        raise SourceLayoutError(f"{path}: expected netCDF or GRIB members in the zip, found none")
    sources = []
    for member in sorted(manifest):
        for source in open_raw(target / Path(member).name):
            sources.append(Source(f"{path}::{member}", Layout.CDS_ZIP, source.raw))
    return sources


def _unpacked_matches(target: Path, manifest: dict[str, list[int]]) -> bool:
    record = target / "MANIFEST.json"
    if not record.is_file() or json.loads(record.read_text()) != manifest:
        return False
    return all((target / Path(m).name).is_file() and (target / Path(m).name).stat().st_size == size
               for m, (size, _) in manifest.items())


def _unpack(archive: zipfile.ZipFile, target: Path, manifest: dict[str, list[int]]) -> None:
    """Extract every member (flattened to its base name) into ``target``, atomically."""
    names = [Path(m).name for m in manifest]
    if len(set(names)) != len(names) or "MANIFEST.json" in names:
        raise SourceLayoutError(f"{archive.filename}: expected distinct member file names, found {sorted(manifest)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(target)
    try:
        tmp.mkdir()
        for member in manifest:
            with archive.open(member) as src, open(tmp / Path(member).name, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest))
        replace_path(tmp, target)
    except BaseException:
        discard(tmp)
        raise


# --- combining files -----------------------------------------------------------------------


def _grid_summary(ds: xr.Dataset) -> str:
    lat, lon = ds[LAT].values, ds[LON].values
    return f"lat {lat.size} points {lat[0]:g}..{lat[-1]:g}, lon {lon.size} points {lon[0]:g}..{lon[-1]:g}"


def _same_axis(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= GRID_TOLERANCE))


def _on_one_grid(canonical: list[tuple[Source, xr.Dataset]]) -> list[tuple[Source, xr.Dataset]]:
    """Check every dataset is on the first one's grid, and label them all with its coordinates."""
    if not canonical:
        return canonical
    first_source, first = canonical[0]
    for source, ds in canonical[1:]:
        if not (_same_axis(ds[LAT].values, first[LAT].values) and _same_axis(ds[LON].values, first[LON].values)):
            raise GridMismatchError(
                f"{source.label}: expected the grid of {first_source.label} ({_grid_summary(first)}); "
                f"found {_grid_summary(ds)}"
            )
    return [(source, ds.assign_coords({LAT: first[LAT], LON: first[LON]})) for source, ds in canonical]


def _merge_along_time(variable: Variable, pieces: list[tuple[str, xr.DataArray]]) -> tuple[xr.DataArray, np.ndarray, int]:
    """Concatenate one variable's pieces along time, keeping one value per time step.

    Per step the most preferred experiment wins (:func:`~ingest.normalise.expver_rank`), then
    the earliest file. Returns the merged field (times sorted and unique), the experiment of
    each step, and how many steps were dropped for a more preferred experiment.
    """
    times = np.concatenate([field[TIME].values for _, field in pieces])
    labels = np.concatenate([field[EXPVER].values for _, field in pieces]).astype(object)
    origin = np.concatenate([np.full(field.sizes[TIME], i) for i, (_, field) in enumerate(pieces)])
    ranks = np.array([expver_rank(label) for label in labels])
    order = np.lexsort((np.arange(times.size), ranks, times))
    first_of_time = np.r_[True, times[order][1:] != times[order][:-1]]
    winner = order[np.maximum.accumulate(np.where(first_of_time, np.arange(order.size), 0))]
    keep = order[first_of_time]
    merged = xr.concat([field.drop_vars(EXPVER) for _, field in pieces], dim=TIME, coords="minimal",
                       compat="override", join="override")
    ties = [(int(w), int(o)) for w, o in zip(winner[~first_of_time], order[~first_of_time], strict=True) if ranks[w] == ranks[o]]
    _check_duplicates_agree(variable, merged, ties, times, [pieces[i][0] for i in origin])
    superseded = int(np.sum(ranks[order][~first_of_time] > ranks[winner][~first_of_time]))
    if keep.size == times.size and np.all(np.diff(keep) > 0):
        return merged, labels[keep], superseded
    return merged.isel({TIME: keep}), labels[keep], superseded


def _check_duplicates_agree(variable: Variable, merged: xr.DataArray, ties: list[tuple[int, int]],
                            times: np.ndarray, origin_labels: list[str]) -> None:
    """Equally preferred copies ``(kept, other)`` of a time step must hold the same values.

    These few steps are read eagerly (their chunks only).
    """
    conflicts = []
    for kept, other in ties:
        a, b = merged.isel({TIME: kept}).values, merged.isel({TIME: other}).values
        if not np.array_equal(a, b, equal_nan=True):
            conflicts.append(f"{np.datetime_as_string(times[kept], unit='h')} in {origin_labels[kept]} and "
                             f"{origin_labels[other]} (max difference {np.nanmax(np.abs(a - b)):g})")
    if conflicts:
        raise DuplicateTimeError(
            f"{variable.id}: expected each time step once, or repeated with identical values, or from a more "
            f"preferred experiment (expver 0001 over 0005); found {len(conflicts)} conflicting duplicates: "
            f"{'; '.join(conflicts[:_MAX_LISTED])}"
        )


def _format_times(times: np.ndarray) -> str:
    shown = ", ".join(np.datetime_as_string(times[:_MAX_LISTED], unit="h"))
    return f"{shown}{', …' if times.size > _MAX_LISTED else ''}"


def _check_same_times(fields: dict[str, xr.DataArray]) -> None:
    reference_id, reference = next(iter(fields.items()))
    for vid, field in fields.items():
        lacking = np.setdiff1d(reference[TIME].values, field[TIME].values)
        extra = np.setdiff1d(field[TIME].values, reference[TIME].values)
        if lacking.size or extra.size:
            short, long_, missing = (vid, reference_id, lacking) if lacking.size else (reference_id, vid, extra)
            raise MissingVariableError(
                f"{short} is missing at {missing.size} time steps that {long_} has: {_format_times(missing)} "
                "(every variable must cover the same times)"
            )


def _expver_runs(times: np.ndarray, labels: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Runs of consecutive time steps with the same experiment(s), for provenance."""
    per_time = np.array(["+".join(sorted({str(lab[t]) or "unknown" for lab in labels.values()}))
                         for t in range(times.size)], dtype=object)
    starts = np.r_[0, np.flatnonzero(per_time[1:] != per_time[:-1]) + 1]
    stops = np.r_[starts[1:], times.size]
    return [{"expver": str(per_time[a]), "first": str(np.datetime_as_string(times[a], unit="s")),
             "last": str(np.datetime_as_string(times[b - 1], unit="s")), "steps": int(b - a)}
            for a, b in zip(starts, stops, strict=True)]


def _raise_if_not_finite_or_unphysical(block: np.ndarray, times: np.ndarray, *, channels: tuple[str, ...],
                 bounds: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Raise on NaN/inf, then on values outside each channel's physical range, in one chunk."""
    bad = ~np.isfinite(block)
    if bad.any():
        per_field = bad.sum(axis=(2, 3))
        t, c = np.argwhere(per_field)[0]
        raise NonFiniteValueError(
            f"{channels[c]} must be finite everywhere; found {int(per_field[t, c])} NaN/inf grid points at "
            f"{_hour(times, t)} ({int(np.count_nonzero(per_field))} (time, channel) fields affected in this chunk) "
            "— a fill value where data is expected, e.g. an experiment absent at that time"
        )
    low, high = np.array(bounds, dtype=np.float64).T
    lowest, highest = block.min(axis=(2, 3)), block.max(axis=(2, 3))
    outside = (lowest < low) | (highest > high)
    if outside.any():
        t, c = np.argwhere(outside)[0]
        raise PhysicalRangeError(
            f"{channels[c]} spans {lowest[t, c]:.6g}..{highest[t, c]:.6g} at {_hour(times, t)}, outside its "
            f"physical range {low[c]:g}..{high[c]:g} ({int(np.count_nonzero(outside))} (time, channel) fields "
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
    checked = da.map_blocks(_raise_if_not_finite_or_unphysical, array, times, channels=channels, bounds=bounds,
                            dtype=array.dtype, meta=np.empty((0, 0, 0, 0), dtype=array.dtype))
    return data.copy(data=checked)
