"""Scoring end to end: a persistence 'model' through runner, Zarr archive and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dask.callbacks import Callback

from ensembles.archive import MemoryArchive, ZarrArchive, open_archive
from ensembles.errors import ScoringError
from ensembles.perturbations import GaussianPerturbation, NoPerturbation
from ensembles.runner import forecast_lead_times, run_campaign
from ensembles.scoring import score_forecasts
from ingest.dims import CHANNEL, INIT_TIME, LAT, LON, TIME

N_STEPS = 4
N_MEMBERS = 3
VARIABLES = ["z500", "u500"]


def _forecast(prognostic, truth, coords, archive_factory, perturbation=None):
    """Run two init times 24 h apart and return what the archive factory made of them."""
    init_times = truth[TIME].values[[0, 4]]
    archive = archive_factory(
        VARIABLES, init_times, forecast_lead_times(prognostic.step_size, N_STEPS), N_MEMBERS, coords[LAT], coords[LON]
    )
    run_campaign(
        prognostic,
        lambda t: torch.from_numpy(truth.sel({TIME: t}).values),
        coords,
        init_times,
        n_members=N_MEMBERS,
        n_steps=N_STEPS,
        perturbation=perturbation or NoPerturbation(),
        archive=archive,
        seed=5,
        members_per_batch=2,
    )
    return archive


@pytest.fixture
def archive(tmp_path, identity_prognostic, truth, coords):
    """A finalised, Dask-backed Zarr archive of the persistence model, perturbed (so spread > 0)."""

    def on_disk(*extents):
        return ZarrArchive(tmp_path / "persistence.zarr", *extents, attrs={"model": "identity"})

    perturbation = GaussianPerturbation(np.array([800.0, 8.0]), 0.3)
    return open_archive(_forecast(identity_prognostic, truth, coords, on_disk, perturbation).finalize())


def _table(records):
    return {(r["variable"], r["lead_hours"], r["system"], r["metric"]): r["value"] for r in records}


def test_persistence_model_scores_as_the_persistence_baseline(
    tmp_path, identity_prognostic, truth, climatology, coords
):
    def on_disk(*extents):
        return ZarrArchive(tmp_path / "unperturbed.zarr", *extents)

    ds = open_archive(_forecast(identity_prognostic, truth, coords, on_disk).finalize())
    table = _table(score_forecasts(ds, truth, climatology))
    for variable in VARIABLES:
        assert table[(variable, 0, "persistence", "rmse")] == 0.0
        assert table[(variable, 0, "persistence", "acc")] == pytest.approx(1.0)
        for lead in range(0, 6 * N_STEPS + 1, 6):
            assert table[(variable, lead, "fourcast", "rmse")] == table[(variable, lead, "persistence", "rmse")]
            assert table[(variable, lead, "fourcast", "acc")] == table[(variable, lead, "persistence", "acc")]
            assert table[(variable, lead, "climatology", "acc")] == 0.0
        assert table[(variable, 24, "persistence", "rmse")] > table[(variable, 24, "climatology", "rmse")] > 0


def test_records_cover_every_variable_lead_system_and_metric(archive, truth, climatology):
    records = score_forecasts(archive, truth, climatology)
    assert set(records[0]) == {"variable", "lead_hours", "system", "metric", "value"}
    assert all(isinstance(r["value"], float) and np.isfinite(r["value"]) for r in records)
    keys = {(r["system"], r["metric"]) for r in records}
    assert keys == {
        ("fourcast", "rmse"),
        ("fourcast", "acc"),
        ("fourcast", "crps"),
        ("fourcast", "ssr"),
        ("persistence", "rmse"),
        ("persistence", "acc"),
        ("climatology", "rmse"),
        ("climatology", "acc"),
    }
    assert len(records) == len(VARIABLES) * (N_STEPS + 1) * 8
    table = _table(records)
    assert table[("z500", 0, "fourcast", "crps")] > 0


def test_subsets_of_variables_and_leads(archive, truth, climatology):
    records = score_forecasts(archive, truth, climatology, variables=["u500"], lead_times=[np.timedelta64(12, "h")])
    assert {(r["variable"], r["lead_hours"]) for r in records} == {("u500", 12)}
    full = _table(score_forecasts(archive, truth, climatology))
    assert all(full[key] == value for key, value in _table(records).items())


class _ChunkReads(Callback):
    """Counts, for every Dask compute, the archive chunks it reads (``open_dataset…`` tasks)."""

    def __init__(self) -> None:
        super().__init__()
        self.per_compute: list[int] = []

    def _start(self, dsk) -> None:
        self.per_compute.append(0)

    def _pretask(self, key, dsk, state) -> None:
        if isinstance(key, tuple) and str(key[0]).startswith("open_dataset"):
            self.per_compute[-1] += 1


def test_the_archive_is_read_one_lead_at_a_time(archive, truth, climatology):
    with _ChunkReads() as reads:
        score_forecasts(archive, truth, climatology)
    # one compute per (variable, lead), each reading one chunk per init time, every chunk once
    assert reads.per_compute == [archive.sizes[INIT_TIME]] * len(VARIABLES) * (N_STEPS + 1)


def test_missing_valid_times_are_named(archive, truth, climatology):
    short = truth.isel({TIME: slice(0, 7)})  # the second run's 24 h verifies at time index 8
    with pytest.raises(
        ScoringError, match=r"truth lacks 2 of the 9 time labels needed: 2020-01-02T18.*, 2020-01-03T00"
    ):
        score_forecasts(archive, short, climatology)


def test_a_grid_mismatch_is_refused(archive, truth, climatology):
    with pytest.raises(ScoringError, match="truth lat differs from the archive's"):
        score_forecasts(archive, truth.assign_coords({LAT: truth[LAT].values * 0.5}), climatology)
    with pytest.raises(ScoringError, match="climatology lon differs from the archive's: expected 16 values"):
        score_forecasts(archive, truth, climatology.isel({LON: slice(0, 8)}))


def test_a_variable_missing_from_truth_is_named(archive, truth, climatology):
    with pytest.raises(ScoringError, match="truth lacks 1 of the 2 channel labels needed: u500"):
        score_forecasts(archive, truth.sel({CHANNEL: ["z500"]}), climatology)
    with pytest.raises(ScoringError, match=r"cannot score variables \['t850'\]"):
        score_forecasts(archive, truth, climatology, variables=["t850"])


def test_nans_fail_naming_variable_and_lead(archive, truth, climatology):
    holed = truth.copy()
    holed.loc[{TIME: truth[TIME].values[5], CHANNEL: "u500"}] = np.nan  # valid at lead 6 h of the 2nd run
    with pytest.raises(ScoringError, match="truth for u500 at lead 6 h has 144 NaN values"):
        score_forecasts(archive, holed, climatology)


def test_unwritten_forecasts_fail(truth, climatology, coords):
    init_times = truth[TIME].values[[0, 4]]
    archive = MemoryArchive(
        VARIABLES, init_times, forecast_lead_times(np.timedelta64(6, "h"), 1), 2, coords[LAT], coords[LON]
    )
    with pytest.raises(ScoringError, match="forecast of z500 at lead 0 h has 576 NaN values of 576"):
        score_forecasts(archive.dataset, truth, climatology)
