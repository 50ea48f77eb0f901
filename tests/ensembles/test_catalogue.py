"""The forecast-archive catalogue: publish atomically and idempotently, holds, retention, bad locations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import xarray as xr

from ensembles.archive import ZarrArchive, open_archive
from ensembles.catalogue import DELETED, PUBLISHED, REDUCED, Catalogue, CatalogueError, metadata_checksum
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER

LEADS = np.array([0, 6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")
MEMBERS = 3


def _archive(path: Path, coords, init: str, seed: int = 0, attrs: dict | None = None) -> Path:
    """A finalised 1-init archive of random fields, with lineage ``attrs``."""
    inits = np.array([init], dtype="datetime64[ns]")
    archive = ZarrArchive(
        path,
        ["z500", "u500"],
        inits,
        LEADS,
        MEMBERS,
        coords[LAT],
        coords[LON],
        attrs={
            "model": "models:/fourcast-afno-tiny/1",
            "model_name": "fourcast-afno-tiny",
            "model_version": "1",
            "forecast_run_id": f"run{seed}",
            **(attrs or {}),
        },
    )
    fields = (
        np.random.default_rng(seed)
        .standard_normal((LEADS.size, MEMBERS, coords[CHANNEL].size, coords[LAT].size, coords[LON].size))
        .astype(np.float32)
    )
    for j, lead in enumerate(LEADS):
        archive.write(
            fields[j], {INIT_TIME: inits, LEAD_TIME: np.array([lead]), MEMBER: np.arange(MEMBERS), **coords}
        )
    archive.finalize()
    return path


@pytest.fixture
def catalogue(tmp_path) -> Catalogue:
    return Catalogue(f"sqlite:///{tmp_path / 'catalogue.db'}")


def test_publish_records_the_archive_once_with_its_lineage(catalogue, tmp_path, coords):
    path = _archive(tmp_path / "a.zarr", coords, "2001-01-01T00")
    entry = catalogue.publish(path, cycle_point="2001-01-01T00", holds=["score"])
    again = catalogue.publish(path, cycle_point="2001-01-01T00", holds=["score"])  # a restarted task
    assert again == entry and len(catalogue.entries()) == 1
    assert (entry.model_name, entry.model_version, entry.members) == ("fourcast-afno-tiny", "1", MEMBERS)
    assert entry.lead_hours == [0, 6, 12] and entry.variables == ["u500", "z500"]
    assert entry.first_init == entry.last_init == "2001-01-01T00:00:00"
    assert entry.metadata_sha256 == metadata_checksum(path) and entry.bytes > 0
    assert entry.lineage["forecast_run_id"] == entry.forecast_run_id == "run0"
    assert entry.holds == ("score",) and entry.status == PUBLISHED
    catalogue.release(entry.id, "score", score_run_id="s1")
    assert catalogue.get(path).holds == () and catalogue.get(entry.id).score_run_ids == ["s1"]


def test_an_unfinished_archive_is_never_published(catalogue, tmp_path, coords):
    inits = np.array(["2001-01-01T00"], dtype="datetime64[ns]")
    ZarrArchive(tmp_path / "u.zarr", ["z500"], inits, LEADS, MEMBERS, coords[LAT], coords[LON])
    with pytest.raises(CatalogueError, match="only a finalised archive can be published"):
        catalogue.publish(tmp_path / "u.zarr")
    assert catalogue.entries() == []


def test_a_replaced_archive_is_refused_under_the_same_path(catalogue, tmp_path, coords):
    path = _archive(tmp_path / "a.zarr", coords, "2001-01-01T00")
    catalogue.publish(path)
    import shutil

    shutil.rmtree(path)
    _archive(path, coords, "2001-01-02T00", seed=1)
    with pytest.raises(CatalogueError, match="the archive was replaced"):
        catalogue.publish(path)


def test_prune_reduces_then_deletes_by_age_and_leaves_held_archives_alone(catalogue, tmp_path, coords):
    days = ["2001-01-01T00", "2001-01-03T00", "2001-01-04T00", "2001-01-05T00", "2001-01-06T00"]
    entries = [
        catalogue.publish(_archive(tmp_path / f"{d[:10]}.zarr", coords, d, seed=i))
        for i, d in enumerate(days)
    ]
    catalogue.hold(entries[1].id, "score@2001-01-06T00")
    dry = catalogue.prune(keep_members_days=1, delete_after_days=3, dry_run=True)
    assert [(e.id, what) for e, what in dry] == [(entries[0].id, "delete"), (entries[2].id, "reduce")]
    assert all(e.status == PUBLISHED for e in catalogue.entries())
    catalogue.prune(keep_members_days=1, delete_after_days=3)
    status = {e.first_init[:13]: e for e in catalogue.entries()}
    assert status["2001-01-01T00"].status == DELETED and not Path(entries[0].path).exists()
    assert status["2001-01-03T00"].status == PUBLISHED  # held by an unfinished score: untouched
    assert status["2001-01-03T00"].metadata_sha256 == entries[1].metadata_sha256
    reduced = status["2001-01-04T00"]
    assert reduced.status == REDUCED and reduced.bytes < entries[2].bytes
    mean = xr.open_zarr(reduced.path, consolidated=False)
    assert MEMBER not in mean.dims and mean.attrs["model_version"] == "1"
    members = open_archive(Path(entries[3].path))  # newer ones keep their members
    np.testing.assert_allclose(
        mean["z500"].values, _member_mean(tmp_path, coords, days[2], 2), rtol=1e-6, atol=1e-6
    )
    assert members.sizes[MEMBER] == MEMBERS
    assert status["2001-01-05T00"].status == status["2001-01-06T00"].status == PUBLISHED


def _member_mean(tmp_path: Path, coords, init: str, seed: int) -> np.ndarray:
    return (
        open_archive(_archive(tmp_path / "again.zarr", coords, init, seed=seed))["z500"].mean(MEMBER).values
    )


def test_a_catalogue_that_cannot_be_written_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(
        CatalogueError, match=f"catalogue {blocker}/cat.db cannot be written: {blocker} is a file"
    ):
        Catalogue(f"sqlite:///{blocker}/cat.db")
    with pytest.raises(CatalogueError, match="cannot be written"):
        Catalogue("sqlite:////proc/fourcast-catalogue.db")


def test_the_schema_is_plain_sql(catalogue, tmp_path, coords):
    """Any SQLAlchemy reader (a shared PostgreSQL, a notebook) sees the published rows."""
    catalogue.publish(_archive(tmp_path / "a.zarr", coords, "2001-01-01T00"))
    with sa.create_engine(catalogue.url).connect() as db:
        rows = db.execute(sa.text("select model_version, status from archives")).all()
    assert rows == [("1", PUBLISHED)]
