"""WeatherBench 2 export: names, dims, levels and values by label, atomic Zarr write."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ensembles.archive import MemoryArchive
from ensembles.errors import ArchiveError
from ensembles.export import to_weatherbench2, write_weatherbench2
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from ingest.grid import equiangular_lats, regular_lons

VARIABLES = ["z500", "z850", "u500", "t2m"]
INIT_TIMES = np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]")
LEAD_TIMES = np.array([0, 6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")


@pytest.fixture
def archive() -> xr.Dataset:
    """A finalised in-memory archive of seeded random fields, 3 members on a 5 x 8 grid."""
    lat, lon = equiangular_lats(5), regular_lons(8)
    memory = MemoryArchive(VARIABLES, INIT_TIMES, LEAD_TIMES, 3, lat, lon, attrs={"model": "identity"})
    rng = np.random.default_rng(0)
    for init in INIT_TIMES:
        for lead in LEAD_TIMES:
            coords = {
                INIT_TIME: [init],
                LEAD_TIME: [lead],
                MEMBER: np.arange(3),
                CHANNEL: np.array(VARIABLES),
                LAT: lat,
                LON: lon,
            }
            memory.write(rng.standard_normal((3, len(VARIABLES), 5, 8)).astype(np.float32), coords)
    memory.finalize()
    return memory.dataset


def test_variables_dims_and_levels(archive):
    wb2 = to_weatherbench2(archive)
    assert set(wb2.data_vars) == {"geopotential", "u_component_of_wind", "2m_temperature"}
    assert wb2["geopotential"].dims == (
        "time",
        "prediction_timedelta",
        "realization",
        "level",
        "latitude",
        "longitude",
    )
    assert wb2["2m_temperature"].dims == (
        "time",
        "prediction_timedelta",
        "realization",
        "latitude",
        "longitude",
    )
    assert wb2["geopotential"]["level"].values.tolist() == [500, 850]
    # one shared level axis: u500 only, so u at 850 hPa is missing (NaN)
    assert wb2["u_component_of_wind"].sel(level=850).isnull().all()
    assert wb2["u_component_of_wind"].sel(level=500).notnull().all()
    assert np.all(np.diff(wb2["latitude"].values) > 0)


def test_attributes(archive):
    wb2 = to_weatherbench2(archive)
    assert wb2["latitude"].attrs["units"] == "degrees_north"
    assert wb2["longitude"].attrs["units"] == "degrees_east"
    assert wb2["level"].attrs["units"] == "hPa"
    assert wb2["geopotential"].attrs["units"] == "m**2 s**-2"
    assert wb2["2m_temperature"].attrs["units"] == "K"
    assert wb2.attrs["model"] == "identity"


def test_written_store_holds_the_archive_values_by_label(archive, tmp_path):
    path = tmp_path / "wb2.zarr"
    assert write_weatherbench2(archive, path) == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["wb2.zarr"]
    wb2 = xr.open_zarr(path, zarr_format=3, consolidated=False)
    renamed = archive.rename(
        {
            INIT_TIME: "time",
            LEAD_TIME: "prediction_timedelta",
            MEMBER: "realization",
            LAT: "latitude",
            LON: "longitude",
        }
    )
    cases = [
        ("geopotential", "z500", 500),
        ("geopotential", "z850", 850),
        ("u_component_of_wind", "u500", 500),
        ("2m_temperature", "t2m", None),
    ]
    for name, variable, level in cases:
        exported = (wb2[name] if level is None else wb2[name].sel(level=level, drop=True)).load()
        expected = renamed[variable].transpose(*exported.dims).sortby("latitude")
        xr.testing.assert_equal(exported.drop_attrs(), expected.drop_attrs())
        point = {"latitude": 90.0, "longitude": 45.0, "realization": 2}
        assert exported.sel(point).isel(time=1, prediction_timedelta=2).item() == (
            archive[variable].sel(lat=90.0, lon=45.0, member=2).isel(init_time=1, lead_time=2).item()
        )


def test_rewrite_replaces_the_store(archive, tmp_path):
    path = tmp_path / "wb2.zarr"
    write_weatherbench2(archive, path)
    write_weatherbench2(archive[["t2m"]], path)
    assert set(xr.open_zarr(path, zarr_format=3, consolidated=False).data_vars) == {"2m_temperature"}
    assert [p.name for p in tmp_path.iterdir()] == ["wb2.zarr"]


def test_unknown_variable_is_refused(archive):
    with pytest.raises(ArchiveError, match=r"lexicon variables.*'bogus'"):
        to_weatherbench2(archive.assign(bogus=archive["t2m"]))


def test_wrong_dims_are_refused(archive):
    with pytest.raises(ArchiveError, match="expected archive variables with dims"):
        to_weatherbench2(archive.assign(t2m=archive["t2m"].isel(member=0)))
