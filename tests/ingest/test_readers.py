"""Readers for every ERA5 layout, normalised into one canonical form."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dask
import eccodes
import netCDF4
import numpy as np
import pytest
import xarray as xr

from ingest.errors import (
    CorruptFileError,
    DuplicateTimeError,
    GridMismatchError,
    MissingVariableError,
    NonFiniteValueError,
    PhysicalRangeError,
    SourceLayoutError,
    StepTypeError,
    TruncatedFileError,
    UnitsError,
    UnknownVariableError,
)
from ingest.formats import file_source
from ingest.lexicon import get_variable
from ingest.normalise import normalise
from ingest.readers import open_sources
from ingest.source import Layout
from ingest.store import StatsPeriod, write_store
from tests.ingest.fields import ALL_IDS, PRESSURE_IDS, SURFACE_IDS, make_fields
from tests.ingest.layouts import (
    new_cds_dataset,
    write_cds_zip,
    write_grib,
    write_new_cds,
    write_old_cds,
)

REALDATA = Path(
    os.environ.get("FOURCAST_REALDATA", Path(__file__).resolve().parents[3] / "shared" / "realdata")
)
needs_realdata = pytest.mark.skipif(
    not REALDATA.is_dir(), reason=f"real ERA5 samples not found at {REALDATA}"
)


def _forbid_compute(dsk, keys, **kwargs):
    raise AssertionError("open_sources computed a Dask graph; it must stay lazy")


def _packing_tolerance(paths: list[Path]) -> dict[str, float]:
    """Half a packing step of each old-CDS variable, plus float32 rounding of the decoded value."""
    tolerance = {}
    for path in paths:
        with netCDF4.Dataset(path) as nc:
            for vid in ALL_IDS:
                var = nc.variables.get(get_variable(vid).short_name)
                if var is not None:
                    largest = abs(var.add_offset) + 32767 * var.scale_factor
                    tolerance[vid] = var.scale_factor / 2 + float(np.spacing(np.float32(largest)))
    return tolerance


def test_every_layout_gives_the_same_canonical_values(tmp_path):
    fields = make_fields()
    expected = fields.stacked()
    new = write_new_cds(fields, tmp_path / "new")
    layouts = {
        "new-cds": new,
        "new-cds, lon -180..180 and lat ascending": write_new_cds(
            fields, tmp_path / "west", lon_west=True, lat_ascending=True
        ),
        "zip + new-cds pressure levels": [write_cds_zip(fields, tmp_path / "zip" / "sfc.zip"), new[0]],
        "grib (ieee)": [write_grib(fields, tmp_path / "era5.grib")],
        "grib, lon -180..180": [write_grib(fields, tmp_path / "west.grib", lon_west=True)],
    }
    for name, files in layouts.items():
        data = open_sources(files, list(ALL_IDS), shard_steps=3)
        assert data.dims == ("time", "channel", "lat", "lon") and data.dtype == np.float32, name
        assert list(data["channel"].values) == list(ALL_IDS), name
        assert data.chunks[0] == (3, 3, 2) and data.chunks[1] == (len(ALL_IDS),), name
        np.testing.assert_array_equal(data["time"].values, fields.times, err_msg=name)
        np.testing.assert_array_equal(data["lat"].values, fields.lat, err_msg=name)
        np.testing.assert_array_equal(data["lon"].values, fields.lon, err_msg=name)
        np.testing.assert_array_equal(data.values, expected, err_msg=name)
        assert sum(data.attrs["source_layouts"].values()) == len(files), name

    old = write_old_cds(fields, tmp_path / "old")
    packed = open_sources(old, list(ALL_IDS), shard_steps=3)
    tolerance = _packing_tolerance(old)
    for i, vid in enumerate(ALL_IDS):
        np.testing.assert_allclose(
            packed.values[:, i], expected[:, i], rtol=0, atol=tolerance[vid], err_msg=vid
        )
    assert packed.attrs["source_layouts"] == {Layout.OLD_CDS_NETCDF.value: 2}


def test_packed_int16_decodes_to_the_float32_of_a_direct_netcdf4_read(tmp_path):
    fields = make_fields()
    paths = write_old_cds(fields, tmp_path, fill_points={"z850": (2, 3, 4), "t2m": (0, 0, 0)})
    for path, ids in zip(paths, (PRESSURE_IDS, SURFACE_IDS), strict=True):
        with xr.open_dataset(path, mask_and_scale=False) as raw, netCDF4.Dataset(path) as nc:
            canonical = normalise(raw, ids).compute()  # nc: a direct read, auto mask and scale on
            assert list(canonical.data_vars) == list(ids)
            for vid in canonical.data_vars:
                variable = get_variable(vid)
                direct = nc[variable.short_name]
                level = variable.level
                values = direct[:, list(nc["level"][:]).index(level)] if level else direct[:]
                expected = np.ma.filled(values.astype(np.float64), np.nan).astype(np.float32)
                assert values.dtype == np.float64 and np.ma.count_masked(values) == (vid in ("z850", "t2m"))
                np.testing.assert_array_equal(canonical[vid].values, expected, err_msg=vid)
    assert np.isnan(canonical["t2m"].values[0, 0, 0])


def test_opening_stays_lazy_across_layouts(tmp_path):
    fields = make_fields()
    era5t = fields.select(slice(4, 8))
    era5t.expver[2:] = "0005"
    files = [
        write_grib(fields.select(slice(0, 4)), tmp_path / "a.grib"),
        *write_old_cds(era5t, tmp_path / "old", expver_dim=True),
    ]
    with dask.config.set(scheduler=_forbid_compute):
        data = open_sources(files, list(ALL_IDS), shard_steps=4)
    np.testing.assert_allclose(data.values, fields.stacked(), rtol=0, atol=0.35)


@needs_realdata
def test_real_old_cds_netcdf_normalises_like_a_direct_read():
    path = REALDATA / "old-cds-era5_2t.nc"
    data = open_sources([path], ["t2m"], shard_steps=1)
    with netCDF4.Dataset(path) as nc:
        direct = np.ma.filled(nc["t2m"][:].astype(np.float64), np.nan).astype(np.float32)
        lat, lon = nc["latitude"][:], nc["longitude"][:]
    assert data["time"].values.tolist() == [np.datetime64("2021-03-01T12", "ns").astype(int)]
    np.testing.assert_array_equal(data["lat"].values, lat)  # 80 → −80 already north to south
    np.testing.assert_array_equal(data["lon"].values, lon)
    np.testing.assert_array_equal(data.sel(channel="t2m").values, direct)
    assert 200 < float(data.min()) and float(data.max()) < 330
    assert data.attrs["expver"][0]["expver"] == "unknown" and data.attrs["source_layouts"] == {
        "old-cds-netcdf": 1
    }


@needs_realdata
def test_real_new_cds_era5t_netcdf_records_its_expver():
    path = REALDATA / "new-cds-era5t-u10v10.nc"
    data = open_sources([path], ["u10m", "v10m"], shard_steps=8)
    with xr.open_dataset(path) as raw:
        assert data.sizes == {"time": 30, "channel": 2, "lat": 61, "lon": 73}
        np.testing.assert_array_equal(data["time"].values, raw["valid_time"].values)
        np.testing.assert_array_equal(data.sel(channel="u10m").values, raw["u10"].values)
        np.testing.assert_array_equal(data.sel(channel="v10m").values, raw["v10"].values)
    assert data.attrs["expver"] == [
        {"expver": "0005", "first": "2025-05-23T00:00:00", "last": "2025-05-28T23:00:00", "steps": 30}
    ]


@needs_realdata
def test_real_grib_is_rolled_to_0_360():
    path = REALDATA / "era5-2t-europe.grib"
    data = open_sources([path], ["t2m"], shard_steps=1)
    with open(path, "rb") as f:
        handle = eccodes.codes_grib_new_from_file(f)
        values = eccodes.codes_get_values(handle).reshape(121, 201).astype(np.float32)  # lon −10..40
        eccodes.codes_release(handle)
    assert data["time"].values[0] == np.datetime64("2017-01-01T12")
    assert data["lon"].values[0] == 0.0 and data["lon"].values[-1] == 359.75
    assert np.all(np.diff(data["lon"].values) > 0) and np.all(np.diff(data["lat"].values) < 0)
    west = 40  # −10..−0.25 become 350..359.75 and move to the end
    np.testing.assert_array_equal(
        data.values[0, 0], np.concatenate([values[:, west:], values[:, :west]], axis=1)
    )


def test_final_data_replaces_era5t_across_new_cds_files(tmp_path):
    fields = make_fields()
    era5t = fields.shifted(1.0, "0005")  # the preliminary run: other values, all 8 steps
    final = fields.select(slice(0, 5))  # final data has caught up with the first 5 steps
    files = write_new_cds(era5t, tmp_path / "t", stem="era5t") + write_new_cds(
        final, tmp_path / "f", stem="final"
    )
    data = open_sources(files, list(ALL_IDS), shard_steps=4)
    np.testing.assert_array_equal(data.values[:5], fields.stacked()[:5])
    np.testing.assert_array_equal(data.values[5:], era5t.stacked()[5:])
    assert data.attrs["expver"] == [
        {"expver": "0001", "first": "2000-01-01T00:00:00", "last": "2000-01-02T00:00:00", "steps": 5},
        {"expver": "0005", "first": "2000-01-02T06:00:00", "last": "2000-01-02T18:00:00", "steps": 3},
    ]
    assert data.attrs["expver_superseded"] == 5 * len(ALL_IDS)


def test_old_cds_expver_dimension_keeps_the_experiment_holding_data(tmp_path):
    fields = make_fields()
    fields.expver[6:] = "0005"
    data = open_sources(write_old_cds(fields, tmp_path, expver_dim=True), list(ALL_IDS), shard_steps=4)
    np.testing.assert_allclose(data.values, fields.stacked(), rtol=0, atol=0.35)
    assert [(run["expver"], run["steps"]) for run in data.attrs["expver"]] == [("0001", 6), ("0005", 2)]


def test_grib_with_both_experiments_for_the_same_time_prefers_final(tmp_path):
    fields = make_fields()
    path = write_grib(fields.shifted(-2.0, "0005"), tmp_path / "mixed.grib")
    write_grib(fields.select(slice(0, 3)), path, append=True)
    data = open_sources([path], list(ALL_IDS), shard_steps=4)
    np.testing.assert_array_equal(data.values[:3], fields.stacked()[:3])
    np.testing.assert_array_equal(data.values[3:], fields.stacked()[3:] - np.float32(2.0))
    assert data.attrs["expver_superseded"] == 3 * len(ALL_IDS)


def test_unsorted_files_and_identical_duplicates_are_fine(tmp_path):
    fields = make_fields()
    late = write_new_cds(fields.select(slice(3, 8)), tmp_path / "late")
    early = write_new_cds(fields.select(slice(0, 5)), tmp_path / "early")  # steps 3 and 4 twice
    data = open_sources(late + early, list(ALL_IDS), shard_steps=4)
    np.testing.assert_array_equal(data["time"].values, fields.times)
    np.testing.assert_array_equal(data.values, fields.stacked())


def test_conflicting_duplicate_times_are_refused(tmp_path):
    fields = make_fields()
    files = write_new_cds(fields, tmp_path / "a") + write_new_cds(
        fields.select(slice(2, 3)).shifted(0.5, "0001"), tmp_path / "b"
    )
    with pytest.raises(
        DuplicateTimeError,
        match=r"z500: expected each time step once.*1 conflicting duplicates: "
        r"2000-01-01T12 in .*a/era5_pl.nc and .*b/era5_pl.nc",
    ):
        open_sources(files, list(ALL_IDS), shard_steps=4)
    grib = write_grib(fields, tmp_path / "twice.grib")
    write_grib(fields.select(slice(2, 3)), grib, append=True)  # identical copies are fine
    np.testing.assert_array_equal(open_sources([grib], list(ALL_IDS), shard_steps=4).values, fields.stacked())
    write_grib(fields.select(slice(2, 3)).shifted(0.5, "0001"), grib, append=True)
    with pytest.raises(
        DuplicateTimeError,
        match=r"twice.grib: expected each field once per time, experiment and "
        r"ensemble member.*"
        r"found z \(isobaricInhPa 500\) at 20000101 1200 UTC, expver 0001",
    ):
        open_sources([grib], list(ALL_IDS), shard_steps=4)


def test_truncated_files_are_refused_before_reading(tmp_path):
    fields = make_fields()
    netcdf4_file = write_new_cds(fields, tmp_path / "new")[0]
    netcdf3_file = write_old_cds(fields, tmp_path / "old")[0]
    grib_file = write_grib(fields, tmp_path / "a.grib")
    zip_file = write_cds_zip(fields, tmp_path / "a.zip")
    for path, keep, message in [
        (netcdf4_file, 0.6, r"its HDF5 superblock says it is \d+ bytes long, found \d+ bytes"),
        (netcdf3_file, 0.97, r"its netCDF header says it is \d+ bytes long, found \d+ bytes"),
        (grib_file, 0.55, r"GRIB message \d+ ends before its declared length"),
        (zip_file, 0.5, r"expected a complete zip archive"),
    ]:
        cut = tmp_path / f"cut_{path.name}"
        cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
        with pytest.raises(TruncatedFileError, match=message):
            open_sources([cut], ["z500"], shard_steps=4)
    empty = tmp_path / "empty.nc"
    empty.touch()
    with pytest.raises(TruncatedFileError, match="found an empty file"):
        open_sources([empty], ["z500"], shard_steps=4)


def test_a_file_on_another_grid_is_refused(tmp_path):
    files = write_new_cds(make_fields(), tmp_path / "a")
    other = write_new_cds(make_fields(nlat=13, nlon=24, start="2000-01-03T00"), tmp_path / "b")
    with pytest.raises(
        GridMismatchError,
        match=r"b/era5_pl.nc is on another grid than the grid of .*a/era5_pl.nc: "
        r"expected lat of 7 values 90…-90, found 13 values 90…-90",
    ):
        open_sources(files + other, list(ALL_IDS), shard_steps=4)


def test_missing_variables_levels_and_times_are_named(tmp_path):
    fields = make_fields()
    files = write_new_cds(fields, tmp_path / "a")
    with pytest.raises(
        MissingVariableError,
        match=r"q500 needs ERA5 variable 'q' \(specific_humidity\) at "
        r"pressure level 500 hPa; the sources hold \['msl', 't', 't2m'",
    ):
        open_sources(files, ["z500", "q500"], shard_steps=4)
    with pytest.raises(
        MissingVariableError, match=r"z300 needs ERA5 variable 'z' .* levels \[500.0, 850.0\] hPa"
    ):
        open_sources(files, ["z300"], shard_steps=4)
    short = write_new_cds(fields.select(slice(0, 6), SURFACE_IDS), tmp_path / "b")
    with pytest.raises(
        MissingVariableError,
        match=r"t2m is missing at 2 time steps that z500 has: "
        r"2000-01-02T12, 2000-01-02T18",
    ):
        open_sources([files[0]] + short, list(ALL_IDS), shard_steps=4)


def test_unknown_variable_id_is_refused_before_any_file_is_opened(tmp_path):
    with pytest.raises(UnknownVariableError, match=r"unknown variable id 'z501'; expected one of: .*z500"):
        open_sources([tmp_path / "never-opened.nc"], ["z500", "z501"], shard_steps=4)


def test_nan_in_a_field_fails_the_write_and_leaves_nothing(tmp_path):
    fields = make_fields()
    fields.values["t2m"][1, 2, 3] = np.nan
    data = open_sources(write_new_cds(fields, tmp_path / "in"), list(ALL_IDS), shard_steps=4)  # still lazy
    with pytest.raises(
        NonFiniteValueError,
        match=r"t2m must be finite everywhere; found 1 NaN/inf grid points "
        r"at 2000-01-01T06",
    ):
        data.compute()
    period = StatsPeriod(np.datetime64("2000-01-01T00"), np.datetime64("2000-01-02T18"))
    with pytest.raises(NonFiniteValueError):
        write_store(data, tmp_path / "store.zarr", period)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_undecoded_fill_value_counts_as_missing_data(tmp_path):
    files = write_old_cds(make_fields(), tmp_path, fill_points={"msl": (5, 1, 1)})
    data = open_sources(files, list(ALL_IDS), shard_steps=4)
    with pytest.raises(
        NonFiniteValueError,
        match="msl must be finite everywhere; found 1 NaN/inf grid points at 2000-01-02T06",
    ):
        data.compute()


def test_units_are_converted_to_the_lexicon_or_refused():
    fields = make_fields(ids=("t2m", "msl"))
    ds = new_cds_dataset(fields, ("t2m", "msl"))
    ds["t2m"] = (ds["t2m"] - 273.15).assign_attrs(units="degC")
    ds["msl"] = (ds["msl"] / 100.0).assign_attrs(units="hPa")
    canonical = normalise(ds)
    np.testing.assert_allclose(canonical["t2m"].values, fields.values["t2m"], rtol=1e-6)
    np.testing.assert_allclose(canonical["msl"].values, fields.values["msl"], rtol=1e-6)
    assert canonical["msl"].attrs["units"] == "Pa"
    ds["msl"] = ds["msl"].assign_attrs(units="inHg")
    with pytest.raises(
        UnitsError,
        match=r"msl \('msl'\) is expected in 'Pa' or units convertible to it; "
        r"found units 'inHg'",
    ):
        normalise(ds)


def test_zip_members_are_unpacked_once_beside_the_zip(tmp_path):
    fields = make_fields()
    archive = write_cds_zip(fields, tmp_path / "sfc.zip")
    sources = file_source(archive).raw()
    assert [s.label.split("::")[1] for s in sources] == [
        "data_stream-oper_stepType-accum.nc",
        "data_stream-oper_stepType-instant.nc",
    ]
    unpacked = tmp_path / ".sfc.zip.unpacked"
    stamp = (unpacked / "data_stream-oper_stepType-instant.nc").stat().st_mtime_ns
    file_source(archive).raw()
    assert (unpacked / "data_stream-oper_stepType-instant.nc").stat().st_mtime_ns == stamp
    write_cds_zip(fields.shifted(1.0, "0001"), archive)  # a new download under the same name
    data = open_sources([archive], list(SURFACE_IDS), shard_steps=4)
    np.testing.assert_array_equal(data.values, fields.shifted(1.0, "0001").stacked(SURFACE_IDS))
    shutil.rmtree(unpacked)


def test_mixed_layouts_ingest_into_a_store_that_records_the_experiments(tmp_path):
    fields = make_fields(ntime=12)
    era5t = fields.select(slice(8, 12))
    era5t.expver[:] = "0005"
    files = [
        write_grib(fields.select(slice(0, 8)), tmp_path / "final.grib"),
        write_cds_zip(era5t, tmp_path / "sfc.zip"),
        *write_new_cds(era5t.select(slice(None), PRESSURE_IDS), tmp_path),
    ]
    period = StatsPeriod(fields.times[0], fields.times[7])
    store = write_store(open_sources(files, list(ALL_IDS), shard_steps=4), tmp_path / "store.zarr", period)
    ds = xr.open_zarr(store, consolidated=False)
    np.testing.assert_array_equal(ds["data"].values, fields.stacked())
    assert [(run["expver"], run["steps"]) for run in ds.attrs["expver"]] == [("0001", 8), ("0005", 4)]
    assert ds.attrs["source_layouts"] == {"cds-zip": 1, "grib": 1, "new-cds-netcdf": 1}


# --- damaged, misleading and implausible inputs ---------------------------------------------


def _grib_message_spans(path: Path) -> list[tuple[int, int]]:
    """``(offset, length)`` in bytes of every message of an intact GRIB file."""
    spans = []
    with open(path, "rb") as f:
        while (handle := eccodes.codes_grib_new_from_file(f)) is not None:
            spans.append(
                (int(eccodes.codes_get(handle, "offset")), int(eccodes.codes_get(handle, "totalLength")))
            )
            eccodes.codes_release(handle)
    return spans


@pytest.mark.parametrize("damage", ["end marker", "length", "start marker"])
def test_a_corrupted_grib_message_is_refused_naming_the_file_and_message(tmp_path, damage):
    fields = make_fields(ntime=2)
    path = write_grib(fields, tmp_path / "corrupted.grib")
    raw = bytearray(path.read_bytes())
    # a bad first message and good ones after it, as cfgrib's sample; the first bytes of a file
    # are its signature (without it, it is no GRIB file), so a damaged start marker is put on message 2
    message = 2 if damage == "start marker" else 1
    offset, length = _grib_message_spans(path)[message - 1]
    if damage == "end marker":
        raw[offset + length - 4 : offset + length] = b"XXXX"
    elif damage == "length":
        raw[offset + 4 : offset + 7] = (length // 2).to_bytes(3, "big")
    else:  # ecCodes would skip the message and read the next ones
        raw[offset : offset + 4] = b"XXXX"
    path.write_bytes(bytes(raw))
    with pytest.raises(
        CorruptFileError, match=rf"corrupted.grib: GRIB message {message} \(at byte {offset}\) is corrupt"
    ):
        open_sources([path], list(ALL_IDS), shard_steps=4)


def test_an_ensemble_grib_asks_for_one_member(tmp_path):
    fields = make_fields(ntime=2)
    path = tmp_path / "eda.grib"
    for member in range(3):  # the ensemble of data assimilations: other values per member
        write_grib(
            fields.shifted(float(member), "0001"), path, stream="enda", number=member, append=member > 0
        )
    with pytest.raises(
        SourceLayoutError,
        match=r"eda.grib: expected one ensemble member \(reanalysis\), "
        r"found number = \[0, 1, 2\]; select one member",
    ):
        open_sources([path], list(ALL_IDS), shard_steps=4)


def test_statistical_products_are_refused_naming_file_variable_and_step_type(tmp_path):
    fields = make_fields(ntime=2)
    monthly = write_grib(fields, tmp_path / "moda.grib", stream="moda", step_type="avgua")
    with pytest.raises(
        StepTypeError,
        match=r"moda.grib: z500 \('z'\) is expected as an instantaneous field "
        r"\(stepType instant\); found stepType 'avgua'",
    ):
        open_sources([monthly], list(ALL_IDS), shard_steps=4)
    ds = new_cds_dataset(fields, ("t2m", "msl"))
    for attrs, found in [
        ({"GRIB_stepType": "avgua"}, "stepType 'avgua'"),
        ({"stepType": "max"}, "stepType 'max'"),
        ({"cell_methods": "time: mean (monthly)"}, r"cell_methods 'time: mean \(monthly\)'"),
    ]:
        ds["msl"].attrs = {"units": "Pa", **attrs}
        with pytest.raises(
            StepTypeError, match=rf"msl \('msl'\) is expected as an instantaneous field .*found {found}"
        ):
            normalise(ds)
    ds["msl"].attrs = {"units": "Pa", "GRIB_stepType": "instant", "cell_methods": "area: mean time: point"}
    np.testing.assert_array_equal(normalise(ds)["msl"].values, fields.values["msl"])


def _cut_points(path: Path) -> list[int]:
    """Ten evenly spaced byte offsets, every offset inside the first 64 bytes (signatures,
    superblock, netCDF header), and both sides of every GRIB message boundary."""
    size = path.stat().st_size
    cuts = set(np.linspace(1, size - 1, 10).astype(int)) | set(range(1, 65))
    if path.suffix == ".grib":
        cuts |= {offset + length + delta for offset, length in _grib_message_spans(path) for delta in (-1, 1)}
    return sorted(c for c in cuts if 0 < c < size)


def test_a_file_cut_anywhere_gives_the_typed_truncation_error(tmp_path):
    fields = make_fields(ntime=2)
    originals = {
        "netcdf4": write_new_cds(fields, tmp_path / "new")[0],
        "netcdf3": write_old_cds(fields, tmp_path / "old")[0],
        "grib": write_grib(fields, tmp_path / "a.grib"),
        "zip": write_cds_zip(fields, tmp_path / "a.zip"),
    }
    grib_boundaries = {offset for offset, _ in _grib_message_spans(originals["grib"])}
    for kind, original in originals.items():
        raw = original.read_bytes()
        for cut in _cut_points(original):
            damaged = tmp_path / "cut" / f"{cut}_{original.name}"
            damaged.parent.mkdir(exist_ok=True)
            damaged.write_bytes(raw[:cut])
            if kind == "grib" and cut in grib_boundaries:  # whole messages only: a valid, shorter file
                assert file_source(damaged).raw()
                continue
            with pytest.raises(
                TruncatedFileError, match=rf"{damaged.name}: (truncated|expected a complete zip)"
            ):
                file_source(damaged).raw()


def test_values_outside_the_physical_range_are_refused(tmp_path):
    fields = make_fields()
    in_metres = fields.select(slice(None))
    # geopotential height in metres, labelled m**2 s**-2
    in_metres.values["z500"] = in_metres.values["z500"] / np.float32(9.80665)
    files = write_new_cds(in_metres, tmp_path / "metres")
    with pytest.raises(
        PhysicalRangeError,
        match=r"metres/era5_pl.nc: z500 spans 5\d{3}(\.\d+)?\.\.\d+(\.\d+)? at "
        r"2000-01-01T00, outside its physical range 25000\.\.80000",
    ):
        open_sources(files, list(ALL_IDS), shard_steps=4)
    spike = fields.select(slice(None))
    spike.values["t850"][3, 2, 2] = 500.0  # a middle step: found when the chunk is computed
    data = open_sources(write_new_cds(spike, tmp_path / "spike"), list(ALL_IDS), shard_steps=4)
    with pytest.raises(
        PhysicalRangeError,
        match=r"t850 spans .*\.\.500 at 2000-01-01T18, outside its physical "
        r"range 150\.\.350",
    ):
        data.compute()


def test_a_field_without_units_is_refused_unless_its_units_are_assumed(tmp_path):
    fields = make_fields()
    ds = new_cds_dataset(fields, SURFACE_IDS)
    del ds["t2m"].attrs["units"]
    path = tmp_path / "no_units.nc"
    ds.to_netcdf(path)
    with pytest.raises(
        UnitsError,
        match=r"no_units.nc: t2m \('t2m'\) has no units attribute; expected 'K' "
        r"\(or units convertible to it\); declare them with assume_units",
    ):
        open_sources([path], list(SURFACE_IDS), shard_steps=4)
    data = open_sources([path], list(SURFACE_IDS), shard_steps=4, assume_units={"t2m": "K"})
    np.testing.assert_array_equal(data.values, fields.stacked(SURFACE_IDS))
    celsius = ds.assign(t2m=ds["t2m"] - np.float32(273.15))
    np.testing.assert_allclose(
        normalise(celsius, assume_units={"t2m": "degC"})["t2m"].values,
        fields.values["t2m"],
        rtol=0,
        atol=1e-4,
    )
    with pytest.raises(
        UnitsError,
        match=r"t2m \('t2m'\) is expected in 'K' or units convertible to it; found "
        r"units 'furlong'",
    ):
        open_sources([path], list(SURFACE_IDS), shard_steps=4, assume_units={"t2m": "furlong"})
    with pytest.raises(
        UnitsError, match=r"msl \('msl'\) has units 'Pa' in the file but assume_units says 'hPa'"
    ):
        normalise(ds, assume_units={"t2m": "K", "msl": "hPa"})
