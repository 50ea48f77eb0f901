"""The Forecaster through the Prognostic conformance suite."""

from __future__ import annotations

import numpy as np
import torch

from fourcast.forecaster import Forecaster
from fourcast.models.registry import build_model
from fourcast.normaliser import Normaliser
from ingest.grid import equiangular_lats, regular_lons
from tests.conformance.prognostic import PrognosticConformance

CHANNELS = ["z500", "u500", "v500"]


class TestForecaster(PrognosticConformance):
    def make(self):
        torch.manual_seed(0)
        model = build_model("afno-tiny", (16, 32), len(CHANNELS))
        with torch.no_grad():  # the untrained head is zero (persistence): give every weight a seeded offset
            for weights in model.parameters():
                weights.add_(0.05 * torch.randn_like(weights))
        normaliser = Normaliser(np.array([5.0, 10.0, 0.0]), np.array([8.0, 8.0, 6.0]))
        return Forecaster(
            model,
            normaliser,
            CHANNELS,
            equiangular_lats(16),
            regular_lons(32),
            np.timedelta64(6, "h"),
            device=torch.device("cpu"),
        )
