"""Released FourCastNet checkpoints: names, strict loading, channel order, grid, and the forward pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fourcast.errors import CheckpointError, ModelSpecError
from fourcast.models.afno import AFNOFilter, AFNONet
from fourcast.models.fourcastnet import (
    FOURCASTNET_CHANNEL_MAP,
    FOURCASTNET_CHANNELS,
    FOURCASTNET_GRID,
    crop_to_fourcastnet_grid,
    fourcastnet_key_to_ours,
    fourcastnet_lat_lon,
    load_fourcastnet_checkpoint,
    our_key_to_fourcastnet,
    to_fourcastnet_state,
)
from fourcast.models.registry import PRESETS, Preset, build_model
from ingest.lexicon import get_variable

SMALL = "afno-fcn-small-test"
GRID = (16, 32)  # 4 x 8 tokens of 4 x 4 pixels: FourCastNet's truncation keeps 3 of the 5 zonal modes
CHANNELS = len(FOURCASTNET_CHANNELS)


@pytest.fixture
def small_preset(monkeypatch) -> str:
    """``afno-fcn-0p25`` shrunk to patch 4, embed 32, depth 2, 4 blocks (all other settings kept)."""
    settings = dict(PRESETS["afno-fcn-0p25"].settings, patch_size=4, embed_dim=32, depth=2, num_blocks=4)
    monkeypatch.setitem(PRESETS, SMALL, Preset("afno", settings))
    return SMALL


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter (norms and biases included) drawn at random, so no tensor can hide a mix-up."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * (0.2 if param.ndim > 1 else 0.5))
    return model.eval()


def _released_file(state: dict, path) -> dict:
    """Write ``state`` (FourCastNet names) as the released files are: DDP-prefixed, under ``model_state``."""
    payload = {"model_state": {"module." + name: tensor for name, tensor in state.items()}, "epoch": 150}
    torch.save(payload, path)
    return payload["model_state"]


@pytest.fixture
def released(small_preset, tmp_path):
    """A small model with random weights and its checkpoint in FourCastNet's released format."""
    model = _randomised(build_model(small_preset, GRID, CHANNELS))
    path = tmp_path / "backbone.tar"
    keys = _released_file(to_fourcastnet_state(model), path)
    return model, path, keys


def test_released_format_round_trip_gives_identical_forecasts(released, small_preset):
    model, path, _ = released
    loaded = load_fourcastnet_checkpoint(path, preset=small_preset, grid=GRID)
    x = torch.randn(2, CHANNELS, *GRID)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0.0, atol=1e-6)
    assert not loaded.training


def test_saved_file_uses_fourcastnet_names(released):
    _, _, keys = released
    for name in (
        "module.pos_embed",
        "module.patch_embed.proj.weight",
        "module.patch_embed.proj.bias",
        "module.blocks.0.norm1.weight",
        "module.blocks.0.filter.w1",
        "module.blocks.1.filter.b2",
        "module.blocks.0.mlp.fc1.weight",
        "module.blocks.1.mlp.fc2.bias",
        "module.norm.weight",
        "module.norm.bias",
        "module.head.weight",
    ):
        assert name in keys
    assert len(keys) == 4 + 12 * 2 + 2  # top level, 12 per block, the unused final norm
    assert not [name for name in keys if ".net." in name]
    torch.testing.assert_close(keys["module.norm.weight"], torch.ones(32))


def test_key_mapping_both_ways():
    assert fourcastnet_key_to_ours("blocks.11.mlp.fc1.weight") == "blocks.11.mlp.net.0.weight"
    assert fourcastnet_key_to_ours("blocks.3.mlp.fc2.bias") == "blocks.3.mlp.net.3.bias"
    assert fourcastnet_key_to_ours("blocks.0.filter.w2") == "blocks.0.filter.w2"
    assert our_key_to_fourcastnet("blocks.2.mlp.net.3.weight") == "blocks.2.mlp.fc2.weight"
    model = AFNONet(
        GRID, 3, 3, patch_size=4, embed_dim=8, depth=2, num_blocks=2, mode_truncation="fourcastnet"
    )
    for name in model.state_dict():
        assert fourcastnet_key_to_ours(our_key_to_fourcastnet(name)) == name
    for unknown in ("norm.weight", "blocks.0.attn.qkv.weight", "blocks.x.norm1.weight", "head.bias"):
        with pytest.raises(CheckpointError, match=f"unknown FourCastNet tensor name.*{unknown}"):
            fourcastnet_key_to_ours(unknown)
    with pytest.raises(
        CheckpointError, match=r"unknown fourcast AFNONet tensor name.*blocks.0.mlp.fc1.weight"
    ):
        our_key_to_fourcastnet("blocks.0.mlp.fc1.weight")


