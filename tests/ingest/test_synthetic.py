"""Tests of the synthetic shallow-water ERA5 source: determinism, statistics, new-CDS layout."""

from __future__ import annotations

import json
import re

import netCDF4
import numpy as np
import pytest
import xarray as xr

import ingest.cds_layout as cds_layout
import ingest.synthetic as synthetic
from ingest.cds_layout import write_monthly_files
from ingest.errors import IngestError, SourceLayoutError
from ingest.grid import cell_area_weights
from ingest.synthetic import DEFAULT_FLOW, FlowSpec, SyntheticSpecError, generate_files, simulate

G = 9.80616
#: A cheap run crossing a month boundary: 17 valid times, 16×32 grid.
SHORT = dict(start="2021-01-30", end="2021-02-03", nlat=16, nlon=32, seed=1, spinup_days=5.0)


@pytest.fixture(scope="module")
def short_run() -> xr.Dataset:
    """The cheap run, shared by the layout tests."""
    return simulate(**SHORT)


@pytest.fixture(scope="module")
def season() -> xr.Dataset:
    """120 days at 24×48 after the default 30-day spin-up: long enough for honest statistics."""
    return simulate("2001-01-01", "2001-04-30T18", nlat=24, nlon=48, seed=0)


def _area_mean_std(z: np.ndarray, lat: np.ndarray) -> tuple[float, float]:
    """Area-weighted mean and standard deviation over time and space of ``z[time, lat, lon]``."""
    weights = np.broadcast_to(cell_area_weights(lat)[:, None], z.shape[1:])
    mean = np.average(z, axis=(1, 2), weights=weights).mean()
    return mean, np.sqrt(np.average((z - mean) ** 2, axis=(1, 2), weights=weights).mean())


def _thirds_drift(ds: xr.Dataset) -> tuple[float, float]:
    """Relative change of the area-weighted mean and std of z from the first to the last third."""
    z = ds["z"].isel(pressure_level=0).values.astype(np.float64)
    third = len(z) // 3
    (m0, s0), (m1, s1) = (_area_mean_std(part, ds["latitude"].values) for part in (z[:third], z[-third:]))
    return abs(m1 / m0 - 1), abs(s1 / s0 - 1)


def _daily_change_ratio(ds: xr.Dataset, days: int) -> float:
    """RMS of 24-h changes of z over the last ``days``, over the mean spatial std of z."""
    per_day = int(np.timedelta64(1, "D") / (ds["valid_time"].values[1] - ds["valid_time"].values[0]))
    z = ds["z"].isel(pressure_level=0).values.astype(np.float64)[-days * per_day :]
    change = z[per_day:] - z[:-per_day]
    return float(np.sqrt((change**2).mean()) / z.std(axis=(1, 2)).mean())


# --- determinism -------------------------------------------------------------------------


def test_same_seed_gives_bit_identical_arrays(short_run):
    again = simulate(**SHORT)
    for name in ("z", "u", "v"):
        np.testing.assert_array_equal(again[name].values, short_run[name].values)


def test_other_seed_gives_other_flow(short_run):
    other = simulate(**{**SHORT, "seed": 2})
    assert not np.array_equal(other["z"].values, short_run["z"].values)
    assert np.abs(other["z"].values - short_run["z"].values).max() > 10 * G


def test_flow_does_not_depend_on_end(short_run):
    shorter = simulate(**{**SHORT, "end": "2021-01-31T12"})
    xr.testing.assert_identical(shorter, short_run.sel(valid_time=shorter["valid_time"]))


def test_flow_does_not_depend_on_output_interval():
    common = dict(start="2021-01-01", end="2021-01-02", nlat=8, nlon=16, spinup_days=1.0)
    six_hourly, twelve_hourly = simulate(**common, step_hours=6), simulate(**common, step_hours=12)
    xr.testing.assert_identical(twelve_hourly, six_hourly.sel(valid_time=twelve_hourly["valid_time"]))


