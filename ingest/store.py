"""Write the training store (and the climatology store) from lazily opened ERA5 fields, with Dask.

A build runs in four steps, anemoi-datasets style (init / load / finalise), and survives being
killed at any point:

1. **plan**: the times, channels, grid and layout of the store to write, hashed into a
   fingerprint. A store already at ``path`` is *extended*: only times after its last one are
   new. Times it already holds are compared, in one Dask pass, by the checksum of each step's
   values (:func:`step_checksums`, recorded in the store's ``checksums`` group) with the
   input's: the shards holding steps that differ (final ERA5 replacing ERA5T) are *replaced*,
   written again from the input like new ones. A run that brings no new or changed times
   touches nothing, unless the store's statistics were taken over another period than the one
   asked for: then the store is planned again with no new times (every complete shard linked),
   so that finalising recomputes the statistics and the climatology over the new period.
2. **init**: an empty store (array metadata and coordinates, no chunks) is created in the hidden
   sibling ``.NAME.building``; the plan goes into the sibling ``.NAME.progress/plan.json``. When
   extending, every *complete* shard of the existing store but the replaced ones is hard-linked
   into it (no bytes are rewritten; zarr replaces files by rename, so the links are never
   written through) and counted as done.
3. **load**: one Dask task per shard writes that shard's whole region with zarr and, while the
   shard is in memory, reduces it to its partial statistics (:class:`~ingest.statistics.Partials`:
   Chan/Welford moments of the fields and of the tendencies inside the shard, over the
   training period), then drops a completion record ``.NAME.progress/done/<shard>`` holding
   them. Shards hold disjoint time ranges, so parallel writers never touch the same file. All
   the tasks go to Dask in one compute, so an input chunk that feeds two shards is read once.
   A re-run with the same plan skips every shard with a record; a plan that differs discards
   the leftovers and starts over.
4. **finalise**: the tendencies that cross a shard boundary are taken from the ``lag`` steps on
   either side of it (read back from the written shards: a few chunks per shard), the partial
   states are merged once, in shard order, and the statistics are written with the store
   attributes; the per-shard states go into the store's ``partial_statistics`` group, so an
   extension over the same period only reduces its new shards (a shard linked from a store
   without them, or recorded over another period, is reduced from its bytes). The climatology
   store, if asked for, is the one step that reads the training period again. Then a ``complete``
   record is dropped, and ``.NAME.building`` is renamed onto ``NAME``. A run that finds a
   ``complete`` record only finishes that rename.

So ``NAME`` is always either absent, the old complete store, or the new complete store, and a
killed build re-run writes exactly the bytes of an uninterrupted one (shards are written whole
from the same inputs with deterministic codecs; the partial statistics are recorded as exact
floats and merged in shard order). Errors of the input itself
(:class:`~ingest.errors.IngestError`) discard the leftovers, since a re-run would fail the same
way; anything else (a kill, an I/O error) keeps them for the re-run to resume. One build per
store at a time: a build holds the store's lock (:func:`ingest.locks.exclusive_lock`, the file
``.NAME.lock``) from start to end, and a second one is refused with the holder's name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr
from dask.delayed import Delayed
from zarr.codecs import BloscCodec, ZstdCodec

from ingest.atomic import atomic_output, discard, replace_path
from ingest.climatology import compute_climatology, write_climatology
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import IngestError, StoreGridError, StoreSchemaError
from ingest.grid import check_coords
from ingest.lexicon import get_variable
from ingest.locks import exclusive_lock
from ingest.progress import progress as progress_of
from ingest.readers import open_sources  # noqa: F401  (re-exported: the store's usual input)
from ingest.schema import (
    CF_COORDINATE_ATTRS,
    DATA,
    MEAN,
    STATS_END,
    STATS_START,
    STD,
    STEP_HOURS,
    consolidate,
    open_store,
    write_cf_attributes,
)
from ingest.statistics import (
    Moments,
    Partials,
    StatsWindow,
    block_partials,
    choose_default_period,
    incoming_span,
    incoming_tendency,
    merge_partials,
    statistics_dataset,
)

log = logging.getLogger(__name__)

COMPRESSORS = ("none", "zstd", "blosc")
_PLAN_VERSION = 1
#: Group of the store holding the checksum of every time step's values (``steps``: ``[time]`` uint64).
CHECKSUMS = "checksums"
#: Group of the store holding each shard's partial statistics (``fields``, ``tendency``:
#: ``[shard, moment, channel]`` float64, moments ``count, mean, m2, minimum, maximum``).
PARTIALS = "partial_statistics"


@dataclass(frozen=True)
class StoreLayout:
    """How the ``data`` array is cut into chunks and shards.

    Attributes
    ----------
    shard_steps : int
        Time steps per shard (one file per shard); each chunk inside holds one time step.
    compressor : {"none", "zstd", "blosc"}
        Codec applied to every chunk.
    """

    shard_steps: int = 64
    compressor: str = "zstd"

    def __post_init__(self) -> None:
        if self.shard_steps < 1:
            raise StoreSchemaError(f"shard_steps must be >= 1, found {self.shard_steps}")
        if self.compressor not in COMPRESSORS:
            raise StoreSchemaError(f"compressor must be one of {COMPRESSORS}, found {self.compressor!r}")

    def compressors(self) -> tuple:
        """Zarr v3 codecs for the chosen compressor."""
        return {"none": (), "zstd": (ZstdCodec(level=3),), "blosc": (BloscCodec(cname="zstd", clevel=3),)}[
            self.compressor
        ]


@dataclass(frozen=True)
class StatsPeriod:
    """Inclusive date range the statistics and the climatology are computed on.

    ``StatsPeriod.default(times)`` leaves the last years out, or fits a short record
    (:func:`ingest.statistics.choose_default_period`), and records why in the provenance.
    ``remedy`` ends the message refusing a period of fewer than two steps (callers name the
    setting it came from).
    """

    start: np.datetime64
    end: np.datetime64
    provenance: dict = field(default_factory=dict)
    remedy: str = "give a statistics period of at least 2 time steps inside the data"

    @classmethod
    def default(
        cls, times: np.ndarray, leave_out_years: int = 3, provenance: dict | None = None
    ) -> StatsPeriod:
        start, end, reason = choose_default_period(times, leave_out_years)
        log.info("statistics period %s..%s (default: %s)", start, end, reason)
        return cls(start, end, {"stats_period_default": reason, **(provenance or {})})


@dataclass(frozen=True)
class BuildPaths:
    """The store and the hidden siblings a build of it works in."""

    store: Path

    @property
    def building(self) -> Path:
        return self.store.with_name(f".{self.store.name}.building")

    @property
    def progress(self) -> Path:
        return self.store.with_name(f".{self.store.name}.progress")

    @property
    def plan(self) -> Path:
        return self.progress / "plan.json"

    @property
    def complete(self) -> Path:
        return self.progress / "complete"

    def done(self, shard: int) -> Path:
        return self.progress / "done" / str(shard)


@dataclass(frozen=True)
class _Plan:
    """What a build writes: the full ``data`` (old and new steps) and which shards are new."""

    data: xr.DataArray
    first_new_step: int
    layout: StoreLayout
    fingerprint: str
    window: StatsWindow | None = None
    replaced: tuple[int, ...] = ()

    @property
    def shard_count(self) -> int:
        return -(-self.data.sizes[TIME] // self.layout.shard_steps)

    def shard_region(self, shard: int) -> tuple[int, int]:
        start = shard * self.layout.shard_steps
        return start, min(start + self.layout.shard_steps, self.data.sizes[TIME])


def check_times(times: np.ndarray, where: str = "input") -> np.timedelta64:
    """Return the step of ``times``, checked to be increasing, unique and evenly spaced."""
    times = np.asarray(times)
    if times.size < 2:
        raise StoreSchemaError(f"{where}: expected at least 2 time steps, found {times.size}")
    steps = np.diff(times)
    if np.any(steps <= np.timedelta64(0)):
        bad = times[1:][steps <= np.timedelta64(0)]
        raise StoreSchemaError(
            f"{where}: expected increasing unique times; found repeated or unsorted {bad[:5]}"
        )
    unique = np.unique(steps)
    if unique.size != 1:
        raise StoreSchemaError(
            f"{where}: expected evenly spaced times, found steps {unique.astype('timedelta64[h]')}"
        )
    return unique[0]


def _hours(step: np.timedelta64) -> int:
    return int(step / np.timedelta64(1, "h"))


def _fingerprint(data: xr.DataArray, first_new_step: int, layout: StoreLayout, replacing: str = "") -> str:
    description = {
        "version": _PLAN_VERSION,
        "times": [str(data[TIME].values[0]), str(data[TIME].values[-1]), data.sizes[TIME]],
        "channels": [str(c) for c in data[CHANNEL].values],
        "first_new_step": first_new_step,
        "grid": hashlib.sha256(
            np.ascontiguousarray(
                np.concatenate([data[LAT].values, data[LON].values]), dtype=np.float64
            ).tobytes()
        ).hexdigest(),
        "layout": [layout.shard_steps, layout.compressor],
        "dtype": str(data.dtype),
        "replacing": replacing,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _new_part(existing: xr.Dataset, data: xr.DataArray, path: Path) -> xr.DataArray:
    """The steps of ``data`` after the existing store's last one, checked to continue it."""
    old = existing[DATA]
    if list(old[CHANNEL].values) != list(data[CHANNEL].values):
        raise StoreSchemaError(
            f"{path} holds channels {list(old[CHANNEL].values)}; the new data has "
            f"{list(data[CHANNEL].values)}; build a new store to change channels"
        )
    check_coords(
        old.coords, data.coords, (LAT, LON), what="the new data", reference=str(path), error=StoreGridError
    )
    old_times, new_times = old[TIME].values, data[TIME].values
    last, step = old_times[-1], np.timedelta64(int(existing.attrs[STEP_HOURS]), "h")
    overlap = new_times[new_times <= last]
    absent = overlap[~np.isin(overlap, old_times)]
    if absent.size:
        raise StoreSchemaError(
            f"{path} covers {old_times[0]}..{last} without the times {absent[:5]}; "
            f"a store is only extended at its end"
        )
    new = data.sel({TIME: new_times[new_times > last]})
    if new.sizes[TIME] and new[TIME].values[0] != last + step:
        raise StoreSchemaError(
            f"{path} ends at {last}; the new data starts at {new[TIME].values[0]}, "
            f"leaving a gap (expected {last + step})"
        )
    return new


