"""One :class:`~ingest.source.Source` per ERA5 file format, chosen from the file's first bytes.

========================  ============================  =========================================
format (first bytes)      source                        layouts it yields
========================  ============================  =========================================
HDF5 (netCDF4)            :class:`.netcdf.NetCDFSource`    ``new-cds-netcdf`` (``valid_time``) or
                                                           ``old-cds-netcdf``
CDF (netCDF3 classic)     :class:`.netcdf.NetCDFSource`    ``old-cds-netcdf`` (``grib_to_netcdf``)
GRIB 1/2                  :class:`.grib.GribSource`        ``grib`` (cfgrib/ecCodes)
zip                       :class:`.zip.ZipSource`          ``cds-zip``: one member per stream and
                                                           step type, each opened by its own format
========================  ============================  =========================================

Each source checks its file against its own header for truncation (:mod:`ingest.integrity`)
before any library opens it.
"""

from __future__ import annotations

from pathlib import Path

from ingest.errors import SourceLayoutError
from ingest.integrity import sniff
from ingest.source import RawSource


def file_source(path: str | Path, *, unpack_dir: str | Path | None = None) -> RawSource:
    """The source reading ``path``, by the format its first bytes announce.

    Parameters
    ----------
    path : path-like
        A netCDF, GRIB or CDS zip file.
    unpack_dir : path-like, optional
        Where a zip's members are unpacked (see :class:`~ingest.formats.zip.ZipSource`).

    Raises
    ------
    SourceLayoutError
        If the file does not exist or is in no supported format;
        :class:`~ingest.errors.TruncatedFileError` if it is empty or cut inside its signature.
    """
    from ingest.formats.grib import GribSource
    from ingest.formats.netcdf import NetCDFSource
    from ingest.formats.zip import ZipSource

    path = Path(path)
    if not path.is_file():
        raise SourceLayoutError(f"input files do not exist: {[str(path)]}")
    kind = sniff(path)
    if kind == "zip":
        return ZipSource(path, unpack_dir)
    if kind == "grib":
        return GribSource(path)
    return NetCDFSource(path, kind)