def _drop(keys, name):
    del keys[name]


def _reshape(keys, name, shape):
    keys[name] = torch.zeros(shape)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda k: _drop(k, "module.blocks.1.norm2.bias"),
            r"missing FourCastNet tensor\(s\) \['blocks.1.norm2.bias'\]",
        ),
        (lambda k: _drop(k, "module.head.weight"), r"missing FourCastNet tensor 'head.weight'"),
        (
            lambda k: _reshape(k, "module.blocks.0.filter.w3", (1,)),
            r"unknown FourCastNet tensor.*'blocks.0.filter.w3'",
        ),
        (lambda k: _reshape(k, "module.ged", (1,)), r"unknown FourCastNet tensor.*'ged'"),
        (
            lambda k: _reshape(k, "module.blocks.1.filter.w2", (2, 4, 8, 9)),
            r"blocks.1.filter.w2: expected \(2, 4, 8, 8\), found \(2, 4, 8, 9\)",
        ),
        (
            lambda k: _reshape(k, "module.patch_embed.proj.weight", (16, 20, 4, 4)),
            r"embed_dim 16 from patch_embed.proj.weight \(expected 32\)",
        ),
        (
            lambda k: _reshape(k, "module.head.weight", (19 * 16, 32)),
            r"out_channels 19 from head.weight \(expected 20\)",
        ),
        (
            lambda k: k.update({"blocks.0.norm1.weight": k.pop("module.blocks.0.norm1.weight")}),
            r"starts with 'module.'; found \['blocks.0.norm1.weight'\]",
        ),
    ],
)
def test_bad_tensors_are_refused_by_name(released, small_preset, edit, message):
    _, path, keys = released
    keys = dict(keys)
    edit(keys)
    torch.save({"model_state": keys}, path)
    with pytest.raises(CheckpointError, match=message):
        load_fourcastnet_checkpoint(path, preset=small_preset, grid=GRID)


def test_grid_and_preset_must_fit_the_tensors(released, small_preset):
    _, path, _ = released
    with pytest.raises(CheckpointError, match=r"tokens 32 from pos_embed \(expected 64\)"):
        load_fourcastnet_checkpoint(path, preset=small_preset, grid=(32, 32))
    with pytest.raises(
        CheckpointError, match=r"patch_size 4 .*\(expected 8\).*embed_dim 32 .*\(expected 768\)"
    ):
        load_fourcastnet_checkpoint(path, grid=GRID)  # the released preset
    with pytest.raises(ModelSpecError, match="cannot hold FourCastNet weights: mode_truncation='full'"):
        load_fourcastnet_checkpoint(path, preset="afno-tiny", grid=GRID)
    with pytest.raises(ModelSpecError, match="unknown model preset 'afno-huge'"):
        load_fourcastnet_checkpoint(path, preset="afno-huge", grid=GRID)


class _NotATensor:
    pass


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not a checkpoint\n", "not a torch file of tensors, dicts, lists and numbers only"),
        (b"PK\x03\x04 truncated zip", "not a readable torch checkpoint"),
        (torch.zeros(3), "expected a dict with a 'model_state' dict.*found Tensor"),
        ({"state_dict": {}}, r"expected a dict with a 'model_state' dict.*found \['state_dict'\]"),
        ({"model_state": {"module.head.weight": [1.0]}}, r"entries \['module.head.weight'\] are not tensors"),
        (
            {"model_state": {}, "extra": _NotATensor()},
            r"weights_only=True\) refused it\): .*pickles other objects",
        ),
    ],
)
def test_non_checkpoints_are_refused(tmp_path, small_preset, payload, message):
    path = tmp_path / "file.tar"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        load_fourcastnet_checkpoint(path, preset=small_preset, grid=GRID)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no FourCastNet checkpoint file at"):
        load_fourcastnet_checkpoint(tmp_path / "absent.tar")


def test_only_fourcastnet_compatible_models_are_exported():
    with pytest.raises(
        ModelSpecError, match=r"predict_increment.*embed_kernel.*norm is 'none'.*mode_truncation"
    ):
        to_fourcastnet_state(build_model("afno-tiny", GRID, 3))


def test_released_channel_order_maps_onto_the_lexicon():
    assert len(FOURCASTNET_CHANNELS) == len(set(FOURCASTNET_CHANNELS)) == 20
    assert FOURCASTNET_CHANNELS[:5] == ("u10m", "v10m", "t2m", "sp", "msl")
    assert FOURCASTNET_CHANNELS[-4:] == ("z50", "r500", "r850", "tcwv")
    for theirs, ours in FOURCASTNET_CHANNEL_MAP.items():
        variable = get_variable(ours)
        # FourCastNet names fields by ERA5 short name, plus the level in hPa for pressure levels.
        assert theirs == variable.short_name + ("" if variable.level is None else str(variable.level))


