"""A trained model wrapped as the ``Prognostic`` the ensemble runner consumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fourcast.checkpoint import CheckpointMeta, load_checkpoint
from fourcast.device import default_device
from fourcast.errors import (
    CheckpointError,
    CheckpointGridError,
    CudaGraphsUnavailableError,
    ResolutionTransferError,
)
from fourcast.graphed import GraphedStep
from fourcast.models.registry import build_model
from fourcast.normaliser import Normaliser
from ingest.dims import CHANNEL, LAT, LON
from ingest.grid import check_coords, equiangular_lats, regular_lons, same_coords

Coords = dict[str, np.ndarray]


class Forecaster:
    """Advances physical-unit states ``(batch, channel, lat, lon)`` by one model step.

    Parameters
    ----------
    model : torch.nn.Module
        Maps normalised ``(batch, channel, lat, lon)`` to the normalised state one step later.
    normaliser : Normaliser
        Statistics the model was trained with.
    variables : list of str
        Lexicon ids in channel order.
    lat, lon : numpy.ndarray
        Grid in degrees (lat 90 → −90).
    step : numpy.timedelta64
        Time advanced by one :meth:`step`.
    device : torch.device, optional
        Where the model runs; CUDA when available by default.
    autocast : bool, optional
        Run the network under bfloat16 autocast (normalisation and the returned state stay
        float32). Default: on CUDA only; CPU runs stay float32, bit-reproducible.
    cuda_graphs : bool, optional
        Replay each step from a CUDA graph captured per input shape (:class:`~fourcast.graphed.GraphedStep`):
        normalisation, network and denormalisation in one replay. CUDA only. Default: off.
    compile : bool, optional
        Run the network through ``torch.compile`` (default mode). Not together with
        ``cuda_graphs`` (compile's ``reduce-overhead`` mode is its own graph capture). Default: off.

    Raises
    ------
    CudaGraphsUnavailableError
        If ``cuda_graphs`` is asked for and ``device`` is not CUDA, or ``compile`` together with it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        normaliser: Normaliser,
        variables: list[str],
        lat: np.ndarray,
        lon: np.ndarray,
        step: np.timedelta64,
        device: torch.device | None = None,
        autocast: bool | None = None,
        cuda_graphs: bool = False,
        compile: bool = False,
    ) -> None:
        self.device = device or default_device()
        self.autocast = self.device.type == "cuda" if autocast is None else bool(autocast)
        if cuda_graphs and compile:
            raise CudaGraphsUnavailableError("cuda_graphs and compile are exclusive: choose one")
        self.model = model.to(self.device).eval()
        self.cuda_graphs, self.compile = bool(cuda_graphs), bool(compile)
        self._network = torch.compile(self.model) if compile else self.model
        self._graphed = GraphedStep(self._physical_step, self.device) if cuda_graphs else None
        self.normaliser = normaliser.to(self.device)
        self._coords = {
            CHANNEL: np.asarray(variables),
            LAT: np.asarray(lat, dtype=float),
            LON: np.asarray(lon, dtype=float),
        }
        self._step = np.timedelta64(step, "h")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device | None = None,
        autocast: bool | None = None,
        cuda_graphs: bool = False,
        compile: bool = False,
    ) -> Forecaster:
        """Rebuild the model, normaliser and coordinates saved by
        :func:`fourcast.checkpoint.save_checkpoint`."""
        state, meta = load_checkpoint(path)
        model = build_model(meta.preset, (len(meta.lat), len(meta.lon)), len(meta.channels))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights do not fit preset {meta.preset!r}: {err}") from err
        return cls(
            model,
            Normaliser(meta.mean, meta.std),
            meta.channels,
            np.asarray(meta.lat),
            np.asarray(meta.lon),
            np.timedelta64(meta.step_hours, "h"),
            device,
            autocast,
            cuda_graphs,
            compile,
        )

    def on_grid(self, lat: np.ndarray, lon: np.ndarray, normaliser: Normaliser | None = None) -> Forecaster:
        """This forecaster on another global equiangular grid, without retraining (zero-shot transfer).

        Parameters
        ----------
        lat, lon : numpy.ndarray
            The new grid in degrees: latitudes 90 → −90 evenly spaced with both poles, longitudes
            ``0, 360/nlon, …``.
        normaliser : Normaliser, optional
            Statistics for the new grid (e.g. the new store's); by default the training ones.

        Returns
        -------
        Forecaster
            ``self`` if the grid is the model's; otherwise a new one around the model's
            :meth:`on_grid` copy (only models whose weights do not depend on the grid have one).

        Raises
        ------
        ResolutionTransferError
            If the model cannot move (AFNO: the message says why) or the grid is not a global
            equiangular one with both poles.
        """
        lat, lon = np.asarray(lat, dtype=float), np.asarray(lon, dtype=float)
        mine = self._coords
        if normaliser is None and same_coords(mine, {LAT: lat, LON: lon}):
            return self
        _check_global_equiangular(lat, lon)
        if not hasattr(self.model, "on_grid"):
            raise ResolutionTransferError(
                f"{type(self.model).__name__} has no way to move to another grid; only "
                "models whose weights do not depend on the grid (SFNO) do"
            )
        model = self.model.on_grid(lat.size, lon.size)
        return Forecaster(
            model,
            normaliser or self.normaliser,
            list(mine[CHANNEL]),
            lat,
            lon,
            self._step,
            self.device,
            self.autocast,
            self.cuda_graphs,
            self.compile,
        )

    @staticmethod
    def meta_of(path: str | Path) -> CheckpointMeta:
        """Metadata of a checkpoint, without building the model."""
        return load_checkpoint(path)[1]

    @property
    def input_coords(self) -> Coords:
        return dict(self._coords)

    @property
    def output_coords(self) -> Coords:
        return dict(self._coords)

    @property
    def step_size(self) -> np.timedelta64:
        return self._step

    @torch.inference_mode()
    def step(self, x: torch.Tensor, coords: Coords) -> tuple[torch.Tensor, Coords]:
        """One step: ``x`` of shape ``(batch, channel, lat, lon)`` in physical units."""
        check_coords(
            self._coords,
            coords,
            (CHANNEL, LAT, LON),
            what="the input",
            reference="the model",
            error=CheckpointGridError,
        )
        state = x.to(self.device, torch.float32)
        out = self._graphed(state) if self._graphed is not None else self._physical_step(state)
        return out.to(x.device), coords

    def _physical_step(self, x: torch.Tensor) -> torch.Tensor:
        """Physical-unit float32 ``(batch, channel, lat, lon)`` on the device to the state one step later."""
        z = self.normaliser.normalise(x)
        # No autocast weight cache under graph capture: the casts are replayed with the graph.
        with torch.autocast(
            device_type=self.device.type,
            dtype=torch.bfloat16,
            enabled=self.autocast,
            cache_enabled=self._graphed is None,
        ):
            z = self._network(z)
        return self.normaliser.denormalise(z.float())


def _check_global_equiangular(lat: np.ndarray, lon: np.ndarray) -> None:
    """Refuse grids other than ``lat`` 90 → −90 evenly spaced and ``lon`` 0, 360/n, … (what the transforms
    need)."""
    if (
        lat.ndim != 1
        or lat.size < 3
        or not same_coords({LAT: equiangular_lats(lat.size)}, {LAT: lat}, (LAT,))
    ):
        raise ResolutionTransferError(
            f"a model moves only to an equiangular grid with both poles, latitudes 90 -> -90 "
            f"evenly spaced; found {lat.size} latitudes {lat[:3]}…"
        )
    if lon.ndim != 1 or lon.size < 4 or not same_coords({LON: regular_lons(lon.size)}, {LON: lon}, (LON,)):
        raise ResolutionTransferError(
            f"a model moves only to a grid of longitudes 0, 360/n, …; found {lon.size} longitudes {lon[:3]}…"
        )
