"""Per-channel standardisation between physical units and the model's normalised space."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from fourcast.errors import NormaliserError


class Normaliser(torch.nn.Module):
    """``z = (x − mean) / std`` per channel, and back.

    Parameters
    ----------
    mean, std : array-like, shape (channel,)
        Statistics in physical units (the store's ``mean``/``std``).

    Tensors passed in have the channel axis third from last: ``(..., channel, lat, lon)``.
    """

    mean: torch.Tensor  # buffers, shape (channel, 1, 1)
    std: torch.Tensor

    def __init__(self, mean: npt.ArrayLike | torch.Tensor, std: npt.ArrayLike | torch.Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise NormaliserError(
                f"expected 1-D mean and std of equal length, found {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not torch.all(std > 0):
            raise NormaliserError(f"std must be positive in every channel, found {std.tolist()}")
        self.register_buffer("mean", mean[:, None, None])
        self.register_buffer("std", std[:, None, None])

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units → normalised units."""
        return (x - self.mean) / self.std

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised units → physical units."""
        return z * self.std + self.mean
