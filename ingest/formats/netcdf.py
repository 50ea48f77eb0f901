"""netCDF files, classic (CDF-1/2/5) or netCDF4 (HDF5): the new CDS layout (``valid_time``) or the old one.

The old CDS's ``grib_to_netcdf`` wrote classic files (``time``, ``level``, int16 packed, maybe
an ``expver`` dimension); the new CDS writes netCDF4 with ``valid_time`` (since September
2024). One netCDF library reads both; the containers differ only in where their header says
the file ends, which is checked before the library opens it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import xarray as xr

from ingest.errors import SourceLayoutError
from ingest.formats.netcdf_lock import NETCDF_LOCK
from ingest.integrity import check_length, hdf5_end, netcdf3_end
from ingest.source import Layout, RawDataset, RawSource

#: Container → (its end-of-file reader, the header that states the end), for the truncation check.
CONTAINERS: dict[str, tuple[Callable[[Path], int], str]] = {
    "hdf5": (hdf5_end, "HDF5 superblock"),
    "netcdf3": (netcdf3_end, "netCDF header"),
}


def open_netcdf(path: Path) -> RawDataset:
    """Open a netCDF file (any version) lazily and undecoded, labelled with its CDS layout.

    The open runs under :data:`~ingest.formats.netcdf_lock.NETCDF_LOCK`, which also guards the
    lazy reads and the close. ``mask_and_scale=False`` leaves packed integers and fill values to
    :func:`~ingest.normalise.normalise`, which decodes them in float64 as netCDF4 does.

    Raises
    ------
    SourceLayoutError
        If the netCDF library cannot open it.
    """
    try:
        with NETCDF_LOCK:
            raw = xr.open_dataset(
                path, engine="netcdf4", mask_and_scale=False, chunks=None, cache=False, lock=NETCDF_LOCK
            )
    except (OSError, ValueError) as err:
        raise SourceLayoutError(
            f"{path}: expected a readable netCDF file; the netCDF library says: {err}"
        ) from err
    layout = Layout.NEW_CDS_NETCDF if "valid_time" in raw.variables else Layout.OLD_CDS_NETCDF
    return RawDataset(str(path), layout, raw)


class NetCDFSource(RawSource):
    """A netCDF file, refused if shorter than its header says.

    Parameters
    ----------
    path : pathlib.Path
        The file; its layout (new or old CDS) is read from its variables on first use.
    container : {"hdf5", "netcdf3"}
        netCDF4 (HDF5, end from the superblock) or classic netCDF (end from the header's
        variables), as :func:`ingest.integrity.sniff` names them.
    """

    def __init__(self, path: Path, container: str) -> None:
        if container not in CONTAINERS:
            raise SourceLayoutError(
                f"{path}: expected a netCDF container {sorted(CONTAINERS)}, found {container!r}"
            )
        self.path = Path(path)
        self.label = str(self.path)
        self.container = container

    @property
    def layout(self) -> Layout:  # type: ignore[override]
        """New CDS when the file has ``valid_time``, else old CDS."""
        return self.raw()[0].layout

    def _open_raw(self) -> list[RawDataset]:
        end_of, header = CONTAINERS[self.container]
        check_length(self.path, end_of(self.path), header)
        return [open_netcdf(self.path)]
