"""netCDF4/HDF5 files: the new CDS layout (``valid_time``, since September 2024) or the old one."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ingest.errors import SourceLayoutError
from ingest.formats.netcdf_lock import NETCDF_LOCK
from ingest.integrity import check_length, hdf5_end
from ingest.source import Layout, RawDataset, RawSource


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


class NetCDF4Source(RawSource):
    """A netCDF4 (HDF5) file, refused if shorter than its HDF5 superblock says.

    Parameters
    ----------
    path : pathlib.Path
        The file; its layout (new or old CDS) is read from its variables on first use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.label = str(self.path)

    @property
    def layout(self) -> Layout:  # type: ignore[override]
        """New CDS when the file has ``valid_time``, else old CDS."""
        return self.raw()[0].layout

    def _open_raw(self) -> list[RawDataset]:
        check_length(self.path, hdf5_end(self.path), "HDF5 superblock")
        return [open_netcdf(self.path)]
