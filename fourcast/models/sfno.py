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

from fourcast.errors import ModelSpecError, ResolutionTransferError

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
    modes : int, optional
        Spherical-harmonic degrees (and orders) the spectral convolutions keep, ``0 … modes−1``.
        By default ``hard_thresholding_fraction`` of the most the latent grid resolves
        (:func:`grid_modes`). A model moved to another grid keeps the degrees it learned
        (:meth:`on_grid`), so its spectral truncation is tied to the training grid, not the new one.

    Notes
    -----
    The weights of the spectral convolutions are one complex matrix per degree ``l`` (the
    Driscoll–Healy convolution), and every other layer acts point by point; nothing but the
    transforms depends on the grid, which is what lets :meth:`on_grid` evaluate the same
    operator on another equiangular grid.
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        in_channels: int,
        out_channels: int,
        embed_dim: int = 256,
        num_layers: int = 8,
        scale_factor: int = 3,
        mlp_ratio: float = 2.0,
        hard_thresholding_fraction: float = 1.0,
        normalization: str = "instance_norm",
        predict_increment: bool = True,
        modes: int | None = None,
    ) -> None:
        super().__init__()
        lat, lon = img_size
        if normalization not in NORMALIZATIONS:
            raise ModelSpecError(f"normalization must be one of {NORMALIZATIONS}, found {normalization!r}")
        if predict_increment and in_channels != out_channels:
            raise ModelSpecError(
                f"predict_increment needs in_channels == out_channels, found {in_channels} and {out_channels}"
            )
        if (lat - 1) // scale_factor < 2 or lon // scale_factor < 4:
            raise ModelSpecError(f"grid {lat}x{lon} is too coarse for scale_factor {scale_factor}")
        self.img_size = (lat, lon)
        self.predict_increment = predict_increment
        self.settings = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            embed_dim=embed_dim,
            num_layers=num_layers,
            scale_factor=scale_factor,
            mlp_ratio=mlp_ratio,
            hard_thresholding_fraction=hard_thresholding_fraction,
            normalization=normalization,
            predict_increment=predict_increment,
        )
        most = grid_modes((lat, lon), scale_factor)
        if modes is None:
            fraction = hard_thresholding_fraction
        elif not 1 <= modes <= most:
            raise ModelSpecError(
                f"modes must lie in 1..{most} (what a {lat}x{lon} grid with scale_factor "
                f"{scale_factor} resolves), found {modes}"
            )
        else:  # torch-harmonics takes a fraction; the half keeps int() from rounding down
            fraction = (modes + 0.5) / most
        self.net = SphericalFourierNeuralOperator(
            img_size=(lat, lon),
            grid="equiangular",
            scale_factor=scale_factor,
            in_chans=in_channels,
            out_chans=out_channels,
            embed_dim=embed_dim,
            num_layers=num_layers,
            mlp_ratio=mlp_ratio,
            hard_thresholding_fraction=fraction,
            normalization_layer=normalization,
            residual_prediction=False,
            pos_embed="none",
        )
        self.modes = self.net.trans_down.lmax
        self._active = torch.ones(self.modes)
        if predict_increment:
            head = self.net.decoder[-1]
            nn.init.zeros_(head.weight)
            if head.bias is not None:
                nn.init.zeros_(head.bias)

    def spectral_weights(self) -> list[nn.Parameter]:
        """The spectral convolutions' weights, each ``(out, in, modes)`` complex: one matrix per degree."""
        return [block.global_conv.weight for block in self.net.blocks]

    @property
    def active_modes(self) -> int:
        """Degrees the spectral convolutions currently use (:meth:`set_active_modes`)."""
        return int(self._active.sum())

    def set_active_modes(self, count: int) -> None:
        """Use only degrees ``0 … count−1`` from now on (incremental Fourier modes, iFNO).

        The weights of the degrees switched off are set to zero and their gradients are zeroed
        (so AdamW without weight decay leaves them at zero); switching degrees back on lets
        them learn from zero. The state-dict keys and shapes do not change.

        Raises
        ------
        ModelSpecError
            If ``count`` is not in ``1 … modes``.
        """
        if not 1 <= count <= self.modes:
            raise ModelSpecError(f"active modes must lie in 1..{self.modes}, found {count}")
        self._active = (torch.arange(self.modes) < count).float()
        with torch.no_grad():
            for weight in self.spectral_weights():
                weight[..., count:] = 0
                if not hasattr(weight, "_fourcast_mask_hook"):
                    weight._fourcast_mask_hook = weight.register_hook(self._mask_gradient)

    def _mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self._active.to(grad.device)

    def on_grid(self, nlat: int, nlon: int) -> SFNONet:
        """The same operator on another equiangular ``nlat × nlon`` grid (poles included), without retraining.

        The transforms are rebuilt for the new grid — its own quadrature weights, so the
        spectral coefficients of a field are the same whichever grid samples it — and every
        learned weight is kept: the point-wise layers as they are, the spectral weights for
        the degrees both grids resolve. On a finer grid the truncation stays at the degrees
        the model learned (there is no weight for the others); on a coarser one the degrees
        it cannot resolve are dropped.

        Returns
        -------
        SFNONet
            A new model for inputs ``(batch, channel, nlat, nlon)``, in the same train/eval mode.

        Raises
        ------
        ResolutionTransferError
            If the blocks normalise over the grid itself (``layer_norm`` has one weight per
            grid point), so the trained weights have no meaning on another grid.
        """
        if self.settings["normalization"] == "layer_norm":
            raise ResolutionTransferError(
                f"an SFNO with layer_norm cannot move from its {self.img_size[0]}x{self.img_size[1]} grid to "
                f"{nlat}x{nlon}: its normalisation has one learned weight per grid point; 'instance_norm' or "
                "'none' transfer"
            )
        modes = min(self.modes, grid_modes((nlat, nlon), self.settings["scale_factor"]))
        try:
            other = SFNONet((nlat, nlon), modes=modes, **self.settings)
        except ModelSpecError as err:
            raise ResolutionTransferError(
                f"cannot move the SFNO from {self.img_size} to ({nlat}, {nlon}): {err}"
            ) from err
        state = {
            key: value[..., :modes] if key.endswith("global_conv.weight") else value
            for key, value in self.state_dict().items()
        }
        other.load_state_dict(state)
        if self.active_modes < self.modes:
            other.set_active_modes(min(self.active_modes, modes))
        weight = next(iter(self.parameters()))
        return other.to(weight.device).train(self.training)

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


def grid_modes(img_size: tuple[int, int], scale_factor: int) -> int:
    """Most spherical-harmonic degrees an SFNO on ``img_size`` with ``scale_factor`` resolves.

    The latent grid has ``(lat − 1) // scale_factor + 1`` rows and ``lon // scale_factor``
    columns; the transforms keep ``min(rows, columns // 2)`` degrees and orders.
    """
    lat, lon = img_size
    return min((lat - 1) // scale_factor + 1, lon // scale_factor // 2)
