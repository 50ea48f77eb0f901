"""The behaviour every :class:`ingest.source.Source` promises (file formats and the synthetic flow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from ingest.dims import LAT, LON, TIME
from ingest.errors import SourceRequestError, UnknownVariableError
from ingest.expver import EXPVER
from ingest.lexicon import get_variable
from ingest.source import LAYOUT_ATTR, SOURCE_ATTR, Layout, RawDataset, Source
from tests.conformance import assert_typed

#: A lexicon id none of the suite's sources holds.
ABSENT_ID = "tcwv"


class SourceConformance:
    """Subclass as ``Test<Source>``; set :attr:`ids` and implement :meth:`make` and :meth:`reference`."""

    #: Lexicon ids the source holds.
    ids: tuple[str, ...] = ()

    def make(self, tmp_path: Path) -> Source:
        """A fresh source over seeded data."""
        raise NotImplementedError

    def reference(self, variable_id: str) -> tuple[np.ndarray, np.ndarray, float]:
        """``(times, values, atol)``: what the source holds of one id, canonical ``(time, lat, lon)``,
        and how closely its decoded values must match (0 for unpacked float32)."""
        raise NotImplementedError

    @pytest.fixture
    def source(self, tmp_path) -> Source:
        return self.make(tmp_path)

    @staticmethod
    def _merged(datasets: list[xr.Dataset], variable_id: str) -> xr.DataArray:
        pieces = [ds[variable_id] for ds in datasets if variable_id in ds]
        return xr.concat(pieces, dim=TIME).sortby(TIME)

    def test_is_a_source_with_a_label_and_layout(self, source):
        assert isinstance(source, Source)
        assert isinstance(source.label, str) and source.label
        assert isinstance(source.layout, Layout)

    def test_raw_datasets_are_opened_once_and_named_after_the_source(self, source):
        first, second = source.raw(), source.raw()
        assert first and all(isinstance(raw, RawDataset) for raw in first)
        assert all(a.raw is b.raw for a, b in zip(first, second, strict=True))
        assert all(raw.label.startswith(source.label) for raw in first)

    def test_datasets_are_canonical_lazy_float32_in_lexicon_units(self, source):
        datasets = list(source.open(self.ids, time_chunk=2))
        assert datasets
        for ds in datasets:
            assert set(ds.dims) == {TIME, LAT, LON}
            assert ds[TIME].dtype == np.dtype("datetime64[ns]")
            lat, lon = ds[LAT].values, ds[LON].values
            assert np.all(np.diff(lat) < 0) and lat[0] <= 90 and lat[-1] >= -90
            assert np.all(np.diff(lon) > 0) and lon[0] >= 0 and lon[-1] < 360
            assert ds[EXPVER].dims == (TIME,) and all(isinstance(label, str) for label in ds[EXPVER].values)
            assert (
                ds.attrs[SOURCE_ATTR].startswith(source.label)
                and ds.attrs[LAYOUT_ATTR] == source.layout.value
            )
            for vid, field in ds.data_vars.items():
                assert vid in self.ids and field.dims == (TIME, LAT, LON) and field.dtype == np.float32
                assert field.attrs["units"] == get_variable(str(vid)).units
                assert field.chunks is not None and max(field.chunks[0]) <= 2  # Dask-backed, time_chunk steps

    def test_every_held_variable_and_time_comes_back_with_its_values(self, source):
        datasets = list(source.open(self.ids))
        for vid in self.ids:
            times, values, atol = self.reference(vid)
            field = self._merged(datasets, vid)
            np.testing.assert_array_equal(field[TIME].values, times.astype("datetime64[ns]"))
            np.testing.assert_allclose(field.values, values, rtol=0, atol=atol, err_msg=vid)

    def test_only_the_requested_dates_come_back(self, source):
        held = self.reference(self.ids[0])[0].astype("datetime64[ns]")
        outside = held[-1] + np.timedelta64(6, "h")
        wanted = np.concatenate([held[::2], [outside]])
        datasets = list(source.open(self.ids, times=wanted))
        for vid in self.ids:
            _, values, atol = self.reference(vid)
            field = self._merged(datasets, vid)
            np.testing.assert_array_equal(field[TIME].values, held[::2])
            np.testing.assert_allclose(field.values, values[::2], rtol=0, atol=atol, err_msg=vid)
        assert list(source.open(self.ids, times=np.array([outside]))) == []

    def test_only_the_requested_variables_come_back(self, source):
        wanted = (self.ids[-1], ABSENT_ID)
        returned = {str(vid) for ds in source.open(wanted) for vid in ds.data_vars}
        assert returned == {self.ids[-1]}
        assert list(source.open([ABSENT_ID])) == []

    def test_an_unknown_variable_is_a_typed_error_before_anything_is_read(self, source):
        with pytest.raises(UnknownVariableError) as info:
            source.open([self.ids[0], "z501"])  # raised on the call, not when iterating
        assert_typed(info.value, "z501")

    @pytest.mark.parametrize(
        ("times", "found"),
        [
            (np.array(["2000-01-01", "not a date"]), "<U10"),
            (np.array([np.datetime64("NaT", "ns")]), "datetime64[ns]"),
            (np.zeros((2, 2), dtype="datetime64[h]"), "(2, 2)"),
        ],
    )
    def test_malformed_dates_are_a_typed_error(self, source, times, found):
        with pytest.raises(SourceRequestError) as info:
            source.open(self.ids, times=times)
        assert_typed(info.value, "times must be a 1-d array of datetime64", found)

    @pytest.mark.parametrize("time_chunk", [0, -3, 1.5])
    def test_an_impossible_time_chunk_is_a_typed_error(self, source, time_chunk):
        with pytest.raises(SourceRequestError) as info:
            source.open(self.ids, time_chunk=time_chunk)
        assert_typed(info.value, "time_chunk must be an integer >= 1", repr(time_chunk))
