"""The seams :mod:`ensembles` consumes, owned here so producers depend on us, not the reverse.

A *coords* mapping is an ordered ``dict`` from dimension name (see :mod:`ingest.dims`) to a 1-D
numpy array of labels, one entry per dimension of the tensor it travels with, in the same order.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

Coords = dict[str, np.ndarray]


@runtime_checkable
class Prognostic(Protocol):
    """A model that advances the atmospheric state by one fixed time step.

    ``x`` has shape ``(batch, channel, lat, lon)`` in physical units (the units of the
    lexicon); ``coords`` labels those four dims (``member`` or any batch name first, then
    ``channel``, ``lat``, ``lon``). The returned state has the same shape and labels.
    """

    @property
    def input_coords(self) -> Coords:
        """``{"channel": ids, "lat": degrees, "lon": degrees}`` the model expects."""

    @property
    def output_coords(self) -> Coords:
        """Labels of the state the model returns (same keys as :attr:`input_coords`)."""

    @property
    def step_size(self) -> np.timedelta64:
        """Forecast time step of one :meth:`step`."""

    def step(self, x: torch.Tensor, coords: Coords) -> tuple[torch.Tensor, Coords]:
        """Advance ``x`` by :attr:`step_size`."""


@runtime_checkable
class Perturbation(Protocol):
    """Perturbs an initial state: ``(x, coords, generator) -> (x, coords)``.

    ``x`` has shape ``(member, channel, lat, lon)`` in physical units; the generator is the
    only source of randomness, so a member is reproducible from its seed alone.
    """

    def __call__(
        self, x: torch.Tensor, coords: Coords, generator: torch.Generator
    ) -> tuple[torch.Tensor, Coords]: ...


@runtime_checkable
class Archive(Protocol):
    """Destination of forecast fields.

    ``write`` receives ``x`` of shape ``(member, channel, lat, lon)`` with coords holding
    those four dims plus one-element ``init_time`` and ``lead_time`` arrays.
    """

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None: ...

    def finalize(self) -> str:
        """Commit what was written; returns the archive's location."""


@runtime_checkable
class StepNoise(Protocol):
    """The model-error noise of one block of members through one forecast (see :class:`ModelError`)."""

    def apply(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """The perturbed state after one model step from ``before`` to ``after``, both (member, channel, lat,
        lon)."""


@runtime_checkable
class ModelError(Protocol):
    """Stochastic model error: perturbs every model step of every member.

    ``start(coords, generators)`` begins a forecast of the members labelled by
    ``coords["member"]``, each drawing only from its own generator (one per member, in
    order), and returns the :class:`StepNoise` the runner applies after each step.
    """

    def start(self, coords: Coords, generators: list[torch.Generator]) -> StepNoise: ...
