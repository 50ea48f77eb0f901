"""Refuse truncated or corrupt ERA5 files before any library opens them.

A download cut short (a dropped connection, a full disk, a copy interrupted) leaves a file whose
first bytes look right; netCDF and HDF5 libraries may then open it and fail, or return fill
values, only when a later chunk is read, hours into an ingest. Every format says in its header
how long the file must be, so each file is measured against its own header first:

=============  ==========================================================================
format         what the header promises
=============  ==========================================================================
HDF5/netCDF4   the superblock's base address plus end-of-file address (superblock v0–3)
netCDF3        the end of the last fixed-size variable, or of the last record of every
               record variable (CDF-1, CDF-2 and CDF-5 headers; streamed files excepted)
GRIB           every message's ``totalLength`` and ``7777`` end marker (read by ecCodes);
               only zero padding may lie between messages
zip            the central directory (checked by :mod:`zipfile` when the archive is opened)
=============  ==========================================================================

A file shorter than its header says raises :class:`~ingest.errors.TruncatedFileError`; one
that contradicts its own structure raises :class:`~ingest.errors.CorruptFileError`; one in no
known format raises :class:`~ingest.errors.SourceLayoutError`. Nothing here reads data values.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np

from ingest.errors import CorruptFileError, DuplicateTimeError, SourceLayoutError, TruncatedFileError

#: What :func:`sniff` recognises from a file's first bytes.
Kind = Literal["hdf5", "netcdf3", "grib", "zip"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_SIGNATURES = (HDF5_SIGNATURE, b"CDF\x01", b"CDF\x02", b"CDF\x05", b"GRIB", *ZIP_SIGNATURES)
_FETCH_AGAIN = "(an interrupted download or copy; fetch it again)"


def sniff(path: Path) -> Kind:
    """The file's format, from its first 8 bytes.

    Raises
    ------
    TruncatedFileError
        If the file is empty, or shorter than 8 bytes and the start of a known signature.
    SourceLayoutError
        If the first bytes are no netCDF, HDF5, GRIB or zip signature.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise TruncatedFileError(f"{path}: expected an ERA5 file (netCDF, GRIB or zip), found an empty file")
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head[:3] == b"CDF" and len(head) > 3 and head[3] in (1, 2, 5):
        return "netcdf3"
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith(ZIP_SIGNATURES):
        return "zip"
    if len(head) < 8 and any(signature.startswith(head) for signature in _SIGNATURES):
        raise TruncatedFileError(
            f"{path}: truncated — {len(head)} bytes, the start of a netCDF, GRIB or zip "
            "signature (an interrupted download or copy; fetch it again)"
        )
    raise SourceLayoutError(
        f"{path}: expected netCDF (HDF5 or CDF signature), GRIB or zip; found first bytes {head!r}"
    )


def check_length(path: Path, expected: int, what: str) -> None:
    """Raise :class:`TruncatedFileError` if ``path`` is shorter than its ``what`` says (``expected``)."""
    size = path.stat().st_size
    if size < expected:
        raise TruncatedFileError(
            f"{path}: truncated — its {what} says it is {expected} bytes long, found {size} bytes "
            f"{_FETCH_AGAIN}"
        )


def hdf5_end(path: Path) -> int:
    """End-of-file address from the HDF5 superblock (versions 0–3), in bytes.

    The superblock (at offset 0 for netCDF4 files) holds, after the signature and version
    bytes, the size of file addresses and then four addresses: base, (free space or
    superblock extension), end of file, root group. The file must reach base + end of file.
    """
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
        raise TruncatedFileError(
            f"{path}: truncated inside its HDF5 superblock, after {len(head)} bytes {_FETCH_AGAIN}"
        )
    address = [
        int.from_bytes(head[base_at + i * offset_size : base_at + (i + 1) * offset_size], "little")
        for i in range(3)
    ]
    return address[0] + address[2]  # base address + end-of-file address


#: Bytes per value of each netCDF external type (NC_BYTE … NC_UINT64).
_NC_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 8, 7: 1, 8: 2, 9: 4, 10: 8, 11: 8}
_STREAMING = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class _Netcdf3Variable:
    """Where one variable's data lies, from its header entry (sizes in bytes)."""

    is_record: bool
    begin: int
    nbytes: int  # one record's worth for a record variable, else the whole variable
    vsize: int  # the header's (padded) size, used to step from record to record


