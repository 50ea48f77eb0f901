"""The forecast-archive catalogue: which archives exist, what made them, and how long they are kept.

One row per published archive (init times, model name and version, members, leads, variables,
path, bytes, a checksum of its metadata, lineage, MLflow run ids) in a database reached through
an SQLAlchemy URL: a SQLite file by default, a shared PostgreSQL unchanged. Publishing is one
transaction on a finalised archive, so a reader sees an archive completely or not at all.
Holds name the tasks (e.g. a score waiting for its truth) that still need an archive; retention
(:func:`prune`) never touches a held archive.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import xarray as xr
from sqlalchemy.exc import IntegrityError, OperationalError

from ensembles.archive import open_archive
from ensembles.errors import EnsembleError
from ingest.atomic import atomic_output


class CatalogueError(EnsembleError):
    """The catalogue cannot be opened or written, or an archive is not what the catalogue expects."""


PUBLISHED, REDUCED, DELETED = "published", "reduced", "deleted"

_META = sa.MetaData()
ARCHIVES = sa.Table(
    "archives",
    _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String(1024), nullable=False, unique=True),
    sa.Column("cycle_point", sa.String(32), nullable=True),
    sa.Column("first_init", sa.String(32), nullable=False),
    sa.Column("last_init", sa.String(32), nullable=False),
    sa.Column("model", sa.String(1024), nullable=False),
    sa.Column("model_name", sa.String(256), nullable=True),
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("members", sa.Integer, nullable=False),
    sa.Column("lead_hours", sa.Text, nullable=False),  # JSON list of int
    sa.Column("variables", sa.Text, nullable=False),  # JSON list of str
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("metadata_sha256", sa.String(64), nullable=False),
    sa.Column("lineage", sa.Text, nullable=False),  # JSON object: the archive's attributes
    sa.Column("forecast_run_id", sa.String(64), nullable=True),
    sa.Column("score_run_ids", sa.Text, nullable=False, default="[]"),  # JSON list
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("published_at", sa.String(32), nullable=False),
    sa.Column("pruned_at", sa.String(32), nullable=True),
)
HOLDS = sa.Table(
    "holds",
    _META,
    sa.Column("archive_id", sa.Integer, sa.ForeignKey("archives.id"), primary_key=True),
    sa.Column("holder", sa.String(256), primary_key=True),
    sa.Column("created_at", sa.String(32), nullable=False),
)


@dataclass(frozen=True)
class Entry:
    """One catalogued archive (a row of ``archives``), with the holders that still need it."""

    id: int
    path: str
    cycle_point: str | None
    first_init: str
    last_init: str
    model: str
    model_name: str | None
    model_version: str | None
    members: int
    lead_hours: list[int]
    variables: list[str]
    bytes: int
    metadata_sha256: str
    lineage: dict
    forecast_run_id: str | None
    score_run_ids: list[str]
    status: str
    published_at: str
    pruned_at: str | None
    holds: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def default_url(workdir: Path) -> str:
    """The SQLite catalogue inside a work directory."""
    return f"sqlite:///{(Path(workdir) / 'catalogue.db').resolve()}"


def _sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _require_writable_sqlite(database: Path) -> None:
    """Raise :class:`CatalogueError` unless the SQLite file (or the folder it will be created in) can be
    written."""
    existing = next(p for p in (database.parent, *database.parent.parents) if p.exists())
    if not existing.is_dir():
        raise CatalogueError(f"catalogue {database} cannot be written: {existing} is a file, not a folder")
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with open(database, "ab"):
            pass
    except OSError as err:
        raise CatalogueError(f"catalogue {database} cannot be written: {err.strerror}") from err


class Catalogue:
    """The archives catalogue at an SQLAlchemy ``url`` (tables created on first use).

    Parameters
    ----------
    url : str
        ``sqlite:////abs/path/catalogue.db`` (default of a workdir: :func:`default_url`) or any
        SQLAlchemy URL, e.g. ``postgresql+psycopg://host/db``.

    Raises
    ------
    CatalogueError
        If the database cannot be created or written.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        database = _sqlite_file(url)
        if database is not None:
            _require_writable_sqlite(database)
        args = {"timeout": 60} if database is not None else {}
        self.engine = sa.create_engine(url, connect_args=args)
        try:
            _META.create_all(self.engine)
        except OperationalError as err:
            raise CatalogueError(f"cannot open the catalogue {url}: {err.orig}") from err

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except OperationalError as err:
            raise CatalogueError(f"catalogue {self.url} cannot be written: {err.orig}") from err

    def publish(self, archive: Path, cycle_point: str | None = None, holds: Sequence[str] = ()) -> Entry:
        """Record a finalised archive (idempotent: publishing the same archive again returns its entry).

        Parameters
        ----------
        archive : pathlib.Path
            A finalised forecast archive (:func:`ensembles.archive.open_archive`).
        cycle_point : str, optional
            The workflow cycle point that produced it.
        holds : sequence of str
            Holders that need the archive kept as it is until they :meth:`release` it.

        Raises
        ------
        CatalogueError
            If the archive is not finalised, or its path is catalogued with other contents.
        """
        archive = Path(archive).resolve()
        try:
            forecasts = open_archive(archive)
        except (EnsembleError, OSError, ValueError) as err:
            raise CatalogueError(f"only a finalised archive can be published; {archive}: {err}") from err
        row = _row(archive, forecasts, cycle_point)
        with self._transaction() as db:
            existing = (
                db.execute(sa.select(ARCHIVES).where(ARCHIVES.c.path == row["path"])).mappings().first()
            )
            if existing is None:
                try:
                    archive_id = db.execute(ARCHIVES.insert().values(**row)).inserted_primary_key[0]
                except IntegrityError:  # another publisher of the same path won the race
                    archive_id = None
            else:
                if existing["metadata_sha256"] != row["metadata_sha256"] and existing["status"] == PUBLISHED:
                    raise CatalogueError(
                        f"{archive} is catalogued (id {existing['id']}) with metadata checksum "
                        f"{existing['metadata_sha256'][:12]}, found {row['metadata_sha256'][:12]}: "
                        "the archive was replaced; publish it under another path"
                    )
                archive_id = existing["id"]
        if archive_id is None:
            return self.publish(archive, cycle_point, holds)
        for holder in holds:
            self.hold(archive_id, holder)
        return self.get(archive_id)

    def hold(self, archive_id: int, holder: str) -> None:
        """Keep archive ``archive_id`` from retention until ``holder`` releases it."""
        with self._transaction() as db:
            exists = db.execute(
                sa.select(HOLDS).where(HOLDS.c.archive_id == archive_id, HOLDS.c.holder == holder)
            ).first()
            if exists is None:
                db.execute(HOLDS.insert().values(archive_id=archive_id, holder=holder, created_at=_now()))

    def release(self, archive_id: int, holder: str, score_run_id: str | None = None) -> None:
        """Drop ``holder``'s hold on the archive, recording the score run that used it."""
        with self._transaction() as db:
            db.execute(HOLDS.delete().where(HOLDS.c.archive_id == archive_id, HOLDS.c.holder == holder))
            if score_run_id:
                row = db.execute(
                    sa.select(ARCHIVES.c.score_run_ids).where(ARCHIVES.c.id == archive_id)
                ).first()
                runs = json.loads(row[0]) if row else []
                if score_run_id not in runs:
                    db.execute(
                        ARCHIVES.update()
                        .where(ARCHIVES.c.id == archive_id)
                        .values(score_run_ids=json.dumps([*runs, score_run_id]))
                    )

    def entries(self, status: str | None = None) -> list[Entry]:
        """Every catalogued archive (or those of ``status``), by first init time then id."""
        query = sa.select(ARCHIVES).order_by(ARCHIVES.c.first_init, ARCHIVES.c.id)
        if status is not None:
            query = query.where(ARCHIVES.c.status == status)
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
            holds = db.execute(sa.select(HOLDS)).mappings().all()
        held: dict[int, list[str]] = {}
        for hold in holds:
            held.setdefault(hold["archive_id"], []).append(hold["holder"])
        return [_entry(row, held.get(row["id"], [])) for row in rows]

    def get(self, key: int | str | Path) -> Entry:
        """The entry of an id, or of an archive path.

        Raises
        ------
        CatalogueError
            If nothing of that id or path is catalogued.
        """
        for entry in self.entries():
            if (isinstance(key, int) or str(key).isdigit()) and entry.id == int(key):
                return entry
            if not str(key).isdigit() and entry.path == str(Path(key).resolve()):
                return entry
        raise CatalogueError(f"no archive {key!r} in the catalogue {self.url}")

    def prune(
        self,
        keep_members_days: float,
        delete_after_days: float,
        now: np.datetime64 | None = None,
        dry_run: bool = False,
    ) -> list[tuple[Entry, str]]:
        """Apply the retention policy; returns ``(entry, action)`` for each archive acted on.

        Ages are measured from the last init time of each archive to ``now`` (default: the
        newest init time in the catalogue, the cycle's "today" in a hindcast). Older than
        ``keep_members_days``: the members are replaced by the ensemble mean (``reduced``);
        older than ``delete_after_days``: the archive is deleted (the row stays, ``deleted``,
        for lineage). Held archives are left alone.
        """
        if delete_after_days < keep_members_days:
            raise CatalogueError(
                f"delete_after_days ({delete_after_days}) must be >= keep_members_days ({keep_members_days})"
            )
        entries = [e for e in self.entries() if e.status != DELETED]
        if not entries:
            return []
        now = (
            np.datetime64(now, "s")
            if now is not None
            else max(np.datetime64(e.last_init, "s") for e in entries)
        )
        actions = []
        for entry in entries:
            age_days = (now - np.datetime64(entry.last_init, "s")) / np.timedelta64(1, "D")
            action = (
                "delete"
                if age_days > delete_after_days
                else "reduce"
                if age_days > keep_members_days and entry.status == PUBLISHED
                else None
            )
            if action is None or entry.holds:
                continue
            if not dry_run:
                self._delete(entry) if action == "delete" else self._reduce(entry)
            actions.append((entry, action))
        return actions

    def _reduce(self, entry: Entry) -> None:
        path = Path(entry.path)
        forecasts = xr.open_zarr(path, consolidated=False)
        mean = forecasts.mean("member", keep_attrs=True).astype(np.float32)
        mean.attrs.update(retention="ensemble mean only (members pruned)", members_pruned=entry.members)
        for variable in mean.variables.values():  # chunks and codecs of the member layout do not fit the mean
            variable.encoding = {}
        with atomic_output(path) as tmp:
            mean.to_zarr(tmp, zarr_format=3, consolidated=False)
        with self._transaction() as db:
            db.execute(
                ARCHIVES.update()
                .where(ARCHIVES.c.id == entry.id)
                .values(
                    status=REDUCED,
                    bytes=_bytes(path),
                    metadata_sha256=metadata_checksum(path),
                    pruned_at=_now(),
                )
            )

    def _delete(self, entry: Entry) -> None:
        with self._transaction() as db:
            db.execute(
                ARCHIVES.update()
                .where(ARCHIVES.c.id == entry.id)
                .values(status=DELETED, bytes=0, pruned_at=_now())
            )
        shutil.rmtree(entry.path, ignore_errors=True)


