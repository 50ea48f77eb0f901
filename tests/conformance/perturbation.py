"""The behaviour every :class:`ensembles.protocols.Perturbation` promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.protocols import Coords, Perturbation
from ingest.dims import CHANNEL, LAT, LON, MEMBER
from tests.conformance import assert_typed


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class PerturbationConformance:
    """Subclass as ``Test<Perturbation>`` and implement :meth:`make`.

    ``draws``: whether the perturbation changes the state (so another seed gives another
    state); ``checks_channels``: whether a state with channels it has no scale for is refused.
    """

    draws = True
    checks_channels = True

    def make(self, coords: Coords) -> Perturbation:
        """The perturbation for states labelled with ``coords`` (``channel``, ``lat``, ``lon``)."""
        raise NotImplementedError

    @pytest.fixture
    def member_coords(self, coords) -> Coords:
        return {MEMBER: np.arange(3), **coords}

    @staticmethod
    def state(coords: Coords, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A seeded state ``(member, channel, lat, lon)`` with channel offsets, as analyses have."""
        shape = tuple(len(coords[dim]) for dim in (MEMBER, CHANNEL, LAT, LON))
        offsets = torch.linspace(1.0, 1000.0, shape[1], dtype=torch.float64)[None, :, None, None]
        noise = torch.randn(shape, generator=generator(99), dtype=torch.float64)
        return (offsets + noise).to(dtype)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_keeps_shape_dtype_and_labels(self, member_coords, dtype):
        x = self.state(member_coords, dtype)
        out, out_coords = self.make(member_coords)(x, member_coords, generator(0))
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert list(out_coords) == list(member_coords)
        for dim in member_coords:
            np.testing.assert_array_equal(out_coords[dim], member_coords[dim])
        assert bool(torch.isfinite(out).all())

    def test_leaves_its_input_alone(self, member_coords):
        x = self.state(member_coords)
        before = x.clone()
        self.make(member_coords)(x, member_coords, generator(0))
        assert torch.equal(x, before)

    def test_the_same_seed_gives_the_same_state(self, member_coords):
        x = self.state(member_coords)
        first, _ = self.make(member_coords)(x, member_coords, generator(3))
        second, _ = self.make(member_coords)(x, member_coords, generator(3))
        assert torch.equal(first, second)

    def test_another_seed_gives_another_state(self, member_coords):
        x = self.state(member_coords)
        first, _ = self.make(member_coords)(x, member_coords, generator(3))
        second, _ = self.make(member_coords)(x, member_coords, generator(4))
        if self.draws:
            assert not torch.equal(first, second) and not torch.equal(first, x)
        else:
            assert torch.equal(first, second) and torch.equal(first, x)

    def test_randomness_comes_only_from_the_generator(self, member_coords):
        x = self.state(member_coords)
        torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
        self.make(member_coords)(x, member_coords, generator(5))
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))

    def test_a_state_with_unscaled_channels_is_refused_with_a_typed_error(self, member_coords):
        if not self.checks_channels:
            pytest.skip("this perturbation does not depend on the channels")
        perturbation = self.make(member_coords)
        wider = {**member_coords, CHANNEL: np.array([*member_coords[CHANNEL], "t850"])}
        with pytest.raises(Exception) as caught:
            perturbation(self.state(wider), wider, generator(0))
        assert_typed(caught.value)
