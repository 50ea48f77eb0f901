"""Streaming scores, accumulated while members are produced, equal batch scores of the archive."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from ensembles.archive import MemoryArchive, open_archive
from ensembles.campaign import Campaign, CampaignArchive
from ensembles.errors import ScoringError
from ensembles.perturbations import GaussianPerturbation
from ensembles.protocols import Archive
from ensembles.regions import GLOBAL, TROPICS
from ensembles.runner import forecast_lead_times, run_campaign, run_ensemble
from ensembles.scorecard import ScoreOptions, open_scorecard, score_archive
from ensembles.streaming import StreamingScorer
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME

N_MEMBERS, N_STEPS = 3, 3
OPTIONS = ScoreOptions(regions=(GLOBAL, TROPICS))


def _run(prognostic, truth, coords, sink, members_per_batch=2):
    perturbation = GaussianPerturbation(np.array([800.0, 8.0]), 0.3)
    for init in truth[TIME].values[[0, 3, 5]]:
        run_ensemble(
            prognostic,
            torch.from_numpy(truth.sel({TIME: init}).values),
            coords,
            init,
            n_members=N_MEMBERS,
            n_steps=N_STEPS,
            perturbation=perturbation,
            archive=sink,
            seed=11,
            members_per_batch=members_per_batch,
        )
    return sink


def test_streaming_and_batch_scores_agree(tmp_path, drift_prognostic, truth, climatology, coords):
    time_mean = truth.isel({TIME: slice(0, 4)}).mean(TIME)  # the time_mean baseline, both paths
    streaming = StreamingScorer(
        truth, climatology, ["z500", "u500"], N_MEMBERS, OPTIONS, out_dir=tmp_path, time_mean=time_mean
    )
    assert isinstance(streaming, Archive)
    location = _run(drift_prognostic, truth, coords, streaming).finalize()
    memory = MemoryArchive(
        ["z500", "u500"],
        truth[TIME].values[[0, 3, 5]],
        forecast_lead_times(drift_prognostic.step_size, N_STEPS),
        N_MEMBERS,
        coords[LAT],
        coords[LON],
    )
    _run(
        drift_prognostic, truth, coords, memory, members_per_batch=3
    )  # batch size does not change the members
    batch = score_archive(memory.dataset, truth, climatology, OPTIONS, time_mean=time_mean)
    streamed = open_scorecard(location)
    assert "time_mean" in streamed["system"].values.tolist()
    np.testing.assert_allclose(streamed["score"], batch["score"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(streamed["rank_histogram"], batch["rank_histogram"], rtol=1e-12, atol=1e-14)
    xr.testing.assert_equal(streamed["n_forecasts"], batch["n_forecasts"])
    assert streamed.attrs["scored"] == "streaming"
    assert (
        float(
            batch["score"].sel(
                metric="spread",
                system="fourcast",
                region="global",
                variable="z500",
                lead_time=np.timedelta64(18, "h"),
            )
        )
        > 0
    )
    assert not streaming._pending  # nothing held once every member has arrived


def test_missing_members_are_named_at_finalize(truth, climatology, coords):
    scorer = StreamingScorer(truth, climatology, ["z500"], 3)
    init = truth[TIME].values[0]
    x = np.stack([truth.sel({TIME: init}).values] * 2)
    labels = {
        INIT_TIME: np.array([init]),
        LEAD_TIME: np.array([np.timedelta64(0, "ns")]),
        MEMBER: np.array([0, 1]),
        **coords,
    }
    scorer.write(x, labels)
    with pytest.raises(ScoringError, match=r"member 1 of 2020-01-01T00:00 .* is written twice"):
        scorer.write(x[:1], {**labels, MEMBER: np.array([1])})
    with pytest.raises(
        ScoringError,
        match=r"1 forecasts did not receive all 3 members, e.g. \(members received\) "
        r"\{'2020-01-01T00:00 \+0 h': \[0, 1\]\}",
    ):
        scorer.finalize()


def test_writes_on_another_grid_or_without_a_variable_are_refused(truth, climatology, coords):
    scorer = StreamingScorer(truth, climatology, ["z500", "u500"], 1)
    init = truth[TIME].values[0]
    labels = {
        INIT_TIME: np.array([init]),
        LEAD_TIME: np.array([np.timedelta64(6, "h")]),
        MEMBER: np.array([0]),
    }
    x = truth.sel({TIME: init}).values[None]
    with pytest.raises(
        ScoringError, match="the written forecast is on another grid than the truth: expected lat"
    ):
        scorer.write(x, {**labels, **coords, LAT: coords[LAT][::-1]})
    with pytest.raises(ScoringError, match=r"write lacks variables \['u500'\]"):
        scorer.write(x[:, :1], {**labels, **coords, CHANNEL: np.array(["z500"])})
    with pytest.raises(ScoringError, match="nothing was scored"):
        scorer.finalize()


def test_a_campaign_feeds_the_scorer_beside_its_archive(
    tmp_path, drift_prognostic, truth, climatology, coords
):
    campaign = Campaign(
        variables=("z500", "u500"),
        init_times=truth[TIME].values[[0, 2]],
        step=np.timedelta64(6, "h"),
        n_steps=3,
        n_members=5,
        members_per_batch=2,
        seed=7,
        identity={"model": "drift"},
    )
    archive = CampaignArchive(
        tmp_path / "campaign.zarr", campaign, coords[LAT], coords[LON], {"code": "test"}
    )
    scorer = StreamingScorer(truth, climatology, ["z500", "u500"], 5, OPTIONS)
    run_campaign(
        drift_prognostic,
        lambda t: torch.from_numpy(truth.sel({TIME: t}).values),
        coords,
        campaign,
        archive,
        GaussianPerturbation(np.array([800.0, 8.0]), 0.3),
        sinks=[scorer],
    )
    batch = score_archive(
        open_archive(tmp_path / "campaign.zarr"), truth, climatology, OPTIONS, variables=["z500", "u500"]
    )
    np.testing.assert_allclose(scorer.scorecard["score"], batch["score"], rtol=1e-12, atol=1e-12)
    assert (scorer.scorecard["n_forecasts"] == 2).all()
