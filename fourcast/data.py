"""Training samples read from the Zarr training store.

A sample is an input state at time ``t`` and the ``n_ahead`` states that follow it
(``t + step, …, t + n_ahead·step``), all inside one date range, normalised with the store's
statistics. Dates are selected by label from the store's ``time`` coordinate.

:class:`ResumableSampler` splits each epoch's shuffled windows over data-parallel ranks without
repeats and can start mid-epoch, so a resumed run reads exactly the batches it had not yet read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from zarr.core.buffer import default_buffer_prototype

from fourcast.errors import DataWindowError, StoreStatisticsError
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import StoreSchemaError
from ingest.schema import DATA, MEAN, STD, open_store, step_of

_BUFFERS = default_buffer_prototype()

#: Where :class:`StoreWindows` keeps the range: ``none`` reads each window from the store when it
#: is asked for (bounded memory, the default); ``memory`` reads the whole range once (tiny stores).
CACHES = ("none", "memory")


class StoreWindows(torch.utils.data.Dataset):
    """Map-style dataset of ``(input, targets)`` windows over a date range of the store.

    Parameters
    ----------
    store_path : path-like
        Training store written by :func:`ingest.store.write_store`.
    start, end : str or numpy.datetime64
        Inclusive range; every time of every window lies inside it.
    n_ahead : int
        Number of target steps after each input time.
    cache : {"none", "memory"}
        ``none`` (default) streams: each item reads its ``n_ahead + 1`` time steps from the store
        (whole chunks: one chunk is one time step), so memory does not grow with the range;
        each DataLoader worker opens the store itself. ``memory`` reads the whole range once.
    channels : sequence of str, optional
        Subset of the store's channels, in the order wanted; default all of them.
    in_memory : bool, optional
        Older spelling of ``cache``: ``True`` is ``"memory"``, ``False`` is ``"none"``.

    Items are ``(x, y)`` float32 tensors of shapes ``(channel, lat, lon)`` and
    ``(n_ahead, channel, lat, lon)`` in normalised units.

    Raises
    ------
    DataWindowError
        If ``n_ahead`` < 1, the range holds too few store times, ``cache`` is unknown, or a
        requested channel is not in the store.
    """

    def __init__(
        self,
        store_path: str | Path,
        start,
        end,
        n_ahead: int = 1,
        cache: str = "none",
        channels: Sequence[str] | None = None,
        in_memory: bool | None = None,
    ) -> None:
        if n_ahead < 1:
            raise DataWindowError(f"n_ahead must be >= 1, found {n_ahead}")
        if in_memory is not None:
            cache = "memory" if in_memory else "none"
        if cache not in CACHES:
            raise DataWindowError(f"cache must be one of {CACHES}, found {cache!r}")
        ds = _open_with_statistics(store_path)
        stored = [str(c) for c in ds[CHANNEL].values]
        self._picks = _channel_picks(stored, channels)
        self.channels = stored if self._picks is None else [stored[i] for i in self._picks]
        self.lat = ds[LAT].values
        self.lon = ds[LON].values
        self.step = step_of(ds)
        self.mean = _pick(ds[MEAN].values.astype(np.float32), self._picks, axis=0)
        self.std = _pick(ds[STD].values.astype(np.float32), self._picks, axis=0)
        self._scale = (1.0 / self.std).astype(np.float32)[:, None, None]
        self._shift = self.mean[:, None, None]
        self.n_ahead = n_ahead
        self.cache = cache
        self._first, self._last = self._row_range(ds[TIME].values, np.datetime64(start), np.datetime64(end))
        self.times = ds[TIME].values[self._first : self._last + 1]
        self._path = Path(store_path) / DATA
        self._array = None
        if cache == "memory":
            self._array = _pick(
                zarr.open_array(self._path, mode="r")[self._first : self._last + 1], self._picks, axis=1
            )
        self._offset = 0 if cache == "memory" else self._first

    def _row_range(self, times: np.ndarray, start: np.datetime64, end: np.datetime64) -> tuple[int, int]:
        rows = np.flatnonzero((times >= start) & (times <= end))
        if start > end:
            raise DataWindowError(f"range {start}..{end} is empty: its start lies after its end")
        if rows.size < self.n_ahead + 1:
            raise DataWindowError(
                f"range {start}..{end} holds {rows.size} store times; windows of {self.n_ahead + 1} "
                "are needed. "
                f"The store covers {times[0]}..{times[-1]}"
            )
        return int(rows[0]), int(rows[-1])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.cache == "none":
            state["_array"] = None  # each worker opens the store itself
        return state

    def _data(self):
        """The cached range, or the store's ``data`` array (opened once per process)."""
        if self._array is None:
            self._array = zarr.open_array(self._path, mode="r")
        return self._array

    def __len__(self) -> int:
        return self._last - self._first + 1 - self.n_ahead

    def input_time(self, index: int) -> np.datetime64:
        """Valid time of the input state of item ``index``."""
        return self.times[index]

    @property
    def window_bytes(self) -> int:
        """Bytes of one item: ``(n_ahead + 1) x channel x lat x lon`` float32."""
        return 4 * (self.n_ahead + 1) * len(self.channels) * self.lat.size * self.lon.size

    @property
    def range_bytes(self) -> int:
        """Bytes of every time step of the range (what ``cache="memory"`` holds)."""
        return 4 * (self._last - self._first + 1) * len(self.channels) * self.lat.size * self.lon.size

    def memory_budget(self, batch: int, workers: int = 0, prefetch_factor: int = 2) -> int:
        """Bytes of samples a loader over this dataset holds at once, at most.

        ``workers x prefetch_factor`` batches waiting, plus one being collated (its windows and
        the stacked batch) and one in use by the trainer; plus the whole range with
        ``cache="memory"``.
        """
        waiting = workers * prefetch_factor if workers else 0
        held = (waiting + 3) * batch * self.window_bytes
        return held + (self.range_bytes if self.cache == "memory" else 0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once: ``x`` (batch, channel, lat, lon), ``y`` (batch, n_ahead, channel, lat, lon).

        Each window is decoded straight into the batch's buffer (one store chunk per time step),
        which is then normalised in place: no per-sample arrays or tensors to stack.
        The DataLoader calls this instead of ``__getitem__`` per index (see :func:`batch_stream`).
        """
        out = np.empty(
            (len(indices), self.n_ahead + 1, len(self.channels), self.lat.size, self.lon.size),
            dtype=np.float32,
        )
        data = self._data()
        for slot, index in enumerate(indices):
            if not 0 <= index < len(self):
                raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
            row = index + self._offset
            rows = slice(row, row + self.n_ahead + 1)
            if self.cache == "none" and self._picks is None and data.dtype == np.float32:
                data.get_basic_selection(
                    rows, out=_BUFFERS.nd_buffer.from_numpy_array(out[slot])
                )  # decoded in place
            else:
                window = data[rows] if self.cache == "memory" else _pick(data[rows], self._picks, axis=1)
                out[slot] = window
        np.subtract(out, self._shift, out=out)
        np.multiply(out, self._scale, out=out)
        batch = torch.from_numpy(out)
        return batch[:, 0], batch[:, 1:]

    def time_mean(self) -> np.ndarray:
        """Mean normalised state over the range, shape ``(channel, lat, lon)``: a climatology for ACC."""
        total = np.zeros((len(self.channels), self.lat.size, self.lon.size), dtype=np.float64)
        rows = range(self._offset, self._offset + self._last - self._first + 1)
        for row in rows:
            step = self._data()[row]
            total += np.asarray(
                step if self.cache == "memory" else _pick(step, self._picks, axis=0), dtype=np.float64
            )
        mean = (total / len(rows)).astype(np.float32)
        return (mean - self.mean[:, None, None]) / self.std[:, None, None]


def _channel_picks(stored: list[str], wanted: Sequence[str] | None) -> np.ndarray | None:
    """Indices of ``wanted`` among the store's channels; ``None`` for all of them in store order."""
    if wanted is None or list(wanted) == stored:
        return None
    missing = [c for c in wanted if c not in stored]
    if missing or not wanted:
        raise DataWindowError(
            f"channels {list(wanted)} requested; the store holds {stored}"
            + (f", not {missing}" if missing else "")
        )
    return np.array([stored.index(c) for c in wanted])


def _pick(values: np.ndarray, picks: np.ndarray | None, axis: int) -> np.ndarray:
    return values if picks is None else np.take(values, picks, axis=axis)


def _open_with_statistics(store_path: str | Path):
    """Open the store, refusing one whose ``mean``/``std`` are missing or unusable."""
    try:
        ds = open_store(store_path)
    except StoreSchemaError as err:
        if Path(store_path).exists() and _lacks_statistics(store_path):
            raise StoreStatisticsError(
                f"store {store_path} has no normalisation statistics ({MEAN!r} and {STD!r} per channel); "
                "write it with ingest (which computes them over the statistics period) before training"
            ) from err
        raise
    std = ds[STD].values
    if not np.all(np.isfinite(std) & (std > 0)) or not np.all(np.isfinite(ds[MEAN].values)):
        raise StoreStatisticsError(
            f"store {store_path} statistics are unusable: std must be positive and finite, mean "
            "finite; found "
            f"mean {dict(zip(ds[CHANNEL].values.tolist(), ds[MEAN].values.tolist(), strict=True))}, "
            f"std {dict(zip(ds[CHANNEL].values.tolist(), std.tolist(), strict=True))}"
        )
    return ds


def _lacks_statistics(store_path: str | Path) -> bool:
    """Whether the store holds ``data`` but not both statistics, read from its arrays (consolidated
    metadata written before the statistics were removed or lost would still list them)."""
    try:
        group = zarr.open_group(str(store_path), mode="r", use_consolidated=False)
    except (OSError, ValueError):  # absent, not a group, bad metadata: open_store's own message says which
        return False
    return DATA in group and not (MEAN in group and STD in group)


def _as_read(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The DataLoader's collate step for :meth:`StoreWindows.__getitems__`, which already batches."""
    return batch


class ResumableSampler(DistributedSampler):
    """Shuffled windows of one epoch for one rank, optionally starting after ``skip`` of them.

    Each epoch is one permutation (seeded by ``seed + epoch``) truncated to a multiple of the
    world size and dealt round-robin to the ranks, so within an epoch no window is read twice
    and the ranks' ``k``-th batches together are the ``k``-th global batch of the permutation,
    whatever the number of ranks.

    Parameters
    ----------
    dataset : StoreWindows
    num_replicas, rank : int
        World size and this process's rank (no process group needed).
    seed : int
    """

    def __init__(self, dataset: StoreWindows, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self._skip = 0

    def start_at(self, epoch: int, skip: int) -> None:
        """Make the next iteration epoch ``epoch`` minus its first ``skip`` windows of this rank."""
        self.set_epoch(epoch)
        self._skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self._skip :]
        self._skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples - self._skip


class BatchCursor:
    """Position of a rank in its stream of batches: epoch and batches consumed within it.

    Attributes
    ----------
    epoch, batch : int
        Saved in checkpoints; a stream started from them yields the batch that would have come next.
    """

    def __init__(self, epoch: int = 0, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}


def batch_stream(
    dataset: StoreWindows,
    batch_per_rank: int,
    rank: int,
    world_size: int,
    seed: int,
    cursor: BatchCursor,
    workers: int = 0,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(x, y)`` batches for one rank, epoch after epoch, starting at ``cursor``.

    ``cursor`` is advanced as batches are handed out, so it always counts the batches consumed.
    The rank reads only its own windows (:class:`ResumableSampler`); with ``workers`` > 0 each
    worker keeps ``prefetch_factor`` batches read ahead (see :meth:`StoreWindows.memory_budget`).

    Raises
    ------
    DataWindowError
        If the range does not hold one batch for every rank.
    """
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    if sampler.num_samples < batch_per_rank:
        raise DataWindowError(
            f"range {dataset.times[0]}..{dataset.times[-1]} yields {len(dataset)} windows, fewer "
            f"than one batch of {batch_per_rank} for each of {world_size} rank(s)"
        )
    loader = DataLoader(
        dataset,
        batch_size=batch_per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        collate_fn=_as_read,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=prefetch_factor if workers else None,
    )
    while True:
        sampler.start_at(cursor.epoch, cursor.batch * batch_per_rank)
        for batch in loader:
            cursor.batch += 1
            yield batch
        cursor.epoch, cursor.batch = cursor.epoch + 1, 0
