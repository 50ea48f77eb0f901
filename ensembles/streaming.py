"""Scores accumulated while an ensemble is produced, so they exist without storing raw members.

:class:`StreamingScorer` satisfies the :class:`~ensembles.protocols.Archive` protocol: hand it
to the runner beside (or instead of) a Zarr archive. Each ``write`` delivers a block of members
of one ``(init_time, lead_time)``; once all ``n_members`` of that forecast have arrived it is
scored by :func:`ensembles.scorecard.score_chunk` — the very function batch scoring runs on
each archive chunk — and the members are dropped. What is kept is a
:class:`~ensembles.scorecard.ScoreAccumulator`: a few numbers per system, variable, region and
lead. Memory: the members of every forecast still waiting for more members. When the runner
writes all members of a forecast at once (``members_per_batch ≥ n_members``) nothing waits;
with smaller blocks, up to one init time's whole forecast waits until its last block.

Several processes may each stream their own init times; their :attr:`StreamingScorer.accumulator`
objects add up (``a + b``) to the scores of the whole campaign. A process that receives only
some members of a forecast cannot score it: members of one init time must stay on one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ensembles.baselines import climatology_at, require_labels
from ensembles.errors import ScoringError
from ensembles.protocols import Coords
from ensembles.regions import weight_matrix
from ensembles.scorecard import ScoreAccumulator, ScoreOptions, on_grid, score_chunk, write_scorecard
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME

log = logging.getLogger(__name__)


class StreamingScorer:
    """An :class:`~ensembles.protocols.Archive` that scores what is written instead of storing it.

    Parameters
    ----------
    truth : xarray.DataArray, dims (time, channel, lat, lon)
        Analyses (e.g. the store's lazy ``data``); read at each forecast's init and valid time.
    climatology : xarray.DataArray
        ``[dayofyear, hour, channel, lat, lon]`` or ``[channel, lat, lon]``
        (:func:`ensembles.baselines.climatology_at`).
    variables : sequence of str
        Channels to score; every write must hold them.
    n_members : int
        Members of each forecast; a forecast is scored once this many have been written.
    options : ScoreOptions, optional
        Regions, NaN policy, baselines. With ``allow_partial``, forecasts still missing
        members at :meth:`finalize` are left out (and logged) instead of raising.
    out_dir : str or pathlib.Path, optional
        Where :meth:`finalize` writes ``scorecard.nc`` / ``scorecard.csv``.
    time_mean : xarray.DataArray, dims (channel, lat, lon), optional
        Per-point time mean of the statistics period, scored as the ``time_mean`` baseline
        (as :func:`~ensembles.scorecard.score_archive` scores it).

    Attributes
    ----------
    accumulator : ScoreAccumulator
        The partial scores so far.
    scorecard : xarray.Dataset or None
        Set by :meth:`finalize`.
    """

    def __init__(
        self,
        truth: xr.DataArray,
        climatology: xr.DataArray,
        variables: Sequence[str],
        n_members: int,
        options: ScoreOptions | None = None,
        out_dir: str | Path | None = None,
        time_mean: xr.DataArray | None = None,
    ) -> None:
        if int(n_members) < 1:
            raise ScoringError(f"expected at least 1 member, found n_members={n_members}")
        self.variables = [str(v) for v in variables]
        require_labels(truth, CHANNEL, np.asarray(self.variables), "truth")
        require_labels(climatology, CHANNEL, np.asarray(self.variables), "climatology")
        self.truth = truth.sel({CHANNEL: self.variables}).transpose(TIME, CHANNEL, LAT, LON)
        self.climatology = climatology.sel({CHANNEL: self.variables})
        self.n_members = int(n_members)
        self.options = options or ScoreOptions()
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.lat, self.lon = self.truth[LAT].values, self.truth[LON].values
        self.weights = weight_matrix(self.options.regions, self.lat, self.lon)
        self.time_mean = None if time_mean is None else self._time_mean_values(time_mean)
        self.accumulator = ScoreAccumulator()
        self.scorecard: xr.Dataset | None = None
        self._pending: dict[tuple[np.datetime64, np.timedelta64], dict[int, np.ndarray]] = {}
        self._leads: set[np.timedelta64] = set()
        self._finalized = False

    def _time_mean_values(self, time_mean: xr.DataArray) -> np.ndarray:
        """``time_mean`` on the truth's grid, in the scored channels' order: (channel, lat, lon)."""
        time_mean = on_grid(time_mean, self.lat, self.lon, "time mean", "the truth")
        require_labels(time_mean, CHANNEL, np.asarray(self.variables), "time mean")
        return time_mean.sel({CHANNEL: self.variables}).transpose(CHANNEL, LAT, LON).values

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None:
        """Take members ``x`` of shape ``(member, channel, lat, lon)`` of one init and lead.

        Raises
        ------
        ScoringError
            If finalised, the grid differs from the truth's, a variable is missing, a member
            arrives twice, or the truth lacks the init or valid time.
        """
        if self._finalized:
            raise ScoringError("streaming scorer is already finalised; create a new one to score again")
        init, lead = (
            _single(coords, INIT_TIME, "datetime64[ns]"),
            _single(coords, LEAD_TIME, "timedelta64[ns]"),
        )
        fields = self._fields(x, coords)
        pending = self._pending.setdefault((init, lead), {})
        for member, field in zip(np.asarray(coords[MEMBER]).astype(np.int64).tolist(), fields, strict=True):
            if member in pending or not 0 <= member < self.n_members:
                raise ScoringError(
                    f"member {member} of {str(init)[:16]} at lead {lead} is written twice or is "
                    f"outside 0 … {self.n_members - 1}"
                )
            pending[member] = field
        if len(pending) == self.n_members:
            del self._pending[(init, lead)]
            self._score(init, lead, np.stack([pending[m] for m in range(self.n_members)]))

    def finalize(self) -> str:
        """Build :attr:`scorecard` (and write it if ``out_dir`` was given); returns its location.

        Returns
        -------
        str
            The netCDF path, or ``"memory"`` without ``out_dir``.

        Raises
        ------
        ScoringError
            If a forecast still lacks members (without ``allow_partial``) or nothing was scored.
        """
        if self._finalized:
            raise ScoringError("streaming scorer is already finalised")
        if self._pending:
            incomplete = {
                f"{str(i)[:16]} +{l / np.timedelta64(1, 'h'):g} h": sorted(m)
                for (i, l), m in list(self._pending.items())[:5]
            }
            message = (
                f"{len(self._pending)} forecasts did not receive all {self.n_members} members, e.g. "
                f"(members received) {incomplete}; members of an init time must all reach this scorer"
            )
            if not self.options.allow_partial:
                raise ScoringError(message)
            log.warning("%s; left out (allow_partial)", message)
        if not self.accumulator.sums:
            raise ScoringError("nothing was scored: no forecast received all its members")
        leads = np.array(sorted(self._leads), dtype="timedelta64[ns]")
        self.scorecard = self.accumulator.to_dataset(
            self.variables,
            leads,
            self.options.regions,
            {
                "nan_policy": self.options.nan_policy,
                "allow_partial": int(self.options.allow_partial),
                "scored": "streaming",
            },
        )
        self._finalized = True
        if self.out_dir is None:
            return "memory"
        return str(write_scorecard(self.scorecard, self.out_dir)[0])

    def _fields(self, x: torch.Tensor | np.ndarray, coords: Coords) -> np.ndarray:
        """``x`` as numpy (member, channel, lat, lon) in the order of :attr:`variables`."""
        values = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        lat, lon = np.asarray(coords[LAT], dtype=np.float64), np.asarray(coords[LON], dtype=np.float64)
        grid = xr.DataArray(np.empty((lat.size, lon.size)), dims=(LAT, LON), coords={LAT: lat, LON: lon})
        on_grid(grid, self.lat, self.lon, "the written forecast", "the truth")
        channels = [str(c) for c in coords[CHANNEL]]
        missing = [v for v in self.variables if v not in channels]
        if missing:
            raise ScoringError(f"write lacks variables {missing} to score; its channels are {channels}")
        return values[:, [channels.index(v) for v in self.variables]]

    def _score(self, init: np.datetime64, lead: np.timedelta64, members: np.ndarray) -> None:
        require_labels(self.truth, TIME, np.array([init, init + lead]), "truth")
        times = xr.DataArray([init + lead], dims=TIME)
        climate = climatology_at(self.climatology, times).isel({TIME: 0}).transpose(CHANNEL, LAT, LON)
        climate = on_grid(climate, self.lat, self.lon, "climatology", "the truth").values
        truth_valid = self.truth.sel({TIME: init + lead}).values
        truth_init = self.truth.sel({TIME: init}).values
        self.accumulator = self.accumulator + score_chunk(
            init,
            lead,
            self.variables,
            members,
            truth_valid,
            truth_init,
            climate,
            self.weights,
            self.options,
            self.time_mean,
        )
        self._leads.add(lead)


def _single(coords: Coords, dim: str, dtype: str) -> np.ndarray:
    labels = np.atleast_1d(np.asarray(coords[dim])).astype(dtype)
    if labels.size != 1:
        raise ScoringError(f"expected exactly one {dim} per write, found {labels.size}: {labels}")
    return labels[0]
