"""Archives: labelled writes, atomic finalise/replace, refusal of incomplete stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from ensembles.archive import ArchiveLayout, MemoryArchive, ZarrArchive, open_archive
from ensembles.errors import ArchiveError
from ingest.dims import ARCHIVE_DIMS, CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from ingest.lexicon import get_variable

INIT_TIMES = np.array(["2020-01-01T00", "2020-01-02T00"], dtype="datetime64[ns]")
LEAD_TIMES = np.array([0, 6, 12], dtype="timedelta64[h]")
N_MEMBERS = 4


@pytest.fixture
def extents(coords):
    return {
        "variables": ["z500", "u500"],
        "init_times": INIT_TIMES,
        "lead_times": LEAD_TIMES,
        "n_members": N_MEMBERS,
        "lat": coords[LAT],
        "lon": coords[LON],
    }


def _fields(coords, seed: int) -> np.ndarray:
    """Random fields (init_time, lead_time, member, channel, lat, lon) to write, float32."""
    shape = (
        INIT_TIMES.size,
        LEAD_TIMES.size,
        N_MEMBERS,
        coords[CHANNEL].size,
        coords[LAT].size,
        coords[LON].size,
    )
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _write_all(archive, coords, fields: np.ndarray) -> None:
    """Write every field in two out-of-order member blocks, as torch tensors."""
    for i, init_time in enumerate(INIT_TIMES):
        for j, lead in enumerate(LEAD_TIMES):
            for block in ([3, 1], [0, 2]):
                archive.write(
                    torch.from_numpy(fields[i, j, block]),
                    {
                        INIT_TIME: np.array([init_time]),
                        LEAD_TIME: np.array([lead]),
                        MEMBER: np.array(block),
                        **coords,
                    },
                )


def _expected(fields: np.ndarray, channel: int) -> np.ndarray:
    """The archive variable of one channel: (init_time, lead_time, member, lat, lon)."""
    return fields[:, :, :, channel]


def test_write_finalize_open_roundtrip(tmp_path, extents, coords):
    fields = _fields(coords, seed=0)
    archive = ZarrArchive(tmp_path / "run.zarr", **extents, attrs={"model": "identity", "seed": 3})
    _write_all(archive, coords, fields)
    location = archive.finalize()

    ds = open_archive(location)
    assert location == str(tmp_path / "run.zarr")
    assert ds.attrs == {
        "model": "identity",
        "seed": 3,
        "fourcast_forecast_archive": 1,
        "complete": True,
        "Conventions": "CF-1.8",
    }
    for c, variable in enumerate(["z500", "u500"]):
        field = ds[variable]
        assert field.dims == ARCHIVE_DIMS
        assert field.dtype == np.float32
        assert field.data.chunksize == (1, 1, N_MEMBERS, coords[LAT].size, coords[LON].size)
        assert field.attrs["units"] == get_variable(variable).units
        assert field.attrs["long_name"] == get_variable(variable).long_name
        np.testing.assert_array_equal(field.values, _expected(fields, c))
    np.testing.assert_array_equal(ds[INIT_TIME].values, INIT_TIMES)
    np.testing.assert_array_equal(ds[LEAD_TIME].values, LEAD_TIMES.astype("timedelta64[ns]"))
    np.testing.assert_array_equal(ds[MEMBER].values, np.arange(N_MEMBERS))
    np.testing.assert_array_equal(ds[LAT].values, coords[LAT])
    np.testing.assert_array_equal(ds[LON].values, coords[LON])


def test_writes_are_placed_by_label(tmp_path, extents, coords):
    archive = MemoryArchive(**extents)
    field = np.full((1, 2, coords[LAT].size, coords[LON].size), 7.0, dtype=np.float32)
    archive.write(
        field,
        {
            INIT_TIME: INIT_TIMES[1:],
            LEAD_TIME: np.array([np.timedelta64(12, "h")]),
            MEMBER: np.array([2]),
            **coords,
        },
    )
    written = archive.dataset["z500"].notnull()
    assert int(written.sum()) == coords[LAT].size * coords[LON].size
    assert bool(written.sel({INIT_TIME: INIT_TIMES[1], LEAD_TIME: np.timedelta64(12, "h"), MEMBER: 2}).all())


def test_memory_archive_has_the_zarr_layout(tmp_path, extents, coords):
    fields = _fields(coords, seed=1)
    memory, on_disk = (
        MemoryArchive(**extents, attrs={"seed": 1}),
        ZarrArchive(tmp_path / "a.zarr", **extents, attrs={"seed": 1}),
    )
    for archive in (memory, on_disk):
        _write_all(archive, coords, fields)
    assert memory.finalize() == "memory"
    xr.testing.assert_identical(memory.dataset, open_archive(on_disk.finalize()).load())


def test_rerun_replaces_the_archive_and_leaves_no_temporaries(tmp_path, extents, coords):
    path = tmp_path / "run.zarr"
    for seed in (0, 1):
        archive = ZarrArchive(path, **extents, attrs={"seed": seed})
        _write_all(archive, coords, _fields(coords, seed))
        archive.finalize()
    ds = open_archive(path)
    assert ds.attrs["seed"] == 1
    np.testing.assert_array_equal(ds["z500"].values, _expected(_fields(coords, 1), 0))
    assert [p.name for p in tmp_path.iterdir()] == ["run.zarr"]


def test_a_failed_run_keeps_the_previous_archive(tmp_path, extents, coords):
    path = tmp_path / "run.zarr"
    first = ZarrArchive(path, **extents)
    _write_all(first, coords, _fields(coords, 0))
    first.finalize()
    with pytest.raises(RuntimeError, match="crash"), ZarrArchive(path, **extents) as second:
        _write_all(second, coords, _fields(coords, 1))
        raise RuntimeError("crash")
    np.testing.assert_array_equal(open_archive(path)["z500"].values, _expected(_fields(coords, 0), 0))
    assert [p.name for p in tmp_path.iterdir()] == ["run.zarr"]


def test_open_refuses_an_unfinalised_archive(tmp_path, extents, coords):
    archive = ZarrArchive(tmp_path / "run.zarr", **extents)
    _write_all(archive, coords, _fields(coords, 0))
    with pytest.raises(ArchiveError, match=f"is unfinished: {archive.partial_path} was never committed"):
        open_archive(tmp_path / "run.zarr")
    with pytest.raises(ArchiveError, match="never finalised"):
        open_archive(archive.partial_path)
    partial = open_archive(archive.partial_path, allow_partial=True)
    assert "complete" not in partial.attrs
    archive.discard()
    assert list(tmp_path.iterdir()) == []


def test_unwritten_fields_read_as_nan(extents, coords):
    archive = MemoryArchive(**extents)
    assert bool(archive.dataset["z500"].isnull().all())


def test_open_refuses_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="not a readable Zarr v3 store"):
        open_archive(tmp_path / "empty")


def _one_write(coords, **override):
    write_coords = {
        INIT_TIME: INIT_TIMES[:1],
        LEAD_TIME: LEAD_TIMES[:1],
        MEMBER: np.array([0, 1]),
        **coords,
    }
    write_coords.update(override)
    shape = tuple(len(write_coords[d]) for d in (MEMBER, CHANNEL, LAT, LON))
    return np.zeros(shape, dtype=np.float32), write_coords


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({LEAD_TIME: np.array([np.timedelta64(18, "h")])}, "lead_time labels .* not in the archive"),
        (
            {INIT_TIME: np.array(["2021-01-01"], dtype="datetime64[ns]")},
            "init_time labels .* not in the archive",
        ),
        ({MEMBER: np.array([3, 4])}, r"member labels \[4\] are not in the archive"),
        ({CHANNEL: np.array(["z500", "t850"])}, r"lacks archive variables \['u500'\]"),
        ({LAT: np.linspace(80, -80, 9)}, "the write is on another grid than the archive: expected lat of"),
        ({INIT_TIME: INIT_TIMES}, "exactly one init_time"),
    ],
)
def test_bad_writes_are_refused(extents, coords, override, message):
    x, write_coords = _one_write(coords, **override)
    with pytest.raises(ArchiveError, match=message):
        MemoryArchive(**extents).write(x, write_coords)


def test_shape_mismatch_is_refused(extents, coords):
    x, write_coords = _one_write(coords)
    with pytest.raises(ArchiveError, match=r"expected x of shape .* found \(2, 2, 9\)"):
        MemoryArchive(**extents).write(x[..., 0], write_coords)


def test_writing_after_finalize_is_refused(tmp_path, extents, coords):
    archive = ZarrArchive(tmp_path / "run.zarr", **extents)
    archive.finalize()
    with pytest.raises(ArchiveError, match="already finalised"):
        archive.write(*_one_write(coords))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"variables": ["z500", "geopotential"]}, "lexicon ids"),
        ({"n_members": 0}, "at least 1 member"),
        ({"lead_times": np.array([0, 6, 6], dtype="timedelta64[h]")}, "distinct lead_time"),
        ({"lead_times": np.array([-6, 0], dtype="timedelta64[h]")}, "non-negative lead times"),
    ],
)
def test_bad_extents_are_refused(extents, override, message):
    with pytest.raises(ArchiveError, match=message):
        ArchiveLayout.build(**{**extents, **override})


def test_bad_construction_leaves_nothing_behind(tmp_path, extents):
    with pytest.raises(ArchiveError, match="JSON-serialisable"):
        ZarrArchive(tmp_path / "run.zarr", **extents, attrs={"when": object()})
    assert list(tmp_path.iterdir()) == []


def _snapshot(path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def not_an_archive(tmp_path, store_paths):
    """``make(kind)``: a copy of the training or climatology store, a folder or a file, in ``tmp_path``."""
    import shutil

    def make(kind: str):
        path = tmp_path / f"{kind}.zarr"
        if kind in ("training", "climatology"):
            shutil.copytree(store_paths[0 if kind == "training" else 1], path)
        elif kind == "folder":
            path.mkdir()
            (path / "notes.txt").write_text("my results")
        else:
            path.write_text("my results")
        return path

    return make


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("training", r"a fourcast training store \(arrays \[.*'data'.*'mean'.*'std'"),
        ("climatology", r"a fourcast climatology store \(arrays \[.*'climatology'"),
        ("folder", r"a folder that is not a Zarr v3 store \(1 entries\)"),
        ("file", r"a file of 10 bytes"),
    ],
)
def test_only_a_forecast_archive_is_ever_replaced(not_an_archive, extents, coords, kind, what):
    path = not_an_archive(kind)
    before = _snapshot(path)
    with pytest.raises(
        ArchiveError,
        match=f"refusing to replace {path}: it is {what}.*not a fourcast forecast "
        "archive .*choose another archive path",
    ):
        ZarrArchive(path, **extents)
    assert _snapshot(path) == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_forecast_archive_is_marked_and_the_marker_is_reserved(tmp_path, extents, coords):
    archive = ZarrArchive(tmp_path / "a.zarr", **extents)
    _write_all(archive, coords, _fields(coords, 0))
    assert open_archive(archive.finalize()).attrs["fourcast_forecast_archive"] == 1
    with pytest.raises(ArchiveError, match=r"attributes \['fourcast_forecast_archive'\] are reserved"):
        ZarrArchive(tmp_path / "b.zarr", **extents, attrs={"fourcast_forecast_archive": 2})
