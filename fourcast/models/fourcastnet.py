"""Released FourCastNet weights (NVlabs/FourCastNet; Pathak et al. 2022) in fourcast's :class:`AFNONet`.

The released 0.25° backbone is a ``torch.save`` dict ``{"model_state": {...}, ...}`` whose tensors
are named after FourCastNet's own ``AFNONet``, wrapped in ``DistributedDataParallel`` (hence the
``module.`` prefix on every key). fourcast's :class:`~fourcast.models.afno.AFNONet` with
``mode_truncation="fourcastnet"`` (the ``afno-fcn-0p25`` preset) computes the same forward pass
with the same tensors; only some names differ:

- ``blocks.{i}.mlp.fc1.{weight,bias}`` is our ``blocks.{i}.mlp.net.0.{weight,bias}``;
- ``blocks.{i}.mlp.fc2.{weight,bias}`` is our ``blocks.{i}.mlp.net.3.{weight,bias}``;
- ``norm.{weight,bias}`` has no counterpart: the reference defines this final LayerNorm but never
  applies it, so it is accepted and dropped (:data:`UNUSED_KEYS`);
- every other tensor (``pos_embed``, ``patch_embed.proj.*``, ``blocks.{i}.norm1.*``,
  ``blocks.{i}.filter.{w1,b1,w2,b2}``, ``blocks.{i}.norm2.*``, ``head.weight``) has the same name.

The checkpoint holds weights only. Running it as a forecaster also needs FourCastNet's
normalisation statistics (its ``global_means.npy`` / ``global_stds.npy``) for the channels in
:data:`FOURCASTNET_CHANNELS`, and inputs on the 720-row grid (:func:`crop_to_fourcastnet_grid`).
"""

from __future__ import annotations

import inspect
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import nn

from fourcast.errors import CheckpointError, ModelSpecError
from fourcast.models.afno import AFNONet
from fourcast.models.registry import PRESETS, build_model
from ingest.dims import LAT
from ingest.grid import same_coords

FOURCASTNET_PRESET = "afno-fcn-0p25"

#: Channel order of the released 0.25° backbone: FourCastNet's name → fourcast lexicon id.
#: Units are ERA5's as delivered (geopotential in m² s⁻², relative humidity in %), as in the lexicon.
FOURCASTNET_CHANNEL_MAP: Mapping[str, str] = MappingProxyType(
    {
        "u10": "u10m",
        "v10": "v10m",
        "t2m": "t2m",
        "sp": "sp",
        "msl": "msl",
        "t850": "t850",
        "u1000": "u1000",
        "v1000": "v1000",
        "z1000": "z1000",
        "u850": "u850",
        "v850": "v850",
        "z850": "z850",
        "u500": "u500",
        "v500": "v500",
        "z500": "z500",
        "t500": "t500",
        "z50": "z50",
        "r500": "r500",
        "r850": "r850",
        "tcwv": "tcwv",
    }
)
#: Lexicon ids in the released model's channel order (input and output).
FOURCASTNET_CHANNELS: tuple[str, ...] = tuple(FOURCASTNET_CHANNEL_MAP.values())

GRID_SPACING_DEG = 0.25
#: ERA5's regular 0.25° grid ``(lat, lon)``: latitude 90 → −90 including both poles.
ERA5_GRID = (721, 1440)
#: FourCastNet's grid: ERA5's without its last latitude row (−90°), so that 720 divides by the patch.
FOURCASTNET_GRID = (720, 1440)

#: Prefix ``DistributedDataParallel`` puts on every key of the released ``model_state``.
DDP_PREFIX = "module."
#: FourCastNet's final LayerNorm: created in ``AFNONet.__init__`` but never applied in ``forward``,
#: so it has no counterpart here. Loading accepts and drops it (its values cannot matter);
#: :func:`to_fourcastnet_state` writes it with its initial, identity values.
UNUSED_KEYS = frozenset({"norm.weight", "norm.bias"})