def step_checksums(block: np.ndarray) -> np.ndarray:
    """A 64-bit BLAKE2b checksum of each time step's values; ``block`` is ``(time, ...)``, C order."""
    block = np.ascontiguousarray(block)
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(memoryview(step).cast("B"), digest_size=8).digest(), "little")
            for step in block
        ],
        dtype=np.uint64,
    )


def _lazy_checksums(data: xr.DataArray) -> dask.array.Array:
    """:func:`step_checksums` of every step of ``data`` (whole steps per chunk), lazily."""
    return data.data.map_blocks(step_checksums, drop_axis=[1, 2, 3], dtype=np.uint64)


def _stored_checksums(path: Path, existing: xr.Dataset, steps: np.ndarray):
    """The checksums recorded for ``steps`` of the store, or those of its values (older stores)."""
    recorded = _stored_step_checksums(path)
    if recorded is not None:
        return recorded[steps]
    return _lazy_checksums(
        existing[DATA].isel({TIME: steps}).chunk({TIME: 64, CHANNEL: -1, LAT: -1, LON: -1})
    )


def _changed_steps(existing: xr.Dataset, data: xr.DataArray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Steps of the store whose values differ in ``data``, and their new checksums (one Dask pass).

    Only ``data``'s times that the store holds are compared, checksum against checksum.
    """
    old_times = existing[TIME].values
    overlap = data.sel({TIME: data[TIME].values[data[TIME].values <= old_times[-1]]})
    steps = np.flatnonzero(np.isin(old_times, overlap[TIME].values))
    if steps.size == 0:
        return steps, np.zeros(0, np.uint64)
    source, stored = dask.compute(_lazy_checksums(overlap), _stored_checksums(path, existing, steps))
    differs = np.asarray(source) != np.asarray(stored)
    return steps[differs], np.asarray(source)[differs]


def _with_source_values(old: xr.DataArray, data: xr.DataArray, steps: np.ndarray) -> xr.DataArray:
    """The store's ``old`` values with ``data``'s at ``steps`` (indices into ``old``)."""
    replacing = np.zeros(old.sizes[TIME], dtype=bool)
    replacing[steps] = True
    source = data.reindex({TIME: old[TIME].values})
    return xr.where(xr.DataArray(replacing, dims=TIME), source, old).transpose(*old.dims).astype(old.dtype)


def _plan(data: xr.DataArray, path: Path, layout: StoreLayout, restatistics: bool = False) -> _Plan | None:
    """What to write, or ``None`` when the store at ``path`` already holds every time of ``data``, unchanged.

    Times of ``data`` the store holds with other values (a final ERA5 release replacing
    ERA5T) make their shards *replaced*: written again from ``data``. With ``restatistics``, a
    store holding every time unchanged is planned over again with no new steps (its complete
    shards linked), so that finalising recomputes its statistics and climatology.
    """
    check_times(data[TIME].values)
    for vid in data[CHANNEL].values:
        get_variable(str(vid))
    data = data.chunk({CHANNEL: -1, LAT: -1, LON: -1})
    first_new, replaced, replacing = 0, (), ""
    if path.exists():
        existing = open_store(path)
        new = _new_part(existing, data, path)
        changed, checksums = _changed_steps(existing, data, path)
        if new.sizes[TIME] == 0 and changed.size == 0 and not restatistics:
            return None
        first_new = existing.sizes[TIME]
        old = existing[DATA].astype(data.dtype)
        if changed.size:
            old = _with_source_values(old, data, changed)
            replaced = tuple(int(s) for s in np.unique(changed // layout.shard_steps))
            replacing = hashlib.sha256(changed.astype(np.int64).tobytes() + checksums.tobytes()).hexdigest()
            log.info(
                "%s: %d time steps differ from the store, first %s; replacing shards %s",
                path,
                changed.size,
                np.datetime_as_string(existing[TIME].values[changed[0]], unit="m"),
                list(replaced),
            )
        data = (
            old
            if new.sizes[TIME] == 0
            else xr.concat([old, new], dim=TIME, coords="minimal", compat="override", join="override")
        )
    sizes = [layout.shard_steps] * (data.sizes[TIME] // layout.shard_steps)
    if data.sizes[TIME] % layout.shard_steps:
        sizes.append(data.sizes[TIME] % layout.shard_steps)
    data = data.chunk({TIME: tuple(sizes)})
    return _Plan(data, first_new, layout, _fingerprint(data, first_new, layout, replacing), replaced=replaced)


def _records_period(path: Path, period: StatsPeriod) -> bool:
    """Whether the store at ``path`` records statistics over ``period``; logs the change if not."""
    attrs = open_store(path).attrs
    recorded = [np.datetime64(attrs[key], "ns") if key in attrs else None for key in (STATS_START, STATS_END)]
    if recorded == [np.datetime64(period.start, "ns"), np.datetime64(period.end, "ns")]:
        return True
    log.info(
        "%s holds every time already, with statistics over %s..%s; recomputing its "
        "statistics and climatology "
        "over the requested %s..%s",
        path,
        attrs.get(STATS_START),
        attrs.get(STATS_END),
        period.start,
        period.end,
    )
    return False


def _stored_layout(path: Path, default: StoreLayout) -> StoreLayout:
    """The layout the store at ``path`` records (``default`` for a store that does not record it)."""
    recorded = open_store(path).attrs.get("layout")
    return StoreLayout(**recorded) if recorded else default


def _encoding(data: xr.DataArray, layout: StoreLayout) -> dict:
    nchan, nlat, nlon = (data.sizes[d] for d in (CHANNEL, LAT, LON))
    return {
        DATA: {
            "chunks": (1, nchan, nlat, nlon),
            "shards": (layout.shard_steps, nchan, nlat, nlon),
            "compressors": layout.compressors(),
        },
        TIME: {"units": "hours since 1970-01-01", "dtype": "int64"},
    }


def _shard_key(shard: int) -> Path:
    return Path(DATA) / "c" / str(shard) / "0" / "0" / "0"


def _init(plan: _Plan, paths: BuildPaths) -> None:
    """Empty store in ``paths.building``, the plan record, and links to unchanged shards."""
    paths.store.parent.mkdir(parents=True, exist_ok=True)
    for leftover in (paths.building, paths.progress):
        if leftover.exists():
            discard(leftover)
    (paths.progress / "done").mkdir(parents=True)
    skeleton = xr.Dataset({DATA: plan.data.rename(None)})
    skeleton.attrs = {}
    skeleton[DATA].attrs = {}
    skeleton.to_zarr(
        paths.building,
        mode="w-",
        zarr_format=3,
        consolidated=False,
        compute=False,
        encoding=_encoding(plan.data, plan.layout),
    )
    if plan.first_new_step:
        _link_complete_shards(plan, paths)
    _write_record(paths.plan, json.dumps({"fingerprint": plan.fingerprint}))


def _link_complete_shards(plan: _Plan, paths: BuildPaths) -> None:
    old, new = zarr.open_array(paths.store / DATA, mode="r"), zarr.open_array(paths.building / DATA, mode="r")
    old_meta, new_meta = old.metadata.to_dict(), new.metadata.to_dict()
    for key in (
        "shape",
        "attributes",
    ):  # attributes (CF) are written at the end of a build, the layout at its start
        old_meta.pop(key, None), new_meta.pop(key, None)
    if old_meta != new_meta:
        raise StoreSchemaError(
            f"{paths.store} was written with another layout (chunks, shards, codecs or dtype) "
            f"than {plan.layout}; extend it with its own layout or build a new store"
        )
    old_partials = _stored_partials(paths.store, plan.window)
    old_checksums = _stored_step_checksums(paths.store)
    for shard in range(plan.first_new_step // plan.layout.shard_steps):
        if shard in plan.replaced:
            continue
        target = paths.building / _shard_key(shard)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(paths.store / _shard_key(shard), target)
        except OSError:  # another filesystem, or no hard links: copy the bytes instead
            shutil.copy2(paths.store / _shard_key(shard), target)
        start, stop = plan.shard_region(shard)
        reused = (
            ""
            if old_partials is None or _reaches_into(plan, shard)
            else _shard_record(
                plan.window,
                old_partials[shard],
                True,
                None if old_checksums is None else old_checksums[start:stop],
            )
        )
        _write_record(paths.done(shard), reused)  # empty: finalise reduces the linked shard from its bytes


def _reaches_into(plan: _Plan, shard: int) -> bool:
    """Whether the tendencies ending in ``shard`` start in a replaced shard (its partials are stale)."""
    start, stop = plan.shard_region(shard)
    span = incoming_span(start, stop - start, plan.window)
    return span is not None and any(
        s in plan.replaced for s in range(span[0] // plan.layout.shard_steps, shard)
    )


def _stored_step_checksums(store: Path) -> np.ndarray | None:
    """The per-step checksums a store was finalised with (``None`` for a store written without them)."""
    try:
        return zarr.open_array(store / CHECKSUMS / "steps", mode="r", zarr_format=3)[:]
    except (FileNotFoundError, zarr.errors.ArrayNotFoundError, zarr.errors.GroupNotFoundError):
        return None


def _stored_partials(store: Path, window: StatsWindow) -> list[Partials] | None:
    """The per-shard partial statistics a store was finalised with, if taken over ``window``."""
    try:
        group = zarr.open_group(store / PARTIALS, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):  # a store written before partials were kept
        return None
    if group.attrs.get("window") != window.as_list():
        return None
    fields, tendency = group["fields"][:], group["tendency"][:]
    return [Partials(Moments(*f), Moments(*t)) for f, t in zip(fields, tendency, strict=True)]


def _write_record(path: Path, text: str) -> None:
    """Create a small record file atomically (temp name + rename)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _shard_record(
    window: StatsWindow, partials: Partials, with_incoming: bool, checksums: np.ndarray | None
) -> str:
    """A completion record: the shard's partial statistics over ``window`` (exact JSON floats).

    ``with_incoming`` says whether the tendencies reaching back into the previous shard are
    merged in already (they are once the shard has been through a finalise); ``checksums`` are
    the :func:`step_checksums` of its values (``None``: not known, finalise takes them from the bytes).
    """
    sums = None if checksums is None else [int(c) for c in checksums]
    return json.dumps(
        {"window": window.as_list(), "with_incoming": with_incoming, "checksums": sums, **partials.to_json()}
    )


def _write_shard(block: np.ndarray, array_path: str, start: int, record: str, window: StatsWindow) -> int:
    """Write one shard's whole region, reduce it to its partial statistics, then record it as done."""
    array = zarr.open_array(array_path, mode="r+")
    array[start : start + block.shape[0]] = block
    _write_record(
        Path(record),
        _shard_record(window, block_partials(block, start, window), False, step_checksums(block)),
    )
    return block.shape[0]


def _load(plan: _Plan, paths: BuildPaths, progress: bool) -> None:
    """Write every shard without a completion record, in one Dask compute.

    One compute, not batches: a chunk of an input file that straddles two shards is then read
    once, whichever shards it feeds. The progress bar follows the completion records.
    """
    blocks = plan.data.data.to_delayed().ravel()
    todo = [s for s in range(plan.shard_count) if not paths.done(s).exists()]
    tasks = [
        dask.delayed(_write_shard)(
            blocks[s], str(paths.building / DATA), plan.shard_region(s)[0], str(paths.done(s)), plan.window
        )
        for s in todo
    ]
    with progress_of(
        plan.shard_count,
        f"ingest into {paths.store.name}",
        "shards",
        initial=plan.shard_count - len(todo),
        enabled=progress,
    ) as bar:
        with _following_records(bar, paths.done(0).parent, enabled=progress):
            dask.compute(*tasks)


def _count_records(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if not p.name.startswith("."))  # dot names: records being written


@contextmanager
def _following_records(bar, folder: Path, enabled: bool, every_s: float = 0.5):
    """Advance ``bar`` to the number of completion records in ``folder`` while the body runs."""
    if not enabled:
        yield
        return
    stop = threading.Event()

    def follow() -> None:
        while not stop.wait(every_s):
            bar.update(_count_records(folder) - bar.n)

    follower = threading.Thread(target=follow, name="ingest-progress", daemon=True)
    follower.start()
    try:
        yield
    finally:
        stop.set()
        follower.join()
        bar.update(_count_records(folder) - bar.n)


def _jsonable(attrs: dict) -> dict:
    return json.loads(json.dumps(attrs, default=str))


def _read_record(path: Path) -> dict | None:
    text = path.read_text()
    return json.loads(text) if text else None


def _reduce_written(array_path: str, start: int, stop: int, window: StatsWindow) -> Partials:
    """Partial statistics of a shard already written (linked, or recorded over another period)."""
    return block_partials(zarr.open_array(array_path, mode="r")[start:stop], start, window)


def _incoming_from_written(
    array_path: str, span: tuple[int, int], offset: int, window: StatsWindow
) -> Moments:
    """Tendencies ending in the shard at ``offset`` and starting before it, from the written steps."""
    return incoming_tendency(
        zarr.open_array(array_path, mode="r")[span[0] : span[1]], span[0], offset, window
    )


def _shard_partials(plan: _Plan, paths: BuildPaths) -> list[Partials]:
    """Each shard's partial statistics, the tendencies crossing into it included, in shard order.

    Shards recorded without statistics over this plan's window (linked from a store finalised
    over another period, or recorded by a run with another period) are reduced from their
    written bytes; the rest costs reading ``lag`` steps on either side of each shard boundary.
    """
    array_path, window = str(paths.building / DATA), plan.window
    parts: list = []
    for shard in range(plan.shard_count):
        start, stop = plan.shard_region(shard)
        record = _read_record(paths.done(shard))
        if record is None or record["window"] != window.as_list():
            part, with_incoming = dask.delayed(_reduce_written)(array_path, start, stop, window), False
        else:
            part, with_incoming = Partials.from_json(record), record["with_incoming"]
        span = incoming_span(start, stop - start, window)
        if not with_incoming and span is not None:
            incoming = dask.delayed(_incoming_from_written)(array_path, span, start, window)
            part = dask.delayed(Partials.with_incoming)(part, incoming)
        parts.append(part)
    lazy = [i for i, part in enumerate(parts) if isinstance(part, Delayed)]
    for i, value in zip(lazy, dask.compute(*[parts[i] for i in lazy]), strict=True):
        parts[i] = value
    return parts


def _checksums_from_written(array_path: str, start: int, stop: int) -> np.ndarray:
    return step_checksums(zarr.open_array(array_path, mode="r")[start:stop])


def _write_checksums(plan: _Plan, paths: BuildPaths) -> None:
    """Every step's :func:`step_checksums`, from the completion records or (if absent there) the bytes."""
    array_path, parts = str(paths.building / DATA), []
    for shard in range(plan.shard_count):
        record = _read_record(paths.done(shard)) or {}
        known = record.get("checksums")
        parts.append(
            np.array(known, dtype=np.uint64)
            if known is not None
            else dask.delayed(_checksums_from_written)(array_path, *plan.shard_region(shard))
        )
    lazy = [i for i, part in enumerate(parts) if isinstance(part, Delayed)]
    for i, value in zip(lazy, dask.compute(*[parts[i] for i in lazy]), strict=True):
        parts[i] = value
    values = np.concatenate(parts)
    group = zarr.open_group(paths.building, mode="r+", zarr_format=3).create_group(
        CHECKSUMS, overwrite=True, attributes={"steps": "64-bit BLAKE2b of each time step's data values"}
    )
    group.create_array(
        "steps", shape=values.shape, dtype=np.uint64, chunks=values.shape, compressors=None, fill_value=0
    )[...] = values


def _write_partials(building: Path, window: StatsWindow, partials: list[Partials]) -> None:
    """The per-shard states, ``[shard, moment, channel]`` float64, for a later extension to reuse."""
    group = zarr.open_group(building, mode="r+", zarr_format=3).create_group(
        PARTIALS,
        overwrite=True,
        attributes={"window": window.as_list(), "moments": ["count", "mean", "m2", "minimum", "maximum"]},
    )
    for name in ("fields", "tendency"):
        values = np.stack([np.array(getattr(part, name).to_rows(), dtype=np.float64) for part in partials])
        array = group.create_array(
            name, shape=values.shape, dtype=np.float64, chunks=values.shape, compressors=None, fill_value=0.0
        )
        array[...] = values


def _finalise(
    plan: _Plan,
    paths: BuildPaths,
    period: StatsPeriod,
    step_hours: int,
    climatology_path: Path | None,
    extra_attrs: dict,
) -> None:
    """Merged statistics, climatology and attributes, written once; then the ``complete`` record."""
    partials = _shard_partials(plan, paths)
    channels = plan.data[CHANNEL].values
    stats = statistics_dataset(
        merge_partials(partials), channels, period.start, period.end, plan.window, step_hours
    )
    stats.drop_vars(CHANNEL).to_zarr(paths.building, mode="a", zarr_format=3, consolidated=False)
    _write_partials(paths.building, plan.window, partials)
    _write_checksums(plan, paths)
    if climatology_path is not None:
        written = xr.open_zarr(
            paths.building, zarr_format=3, consolidated=False, chunks={TIME: plan.layout.shard_steps}
        )[DATA]
        write_climatology(compute_climatology(written, period.start, period.end), climatology_path)
    variables = {
        str(v): {"units": get_variable(str(v)).units, "long_name": get_variable(str(v)).long_name}
        for v in channels
    }
    attrs = {
        **stats.attrs,
        STEP_HOURS: step_hours,
        "variables": variables,
        "layout": {"shard_steps": plan.layout.shard_steps, "compressor": plan.layout.compressor},
        **_jsonable(extra_attrs),
        **_jsonable(period.provenance),
    }
    zarr.open_group(paths.building, mode="r+", zarr_format=3).attrs.update(attrs)
    write_cf_attributes(paths.building, store_cf_attributes([str(v) for v in channels]))
    consolidate(paths.building)  # last: after every array and attribute of the store is written
    _write_record(paths.complete, plan.fingerprint)


def store_cf_attributes(channels: list[str]) -> dict[str, dict]:
    """CF attributes of the training store's arrays: coordinates, and per-channel units of ``data`` and
    statistics.

    ``data`` holds channels of different units, so its units are listed per channel
    (``channel_units``, in channel order) beside ``long_name``; CF's single ``units`` would be
    wrong for all but one channel.
    """
    units = [get_variable(c).units for c in channels]
    names = [get_variable(c).long_name for c in channels]
    per_channel = {"channel_units": units, "channel_long_names": names}
    return {
        **CF_COORDINATE_ATTRS,
        DATA: {"long_name": "atmospheric state by channel", **per_channel},
        MEAN: {"long_name": "mean over the statistics period", **per_channel},
        STD: {"long_name": "standard deviation over the statistics period", **per_channel},
    }


def _discard_abandoned(store: Path, climatology_path: str | Path | None) -> None:
    """Remove what killed writers left beside the store and the climatology store.

    Called with the store's lock held, so no live process is writing them: a store renamed
    aside by a publish that was killed before removing it (``.NAME.retired-*``), and a
    climatology written under a temporary name (``.NAME.partial-*``).
    """
    for target in (store, None if climatology_path is None else Path(climatology_path)):
        if target is None:
            continue
        for tag in ("retired", "partial"):
            for leftover in target.parent.glob(f".{target.name}.{tag}-*"):
                log.info("removing %s, left by a killed build", leftover)
                discard(leftover)


def _publish(paths: BuildPaths) -> None:
    """Rename the finished build onto the store and drop the progress records."""
    if paths.building.exists():
        replace_path(paths.building, paths.store)
    shutil.rmtree(paths.progress, ignore_errors=True)


def write_store(
    data: xr.DataArray,
    path: str | Path,
    period: StatsPeriod | None = None,
    layout: StoreLayout = StoreLayout(),
    climatology_path: str | Path | None = None,
    *,
    progress: bool = False,
) -> Path:
    """Build, resume or extend the training store at ``path`` (and its climatology store).

    Parameters
    ----------
    data : xarray.DataArray, shape (time, channel, lat, lon)
        Canonical fields (:func:`ingest.readers.open_sources`), Dask-backed; nothing is
        computed before the shard writes. Times must be increasing, unique, evenly spaced.
    path : path-like
        Training store. If it exists, only the times of ``data`` after its last time are
        appended (they must continue it without a gap); if there are none, nothing is done
        unless the store's statistics period differs from ``period``: then its statistics and
        the climatology are recomputed over ``period`` (its shards are kept).
    period : StatsPeriod, optional
        Training period of the statistics and the climatology, recorded in the attributes;
        default :meth:`StatsPeriod.default` (the last years left out).
    layout : StoreLayout
        Chunk/shard sizes and compressor; an extended store keeps its own.
    climatology_path : path-like, optional
        Where to write the climatology store (:mod:`ingest.climatology`).
    progress : bool
        Show a progress bar over shards.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    StoreSchemaError
        If the times, the statistics period or an existing store do not fit (nothing is
        written then).
    LockHeldError
        If another process is writing the store (nothing is touched then).
    """
    paths = BuildPaths(Path(path))
    with exclusive_lock(paths.store, "training store"):
        return _build(data, paths, period, layout, climatology_path, progress)


def _discard_abandoned_build(paths: BuildPaths) -> None:
    """Remove the hidden build of a store that is already up to date: a killed build of other inputs."""
    for leftover in (paths.building, paths.progress):
        if leftover.exists():
            log.info("removing %s, left by a killed build of other inputs", leftover)
            discard(leftover)


def _build(
    data: xr.DataArray,
    paths: BuildPaths,
    period: StatsPeriod | None,
    layout: StoreLayout,
    climatology_path: str | Path | None,
    progress: bool,
) -> Path:
    """:func:`write_store` once its lock is held."""
    _discard_abandoned(paths.store, climatology_path)
    if paths.complete.exists():  # a previous run was killed between finalising and publishing
        _publish(paths)
    plan = _plan(data, paths.store, layout)
    times = plan.data[TIME].values if plan is not None else open_store(paths.store)[TIME].values
    if period is not None and np.count_nonzero((times >= period.start) & (times <= period.end)) < 2:
        selected = np.count_nonzero((times >= period.start) & (times <= period.end))
        raise StoreSchemaError(
            f"statistics period {period.start}..{period.end} selects {selected} time steps; "
            f"the data covers {times[0]}..{times[-1]}; {period.remedy}"
        )
    period = StatsPeriod.default(times) if period is None else period
    if plan is None:
        if _records_period(paths.store, period):
            _discard_abandoned_build(paths)
            return paths.store
        plan = _plan(data, paths.store, _stored_layout(paths.store, layout), restatistics=True)
    step_hours = _hours(check_times(times, str(paths.store)))
    plan = replace(plan, window=StatsWindow.of(times, period.start, period.end, step_hours))
    resuming = (
        paths.plan.exists()
        and paths.building.exists()
        and json.loads(paths.plan.read_text())["fingerprint"] == plan.fingerprint
    )
    try:
        if not resuming:
            _init(plan, paths)
        _load(plan, paths, progress)
        _finalise(
            plan,
            paths,
            period,
            step_hours,
            None if climatology_path is None else Path(climatology_path),
            data.attrs,
        )
    except IngestError:
        discard(paths.building)
        discard(paths.progress)
        raise
    _publish(paths)
    return paths.store