def metadata_checksum(path: Path) -> str:
    """SHA-256 over the Zarr metadata documents (``zarr.json``) of an archive, in path order."""
    digest = hashlib.sha256()
    for doc in sorted(Path(path).rglob("zarr.json")):
        digest.update(str(doc.relative_to(path)).encode())
        digest.update(doc.read_bytes())
    return digest.hexdigest()


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _iso(value: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(value, "s"), unit="s"))


def _row(archive: Path, forecasts: xr.Dataset, cycle_point: str | None) -> dict:
    inits = forecasts["init_time"].values
    leads = forecasts["lead_time"].values.astype("timedelta64[ns]") / np.timedelta64(1, "h")
    attrs = dict(forecasts.attrs)
    return {
        "path": str(archive),
        "cycle_point": cycle_point,
        "first_init": _iso(inits.min()),
        "last_init": _iso(inits.max()),
        "model": str(attrs.get("model", "")),
        "model_name": attrs.get("model_name") or None,
        "model_version": attrs.get("model_version") or None,
        "members": int(forecasts.sizes.get("member", 0)),
        "lead_hours": json.dumps([int(h) for h in leads]),
        "variables": json.dumps(sorted(str(v) for v in forecasts.data_vars)),
        "bytes": _bytes(archive),
        "metadata_sha256": metadata_checksum(archive),
        "lineage": json.dumps(attrs, default=str, sort_keys=True),
        "forecast_run_id": attrs.get("forecast_run_id") or None,
        "score_run_ids": "[]",
        "status": PUBLISHED,
        "published_at": _now(),
        "pruned_at": None,
    }


def _entry(row, holds: list[str]) -> Entry:
    values = dict(row)
    for key in ("lead_hours", "variables", "lineage", "score_run_ids"):
        values[key] = json.loads(values[key] or "null")
    return Entry(**values, holds=tuple(sorted(holds)))


def catalogue_location(url: str) -> str:
    """Where the catalogue lives, for messages: the SQLite file, or the URL without its password."""
    database = _sqlite_file(url)
    return str(database) if database is not None else sa.make_url(url).render_as_string(hide_password=True)


__all__ = [
    "ARCHIVES",
    "DELETED",
    "HOLDS",
    "PUBLISHED",
    "REDUCED",
    "Catalogue",
    "CatalogueError",
    "Entry",
    "catalogue_location",
    "default_url",
    "metadata_checksum",
]
