"""Every Perturbation and Archive of :mod:`ensembles`, and the test prognostics, through the conformance
suites."""

from __future__ import annotations

import numpy as np
import xarray as xr

from ensembles.archive import MemoryArchive, Tee, ZarrArchive, open_archive
from ensembles.perturbations import (
    BalancedRandomFieldPerturbation,
    BredVectorPerturbation,
    GaussianPerturbation,
    GaussianRandomFieldPerturbation,
    NoPerturbation,
)
from ingest.dims import CHANNEL
from tests.conformance.archive import ArchiveConformance
from tests.conformance.perturbation import PerturbationConformance
from tests.conformance.prognostic import PrognosticConformance
from tests.ensembles.conftest import DriftPrognostic, IdentityPrognostic


def _scale(coords) -> np.ndarray:
    return np.linspace(1.0, 5.0, len(coords[CHANNEL]))


class TestNoPerturbation(PerturbationConformance):
    draws = False
    checks_channels = False

    def make(self, coords):
        return NoPerturbation()


class TestGaussianPerturbation(PerturbationConformance):
    def make(self, coords):
        return GaussianPerturbation(_scale(coords), 0.3)


class TestGaussianPerturbationByLabel(PerturbationConformance):
    def make(self, coords):
        return GaussianPerturbation(_scale(coords)[::-1].copy(), 0.3, channels=list(coords[CHANNEL][::-1]))


class TestGaussianRandomFieldPerturbation(PerturbationConformance):
    def make(self, coords):
        return GaussianRandomFieldPerturbation(_scale(coords), 0.3, alpha=2.0, tau=3.0)


class TestBalancedRandomFieldPerturbation(PerturbationConformance):
    def make(self, coords):
        return BalancedRandomFieldPerturbation(_scale(coords), 0.3, length_scale_km=2000.0)


class TestBredVectorPerturbation(PerturbationConformance):
    def make(self, coords):
        return BredVectorPerturbation(DriftPrognostic(), _scale(coords), 0.3, cycles=2)


class TestMemoryArchive(ArchiveConformance):
    def make(self, tmp_path, extents):
        return MemoryArchive(**extents)

    def read(self, archive, location):
        assert location == "memory"
        return archive.dataset


class TestZarrArchive(ArchiveConformance):
    def make(self, tmp_path, extents):
        return ZarrArchive(tmp_path / "archive.zarr", **extents)

    def read(self, archive, location) -> xr.Dataset:
        return open_archive(location).load()


class TestTee(ArchiveConformance):
    def make(self, tmp_path, extents):
        return Tee(ZarrArchive(tmp_path / "archive.zarr", **extents), MemoryArchive(**extents))

    def read(self, archive, location):
        first, second = open_archive(location).load(), archive.archives[1].dataset
        xr.testing.assert_identical(first[list(second.data_vars)], second[list(second.data_vars)])
        return first


class TestIdentityPrognostic(PrognosticConformance):
    checks_coords = False  # a test double: the runner checks labels before it steps

    def make(self):
        return IdentityPrognostic()


class TestDriftPrognostic(PrognosticConformance):
    checks_coords = False

    def make(self):
        return DriftPrognostic()