class _Netcdf3Header:
    """Reader of the classic netCDF header (CDF-1, CDF-2 and CDF-5), enough to size the file.

    Follows the grammar of the netCDF classic format specification: counts are 32-bit
    (64-bit in CDF-5) big-endian, offsets 32-bit in CDF-1 and 64-bit otherwise, names and
    attribute values padded to 4 bytes. Raises :class:`EOFError` where the header stops short.
    """

    def __init__(self, f: IO[bytes], version: int) -> None:
        self._f = f
        self._count = ">Q" if version == 5 else ">I"
        self._offset = ">I" if version == 1 else ">Q"

    def _unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        raw = self._f.read(size)
        if len(raw) < size:
            raise EOFError
        return struct.unpack(fmt, raw)[0]

    def _count_value(self) -> int:
        return self._unpack(self._count)

    def _skip(self, nbytes: int) -> None:
        padded = -(-nbytes // 4) * 4
        if len(self._f.read(padded)) < padded:
            raise EOFError

    def _skip_name(self) -> None:
        self._skip(self._count_value())

    def _skip_attributes(self) -> None:
        self._unpack(">I")  # NC_ATTRIBUTE tag (or ABSENT)
        for _ in range(self._count_value()):
            self._skip_name()
            nc_type = self._unpack(">I")
            self._skip(self._count_value() * _NC_TYPE_SIZES.get(nc_type, 1))

    def _dimensions(self) -> list[int]:
        self._unpack(">I")  # NC_DIMENSION tag (or ABSENT)
        sizes = []
        for _ in range(self._count_value()):
            self._skip_name()
            sizes.append(self._count_value())
        return sizes

    def _variable(self, dims: list[int]) -> _Netcdf3Variable:
        self._skip_name()
        dimids = [self._count_value() for _ in range(self._count_value())]
        self._skip_attributes()
        itemsize = _NC_TYPE_SIZES.get(self._unpack(">I"), 1)
        vsize, begin = self._count_value(), self._unpack(self._offset)
        shape = [dims[d] for d in dimids]
        is_record = bool(shape) and shape[0] == 0
        nbytes = int(np.prod(shape[1:] if is_record else shape, dtype=np.int64)) * itemsize
        return _Netcdf3Variable(is_record, begin, nbytes, vsize)

    def expected_size(self) -> int:
        """Bytes the header promises: the end of the last fixed variable or record."""
        numrecs = self._count_value()
        dims = self._dimensions()
        self._skip_attributes()  # global attributes
        self._unpack(">I")  # NC_VARIABLE tag (or ABSENT)
        variables = [self._variable(dims) for _ in range(self._count_value())]
        ends = [self._f.tell()] + [v.begin + v.nbytes for v in variables if not v.is_record]
        records = [v for v in variables if v.is_record]
        # one record variable is not padded between records; several are, to vsize each
        recsize = records[0].nbytes if len(records) == 1 else sum(v.vsize for v in records)
        if numrecs and numrecs not in _STREAMING:
            ends += [v.begin + (numrecs - 1) * recsize + v.nbytes for v in records]
        return max(ends)


def netcdf3_end(path: Path) -> int:
    """Bytes a classic netCDF file must have, from its header.

    Raises
    ------
    TruncatedFileError
        If the header itself is cut short.
    """
    with open(path, "rb") as f:
        version = f.read(4)[3]
        try:
            return _Netcdf3Header(f, version).expected_size()
        except EOFError as err:
            raise TruncatedFileError(f"{path}: truncated inside its netCDF header") from err


def check_netcdf(path: Path, kind: Kind) -> None:
    """Refuse a netCDF file (``kind`` ``"hdf5"`` or ``"netcdf3"``) shorter than its header says."""
    if kind == "hdf5":
        check_length(path, hdf5_end(path), "HDF5 superblock")
    else:
        check_length(path, netcdf3_end(path), "netCDF header")


# --- GRIB ----------------------------------------------------------------------------------

_GRIB_HEADER_KEYS = (
    "edition",
    "gridType",
    "shortName",
    "typeOfLevel",
    "level",
    "validityDate",
    "validityTime",
)
#: Keys that identify one field: a second message with the same key must hold the same data.
_GRIB_FIELD_KEY = ("expver", "number", "shortName", "typeOfLevel", "level", "validityDate", "validityTime")


@dataclass(frozen=True)
class GribScan:
    """What :func:`scan_grib` learnt of a GRIB file.

    Attributes
    ----------
    experiments : list of str
        The ``expver`` of every message, in file order (``""`` where the message has none).
    grid_types : set of str
        The ``gridType`` values used (``regular_ll`` for a latitude/longitude grid).
    """

    experiments: list[str]
    grid_types: set[str]


def scan_grib(path: Path) -> GribScan:
    """Read every GRIB message's header with ecCodes, refusing damaged or contradictory files.

    Raises
    ------
    TruncatedFileError
        If a message is cut short.
    CorruptFileError
        If ecCodes cannot decode a message (wrong length, no end marker, …) or bytes other than
        zero padding lie between messages (where ecCodes would silently skip a message whose
        start is damaged): the whole file is refused, naming the message, rather than read
        without it.
    DuplicateTimeError
        If one field, level, time, experiment and ensemble member comes twice with different
        data (cfgrib would silently keep the first).
    """
    import eccodes  # imported for GRIB only: loading the ecCodes library takes about a second

    experiments: list[str] = []
    grid_types: set[str] = set()
    digests: dict[tuple, str] = {}
    end = 0  # where the previous message ended
    with open(path, "rb") as f:
        while (header := _next_grib_header(eccodes, f, path, len(experiments) + 1)) is not None:
            message = len(experiments) + 1
            _check_padding(path, end, header["offset"], message)
            end = header["offset"] + header["totalLength"]
            grid_types.add(header["gridType"])
            experiments.append(header["expver"])
            _check_repeat(path, digests, header, message)
    _check_padding(path, end, path.stat().st_size, len(experiments) + 1)
    return GribScan(experiments, grid_types)


def _next_grib_header(eccodes, f: IO[bytes], path: Path, message: int) -> dict | None:
    """The header of the next message in ``f`` (number ``message``), ``None`` at the end."""
    offset = f.tell()
    try:
        handle = eccodes.codes_grib_new_from_file(f)
        if handle is None:
            return None
        try:
            return _grib_header(eccodes, handle)
        finally:
            eccodes.codes_release(handle)
    except eccodes.PrematureEndOfFileError as err:
        raise TruncatedFileError(
            f"{path}: truncated — GRIB message {message} ends before its declared length {_FETCH_AGAIN}"
        ) from err
    except eccodes.GribInternalError as err:  # the base of every ecCodes decoding error
        raise CorruptFileError(
            f"{path}: GRIB message {message} (at byte {offset}) is corrupt: ecCodes says {err!s} "
            f"({message - 1} good messages before it); the file is refused — fetch it again"
        ) from err


def _grib_header(eccodes, handle) -> dict:
    """The keys of one GRIB message that :func:`scan_grib` checks, and the digest of its data."""
    header = {name: eccodes.codes_get(handle, name) for name in _GRIB_HEADER_KEYS}
    header["offset"], header["totalLength"] = (
        int(eccodes.codes_get(handle, name)) for name in ("offset", "totalLength")
    )
    header["expver"] = (
        eccodes.codes_get(handle, "expver") if eccodes.codes_is_defined(handle, "expver") else ""
    )
    header["number"] = (
        eccodes.codes_get(handle, "number") if eccodes.codes_is_defined(handle, "number") else 0
    )
    header["digest"] = eccodes.codes_get(handle, "md5Section4" if header["edition"] == 1 else "md5Section7")
    return header


def _check_repeat(path: Path, digests: dict[tuple, str], header: dict, message: int) -> None:
    """A field seen before (same :data:`_GRIB_FIELD_KEY`) must come back with the same data digest."""
    key = tuple(header[name] for name in _GRIB_FIELD_KEY)
    if digests.setdefault(key, header["digest"]) != header["digest"]:
        raise DuplicateTimeError(
            f"{path}: expected each field once per time, experiment and ensemble member, or repeated "
            f"identically; found {key[2]} ({key[3]} {key[4]}) at {key[5]} {key[6]:04d} UTC, expver "
            f"{key[0] or 'unknown'}, member {key[1]}, twice with different data (message {message})"
        )


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
        raise TruncatedFileError(
            f"{path}: truncated — GRIB message {message} (at byte {at}) ends after "
            f"{len(rest)} bytes {_FETCH_AGAIN}"
        )
    raise CorruptFileError(
        f"{path}: GRIB message {message} (at byte {at}) is corrupt: {len(rest)} bytes that are neither a "
        f"GRIB message nor zero padding ({message - 1} good messages before them); the file is refused — "
        "fetch it again"
    )
