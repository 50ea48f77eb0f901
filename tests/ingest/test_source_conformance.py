"""Every :class:`ingest.source.Source` through the conformance suite."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ingest.formats import file_source
from ingest.formats.grib import GribSource
from ingest.formats.netcdf import NetCDFSource
from ingest.formats.zip import ZipSource
from ingest.lexicon import get_variable
from ingest.source import Layout
from ingest.synthetic import FlowSpec, SyntheticSource, simulate
from tests.conformance.source import SourceConformance
from tests.ingest.fields import PRESSURE_IDS, SURFACE_IDS, Fields, make_fields
from tests.ingest.layouts import (
    write_cds_zip,
    write_grib,
    write_new_cds,
    write_old_cds,
)


class _FieldsSource(SourceConformance):
    """A file written from :func:`tests.ingest.layouts.make_fields`, with unpacked float32 values."""

    fields: Fields = make_fields(ntime=6)

    def reference(self, variable_id):
        return self.fields.times, self.fields.values[variable_id], 0.0


class TestNetCDF4Source(_FieldsSource):
    ids = PRESSURE_IDS

    def make(self, tmp_path):
        source = file_source(write_new_cds(self.fields, tmp_path)[0])
        assert isinstance(source, NetCDFSource) and source.container == "hdf5"
        assert source.layout is Layout.NEW_CDS_NETCDF
        return source


class TestNetCDF3Source(_FieldsSource):
    ids = SURFACE_IDS

    def make(self, tmp_path):
        source = file_source(write_old_cds(self.fields, tmp_path)[1])
        assert isinstance(source, NetCDFSource) and source.container == "netcdf3"
        assert source.layout is Layout.OLD_CDS_NETCDF
        return source

    def reference(self, variable_id):
        """int16 packing: within one packing step of the values sharing the variable's ERA5 name."""
        short = get_variable(variable_id).short_name
        shared = np.stack([v for k, v in self.fields.values.items() if get_variable(k).short_name == short])
        step = (float(shared.max()) - float(shared.min())) / 65532.0
        return self.fields.times, self.fields.values[variable_id], step


class TestGribSource(_FieldsSource):
    ids = PRESSURE_IDS + SURFACE_IDS

    def make(self, tmp_path):
        source = file_source(write_grib(self.fields, tmp_path / "era5.grib"))
        assert isinstance(source, GribSource) and source.layout is Layout.GRIB
        return source


class TestZipSource(_FieldsSource):
    ids = SURFACE_IDS

    def make(self, tmp_path):
        source = file_source(
            write_cds_zip(self.fields, tmp_path / "sfc.zip"), unpack_dir=tmp_path / "unpacked"
        )
        assert isinstance(source, ZipSource) and source.layout is Layout.CDS_ZIP
        return source


class TestSyntheticSource(SourceConformance):
    ids = ("z500", "u500", "v500")
    arguments: ClassVar[dict] = dict(
        start="2021-01-01",
        end="2021-01-02T12",
        nlat=8,
        nlon=16,
        seed=2,
        spinup_days=1.0,
        flow=FlowSpec(jet_speed=20.0),
    )
    _expected = None

    def make(self, tmp_path: Path):
        return SyntheticSource(**self.arguments)

    def reference(self, variable_id):
        if TestSyntheticSource._expected is None:
            TestSyntheticSource._expected = simulate(**self.arguments)
        raw = TestSyntheticSource._expected
        return raw["valid_time"].values, raw[get_variable(variable_id).short_name].values[:, 0], 0.0
