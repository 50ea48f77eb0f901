"""GRIB 1/2 files, read with cfgrib/ecCodes after every message is checked."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ingest.errors import GridMismatchError, SourceLayoutError
from ingest.expver import EXPVER
from ingest.integrity import scan_grib
from ingest.source import Layout, RawDataset, RawSource


class GribSource(RawSource):
    """A GRIB file; one raw dataset per (experiment, hypercube), as cfgrib splits them.

    Every message is read first (:func:`ingest.integrity.scan_grib`): a truncated or damaged
    message, or one field twice with different data, refuses the whole file.

    Parameters
    ----------
    path : pathlib.Path
        GRIB on a regular latitude/longitude grid.
    """

    layout = Layout.GRIB

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.label = str(self.path)

    def _open_raw(self) -> list[RawDataset]:
        scan = scan_grib(self.path)
        if not scan.experiments:
            raise SourceLayoutError(f"{self.path}: expected GRIB messages, found none")
        if scan.grid_types != {"regular_ll"}:
            raise GridMismatchError(
                f"{self.path}: expected GRIB on a regular latitude/longitude grid (gridType regular_ll), "
                f"found {sorted(scan.grid_types)} — request 'grid' (e.g. [0.25, 0.25]) from the CDS to get "
                "one"
            )
        # One experiment at a time: cfgrib cannot hold two messages for the same field and time.
        filters = [None] if "" in scan.experiments else sorted(set(scan.experiments))
        return [RawDataset(self.label, Layout.GRIB, raw) for expver in filters for raw in self._open(expver)]

    def _open(self, expver: str | None) -> list[xr.Dataset]:
        """cfgrib's datasets of one experiment (every message for ``None``), labelled with it."""
        import cfgrib  # imported for GRIB only, as ecCodes

        kwargs: dict[str, object] = {"indexpath": "", "time_dims": ("valid_time",)}
        if expver is not None:
            kwargs["filter_by_keys"] = {"expver": expver}
        try:
            datasets = cfgrib.open_datasets(str(self.path), backend_kwargs=kwargs, cache=False)
        except cfgrib.dataset.DatasetBuildError as err:
            raise SourceLayoutError(
                f"{self.path}: expected GRIB messages that form regular hypercubes (one message per field, "
                f"level and time{'' if expver is None else f' for expver {expver}'}); cfgrib says: {err}"
            ) from err
        return [raw if expver is None else raw.assign_coords({EXPVER: expver}) for raw in datasets]
