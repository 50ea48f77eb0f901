"""``ingest.source: files`` takes every layout the readers support from the raw folder."""

from __future__ import annotations

import numpy as np
import pytest
from dask.distributed import LocalCluster

from ingest.readers import open_sources
from pipeline.cli import main
from pipeline.errors import StageInputError
from pipeline.paths import Paths
from pipeline.sources import raw_files
from tests.ingest.fields import ALL_IDS, PRESSURE_IDS, make_fields
from tests.ingest.layouts import write_cds_zip, write_grib, write_new_cds


def test_the_raw_folder_gives_netcdf_grib_and_zip_files_and_nothing_else(tmp_path):
    fields = make_fields(ntime=12)
    later = fields.select(slice(8, 12))
    written = [
        write_grib(fields.select(slice(0, 8)), tmp_path / "final.grib"),
        write_cds_zip(later, tmp_path / "sfc.zip"),
        *write_new_cds(later.select(slice(None), PRESSURE_IDS), tmp_path),
    ]
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / ".partial.nc").write_bytes(b"")  # hidden: a download in progress
    (tmp_path / "final.grib.923a8.idx").write_bytes(b"")  # cfgrib's index beside the GRIB file
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "old.nc").write_bytes(b"")  # subfolders are not read
    files = raw_files(tmp_path)
    assert files == sorted(written)
    data = open_sources(files, list(ALL_IDS), shard_steps=4)
    np.testing.assert_array_equal(data.values, fields.stacked())
    assert data.attrs["source_layouts"] == {"cds-zip": 1, "grib": 1, "new-cds-netcdf": 1}


def test_a_folder_without_readable_files_is_refused_naming_what_it_holds(tmp_path):
    (tmp_path / "README.txt").write_text("notes")
    with pytest.raises(
        StageInputError, match=r"expected ERA5 files ending in \.nc, \.grib.*\.zip.*found README\.txt"
    ):
        raw_files(tmp_path)
    with pytest.raises(StageInputError, match="does not exist"):
        raw_files(tmp_path / "missing")


@pytest.mark.distributed
def test_a_corrupted_grib_in_the_raw_folder_stops_ingest_run_with_one_line_naming_it(
    tmp_path, write_run_config, capsys
):
    paths = Paths(tmp_path / "work")
    grib = write_grib(make_fields(ntime=2), paths.raw / "damaged.grib")
    raw = bytearray(grib.read_bytes())
    raw[4:7] = (100).to_bytes(
        3, "big"
    )  # message 1 now says it is 100 bytes long; its end marker is elsewhere
    grib.write_bytes(bytes(raw))
    config = write_run_config(
        tmp_path / "config.yaml",
        paths.workdir,
        ingest={"source": "files", "variables": list(ALL_IDS), "shard_steps": 4},
    )
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert (
            main(["ingest", "run", "--config", str(config), "--scheduler-address", cluster.scheduler_address])
            == 1
        )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(
        f"fourcast ingest run: CorruptFileError: {grib}: GRIB message 1 (at byte 0) is corrupt"
    )
    assert not paths.store.exists()


@pytest.mark.distributed
def test_a_field_without_units_stops_ingest_run_unless_the_config_assumes_them(
    tmp_path, write_run_config, capsys
):
    import xarray as xr

    paths = Paths(tmp_path / "work")
    _pressure, surface = write_new_cds(make_fields(ntime=2), paths.raw)
    ds = xr.load_dataset(surface)
    del ds["t2m"].attrs["units"]
    ds.to_netcdf(surface)
    ingest = {"source": "files", "variables": list(ALL_IDS), "shard_steps": 4}
    refused = write_run_config(tmp_path / "refused.yaml", paths.workdir, ingest=ingest)
    assumed = write_run_config(
        tmp_path / "assumed.yaml", paths.workdir, ingest={**ingest, "assume_units": {"t2m": "K"}}
    )
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        address = cluster.scheduler_address
        assert main(["ingest", "run", "--config", str(refused), "--scheduler-address", address]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "has no units attribute" in err and "t2m" in err
        assert not paths.store.exists()
        assert main(["ingest", "run", "--config", str(assumed), "--scheduler-address", address]) == 0
    assert paths.store.exists()
