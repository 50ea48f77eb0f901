import re
from pathlib import Path

import pytest
import torch

from fourcast.errors import ModelSpecError
from fourcast.models.afno import AFNOFilter, AFNONet, use_fast_filter
from fourcast.models.registry import PRESETS, build_model, count_parameters
from tests.tolerances import assert_close_to_spread


def test_afno_maps_grid_to_grid_and_learns_increments():
    model = build_model("afno-tiny", (16, 32), 3)
    x = torch.randn(2, 3, 16, 32)
    assert model(x).shape == (2, 3, 16, 32)
    torch.nn.init.zeros_(model.head.weight)  # zero head → the increment vanishes
    torch.testing.assert_close(model(x), x)


def test_filter_is_a_residual_around_a_fourier_mlp():
    layer = AFNOFilter(embed_dim=16, num_blocks=4, sparsity=0.0)
    with torch.no_grad():
        for p in (layer.w1, layer.b1, layer.w2, layer.b2):
            p.zero_()
    x = torch.randn(2, 4, 8, 16)
    torch.testing.assert_close(layer(x), x)  # zero weights → zero spectrum → pure skip


def test_fourcastnet_mode_truncation_keeps_h_over_2_plus_1_zonal_modes():
    layer = AFNOFilter(embed_dim=8, num_blocks=2, mode_truncation="fourcastnet")
    rows, cols = layer._kept_modes(h=90)
    assert (rows.start, rows.stop, cols.stop) == (0, 92, 46)


def test_ffts_stay_float32_under_bf16_autocast():
    model = build_model("afno-tiny", (16, 32), 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 16, 32))
    assert torch.isfinite(out).all()


def test_presets_and_errors():
    assert {"afno-fcn-0p25", "afno-tiny"} <= set(PRESETS)
    assert 50_000 < count_parameters(build_model("afno-tiny", (32, 64), 3)) < 200_000
    with pytest.raises(ModelSpecError, match="unknown model preset 'afno-huge'"):
        build_model("afno-huge", (32, 64), 3)
    with pytest.raises(ModelSpecError, match="divisible by patch_size"):
        AFNONet((33, 64), 3, 3, patch_size=2)
    with pytest.raises(ModelSpecError, match=r"hard_thresholding_fraction must be 1.0"):
        AFNOFilter(16, 4, hard_thresholding_fraction=0.5)


@pytest.mark.slow
def test_fcn_preset_builds_at_full_size():
    model = build_model("afno-fcn-0p25", (720, 1440), 20)
    # FourCastNet's checkpoint holds 74,691,840 parameters: ours plus its final LayerNorm (2 x 768),
    # which the reference defines but never applies.
    assert count_parameters(model) == 74_690_304
    assert count_parameters(model) + 2 * 768 == 74_691_840
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    stated = re.search(r"`afno-fcn-0p25` \(FourCastNet's backbone: ([\d,]+) parameters", readme)
    assert stated and int(stated.group(1).replace(",", "")) == count_parameters(model)


def test_overlapping_patch_embedding_wraps_longitude_and_sees_neighbours():
    from fourcast.models.afno import PatchEmbed

    embed = PatchEmbed(in_channels=1, embed_dim=1, patch=2, kernel=6)
    with torch.no_grad():
        embed.proj.weight.fill_(1.0)
        embed.proj.bias.zero_()
    x = torch.zeros(1, 1, 8, 16)
    x[0, 0, 4, 0] = 1.0  # a pixel on the first column...
    tokens = embed(x)
    assert tokens.shape == (1, 1, 4, 8)
    # ...is seen by its own token, the next one east and, across the date line, the last one.
    assert tokens[0, 0, 2, [0, 1, 7]].tolist() == [1.0, 1.0, 1.0]
    assert tokens[0, 0, 2, 2:7].abs().sum() == 0
    with pytest.raises(ModelSpecError, match="patch_size plus an even number"):
        PatchEmbed(1, 1, patch=2, kernel=5)


def test_untrained_increment_model_is_persistence_and_norm_choice_is_checked():
    model = AFNONet(
        (16, 32),
        3,
        3,
        patch_size=2,
        embed_dim=16,
        depth=2,
        num_blocks=2,
        predict_increment=True,
        embed_kernel=4,
        norm="none",
    )
    x = torch.randn(2, 3, 16, 32)
    torch.testing.assert_close(model(x), x)
    with pytest.raises(ModelSpecError, match="norm must be 'layer' or 'none'"):
        AFNONet((16, 32), 3, 3, patch_size=2, embed_dim=16, depth=1, num_blocks=2, norm="batch")


@pytest.mark.parametrize("truncation,fraction", [("full", 1.0), ("fourcastnet", 0.5)])
def test_fast_filter_equals_the_einsum_filter(truncation, fraction):
    """The batched-GEMM spectral MLP: same outputs and gradients as the reference einsums (float32 order)."""
    torch.manual_seed(3)
    model = AFNONet(
        (32, 64),
        4,
        4,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_blocks=4,
        sparsity=0.01,
        hard_thresholding_fraction=fraction,
        mode_truncation=truncation,
    )
    x = torch.randn(2, 4, 32, 64)
    plain = model(x)
    plain.square().mean().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fast = use_fast_filter(model)(x)
    fast.square().mean().backward()
    assert all(f.fast for f in model.modules() if isinstance(f, AFNOFilter))
    assert_close_to_spread(fast.detach().numpy(), plain.detach().numpy(), name="output")
    for p, expected in zip(model.parameters(), plain_grads, strict=True):
        assert_close_to_spread(p.grad.numpy(), expected.numpy(), name="gradient")
    assert not torch.equal(plain_grads[0], torch.zeros_like(plain_grads[0]))