def test_progress_is_monotonic_and_ends_at_one():
    seen: list[float] = []
    simulate("2021-01-01", "2021-01-02", nlat=8, nlon=16, spinup_days=1.0, progress=seen.append)
    assert seen == sorted(seen) and 0 < seen[0] and seen[-1] == 1.0


# --- statistics --------------------------------------------------------------------------


def test_statistically_stationary_over_a_season(season):
    mean_drift, std_drift = _thirds_drift(season)
    assert mean_drift < 0.05 and std_drift < 0.05


def test_flow_keeps_changing_from_day_to_day(season):
    assert _daily_change_ratio(season, days=30) > 0.05
    z = season["z"].isel(pressure_level=0)
    midlatitudes = z.where(abs(z["latitude"]) > 30, drop=True).where(abs(z["latitude"]) < 60, drop=True)
    values = midlatitudes.values[-124:]  # the last 31 days, 6-hourly
    daily_change = values[4:] - values[:-4]
    assert np.sqrt((daily_change**2).mean()) > 30 * G  # 30 m of z500 height, as g·h


def test_without_stirring_the_flow_settles():
    calm = simulate(
        "2021-01-01", "2021-01-05", nlat=16, nlon=32, spinup_days=40.0, flow=FlowSpec(stir_rms=0.0)
    )
    assert _daily_change_ratio(calm, days=3) < 0.005


def test_mid_latitude_jets_are_westerly_and_in_geostrophic_balance(season):
    mean = season.isel(pressure_level=0).mean(("valid_time", "longitude"))
    lat = mean["latitude"]
    jets = mean["u"].where(abs(lat) > 30).where(abs(lat) < 60)
    assert 10 < float(jets.sel(latitude=slice(90, 0)).max()) < 40
    assert 10 < float(jets.sel(latitude=slice(0, -90)).max()) < 40
    assert float(mean["z"].sel(latitude=0, method="nearest")) > float(mean["z"].sel(latitude=90)) + 300 * G
    # u ≈ −(1/(f a)) ∂z/∂φ: with latitude running north to south, the signs must agree
    coriolis = 2 * 7.292e-5 * np.sin(np.deg2rad(lat))
    geostrophic = -mean["z"].differentiate("latitude") / np.deg2rad(1.0) / (coriolis * 6.37122e6)
    band = abs(lat) > 25
    assert np.corrcoef(geostrophic[band], mean["u"][band])[0, 1] > 0.9


# --- layout ------------------------------------------------------------------------------


def test_written_files_have_the_new_cds_layout(short_run, tmp_path):
    paths = write_monthly_files(short_run, tmp_path, prefix="era5_synthetic")
    assert [p.name for p in paths] == ["era5_synthetic_202101.nc", "era5_synthetic_202102.nc"]
    with xr.open_dataset(paths[1]) as ds:
        assert dict(ds.sizes) == {"valid_time": 9, "pressure_level": 1, "latitude": 16, "longitude": 32}
        assert set(ds.data_vars) == {"z", "u", "v"}
        assert set(ds.coords) == {"valid_time", "pressure_level", "latitude", "longitude", "number", "expver"}
        assert np.all(np.diff(ds["valid_time"].values) == np.timedelta64(6, "h"))
        assert ds["valid_time"].values[0] == np.datetime64("2021-02-01T00")
        np.testing.assert_array_equal(ds["latitude"].values, np.linspace(90, -90, 16))
        assert ds["longitude"].values[0] == 0 and ds["longitude"].values[-1] < 360
        assert ds["pressure_level"].values.tolist() == [500.0]
        assert ds["number"].item() == 0 and set(ds["expver"].values) == {"0001"}
        for name, param_id, units, long_name in (
            ("z", 129, "m**2 s**-2", "Geopotential"),
            ("u", 131, "m s**-1", "U component of wind"),
            ("v", 132, "m s**-1", "V component of wind"),
        ):
            var = ds[name]
            assert var.dims == ("valid_time", "pressure_level", "latitude", "longitude")
            assert var.dtype == np.float32
            assert (var.attrs["GRIB_paramId"], var.attrs["GRIB_shortName"]) == (param_id, name)
            assert (var.attrs["units"], var.attrs["long_name"]) == (units, long_name)
            assert var.encoding["zlib"] and var.encoding["dtype"] == np.float32
        assert ds["z"].attrs["standard_name"] == "geopotential"
        assert ds.attrs["GRIB_centre"] == "ecmf" and ds.attrs["Conventions"] == "CF-1.7"
        assert "synthetic" in ds.attrs["history"] and "seed=1" in ds.attrs["history"]
        assert 49_000 < float(ds["z"].mean()) < 58_000
        assert 10 < float(abs(ds["u"]).max()) < 100