_TOP_LEVEL = ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight")
_PER_BLOCK = MappingProxyType(
    {  # FourCastNet name inside ``blocks.{i}`` → ours
        "norm1.weight": "norm1.weight",
        "norm1.bias": "norm1.bias",
        "filter.w1": "filter.w1",
        "filter.b1": "filter.b1",
        "filter.w2": "filter.w2",
        "filter.b2": "filter.b2",
        "norm2.weight": "norm2.weight",
        "norm2.bias": "norm2.bias",
        "mlp.fc1.weight": "mlp.net.0.weight",
        "mlp.fc1.bias": "mlp.net.0.bias",
        "mlp.fc2.weight": "mlp.net.3.weight",
        "mlp.fc2.bias": "mlp.net.3.bias",
    }
)
_PER_BLOCK_REVERSED = MappingProxyType({ours: theirs for theirs, ours in _PER_BLOCK.items()})
_BLOCK_KEY = re.compile(r"blocks\.(0|[1-9][0-9]*)\.(.+)")
_SIZED_BY = MappingProxyType(
    {  # where each size is read from, for error messages
        "in_channels": "patch_embed.proj.weight",
        "out_channels": "head.weight",
        "patch_size": "patch_embed.proj.weight",
        "embed_dim": "patch_embed.proj.weight",
        "depth": "blocks.<i>",
        "num_blocks": "blocks.0.filter.w1",
        "mlp_hidden": "blocks.0.mlp.fc1.weight",
        "tokens": "pos_embed",
    }
)


# --------------------------------------------------------------------------------------- grid


def fourcastnet_lat_lon() -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of :data:`FOURCASTNET_GRID` in degrees.

    Returns
    -------
    lat : numpy.ndarray, shape (720,)
        90 → −89.75.
    lon : numpy.ndarray, shape (1440,)
        0 → 359.75.
    """
    lat = 90.0 - GRID_SPACING_DEG * np.arange(FOURCASTNET_GRID[0])
    lon = GRID_SPACING_DEG * np.arange(FOURCASTNET_GRID[1])
    return lat, lon


def crop_to_fourcastnet_grid(
    x: np.ndarray | torch.Tensor, lat: np.ndarray
) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """Drop ERA5's South-Pole row (lat −90°), as FourCastNet does to get 720 rows.

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor, shape (..., 721, 1440)
        Fields on ERA5's 0.25° grid, latitude second to last.
    lat : numpy.ndarray, shape (721,)
        Latitudes of ``x``'s rows: 90 → −90 in steps of 0.25°.

    Returns
    -------
    x : same type as the input, shape (..., 720, 1440)
    lat : numpy.ndarray, shape (720,)

    Raises
    ------
    ModelSpecError
        If ``x`` is not on the ERA5 grid or ``lat`` does not run 90 → −90 at 0.25°.
    """
    lat = np.asarray(lat, dtype=float)
    if tuple(x.shape[-2:]) != ERA5_GRID:
        raise ModelSpecError(
            f"expected fields on ERA5's {ERA5_GRID[0]}x{ERA5_GRID[1]} grid (lat, lon last), "
            f"found shape {tuple(x.shape)}"
        )
    era5_lat = np.linspace(90.0, -90.0, ERA5_GRID[0])
    if lat.ndim != 1 or not same_coords({LAT: era5_lat}, {LAT: lat}, (LAT,)):
        found = f"{lat.size} values, {lat[0]:.3f}..{lat[-1]:.3f}" if lat.size else "no values"
        raise ModelSpecError(
            f"expected {ERA5_GRID[0]} latitudes 90 → -90 at {GRID_SPACING_DEG}°, found {found}"
        )
    return x[..., :-1, :], lat[:-1]


# --------------------------------------------------------------------------------- key names


def _rename(name: str, per_block: Mapping[str, str]) -> str | None:
    """Translate one tensor name with ``per_block``; ``None`` if it is not a known name."""
    if name in _TOP_LEVEL:
        return name
    match = _BLOCK_KEY.fullmatch(name)
    if match is None or match[2] not in per_block:
        return None
    return f"blocks.{match[1]}.{per_block[match[2]]}"


def _unknown(kind: str, names: list[str], per_block: Mapping[str, str]) -> CheckpointError:
    return CheckpointError(
        f"unknown {kind} tensor name(s) {sorted(names)}; expected one of {list(_TOP_LEVEL)} "
        f"or 'blocks.<i>.' followed by one of {list(per_block)}"
    )


def fourcastnet_key_to_ours(name: str) -> str:
    """fourcast's name of the tensor FourCastNet calls ``name`` (without ``module.``).

    Raises
    ------
    CheckpointError
        If ``name`` is not a FourCastNet backbone tensor that fourcast uses (including the
        unused :data:`UNUSED_KEYS`, which have no counterpart).
    """
    ours = _rename(name, _PER_BLOCK)
    if ours is None:
        raise _unknown("FourCastNet", [name], _PER_BLOCK)
    return ours


def our_key_to_fourcastnet(name: str) -> str:
    """FourCastNet's name (without ``module.``) of the tensor fourcast calls ``name``.

    Raises
    ------
    CheckpointError
        If ``name`` is not a tensor of a FourCastNet-compatible :class:`AFNONet`.
    """
    theirs = _rename(name, _PER_BLOCK_REVERSED)
    if theirs is None:
        raise _unknown("fourcast AFNONet", [name], _PER_BLOCK_REVERSED)
    return theirs


def from_fourcastnet_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a FourCastNet state dict (keys without ``module.``) to fourcast's names.

    The unused final LayerNorm (:data:`UNUSED_KEYS`) is dropped; every other key must be known.

    Raises
    ------
    CheckpointError
        Naming every unknown key at once.
    """
    renamed = {name: _rename(name, _PER_BLOCK) for name in state if name not in UNUSED_KEYS}
    unknown = [name for name, ours in renamed.items() if ours is None]
    if unknown:
        raise _unknown("FourCastNet", unknown, _PER_BLOCK)
    return {ours: state[name] for name, ours in renamed.items()}


