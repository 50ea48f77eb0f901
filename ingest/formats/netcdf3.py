"""Classic netCDF (CDF-1/2/5) files, as the old CDS's ``grib_to_netcdf`` wrote them."""

from __future__ import annotations

from pathlib import Path

from ingest.formats.netcdf4 import open_netcdf
from ingest.integrity import check_length, netcdf3_end
from ingest.source import Layout, RawDataset, RawSource


class NetCDF3Source(RawSource):
    """A classic netCDF file, refused if shorter than its header's variables say.

    Parameters
    ----------
    path : pathlib.Path
        The file (old CDS layout: ``time``, ``level``, int16 packed, maybe an ``expver`` dimension).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.label = str(self.path)

    @property
    def layout(self) -> Layout:  # type: ignore[override]
        """Old CDS, unless the file has ``valid_time``."""
        return self.raw()[0].layout

    def _open_raw(self) -> list[RawDataset]:
        check_length(self.path, netcdf3_end(self.path), "netCDF header")
        return [open_netcdf(self.path)]