def test_written_files_have_cds_netcdf_types(short_run, tmp_path):
    path = write_monthly_files(short_run, tmp_path, prefix="era5_synthetic")[0]
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF4"
        time = nc["valid_time"]
        assert time.dtype == np.int64 and time.dimensions == ("valid_time",)
        assert (time.units, time.calendar) == ("seconds since 1970-01-01", "proleptic_gregorian")
        assert time.standard_name == time.long_name == "time"
        assert int(time[0]) == int(np.datetime64("2021-01-30T00", "s").astype(np.int64))
        assert nc["number"].dtype == np.int64 and nc["number"].dimensions == ()
        assert nc["expver"].dtype is str and nc["expver"].dimensions == ("valid_time",)
        level = nc["pressure_level"]
        assert level.dtype == np.float64
        assert (level.units, level.standard_name, level.positive, level.stored_direction) == (
            "hPa",
            "air_pressure",
            "down",
            "decreasing",
        )
        assert nc["latitude"].units == "degrees_north" and nc["longitude"].units == "degrees_east"
        assert nc["z"].dtype == np.float32 and nc["z"].filters()["zlib"]


def test_monthly_files_together_hold_the_dataset(short_run, tmp_path):
    paths = write_monthly_files(short_run, tmp_path, prefix="x")
    with xr.open_mfdataset(paths, combine="by_coords") as reopened:
        xr.testing.assert_allclose(reopened.load(), short_run, rtol=0, atol=0)


# --- atomic writes and the manifest ------------------------------------------------------


def test_write_leaves_no_temporary_files(short_run, tmp_path):
    paths = write_monthly_files(short_run, tmp_path, prefix="era5_synthetic")
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]


def test_failed_write_leaves_old_file_and_no_temporary(short_run, tmp_path, monkeypatch):
    january = short_run.sel(valid_time=slice("2021-01-30", "2021-01-31T18"))
    (path,) = write_monthly_files(january, tmp_path, prefix="era5_synthetic")
    before = path.read_bytes()
    monkeypatch.setattr(cds_layout, "cds_encoding", lambda ds: {"z": {"no_such_option": 1}})
    with pytest.raises(ValueError):
        write_monthly_files(january, tmp_path, prefix="era5_synthetic")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert path.read_bytes() == before


def test_generate_files_reuses_matching_files(tmp_path, monkeypatch):
    kwargs = dict(nlat=8, nlon=16, seed=3, spinup_days=1.0)
    paths = generate_files(tmp_path, "2021-01-31", "2021-02-01", **kwargs)
    manifest = json.loads((tmp_path / "synthetic_manifest.json").read_text())
    assert manifest["files"] == [p.name for p in paths] and manifest["request"]["seed"] == 3
    stamps = [p.stat().st_mtime_ns for p in paths]

    def refuse(*args, **kwargs):
        raise AssertionError("simulate must not run when the manifest matches")

    monkeypatch.setattr(synthetic, "simulate", refuse)
    assert generate_files(tmp_path, "2021-01-31", "2021-02-01", **kwargs) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps


