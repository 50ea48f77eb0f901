"""Named model presets: the only way configs choose an architecture (no class paths in YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fourcast.errors import ModelSpecError

if TYPE_CHECKING:  # the networks (torch, torch-harmonics) are imported when a model is built, so reading
    from torch import nn  # a config (which checks preset names) stays light for the Cylc task verbs


@dataclass(frozen=True)
class Preset:
    """A model family and its hyper-parameters; the grid and channels come from the data."""

    family: str
    settings: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # FourCastNet at 0.25°: 20 channels on 720x1440 (the last latitude row dropped).
    "afno-fcn-0p25": Preset(
        "afno",
        dict(
            patch_size=8,
            embed_dim=768,
            depth=12,
            num_blocks=8,
            mlp_ratio=4.0,
            sparsity=0.01,
            hard_thresholding_fraction=1.0,
            mode_truncation="fourcastnet",
        ),
    ),
    # ~0.2 M parameters; learns the 6-hour tendency in minutes on 2 CPU cores at 32x64.
    "afno-tiny": Preset(
        "afno",
        dict(
            patch_size=2,
            embed_dim=64,
            depth=4,
            num_blocks=4,
            mlp_ratio=4.0,
            sparsity=0.0,
            predict_increment=True,
            embed_kernel=6,
            norm="none",
        ),
    ),
    "afno-small": Preset(
        "afno",
        dict(
            patch_size=4,
            embed_dim=256,
            depth=8,
            num_blocks=8,
            mlp_ratio=4.0,
            sparsity=0.01,
            predict_increment=True,
            embed_kernel=8,
        ),
    ),
    # SFNO on the full 721x1440 grid, poles included (the linear SFNO of Bonev et al. 2023 at the
    # width and depth of its 0.25° experiments: 8 layers, 384 features, latent grid 1/3).
    "sfno-0p25": Preset(
        "sfno",
        dict(
            embed_dim=384,
            num_layers=8,
            scale_factor=3,
            mlp_ratio=2.0,
            normalization="instance_norm",
            predict_increment=True,
        ),
    ),
    # A CPU-sized SFNO for coarse grids such as the 32x64 synthetic default.
    "sfno-small": Preset(
        "sfno",
        dict(
            embed_dim=48,
            num_layers=4,
            scale_factor=2,
            mlp_ratio=2.0,
            normalization="none",
            predict_increment=True,
        ),
    ),
}


def _family(name: str):
    """The network class of a preset family (imported on first use)."""
    if name == "afno":
        from fourcast.models.afno import AFNONet

        return AFNONet
    from fourcast.models.sfno import SFNONet

    return SFNONet


def build_model(
    preset: str, grid: tuple[int, int], in_channels: int, out_channels: int | None = None
) -> nn.Module:
    """Instantiate a preset for a grid ``(lat, lon)`` and channel count.

    Raises
    ------
    ModelSpecError
        If the preset is unknown (the message lists the valid names) or does not fit the grid.
    """
    if preset not in PRESETS:
        raise ModelSpecError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    return _family(spec.family)(
        img_size=tuple(grid),
        in_channels=in_channels,
        out_channels=out_channels or in_channels,
        **spec.settings,
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
