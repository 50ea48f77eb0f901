"""The shallow-water residual is the synthetic flow's own equation: ~0 on the solver's states, large on
shuffled ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fourcast.errors import ModelSpecError
from fourcast.physics import ShallowWaterResidual
from ingest import synthetic

CHANNELS = ["z500", "u500", "v500"]


@pytest.fixture(scope="module")
def unstirred_states() -> torch.Tensor:
    """Nine 6-hourly states of the generator's own solver at 16x32, stirring switched off after a 3-day
    spin-up.

    Returns (9, 3, 16, 32) float64 in physical units (z500 m2 s-2, winds m s-1).
    """
    flow = synthetic._ForcedShallowWater(16, 32, 6 * 3600.0, seed=0)
    flow.advance(round(3 * 86400 / flow.dt))  # stirred spin-up: an unsteady flow
    flow.stir_mask.zero_()
    flow.stirring.zero_()
    states = []
    for _ in range(9):
        states.append(np.stack(flow.fields()))
        flow.advance(flow.substeps)
    return torch.tensor(np.stack(states), dtype=torch.float64)


def test_residual_of_the_solver_states_is_near_zero_and_large_for_shuffled_states(unstirred_states):
    residual = ShallowWaterResidual(16, 32, 6 * 3600.0, CHANNELS, dtype=torch.float64)
    before, after = unstirred_states[:-1], unstirred_states[1:]
    true = residual.relative(before, after).mean(dim=0)  # (geopotential, vorticity, divergence)
    shuffled = residual.relative(before, after[[3, 5, 0, 7, 1, 2, 4, 6]]).mean(dim=0)
    # measured 0.015 / 0.013 / 0.038 (RK4 against the generator's Adams-Bashforth, float32 fields)
    assert torch.all(true < 0.06), true
    # measured 2.3 / 1.9 / 1.0: a wrong successor is as far from the equations as the change itself
    assert torch.all(shuffled > 0.7), shuffled
    assert torch.all(shuffled > 10 * true)


def test_residual_is_differentiable_and_finds_its_channels_by_name(unstirred_states):
    residual = ShallowWaterResidual(16, 32, 6 * 3600.0, ["t850", *reversed(CHANNELS)])
    states = unstirred_states[:3].float()
    reordered = torch.cat((torch.zeros_like(states[:, :1]), states.flip(1)), dim=1)  # t850, v500, u500, z500
    after = reordered[1:].clone().requires_grad_(True)
    loss = residual(reordered[:-1], after).abs().pow(2).mean()
    loss.backward()
    assert torch.isfinite(after.grad).all() and after.grad[:, 1:].abs().sum() > 0
    assert after.grad[:, 0].abs().sum() == 0  # t850 is not in the equations
    with pytest.raises(
        ModelSpecError, match=r"needs channels \['z500', 'u500', 'v500'\]; \['v500'\] missing"
    ):
        ShallowWaterResidual(16, 32, 6 * 3600.0, ["z500", "u500", "t850"])