def test_the_manifest_holds_the_flow_spec_and_its_hash_and_another_spec_regenerates(tmp_path):
    kwargs = dict(nlat=8, nlon=16, seed=3, spinup_days=1.0)
    paths = generate_files(tmp_path, "2021-01-31", "2021-02-01", **kwargs)
    request = json.loads((tmp_path / "synthetic_manifest.json").read_text())["request"]
    assert request["flow"] == DEFAULT_FLOW.as_dict() and request["flow"]["stir_wavenumbers"] == [6, 12]
    assert request["flow_sha256"] == DEFAULT_FLOW.digest() and len(request["flow_sha256"]) == 64
    with xr.open_dataset(paths[0]) as ds:
        before = ds["z"].values
    slower = FlowSpec(relaxation_days=10.0)
    assert slower.digest() != DEFAULT_FLOW.digest() and FlowSpec().digest() == DEFAULT_FLOW.digest()
    again = generate_files(tmp_path, "2021-01-31", "2021-02-01", flow=slower, **kwargs)
    assert (
        json.loads((tmp_path / "synthetic_manifest.json").read_text())["request"]["flow_sha256"]
        == slower.digest()
    )
    with xr.open_dataset(again[0]) as ds:
        assert not np.array_equal(ds["z"].values, before)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("drag_days", 0.0),
        ("stir_rms", -1e-10),
        ("courant", float("nan")),
        ("stir_wavenumbers", (12, 6)),
        ("jet_speed", "fast"),
    ],
)
def test_an_impossible_flow_spec_is_refused_naming_the_field(field, value):
    with pytest.raises(SyntheticSpecError, match=rf"FlowSpec\.{field} must .*found {re.escape(repr(value))}"):
        FlowSpec(**{field: value})


def test_generate_files_regenerates_and_drops_stale_files(tmp_path):
    kwargs = dict(nlat=8, nlon=16, spinup_days=1.0)
    first = generate_files(tmp_path, "2021-01-31", "2021-02-01", seed=3, **kwargs)
    second = generate_files(tmp_path, "2021-02-01", "2021-02-02", seed=4, **kwargs)
    assert [p.name for p in first] == ["era5_synthetic_202101.nc", "era5_synthetic_202102.nc"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["era5_synthetic_202102.nc", "synthetic_manifest.json"]
    with xr.open_dataset(second[0]) as ds:
        assert "seed=4" in ds.attrs["history"]


# --- argument errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "found"),
    [
        ({"end": "2020-12-31"}, "end=2020-12-31T00:00:00"),
        ({"start": "2021-01-01T03"}, "2021-01-01T03:00:00"),
        ({"start": "not a date"}, "'not a date'"),
        ({"nlat": 6}, "found 6"),
        ({"nlon": 8}, "found 8"),
        ({"step_hours": 5}, "found 5"),
        ({"step_hours": 0}, "found 0"),
        ({"seed": -1}, "found -1"),
        ({"spinup_days": -2.0}, "found -2.0"),
    ],
)
def test_invalid_arguments_raise_with_expected_and_found(kwargs, found):
    args = {"start": "2021-01-01", "end": "2021-01-02", "nlat": 16, "nlon": 32, **kwargs}
    with pytest.raises(SyntheticSpecError, match="must") as info:
        simulate(**args)
    assert found in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, IngestError)


def test_write_refuses_dataset_without_times(short_run, tmp_path):
    with pytest.raises(SourceLayoutError, match="valid_time"):
        write_monthly_files(short_run.isel(valid_time=slice(0, 0)), tmp_path, prefix="x")


# --- the measured year (slow) ------------------------------------------------------------


@pytest.mark.slow
def test_statistically_stationary_over_a_year_at_32x64():
    year = simulate("2001-01-01", "2001-12-31T18", nlat=32, nlon=64, seed=0)
    mean_drift, std_drift = _thirds_drift(year)
    assert mean_drift < 0.05 and std_drift < 0.05
    z = year["z"].isel(pressure_level=0).values.astype(np.float64)
    third = len(z) // 3
    plain = [(part.mean(), part.std()) for part in (z[:third], z[-third:])]
    assert abs(plain[1][0] / plain[0][0] - 1) < 0.05 and abs(plain[1][1] / plain[0][1] - 1) < 0.05
    assert _daily_change_ratio(year, days=30) > 0.05
