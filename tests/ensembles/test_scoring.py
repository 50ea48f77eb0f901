"""Scoring end to end: a persistence 'model' through runner, Zarr archive and scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dask.callbacks import Callback

from ensembles.archive import MemoryArchive, ZarrArchive, open_archive
from ensembles.errors import ScoringError
from ensembles.metrics import METRICS
from ensembles.perturbations import GaussianPerturbation, NoPerturbation
from ensembles.runner import forecast_lead_times, run_ensemble
from ensembles.scorecard import ScoreOptions, score_archive
from ensembles.scoring import score_forecasts
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, TIME
from tests.tolerances import assert_close_to_spread

N_STEPS = 4
STEP = np.timedelta64(6, "h")
N_MEMBERS = 3
VARIABLES = ["z500", "u500"]


def _forecast(prognostic, truth, coords, archive_factory, perturbation=None):
    """Run two init times 24 h apart and return what the archive factory made of them."""
    init_times = truth[TIME].values[[0, 4]]
    archive = archive_factory(
        VARIABLES,
        init_times,
        forecast_lead_times(prognostic.step_size, N_STEPS),
        N_MEMBERS,
        coords[LAT],
        coords[LON],
    )
    for init_time in init_times:
        run_ensemble(
            prognostic,
            torch.from_numpy(truth.sel({TIME: init_time}).values),
            coords,
            init_time,
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
            assert (
                table[(variable, lead, "fourcast", "rmse")] == table[(variable, lead, "persistence", "rmse")]
            )
            assert table[(variable, lead, "fourcast", "acc")] == table[(variable, lead, "persistence", "acc")]
            assert table[(variable, lead, "climatology", "acc")] == 0.0
        assert table[(variable, 24, "persistence", "rmse")] > table[(variable, 24, "climatology", "rmse")] > 0


SINGLE = ("persistence", "climatology", "control")


def test_records_cover_every_variable_lead_system_and_metric(archive, truth, climatology):
    records = score_forecasts(archive, truth, climatology)
    assert set(records[0]) == {"variable", "lead_hours", "system", "metric", "value"}
    assert all(isinstance(r["value"], float) and np.isfinite(r["value"]) for r in records)
    keys = {(r["system"], r["metric"]) for r in records}
    deterministic = set(METRICS) - {"spread", "ssr", "debiased_rmse"}
    # the control member is scored alone as a deterministic forecast too
    baselines = {(s, m) for s in ("persistence", "climatology", "control") for m in deterministic}
    expected = {("fourcast", m) for m in METRICS} | (baselines - {(s, "reliability") for s in SINGLE})
    assert keys == expected
    assert len(records) == len(VARIABLES) * (N_STEPS + 1) * len(expected)
    table = _table(records)
    assert table[("z500", 0, "fourcast", "crps")] > 0
    # a single forecast's CRPS is its absolute error
    assert table[("z500", 12, "persistence", "crps")] == pytest.approx(
        table[("z500", 12, "persistence", "mae")]
    )


def test_subsets_of_variables_and_leads(archive, truth, climatology):
    records = score_forecasts(
        archive, truth, climatology, variables=["u500"], lead_times=[np.timedelta64(12, "h")]
    )
    assert {(r["variable"], r["lead_hours"]) for r in records} == {("u500", 12)}
    full = _table(score_forecasts(archive, truth, climatology))
    assert all(full[key] == pytest.approx(value, rel=1e-12) for key, value in _table(records).items())
    with pytest.raises(
        ScoringError, match=r"the archive has no lead times \[7\] h; it holds \[0, 6, 12, 18, 24\] h"
    ):
        score_forecasts(archive, truth, climatology, lead_times=[np.timedelta64(7, "h")])


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


def test_the_archive_is_read_once_chunk_by_chunk(archive, truth, climatology):
    with _ChunkReads() as reads:
        score_forecasts(archive, truth, climatology)
    # one compute, reading every (init, lead) chunk of every variable exactly once
    assert reads.per_compute == [archive.sizes[INIT_TIME] * (N_STEPS + 1) * len(VARIABLES)]


def test_lead_times_beyond_the_truth_are_named(archive, truth, climatology):
    short = truth.isel({TIME: slice(0, 7)})  # the second run's 18 h and 24 h verify after 2020-01-02T12
    with pytest.raises(
        ScoringError,
        match=r"lead times \[18, 24\] h reach beyond the truth available: .* the truth "
        r"ends at 2020-01-02T12:00",
    ):
        score_forecasts(archive, short, climatology)
    with pytest.raises(ScoringError, match=r"truth lacks 1 of the 9 time labels needed: 2020-01-01T06"):
        score_forecasts(archive, truth.drop_sel({TIME: truth[TIME].values[1]}), climatology)


def test_a_grid_mismatch_is_refused(archive, truth, climatology):
    with pytest.raises(
        ScoringError, match=r"truth is on another grid than the forecasts: expected lat of 9 values"
    ):
        score_forecasts(archive, truth.assign_coords({LAT: truth[LAT].values * 0.5}), climatology)
    with pytest.raises(ScoringError, match=r"climatology is on another grid .* expected lon of 16 values"):
        score_forecasts(archive, truth, climatology.isel({LON: slice(0, 8)}))


def test_a_variable_missing_from_truth_is_named(archive, truth, climatology):
    with pytest.raises(ScoringError, match="truth lacks 1 of the 2 channel labels needed: u500"):
        score_forecasts(archive, truth.sel({CHANNEL: ["z500"]}), climatology)
    with pytest.raises(ScoringError, match=r"cannot score variables \['t850'\]"):
        score_forecasts(archive, truth, climatology, variables=["t850"])


def _holed(truth):
    holed = truth.copy()
    holed.loc[{TIME: truth[TIME].values[5], CHANNEL: "u500"}] = np.nan  # valid at lead 6 h of the 2nd run
    return holed


def test_nans_fail_naming_variable_init_and_lead(archive, truth, climatology):
    with pytest.raises(
        ScoringError, match="NaN values in u500 from 2020-01-02T00:00 at lead 6 h: truth 144 of 144"
    ):
        score_forecasts(archive, _holed(truth), climatology)


def test_nans_can_be_skipped_for_every_system_alike(archive, truth, climatology):
    scorecard = score_archive(archive, _holed(truth), climatology, ScoreOptions(nan_policy="skip"))
    six_hours = {LEAD_TIME: np.timedelta64(6, "h")}
    assert scorecard["n_skipped"].sel(variable="u500", **six_hours) == 1
    assert scorecard["n_skipped"].sum() == 1
    assert (scorecard["n_forecasts"].sel(variable="u500", **six_hours) == 1).all()
    # only the first run counts at that lead: scores equal those of the first init time alone
    first = score_archive(archive.isel({INIT_TIME: [0]}), truth, climatology)
    both = scorecard["score"].sel(variable="u500", **six_hours)
    assert_close_to_spread(both, first["score"].sel(variable="u500", **six_hours), rel=1e-9, name="u500 6 h")
    with pytest.raises(ScoringError, match="unknown NaN policy 'ignore'"):
        ScoreOptions(nan_policy="ignore")


def test_unwritten_forecasts_fail_unless_partial(truth, climatology, coords, identity_prognostic):
    init_times = truth[TIME].values[[0, 4]]
    archive = MemoryArchive(VARIABLES, init_times, forecast_lead_times(STEP, 1), 2, coords[LAT], coords[LON])
    run_ensemble(
        identity_prognostic,
        torch.from_numpy(truth.sel({TIME: init_times[0]}).values),
        coords,
        init_times[0],
        n_members=2,
        n_steps=1,
        perturbation=NoPerturbation(),
        archive=archive,
        seed=0,
    )
    with pytest.raises(
        ScoringError,
        match=r"the forecast of z500 from 2020-01-02T00:00 at lead (0|6) h is NaN "
        "everywhere: it was never written",
    ):
        score_forecasts(archive.dataset, truth, climatology)
    scorecard = score_archive(archive.dataset, truth, climatology, ScoreOptions(allow_partial=True))
    assert (scorecard["n_unwritten"] == 1).all()
    assert (scorecard["n_forecasts"] == 1).all()
    assert (
        float(
            scorecard["score"].sel(
                metric="rmse",
                system="fourcast",
                region="global",
                lead_time=np.timedelta64(0, "h"),
                variable="z500",
            )
        )
        == 0.0
    )


def test_a_climatology_that_does_not_cover_the_valid_time_is_named(archive, truth, climatology):
    holed = climatology.expand_dims(dayofyear=np.arange(1, 367), hour=[0, 6, 12, 18]).copy()
    holed.loc[{"dayofyear": 2, "hour": 18, CHANNEL: "z500"}] = (
        np.nan
    )  # 2020-01-02T18: lead 18 h of the 2nd run
    with pytest.raises(
        ScoringError,
        match=r"NaN values in z500 from 2020-01-02T00:00 at lead 18 h: climatology 144 "
        r"of 144; a NaN climatology at the valid time 2020-01-02T18:00 \(day of year 2\) means",
    ):
        score_forecasts(archive, truth, holed)
