"""The behaviour every :class:`ensembles.protocols.Prognostic` promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ensembles.protocols import Coords, Prognostic
from ingest.dims import CHANNEL, LAT, LON, MEMBER
from tests.conformance import assert_typed


class PrognosticConformance:
    """Subclass as ``Test<Model>`` and implement :meth:`make`.

    ``checks_coords``: whether :meth:`step` refuses a state labelled with other channels or
    another grid (a real model must; a test double may not).
    """

    checks_coords = True

    def make(self) -> Prognostic:
        raise NotImplementedError

    @pytest.fixture
    def prognostic(self) -> Prognostic:
        return self.make()

    @staticmethod
    def state(
        prognostic: Prognostic, members: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, Coords]:
        """A seeded state ``(member, channel, lat, lon)`` on the model's input labels."""
        coords = {MEMBER: np.arange(members), **prognostic.input_coords}
        shape = tuple(len(coords[dim]) for dim in (MEMBER, CHANNEL, LAT, LON))
        generator = torch.Generator().manual_seed(seed)
        return (10.0 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype), coords

    def test_coords_label_channel_lat_lon(self, prognostic):
        for coords in (prognostic.input_coords, prognostic.output_coords):
            assert {CHANNEL, LAT, LON} <= set(coords), list(coords)
            for dim in (CHANNEL, LAT, LON):
                assert isinstance(coords[dim], np.ndarray) and coords[dim].ndim == 1 and coords[dim].size > 0
            assert np.all(np.abs(coords[LAT]) <= 90) and np.all((coords[LON] >= 0) & (coords[LON] < 360))
        assert set(prognostic.output_coords) == set(prognostic.input_coords)

    def test_step_size_is_a_positive_time_delta(self, prognostic):
        step = prognostic.step_size
        assert isinstance(step, np.timedelta64) and step > np.timedelta64(0, "s")

    @pytest.mark.parametrize("members", [1, 3])
    def test_step_keeps_shape_dtype_and_labels(self, prognostic, members):
        x, coords = self.state(prognostic, members)
        out, out_coords = prognostic.step(x, coords)
        assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
        assert list(out_coords) == list(coords)
        for dim in coords:
            np.testing.assert_array_equal(out_coords[dim], coords[dim])
        assert bool(torch.isfinite(out).all())

    def test_step_is_deterministic_and_leaves_its_input_alone(self, prognostic):
        x, coords = self.state(prognostic, 2)
        before = x.clone()
        first, _ = prognostic.step(x, coords)
        second, _ = prognostic.step(x, coords)
        assert torch.equal(x, before)
        assert torch.equal(first, second)

    def test_members_step_independently(self, prognostic):
        x, coords = self.state(prognostic, 3)
        together, _ = prognostic.step(x, coords)
        alone, _ = prognostic.step(x[1:2], {**coords, MEMBER: coords[MEMBER][1:2]})
        scale = float(together.abs().max())
        torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5 * scale)

    def test_a_state_on_other_channels_is_refused_with_a_typed_error(self, prognostic):
        if not self.checks_coords:
            pytest.skip("this implementation does not check its input labels")
        x, coords = self.state(prognostic, 1)
        renamed = np.array([f"{c}_other" for c in coords[CHANNEL]])
        with pytest.raises(Exception) as caught:
            prognostic.step(x, {**coords, CHANNEL: renamed})
        assert_typed(caught.value, CHANNEL)

    def test_a_state_on_another_grid_is_refused_with_a_typed_error(self, prognostic):
        if not self.checks_coords:
            pytest.skip("this implementation does not check its input labels")
        x, coords = self.state(prognostic, 1)
        with pytest.raises(Exception) as caught:
            prognostic.step(x, {**coords, LON: (coords[LON] + 1.0) % 360})
        assert_typed(caught.value, LON)