def test_crop_drops_the_south_pole_row():
    era5_lat = np.linspace(90.0, -90.0, 721)
    x = np.random.default_rng(0).standard_normal((2, 721, 1440)).astype(np.float32)
    cropped, lat = crop_to_fourcastnet_grid(x, era5_lat)
    assert cropped.shape[-2:] == FOURCASTNET_GRID
    np.testing.assert_array_equal(cropped, x[:, :720])
    np.testing.assert_allclose(lat, fourcastnet_lat_lon()[0])
    assert (lat[0], lat[-1]) == (90.0, -89.75)
    tensor, _ = crop_to_fourcastnet_grid(torch.from_numpy(x), era5_lat)
    assert torch.equal(tensor, torch.from_numpy(x[:, :720]))
    with pytest.raises(ModelSpecError, match=r"latitudes 90 → -90 .* found 721 values, -90.000..90.000"):
        crop_to_fourcastnet_grid(x, era5_lat[::-1])
    with pytest.raises(ModelSpecError, match=r"ERA5's 721x1440 grid .* found shape \(2, 720, 1440\)"):
        crop_to_fourcastnet_grid(x[:, :720], era5_lat)


def test_fourcastnet_filter_is_a_complex_block_mlp_on_the_kept_modes():
    """FourCastNet's filter written with complex numbers: ``softshrink(W2 · relu(W1 · x̂ + b1) + b2)``."""
    h, w, blocks, size, fraction, lam = 6, 10, 2, 8, 0.75, 0.01
    layer = _randomised(AFNOFilter(blocks * size, blocks, lam, fraction, mode_truncation="fourcastnet"))
    x = torch.randn(2, h, w, blocks * size)
    spectrum = torch.fft.rfft2(x, dim=(1, 2), norm="ortho").reshape(2, h, w // 2 + 1, blocks, size)
    w1, b1, w2, b2 = (torch.complex(p[0], p[1]) for p in (layer.w1, layer.b1, layer.w2, layer.b2))
    hidden = torch.einsum("...bi,bio->...bo", spectrum, w1) + b1
    hidden = torch.complex(torch.relu(hidden.real), torch.relu(hidden.imag))
    out = torch.einsum("...bi,bio->...bo", hidden, w2) + b2
    out = torch.complex(*(torch.nn.functional.softshrink(part, lam) for part in (out.real, out.imag)))
    total = h // 2 + 1
    kept = int(total * fraction)
    rows, cols = torch.arange(h)[:, None], torch.arange(w // 2 + 1)[None, :]
    keep = (rows >= total - kept) & (rows < total + kept) & (cols < kept)
    out = out * keep[None, :, :, None, None]
    expected = torch.fft.irfft2(out.reshape(2, h, w // 2 + 1, -1), s=(h, w), dim=(1, 2), norm="ortho") + x
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_head_unpacks_tokens_as_b_h_w_p1_p2_c():
    """Output pixel ``(c, h·p + p1, w·p + p2)`` is head feature ``(p1·p + p2)·C + c`` of token ``(h, w)``."""
    p, out_channels = 4, 3
    model = _randomised(
        AFNONet(
            (8, 12),
            2,
            out_channels,
            patch_size=p,
            embed_dim=8,
            depth=1,
            num_blocks=2,
            mode_truncation="fourcastnet",
        )
    )
    features = {}
    model.head.register_forward_hook(lambda module, args, out: features.update(head=out))
    with torch.no_grad():
        y = model(torch.randn(2, 2, 8, 12))
    head = features["head"]
    for hi, wi, p1, p2, c in itertools.product(range(2), range(3), range(p), range(p), range(out_channels)):
        assert torch.equal(
            y[:, c, hi * p + p1, wi * p + p2], head[:, hi, wi, (p1 * p + p2) * out_channels + c]
        )


@pytest.mark.slow
def test_full_size_released_checkpoint_loads_into_the_preset(tmp_path):
    model = build_model("afno-fcn-0p25", FOURCASTNET_GRID, CHANNELS)
    keys = _released_file(to_fourcastnet_state(model), tmp_path / "backbone.tar")
    assert len(keys) == 4 + 12 * 12 + 2
    loaded = load_fourcastnet_checkpoint(tmp_path / "backbone.tar")  # the released preset, grid and channels
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
