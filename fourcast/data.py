"""Training samples read from the Zarr training store.

A sample is an input state at time ``t`` and the ``n_ahead`` states that follow it
(``t + step, …, t + n_ahead·step``), all inside one date range, normalised with the store's
statistics. Dates are selected by label from the store's ``time`` coordinate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from fourcast.errors import DataWindowError
from ingest.dims import CHANNEL, LAT, LON, TIME
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
        ds = open_store(store_path)
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
