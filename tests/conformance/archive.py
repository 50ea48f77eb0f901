"""The behaviour every :class:`ensembles.protocols.Archive` promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from ensembles.protocols import Archive, Coords
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from tests.conformance import assert_typed

INIT_TIMES = np.array(["2020-01-01T00", "2020-01-02T00"], dtype="datetime64[ns]")
LEAD_TIMES = np.array([0, 6], dtype="timedelta64[h]").astype("timedelta64[ns]")
N_MEMBERS = 4
VARIABLES = ["z500", "u500"]


class ArchiveConformance:
    """Subclass as ``Test<Archive>`` and implement :meth:`make` and :meth:`read`."""

    def make(self, tmp_path: Path, extents: dict) -> Archive:
        """A fresh archive of ``extents`` (the keyword arguments of ``MemoryArchive``)."""
        raise NotImplementedError

    def read(self, archive: Archive, location: str) -> xr.Dataset:
        """What a finalised ``archive`` holds, as the archive layout's Dataset."""
        raise NotImplementedError

    @pytest.fixture
    def extents(self, coords) -> dict:
        return {
            "variables": VARIABLES,
            "init_times": INIT_TIMES,
            "lead_times": LEAD_TIMES,
            "n_members": N_MEMBERS,
            "lat": coords[LAT],
            "lon": coords[LON],
        }

    @staticmethod
    def fields(coords: Coords) -> np.ndarray:
        """Seeded fields ``(init_time, lead_time, member, channel, lat, lon)``, float32."""
        shape = (
            INIT_TIMES.size,
            LEAD_TIMES.size,
            N_MEMBERS,
            len(coords[CHANNEL]),
            coords[LAT].size,
            coords[LON].size,
        )
        return np.random.default_rng(7).standard_normal(shape).astype(np.float32)

    @staticmethod
    def labels(coords: Coords, i: int, j: int, members) -> Coords:
        return {INIT_TIME: INIT_TIMES[[i]], LEAD_TIME: LEAD_TIMES[[j]], MEMBER: np.asarray(members), **coords}

    def test_fields_written_in_any_order_read_back_by_label(self, tmp_path, extents, coords):
        archive, fields = self.make(tmp_path, extents), self.fields(coords)
        for i in reversed(range(INIT_TIMES.size)):
            for j in range(LEAD_TIMES.size):
                for block, as_tensor in (([3, 1], True), ([0, 2], False)):  # torch and numpy writes
                    x = fields[i, j, block].astype(np.float64)
                    archive.write(torch.from_numpy(x) if as_tensor else x, self.labels(coords, i, j, block))
        location = archive.finalize()
        assert isinstance(location, str) and location
        dataset = self.read(archive, location)
        for c, variable in enumerate(VARIABLES):
            stored = dataset[variable]
            assert stored.dtype == np.float32
            assert stored.dims[:3] == (INIT_TIME, LEAD_TIME, MEMBER) and stored.dims[-2:] == (LAT, LON)
            np.testing.assert_array_equal(stored.values, fields[:, :, :, c])
        np.testing.assert_array_equal(dataset[INIT_TIME].values, INIT_TIMES)
        np.testing.assert_array_equal(dataset[LEAD_TIME].values, LEAD_TIMES)

    def test_channels_are_picked_by_label(self, tmp_path, extents, coords):
        archive, fields = self.make(tmp_path, extents), self.fields(coords)
        flipped = {**coords, CHANNEL: coords[CHANNEL][::-1]}
        for i in range(INIT_TIMES.size):
            for j in range(LEAD_TIMES.size):
                archive.write(fields[i, j][:, ::-1].copy(), self.labels(flipped, i, j, range(N_MEMBERS)))
        dataset = self.read(archive, archive.finalize())
        np.testing.assert_array_equal(dataset[VARIABLES[0]].values, fields[:, :, :, 0])

    @pytest.mark.parametrize("problem", ["init_time", "lead_time", "member", "grid", "shape", "variable"])
    def test_a_write_outside_the_archive_is_refused_with_a_typed_error(
        self, tmp_path, extents, coords, problem
    ):
        archive = self.make(tmp_path, extents)
        x = self.fields(coords)[0, 0]
        labels = self.labels(coords, 0, 0, range(N_MEMBERS))
        named = {
            "init_time": INIT_TIME,
            "lead_time": LEAD_TIME,
            "member": MEMBER,
            "grid": LAT,
            "shape": "shape",
            "variable": VARIABLES[1],
        }[problem]
        if problem == "init_time":
            labels[INIT_TIME] = np.array(["1999-01-01T00"], dtype="datetime64[ns]")
        elif problem == "lead_time":
            labels[LEAD_TIME] = np.array([7], dtype="timedelta64[h]")
        elif problem == "member":
            labels[MEMBER] = np.arange(1, N_MEMBERS + 1)
        elif problem == "grid":
            labels[LAT] = labels[LAT] * 0.5
        elif problem == "shape":
            x = x[:, :, :-1]
        else:
            x, labels[CHANNEL] = x[:, :1], labels[CHANNEL][:1]
        with pytest.raises(Exception) as caught:
            archive.write(x, labels)
        assert_typed(caught.value, named)
