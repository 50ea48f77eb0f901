"""Adaptive Fourier Neural Operator, as FourCastNet uses it (Pathak et al. 2022; Guibas et al. 2021).

Shapes: the network maps ``(batch, in_channels, lat, lon)`` to ``(batch, out_channels, lat, lon)``.
Inside, the grid is cut into ``patch × patch`` tokens on an ``h × w`` token grid
(``h = lat / patch``, ``w = lon / patch``), each embedded in ``embed_dim`` features.

Token mixing (:class:`AFNOFilter`): a real 2-D FFT over the token grid, a two-layer complex
MLP applied independently to ``num_blocks`` diagonal blocks of the feature dimension (weights
shared across all frequencies), soft-shrinkage for sparsity, and the inverse FFT. FFTs always
run in float32, whatever the autocast dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from fourcast.errors import ModelSpecError, ResolutionTransferError

MODE_TRUNCATIONS = ("full", "fourcastnet")


class AFNOFilter(nn.Module):
    """Block-diagonal complex MLP in the 2-D Fourier domain of the token grid.

    Parameters
    ----------
    embed_dim : int
        Feature size; must divide by ``num_blocks``.
    num_blocks : int
        Number of diagonal blocks of the complex weight matrices.
    sparsity : float
        Soft-shrinkage threshold λ applied to the real and imaginary parts.
    hard_thresholding_fraction : float
        Fraction of Fourier modes kept (0 < f ≤ 1); the others are zeroed.
    hidden_factor : int
        Width of the hidden complex layer relative to the block size.
    mode_truncation : {"full", "fourcastnet"}
        ``"full"`` keeps every mode of the token grid (and needs ``f == 1``).
        ``"fourcastnet"`` reproduces the reference code: it keeps meridional rows
        ``[m − k, m + k)`` and zonal columns ``[0, k)`` with ``m = h // 2 + 1``,
        ``k = int(m · f)``, so at most ``h // 2 + 1`` zonal wavenumbers survive.

    Attributes
    ----------
    fast : bool
        Compute the complex MLP as one batched real GEMM per layer over the kept modes
        (``[re, im] @ [[w_r, w_i], [-w_i, w_r]]`` for every block at once) instead of four
        einsums; same weights, equal outputs up to float32 summation order (see
        :func:`use_fast_filter`). Off by default, the layout the reference checkpoints use.
    """

    def __init__(
        self,
        embed_dim: int,
        num_blocks: int = 8,
        sparsity: float = 0.01,
        hard_thresholding_fraction: float = 1.0,
        hidden_factor: int = 1,
        mode_truncation: str = "full",
    ) -> None:
        super().__init__()
        if embed_dim % num_blocks:
            raise ModelSpecError(f"embed_dim {embed_dim} must be divisible by num_blocks {num_blocks}")
        if not 0.0 < hard_thresholding_fraction <= 1.0:
            raise ModelSpecError(
                f"hard_thresholding_fraction must be in (0, 1], found {hard_thresholding_fraction}"
            )
        if mode_truncation not in MODE_TRUNCATIONS:
            raise ModelSpecError(
                f"mode_truncation must be one of {MODE_TRUNCATIONS}, found {mode_truncation!r}"
            )
        if mode_truncation == "full" and hard_thresholding_fraction < 1.0:
            raise ModelSpecError(
                "mode_truncation='full' keeps every mode: hard_thresholding_fraction must be 1.0, "
                f"found {hard_thresholding_fraction}"
            )
        self.num_blocks = num_blocks
        self.block_size = embed_dim // num_blocks
        self.sparsity = sparsity
        self.fraction = hard_thresholding_fraction
        self.mode_truncation = mode_truncation
        self.fast = False
        hidden = self.block_size * hidden_factor
        scale = 0.02
        self.w1 = nn.Parameter(scale * torch.randn(2, num_blocks, self.block_size, hidden))
        self.b1 = nn.Parameter(scale * torch.randn(2, num_blocks, hidden))
        self.w2 = nn.Parameter(scale * torch.randn(2, num_blocks, hidden, self.block_size))
        self.b2 = nn.Parameter(scale * torch.randn(2, num_blocks, self.block_size))

    def _kept_modes(self, h: int) -> tuple[slice, slice]:
        """Meridional rows and zonal columns of the rfft2 spectrum that the MLP acts on."""
        if self.mode_truncation == "fourcastnet":
            total = h // 2 + 1
            kept = int(total * self.fraction)
            return slice(total - kept, total + kept), slice(0, kept)
        return slice(None), slice(None)

    @staticmethod
    def _complex_linear(
        re: torch.Tensor, im: torch.Tensor, w: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out_re = (
            torch.einsum("...bi,bio->...bo", re, w[0]) - torch.einsum("...bi,bio->...bo", im, w[1]) + b[0]
        )
        out_im = (
            torch.einsum("...bi,bio->...bo", im, w[0]) + torch.einsum("...bi,bio->...bo", re, w[1]) + b[1]
        )
        return out_re, out_im

    def _einsum_mlp(self, kept: torch.Tensor) -> torch.Tensor:
        """Complex MLP of the kept modes ``(batch, rows, cols, block, block_size)``, as the reference writes
        it."""
        hid_re, hid_im = self._complex_linear(kept.real, kept.imag, self.w1.float(), self.b1.float())
        out_re, out_im = self._complex_linear(
            torch.relu(hid_re), torch.relu(hid_im), self.w2.float(), self.b2.float()
        )
        return torch.view_as_complex(
            nn.functional.softshrink(torch.stack([out_re, out_im], dim=-1), self.sparsity).contiguous()
        )

    @staticmethod
    def _real_block_weights(w: torch.Tensor) -> torch.Tensor:
        """``(2, block, i, o)`` complex weights as real ``(block, 2i, 2o)``: ``[[w_r, w_i], [-w_i, w_r]]``."""
        top = torch.cat([w[0], w[1]], dim=-1)
        bottom = torch.cat([-w[1], w[0]], dim=-1)
        return torch.cat([top, bottom], dim=-2)

    def _fast_mlp(self, kept: torch.Tensor) -> torch.Tensor:
        """:meth:`_einsum_mlp` as two batched GEMMs over the blocks: modes x ``[re, im]`` features."""
        shape = kept.shape
        modes = kept.reshape(-1, self.num_blocks, self.block_size)
        features = torch.cat([modes.real, modes.imag], dim=-1).transpose(0, 1)  # (block, modes, 2i)
        w1, w2 = self._real_block_weights(self.w1.float()), self._real_block_weights(self.w2.float())
        b1 = torch.cat([self.b1[0], self.b1[1]], dim=-1).float().unsqueeze(1)
        b2 = torch.cat([self.b2[0], self.b2[1]], dim=-1).float().unsqueeze(1)
        hidden = torch.relu(torch.baddbmm(b1, features, w1))
        out = nn.functional.softshrink(torch.baddbmm(b2, hidden, w2), self.sparsity).transpose(0, 1)
        re, im = out.split(self.block_size, dim=-1)
        return torch.complex(re, im).reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix tokens: ``x`` of shape ``(batch, h, w, embed_dim)``; returns the same shape, plus ``x``."""
        residual = x
        dtype = x.dtype
        batch, h, w, channels = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfft2(x.float(), dim=(1, 2), norm="ortho")
            spectrum = spectrum.reshape(batch, h, w // 2 + 1, self.num_blocks, self.block_size)
            rows, cols = self._kept_modes(h)
            kept = spectrum[:, rows, cols]
            out = self._fast_mlp(kept) if self.fast else self._einsum_mlp(kept)
            mixed = torch.zeros_like(spectrum)
            mixed[:, rows, cols] = out
            mixed = mixed.reshape(batch, h, w // 2 + 1, channels)
            x = torch.fft.irfft2(mixed, s=(h, w), dim=(1, 2), norm="ortho")
        return x.to(dtype) + residual


def use_fast_filter(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every :class:`AFNOFilter` of ``model`` to the batched-GEMM spectral MLP (or back).

    The weights and the checkpoint layout do not change; outputs equal the einsum path within
    float32 rounding (``tests/fourcast/test_afno.py``). Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, AFNOFilter):
            module.fast = enabled
    return model


class MLP(nn.Module):
    """Two linear layers with GELU, applied per token: ``(..., dim) → (..., dim)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchEmbed(nn.Module):
    """Cut ``(batch, channels, lat, lon)`` into ``patch × patch`` tokens of ``embed_dim`` features.

    With ``kernel == patch`` this is FourCastNet's non-overlapping patch embedding. A larger
    (even) ``kernel`` lets each token also see ``(kernel − patch) / 2`` pixels of its
    neighbours — longitude wraps around, latitude repeats its edge rows — so the token knows
    the local gradients that advection needs, which a coarse grid cannot resolve inside a patch.
    """

    def __init__(self, in_channels: int, embed_dim: int, patch: int, kernel: int | None = None) -> None:
        super().__init__()
        kernel = kernel or patch
        if kernel < patch or (kernel - patch) % 2:
            raise ModelSpecError(
                f"embed_kernel must be patch_size plus an even number, found {kernel} for patch {patch}"
            )
        self.halo = (kernel - patch) // 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=kernel, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, C, lat, lon) → (batch, embed_dim, lat / patch, lon / patch)``."""
        if self.halo:
            x = nn.functional.pad(x, (self.halo, self.halo, 0, 0), mode="circular")
            x = nn.functional.pad(x, (0, 0, self.halo, self.halo), mode="replicate")
        return self.proj(x)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "none":
        return nn.Identity()
    raise ModelSpecError(f"norm must be 'layer' or 'none', found {kind!r}")


class AFNOBlock(nn.Module):
    """Norm → AFNO filter → (double skip) → norm → MLP → residual, on ``(batch, h, w, dim)``."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float,
        num_blocks: int,
        sparsity: float,
        hard_thresholding_fraction: float,
        mode_truncation: str,
        double_skip: bool = True,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        self.norm1 = _norm(norm, dim)
        self.filter = AFNOFilter(dim, num_blocks, sparsity, hard_thresholding_fraction, 1, mode_truncation)
        self.norm2 = _norm(norm, dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.double_skip = double_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.filter(self.norm1(x))
        if self.double_skip:
            x = x + residual
            residual = x
        return self.mlp(self.norm2(x)) + residual


class AFNONet(nn.Module):
    """FourCastNet's AFNO backbone.

    Parameters
    ----------
    img_size : (int, int)
        Grid ``(lat, lon)`` seen by the network; both must divide by ``patch_size``.
    in_channels, out_channels : int
        Channels of the input and the output state.
    patch_size : int
        Side of the square patches that become tokens.
    embed_dim, depth, num_blocks, mlp_ratio, sparsity, hard_thresholding_fraction, mode_truncation
        As in FourCastNet (see :class:`AFNOFilter`).
    predict_increment : bool
        If true the network output is added to the input (``in_channels == out_channels``),
        i.e. it learns the 6-hour tendency, and the head starts at zero so the untrained model
        is persistence; FourCastNet predicts the state directly (false).
    embed_kernel : int, optional
        Patch-embedding kernel (see :class:`PatchEmbed`); FourCastNet's is ``patch_size``.
    norm : {"layer", "none"}
        Token normalisation in each block. FourCastNet uses LayerNorm; it makes the block's
        branch blind to the amplitude of the local state, which small models trained for
        minutes cannot afford ("none" then learns the dynamics several times faster).
    """

    def __init__(
        self,
        img_size: tuple[int, int],
        in_channels: int,
        out_channels: int,
        patch_size: int = 8,
        embed_dim: int = 768,
        depth: int = 12,
        num_blocks: int = 8,
        mlp_ratio: float = 4.0,
        sparsity: float = 0.01,
        hard_thresholding_fraction: float = 1.0,
        mode_truncation: str = "full",
        predict_increment: bool = False,
        embed_kernel: int | None = None,
        norm: str = "layer",
    ) -> None:
        super().__init__()
        lat, lon = img_size
        if lat % patch_size or lon % patch_size:
            raise ModelSpecError(f"grid {lat}x{lon} must be divisible by patch_size {patch_size}")
        if predict_increment and in_channels != out_channels:
            raise ModelSpecError(
                f"predict_increment needs in_channels == out_channels, found {in_channels} and {out_channels}"
            )
        self.img_size = (lat, lon)
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.predict_increment = predict_increment
        self.tokens = (lat // patch_size, lon // patch_size)
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size, embed_kernel)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.tokens[0] * self.tokens[1], embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            AFNOBlock(
                embed_dim,
                mlp_ratio,
                num_blocks,
                sparsity,
                hard_thresholding_fraction,
                mode_truncation,
                norm=norm,
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(embed_dim, out_channels * patch_size * patch_size, bias=False)
        self.apply(self._init_weights)
        if predict_increment:
            nn.init.zeros_(self.head.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def on_grid(self, nlat: int, nlon: int) -> AFNONet:
        """Refuse to move to another grid: the AFNO is an operator on its training grid only.

        Raises
        ------
        ResolutionTransferError
            Always for another grid (the message says why); the same grid returns ``self``.
        """
        if (nlat, nlon) == self.img_size:
            return self
        h, w = self.tokens
        raise ResolutionTransferError(
            f"an AFNO trained on a {self.img_size[0]}x{self.img_size[1]} grid cannot forecast on "
            f"{nlat}x{nlon} "
            f"without retraining: its learned position embedding holds one vector per patch of the {h}x{w} "
            f"patch grid (a {nlat // self.patch_size}x{nlon // self.patch_size} patch grid has "
            "positions it never "
            f"learned), and a patch is {self.patch_size}x{self.patch_size} grid points, so its "
            "footprint on the "
            "sphere and the frequencies its FFT mixes change with the grid. Retrain on the new "
            "grid, regrid the "
            "store to the model's grid, or use an SFNO (preset sfno-*), whose weights live on "
            "spherical-harmonic "
            "degrees"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, in_channels, lat, lon) → (batch, out_channels, lat, lon)``."""
        if tuple(x.shape[-2:]) != self.img_size:
            raise ModelSpecError(
                f"model built for a {self.img_size} grid, got input of shape {tuple(x.shape)}"
            )
        batch = x.shape[0]
        h, w = self.tokens
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        tokens = tokens.reshape(batch, h, w, -1)
        for block in self.blocks:
            tokens = block(tokens)
        p = self.patch_size
        out = self.head(tokens).reshape(batch, h, w, p, p, self.out_channels)
        out = out.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.out_channels, h * p, w * p)
        return x + out if self.predict_increment else out