def to_fourcastnet_state(model: AFNONet) -> dict[str, torch.Tensor]:
    """The state dict FourCastNet's ``AFNONet`` would hold for ``model`` (keys without ``module.``).

    Includes the unused final LayerNorm ``norm.weight`` / ``norm.bias`` (shape ``(embed_dim,)``)
    with identity values, so the key set is exactly the reference's. Tensors share storage with
    ``model``'s parameters.

    Raises
    ------
    ModelSpecError
        If ``model`` is not an :class:`AFNONet` computing FourCastNet's forward pass.
    """
    problems = _model_incompatibilities(model)
    if problems:
        raise ModelSpecError(f"model is not FourCastNet-compatible: {'; '.join(problems)}")
    state = {our_key_to_fourcastnet(name): tensor for name, tensor in model.state_dict().items()}
    pos_embed = state["pos_embed"]
    state["norm.weight"] = torch.ones(pos_embed.shape[-1], dtype=pos_embed.dtype, device=pos_embed.device)
    state["norm.bias"] = torch.zeros(pos_embed.shape[-1], dtype=pos_embed.dtype, device=pos_embed.device)
    return state


def _model_incompatibilities(model: nn.Module) -> list[str]:
    """Ways in which ``model``'s forward pass differs from FourCastNet's (empty if none)."""
    if not isinstance(model, AFNONet):
        return [f"expected an AFNONet, found {type(model).__name__}"]
    problems = []
    if model.predict_increment:
        problems.append("predict_increment is true (FourCastNet predicts the state)")
    if model.patch_embed.halo:
        problems.append(
            f"embed_kernel overlaps patches by {model.patch_embed.halo} pixels "
            "(FourCastNet's kernel is the patch)"
        )
    if any(not isinstance(block.norm1, nn.LayerNorm) for block in model.blocks):
        problems.append("norm is 'none' (FourCastNet uses LayerNorm)")
    if any(block.filter.mode_truncation != "fourcastnet" for block in model.blocks):
        problems.append("mode_truncation is not 'fourcastnet'")
    return problems


# ------------------------------------------------------------------------------ architecture


@dataclass(frozen=True)
class _BackboneSize:
    """Hyper-parameters read off FourCastNet tensor shapes."""

    in_channels: int
    out_channels: int
    patch_size: int
    embed_dim: int
    depth: int
    num_blocks: int
    mlp_hidden: int
    tokens: int


