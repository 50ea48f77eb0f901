"""Spherical Fourier Neural Operator (Bonev et al. 2023) through ``torch-harmonics``.

Shapes: ``(batch, in_channels, lat, lon) → (batch, out_channels, lat, lon)`` on an equiangular
grid that includes both poles, north to south — ERA5's 721 × 1440 grid at 0.25° (unlike the
AFNO, which needs a grid divisible by its patch and drops the last row). The spherical
harmonic transforms of ``torch_harmonics.examples.models.SphericalFourierNeuralOperator`` run
in float32 under CUDA autocast (its spectral convolution disables autocast around them); its
guard covers CUDA only, so under CPU autocast the whole network runs in float32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_harmonics.examples.models import SphericalFourierNeuralOperator

from fourcast.errors import ModelSpecError

NORMALIZATIONS = ("none", "layer_norm", "instance_norm")


class SFNONet(nn.Module):
    """An SFNO for a global equiangular grid, optionally learning the tendency.

    Parameters
    ----------
    img_size : tuple of int
        ``(lat, lon)`` of the grid, poles included (e.g. ``(721, 1440)``).
    in_channels, out_channels : int
        Channels in and out.
    embed_dim : int
        Width of the latent field.
    num_layers : int
        Number of SFNO blocks.
    scale_factor : int
        Down-sampling of the latent grid relative to the input grid.
    mlp_ratio : float
        Hidden width of each block's pointwise MLP relative to ``embed_dim``.
    hard_thresholding_fraction : float
        Fraction of spherical-harmonic degrees kept (0 < f ≤ 1).
    normalization : {"none", "layer_norm", "instance_norm"}
        Normalisation inside the blocks.
    predict_increment : bool
        If true the network learns the one-step tendency: the output is ``x + net(x)`` and the
        decoder starts at zero, so the untrained model is persistence.
    """

    def __init__(self, img_size: tuple[int, int], in_channels: int, out_channels: int, embed_dim: int = 256,
                 num_layers: int = 8, scale_factor: int = 3, mlp_ratio: float = 2.0,
                 hard_thresholding_fraction: float = 1.0, normalization: str = "instance_norm",
                 predict_increment: bool = True) -> None:
        super().__init__()
        lat, lon = img_size
        if normalization not in NORMALIZATIONS:
            raise ModelSpecError(f"normalization must be one of {NORMALIZATIONS}, found {normalization!r}")
        if predict_increment and in_channels != out_channels:
            raise ModelSpecError(f"predict_increment needs in_channels == out_channels, "
                                 f"found {in_channels} and {out_channels}")
        if (lat - 1) // scale_factor < 2 or lon // scale_factor < 4:
            raise ModelSpecError(f"grid {lat}x{lon} is too coarse for scale_factor {scale_factor}")
        self.img_size = (lat, lon)
        self.predict_increment = predict_increment
        self.net = SphericalFourierNeuralOperator(
            img_size=(lat, lon), grid="equiangular", scale_factor=scale_factor, in_chans=in_channels,
            out_chans=out_channels, embed_dim=embed_dim, num_layers=num_layers, mlp_ratio=mlp_ratio,
            hard_thresholding_fraction=hard_thresholding_fraction, normalization_layer=normalization,
            residual_prediction=False, pos_embed="none")
        if predict_increment:
            head = self.net.decoder[-1]
            nn.init.zeros_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_channels, lat, lon) → (batch, out_channels, lat, lon)``."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise ModelSpecError(f"SFNO built for a {self.img_size} grid, found input {tuple(x.shape[-2:])}")
        if torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                out = self.net(x.float()).to(x.dtype)
        else:
            out = self.net(x)
        return x + out if self.predict_increment else out
