"""Training samples read from the Zarr training store.

A sample is an input state at time ``t`` and the ``n_ahead`` states that follow it
(``t + step, …, t + n_ahead·step``), all inside one date range, normalised with the store's
statistics. Dates are selected by label from the store's ``time`` coordinate.

:class:`ResumableSampler` splits each epoch's shuffled windows over data-parallel ranks without
repeats and can start mid-epoch, so a resumed run reads exactly the batches it had not yet read.
"""

from __future__ import annotations

from pathlib import Path

from collections.abc import Iterator

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from fourcast.errors import DataWindowError, StoreStatisticsError
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.errors import StoreSchemaError
from ingest.schema import DATA, MEAN, STD, open_store, step_of


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
    in_memory : bool
        Read the whole range once (fast for small stores) instead of one window per item.

    Items are ``(x, y)`` float32 tensors of shapes ``(channel, lat, lon)`` and
    ``(n_ahead, channel, lat, lon)`` in normalised units.
    """

    def __init__(self, store_path: str | Path, start, end, n_ahead: int = 1, in_memory: bool = True) -> None:
        if n_ahead < 1:
            raise DataWindowError(f"n_ahead must be >= 1, found {n_ahead}")
        ds = _open_with_statistics(store_path)
        self.channels = [str(c) for c in ds[CHANNEL].values]
        self.lat = ds[LAT].values
        self.lon = ds[LON].values
        self.step = step_of(ds)
        self.mean = ds[MEAN].values.astype(np.float32)
        self.std = ds[STD].values.astype(np.float32)
        self.n_ahead = n_ahead
        self._first, self._last = self._row_range(ds[TIME].values, np.datetime64(start), np.datetime64(end))
        self.times = ds[TIME].values[self._first : self._last + 1]
        array = zarr.open_array(Path(store_path) / DATA, mode="r")
        self._array = array[self._first : self._last + 1] if in_memory else array
        self._offset = 0 if in_memory else self._first

    def _row_range(self, times: np.ndarray, start: np.datetime64, end: np.datetime64) -> tuple[int, int]:
        rows = np.flatnonzero((times >= start) & (times <= end))
        if start > end:
            raise DataWindowError(f"range {start}..{end} is empty: its start lies after its end")
        if rows.size < self.n_ahead + 1:
            raise DataWindowError(
                f"range {start}..{end} holds {rows.size} store times; windows of {self.n_ahead + 1} are needed. "
                f"The store covers {times[0]}..{times[-1]}"
            )
        return int(rows[0]), int(rows[-1])

    def __len__(self) -> int:
        return self._last - self._first + 1 - self.n_ahead

    def input_time(self, index: int) -> np.datetime64:
        """Valid time of the input state of item ``index``."""
        return self.times[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range 0..{len(self) - 1}")
        row = index + self._offset
        window = np.asarray(self._array[row : row + self.n_ahead + 1], dtype=np.float32)
        window = (window - self.mean[:, None, None]) / self.std[:, None, None]
        return torch.from_numpy(window[0]), torch.from_numpy(window[1:])

    def time_mean(self) -> np.ndarray:
        """Mean normalised state over the range, shape ``(channel, lat, lon)``: a climatology for ACC."""
        total = np.zeros((len(self.channels), self.lat.size, self.lon.size), dtype=np.float64)
        rows = range(self._offset, self._offset + self._last - self._first + 1)
        for row in rows:
            total += np.asarray(self._array[row], dtype=np.float64)
        mean = (total / len(rows)).astype(np.float32)
        return (mean - self.mean[:, None, None]) / self.std[:, None, None]


def _open_with_statistics(store_path: str | Path):
    """Open the store, refusing one whose ``mean``/``std`` are missing or unusable."""
    try:
        ds = open_store(store_path)
    except StoreSchemaError as err:
        if Path(store_path).exists() and _lacks_statistics(store_path):
            raise StoreStatisticsError(
                f"store {store_path} has no normalisation statistics ({MEAN!r} and {STD!r} per channel); "
                "write it with ingest (which computes them over the statistics period) before training") from err
        raise
    std = ds[STD].values
    if not np.all(np.isfinite(std) & (std > 0)) or not np.all(np.isfinite(ds[MEAN].values)):
        raise StoreStatisticsError(
            f"store {store_path} statistics are unusable: std must be positive and finite, mean finite; found "
            f"mean {dict(zip(ds[CHANNEL].values.tolist(), ds[MEAN].values.tolist()))}, "
            f"std {dict(zip(ds[CHANNEL].values.tolist(), std.tolist()))}")
    return ds


def _lacks_statistics(store_path: str | Path) -> bool:
    try:
        group = zarr.open_group(str(store_path), mode="r")
    except Exception:  # not a Zarr group at all: open_store's own message says so
        return False
    return DATA in group and not (MEAN in group and STD in group)


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
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
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


def batch_stream(dataset: StoreWindows, batch_per_rank: int, rank: int, world_size: int, seed: int,
                 cursor: BatchCursor, workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless ``(x, y)`` batches for one rank, epoch after epoch, starting at ``cursor``.

    ``cursor`` is advanced as batches are handed out, so it always counts the batches consumed.

    Raises
    ------
    DataWindowError
        If the range does not hold one batch for every rank.
    """
    sampler = ResumableSampler(dataset, world_size, rank, seed)
    if sampler.num_samples < batch_per_rank:
        raise DataWindowError(f"range {dataset.times[0]}..{dataset.times[-1]} yields {len(dataset)} windows, fewer "
                              f"than one batch of {batch_per_rank} for each of {world_size} rank(s)")
    loader = DataLoader(dataset, batch_size=batch_per_rank, sampler=sampler, drop_last=True, num_workers=workers,
                        pin_memory=pin_memory, persistent_workers=False)
    while True:
        sampler.start_at(cursor.epoch, cursor.batch * batch_per_rank)
        for batch in loader:
            cursor.batch += 1
            yield batch
        cursor.epoch, cursor.batch = cursor.epoch + 1, 0