def _shape_of(state: Mapping[str, torch.Tensor], name: str, ndim: int) -> tuple[int, ...]:
    if name not in state:
        raise CheckpointError(f"missing FourCastNet tensor {name!r}, needed to size the backbone")
    shape = tuple(state[name].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{name!r} should have {ndim} dimensions, found shape {shape}")
    return shape


def _infer_size(state: Mapping[str, torch.Tensor]) -> _BackboneSize:
    """Size the backbone from a FourCastNet state dict (keys without ``module.``).

    Reads ``patch_embed.proj.weight`` ``(embed, in, patch, patch)``, ``head.weight``
    ``(out · patch², embed)``, ``pos_embed`` ``(1, tokens, embed)``, ``blocks.0.filter.w1``
    ``(2, num_blocks, block, block)``, ``blocks.0.mlp.fc1.weight`` ``(hidden, embed)``, and counts
    the blocks.
    """
    embed_dim, in_channels, patch, patch_w = _shape_of(state, "patch_embed.proj.weight", 4)
    if patch != patch_w:
        raise CheckpointError(
            f"'patch_embed.proj.weight' should have a square kernel, found {patch}x{patch_w}"
        )
    head_rows, _ = _shape_of(state, "head.weight", 2)
    if head_rows % (patch * patch):
        raise CheckpointError(
            f"'head.weight' has {head_rows} rows, not a multiple of patch² = {patch * patch}"
        )
    depth = 1 + max((int(m[1]) for m in map(_BLOCK_KEY.fullmatch, state) if m), default=-1)
    return _BackboneSize(
        in_channels=in_channels,
        out_channels=head_rows // (patch * patch),
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_blocks=_shape_of(state, "blocks.0.filter.w1", 4)[1],
        mlp_hidden=_shape_of(state, "blocks.0.mlp.fc1.weight", 2)[0],
        tokens=_shape_of(state, "pos_embed", 3)[1],
    )


def _preset_setting(settings: Mapping[str, object], name: str) -> object:
    """A preset's value for an :class:`AFNONet` argument, or the constructor's default."""
    if name in settings:
        return settings[name]
    return inspect.signature(AFNONet).parameters[name].default


def _preset_incompatibilities(settings: Mapping[str, object]) -> list[str]:
    """Preset settings that would make :class:`AFNONet` differ from FourCastNet's forward pass."""
    expected = {"mode_truncation": "fourcastnet", "predict_increment": False, "norm": "layer"}
    problems = [
        f"{name}={_preset_setting(settings, name)!r} (expected {value!r})"
        for name, value in expected.items()
        if _preset_setting(settings, name) != value
    ]
    kernel = _preset_setting(settings, "embed_kernel")
    if kernel not in (None, _preset_setting(settings, "patch_size")):
        problems.append(f"embed_kernel={kernel!r} (expected None: the patch size)")
    return problems


def _size_mismatches(
    size: _BackboneSize, settings: Mapping[str, object], grid: tuple[int, int], channels: int
) -> list[str]:
    """Differences between the checkpoint's sizes and what the preset, grid and channels expect."""
    expected = {
        name: _preset_setting(settings, name) for name in ("patch_size", "embed_dim", "depth", "num_blocks")
    }
    expected["mlp_hidden"] = int(expected["embed_dim"] * _preset_setting(settings, "mlp_ratio"))
    expected["in_channels"] = expected["out_channels"] = channels
    patch = expected["patch_size"]
    expected["tokens"] = (grid[0] // patch) * (grid[1] // patch)
    return [
        f"{name} {getattr(size, name)} from {_SIZED_BY[name]} (expected {value})"
        for name, value in expected.items()
        if getattr(size, name) != value
    ]


# ----------------------------------------------------------------------------------- loading


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``model_state`` of a released checkpoint, with the ``module.`` prefix removed."""
    if not path.is_file():
        raise CheckpointError(f"no FourCastNet checkpoint file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} is not a torch file of tensors, dicts, lists and numbers only "
            "(torch.load(weights_only=True) "
            "refused it): either it is no checkpoint at all, or it pickles other objects, which released "
            "FourCastNet checkpoints do not and which could run arbitrary code, so no unrestricted load is "
            "attempted (torch's reason is chained below)"
        ) from err
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {err!r}") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("model_state"), dict):
        found = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path}: expected a dict with a 'model_state' dict (FourCastNet's format), found {found}"
        )
    return _strip_prefix(payload["model_state"], path)


def _strip_prefix(state: Mapping[str, object], path: Path) -> dict[str, torch.Tensor]:
    unprefixed = sorted(
        str(name) for name in state if not (isinstance(name, str) and name.startswith(DDP_PREFIX))
    )
    if unprefixed:
        raise CheckpointError(
            f"{path}: every key of a released FourCastNet 'model_state' starts with "
            f"{DDP_PREFIX!r}; found {unprefixed}"
        )
    not_tensors = sorted(name for name, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path}: 'model_state' entries {not_tensors} are not tensors")
    return {name[len(DDP_PREFIX) :]: value for name, value in state.items()}


def _check_tensors(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> None:
    """Refuse missing keys and wrong shapes, naming them as FourCastNet does (without ``module.``)."""
    missing = sorted(our_key_to_fourcastnet(name) for name in expected.keys() - found.keys())
    if missing:
        raise CheckpointError(f"missing FourCastNet tensor(s) {missing}")
    wrong = [
        f"{our_key_to_fourcastnet(name)}: expected {tuple(tensor.shape)}, found {tuple(found[name].shape)}"
        for name, tensor in expected.items()
        if found[name].shape != tensor.shape
    ]
    if wrong:
        raise CheckpointError(f"tensor(s) of the wrong shape: {'; '.join(wrong)}")


def _build_from_state(
    state: Mapping[str, torch.Tensor], preset: str, grid: tuple[int, int], channels: int
) -> AFNONet:
    """Build ``preset`` for ``grid`` and load a FourCastNet state (keys without ``module.``) strictly."""
    ours = from_fourcastnet_state(state)
    size = _infer_size(state)
    mismatches = _size_mismatches(size, PRESETS[preset].settings, grid, channels)
    if mismatches:
        raise CheckpointError(
            f"checkpoint does not fit preset {preset!r} on a {grid[0]}x{grid[1]} grid with "
            f"{channels} channels: {', '.join(mismatches)}"
        )
    model = build_model(preset, grid, size.in_channels, size.out_channels)
    _check_tensors(model.state_dict(), ours)
    model.load_state_dict(ours, strict=True)
    return model


def load_fourcastnet_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    preset: str = FOURCASTNET_PRESET,
    grid: tuple[int, int] = FOURCASTNET_GRID,
    channels: int = len(FOURCASTNET_CHANNELS),
) -> AFNONet:
    """Build fourcast's AFNO from a released FourCastNet checkpoint (``backbone.ckpt`` / ``.tar``).

    Parameters
    ----------
    path : str or pathlib.Path
        ``torch.save`` of ``{"model_state": {"module.<name>": tensor, ...}, ...}``.
    device : str or torch.device
        Where the returned model lives.
    preset : str
        A FourCastNet-compatible preset (``mode_truncation="fourcastnet"``, LayerNorm,
        non-overlapping patches, state prediction); its sizes must match the tensors.
    grid : (int, int)
        ``(lat, lon)`` the model runs on; the released model's is :data:`FOURCASTNET_GRID`.
    channels : int
        Input and output channels expected (the released model's :data:`FOURCASTNET_CHANNELS`).

    Returns
    -------
    AFNONet
        In eval mode, mapping ``(batch, channels, lat, lon)`` to the same shape, normalised.

    Raises
    ------
    CheckpointError
        If the file is missing or unreadable, holds non-tensor objects ``weights_only`` refuses,
        has unknown or missing keys, or tensors whose sizes disagree with the preset, grid or
        channels; the message names them, expected against found.
    ModelSpecError
        If ``preset`` is unknown or not FourCastNet-compatible.
    """
    if preset not in PRESETS:
        raise ModelSpecError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    problems = _preset_incompatibilities(PRESETS[preset].settings)
    if problems:
        raise ModelSpecError(f"preset {preset!r} cannot hold FourCastNet weights: {'; '.join(problems)}")
    path = Path(path)
    state = _read_state(path)
    try:
        model = _build_from_state(state, preset, tuple(grid), channels)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return model.to(device).eval()
