"""Perturbations of an initial state, satisfying :class:`ensembles.protocols.Perturbation`.

A perturbation receives ``x`` of shape ``(member, channel, lat, lon)`` in physical units, its
coords, and a :class:`torch.Generator` that is its only source of randomness: the runner hands
each member its own generator, so a member is reproducible from its seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ensembles.errors import EnsembleInputError
from ensembles.protocols import Coords
from ingest.dims import CHANNEL


class NoPerturbation:
    """The identity: every member starts from the unperturbed state."""

    def __call__(self, x: torch.Tensor, coords: Coords, generator: torch.Generator) -> tuple[torch.Tensor, Coords]:
        """Return ``x`` and ``coords`` unchanged; the generator is not drawn from."""
        return x, coords


class GaussianPerturbation:
    """Additive, spatially uncorrelated Gaussian noise scaled per channel.

    ``x + amplitude * scale[c] * ε`` with ``ε ~ N(0, 1)`` independently for every member, grid
    point and channel ``c``. With ``scale`` the per-channel standard deviation of the training
    data (physical units), ``amplitude`` is in normalised units: FourCastNet's ensembles use
    ``amplitude = 0.3``. ``amplitude = 0`` leaves ``x`` exactly unchanged.

    Parameters
    ----------
    scale : numpy.ndarray or torch.Tensor, shape (channel,)
        Per-channel noise scale in the units of each channel; non-negative and finite.
    amplitude : float
        Multiplier of ``scale``; non-negative.
    channels : sequence of str, optional
        Channel ids labelling ``scale``. When given, the scale is selected by label from the
        ``channel`` coordinate of each call, so its order need not match the state's; when
        omitted, ``scale`` must be in the order of the state's channels.
    """

    def __init__(
        self,
        scale: np.ndarray | torch.Tensor,
        amplitude: float,
        channels: Sequence[str] | None = None,
    ) -> None:
        scale = torch.as_tensor(scale, dtype=torch.float64).detach().cpu()
        if scale.ndim != 1:
            raise EnsembleInputError(f"expected a 1-D per-channel scale, found shape {tuple(scale.shape)}")
        if not torch.isfinite(scale).all() or (scale < 0).any():
            raise EnsembleInputError(f"expected finite, non-negative scales, found {scale.tolist()}")
        if not np.isfinite(amplitude) or amplitude < 0:
            raise EnsembleInputError(f"expected a finite, non-negative amplitude, found {amplitude}")
        if channels is not None and len(channels) != scale.numel():
            raise EnsembleInputError(
                f"expected one channel label per scale ({scale.numel()}), found {len(channels)}: {list(channels)}"
            )
        self.scale = scale
        self.amplitude = float(amplitude)
        self.channels = None if channels is None else [str(c) for c in channels]

    def __call__(self, x: torch.Tensor, coords: Coords, generator: torch.Generator) -> tuple[torch.Tensor, Coords]:
        """Add the noise to ``x`` of shape ``(member, channel, lat, lon)``.

        The noise is drawn on the generator's device (so it does not depend on where ``x``
        lives) and then moved to ``x``'s device and dtype.
        """
        sigma = self._channel_scale(coords, n_channels=x.shape[1]) * self.amplitude
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float64)
        noise = noise * sigma[None, :, None, None]
        return x + noise.to(device=x.device, dtype=x.dtype), coords

    def _channel_scale(self, coords: Coords, n_channels: int) -> torch.Tensor:
        """The scale in the order of ``coords["channel"]``, shape (channel,)."""
        if self.channels is None:
            if self.scale.numel() != n_channels:
                raise EnsembleInputError(
                    f"expected a state with {self.scale.numel()} channels (one per scale), found {n_channels}"
                )
            return self.scale
        wanted = [str(c) for c in coords[CHANNEL]]
        missing = [c for c in wanted if c not in self.channels]
        if missing:
            raise EnsembleInputError(
                f"no perturbation scale for channels {missing}; scales are given for {self.channels}"
            )
        return self.scale[[self.channels.index(c) for c in wanted]]
