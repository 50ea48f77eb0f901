"""The one coordinate handshake: tolerance scaled to the spacing, one error type naming both sides."""

import numpy as np
import pytest

from ensembles.errors import ArchiveError, ArchiveGridError
from fourcast.errors import CheckpointError, CheckpointGridError
from ingest.dims import CHANNEL, LAT, LON
from ingest.errors import CoordinateMismatchError, GridMismatchError, IngestError
from ingest.grid import axis_tolerance, check_coords, equiangular_lats, regular_lons, same_coords
from pipeline.errors import PipelineError, StageGridError


def _grid(nlat=33, nlon=64):
    return {LAT: equiangular_lats(nlat), LON: regular_lons(nlon), CHANNEL: np.array(["z500", "t850"])}


@pytest.mark.parametrize("shape", [(33, 64), (721, 1440)])
def test_float32_rounding_is_the_same_grid(shape):
    expected = _grid(*shape)
    found = {dim: axis.astype(np.float32) if dim != CHANNEL else axis for dim, axis in expected.items()}
    check_coords(expected, found, (CHANNEL, LAT, LON))
    assert same_coords(expected, found)


def test_tolerance_scales_with_the_spacing():
    coarse, fine = equiangular_lats(33), equiangular_lats(721)
    assert axis_tolerance(coarse) == pytest.approx(1e-3 * 180 / 32)
    assert axis_tolerance(fine) == pytest.approx(1e-3 * 0.25)
    # a shift far below a coarse grid's tolerance is a different point on the fine grid
    shift = 0.5 * axis_tolerance(coarse)
    assert same_coords({LAT: coarse}, {LAT: coarse + shift}, (LAT,))
    assert not same_coords({LAT: fine}, {LAT: fine + shift}, (LAT,))


def test_a_shifted_grid_is_refused_naming_both_sides():
    expected = _grid()
    found = {**expected, LON: expected[LON] + 0.5}
    with pytest.raises(CoordinateMismatchError) as info:
        check_coords(expected, found, what="the truth", reference="the forecasts")
    err = info.value
    assert str(err).startswith(
        "the truth is on another grid than the forecasts: expected lon of 64 values "
        "0…354.375, found 64 values 0.5…354.875; max difference 0.5 at position 0 "
        "exceeds the tolerance"
    )
    assert err.dim == LON and err.max_difference == pytest.approx(0.5)
    np.testing.assert_array_equal(err.expected, expected[LON])
    np.testing.assert_array_equal(err.found, found[LON])


def test_other_sizes_labels_and_missing_dims_are_refused():
    expected = _grid()
    with pytest.raises(CoordinateMismatchError, match="expected lat of 33 values 90…-90, found 32 values"):
        check_coords(expected, {**expected, LAT: expected[LAT][:-1]})
    labels = (
        r"other channel labels than .*'t850'\], found \['z500', 'u500'\] \(first difference at position 1"
    )
    with pytest.raises(CoordinateMismatchError, match=labels):
        check_coords(expected, {**expected, CHANNEL: np.array(["z500", "u500"])}, (CHANNEL,))
    with pytest.raises(CoordinateMismatchError, match="expected a 'lon' coordinate, found only"):
        check_coords(expected, {LAT: expected[LAT]})
    with pytest.raises(CoordinateMismatchError, match="max difference nan"):
        check_coords(expected, {**expected, LAT: np.full(33, np.nan)})


@pytest.mark.parametrize(
    "error, family",
    [
        (GridMismatchError, IngestError),
        (CheckpointGridError, CheckpointError),
        (ArchiveGridError, ArchiveError),
        (StageGridError, PipelineError),
    ],
)
def test_each_package_raises_the_one_error_within_its_own_hierarchy(error, family):
    expected = _grid()
    with pytest.raises(error) as info:
        check_coords(expected, {**expected, LAT: expected[LAT] - 1.0}, error=error)
    assert isinstance(info.value, CoordinateMismatchError) and isinstance(info.value, family)


def test_a_store_is_extended_only_by_data_on_its_grid(tmp_path):
    import xarray as xr

    from ingest.errors import StoreGridError, StoreSchemaError
    from ingest.store import _new_part

    def data(lat, times):
        values = np.zeros((times.size, 1, lat.size, 8), dtype=np.float32)
        return xr.DataArray(
            values,
            dims=("time", CHANNEL, LAT, LON),
            coords={"time": times, CHANNEL: ["z500"], LAT: lat, LON: regular_lons(8)},
        )

    times = np.arange("2000-01-01T00", "2000-01-02T00", 6, dtype="datetime64[h]").astype("datetime64[ns]")
    existing = xr.Dataset({"data": data(equiangular_lats(5), times)}, attrs={"step_hours": 6})
    later = times + np.timedelta64(24, "h")
    rounded = data(equiangular_lats(5).astype(np.float32), later)
    assert _new_part(existing, rounded, tmp_path).sizes["time"] == 4
    message = "the new data is on another grid than .*: expected lat of 5 values"
    with pytest.raises(StoreGridError, match=message) as info:
        _new_part(existing, data(np.linspace(80, -80, 5), later), tmp_path)
    assert isinstance(info.value, StoreSchemaError)
