import pytest
import torch

from fourcast.data import StoreWindows
from fourcast.errors import ModelSpecError
from fourcast.models.registry import PRESETS, build_model, count_parameters
from fourcast.models.sfno import SFNONet


def test_untrained_increment_sfno_is_persistence_on_a_grid_with_both_poles():
    model = build_model("sfno-small", (17, 32), 3)
    x = torch.randn(2, 3, 17, 32)
    assert torch.equal(model(x), x)


def test_sfno_refuses_a_grid_it_was_not_built_for_and_bad_settings():
    model = build_model("sfno-small", (16, 32), 3)
    with pytest.raises(ModelSpecError, match=r"built for a \(16, 32\) grid, found input \(17, 32\)"):
        model(torch.zeros(1, 3, 17, 32))
    with pytest.raises(ModelSpecError, match="normalization must be one of"):
        SFNONet((16, 32), 3, 3, normalization="batch")
    with pytest.raises(ModelSpecError, match="too coarse"):
        SFNONet((5, 8), 3, 3, scale_factor=3)


def test_the_0p25_preset_has_its_width_on_any_equiangular_grid():
    assert PRESETS["sfno-0p25"].family == "sfno"
    model = build_model("sfno-0p25", (31, 64), 20)  # the 721x1440 build is exercised in benchmarks/
    assert model.net.embed_dim == 384 and len(model.net.blocks) == 8
    assert count_parameters(model) > 2_000_000


def test_sfno_small_learns_the_six_hour_step_better_than_persistence(store):
    torch.manual_seed(0)
    windows = StoreWindows(store, "2000-01-01", "2000-01-31T18", n_ahead=1)
    model = build_model("sfno-small", (windows.lat.size, windows.lon.size), len(windows.channels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.stack([windows[i][0] for i in range(0, len(windows), 2)])
    y = torch.stack([windows[i][1][0] for i in range(0, len(windows), 2)])
    persistence = torch.mean((x - y) ** 2).item()
    for _ in range(40):
        batch = torch.randint(0, x.shape[0], (8,))
        loss = torch.mean((model(x[batch]) - y[batch]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = torch.mean((model(x) - y) ** 2).item()
    assert learned < 0.7 * persistence
