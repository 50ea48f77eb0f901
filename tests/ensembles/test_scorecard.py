"""Scorecards: chunked statistics + finalisers agree with the metric definitions, merge exactly, persist."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import xarray as xr

from ensembles import metrics
from ensembles.archive import ZarrArchive, open_archive
from ensembles.errors import ScoringError
from ensembles.metrics import METRICS, StatisticSums, finalise, forecast_statistics
from ensembles.regions import GLOBAL, TROPICS, Region, weight_matrix
from ensembles.scorecard import (
    ScoreAccumulator,
    ScoreOptions,
    open_for_scoring,
    open_scorecard,
    score_archive,
    score_chunk,
    scorecard_records,
    scorecard_table,
    skill_records,
    write_scorecard,
)
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER, TIME
from tests.ensembles import reference_metrics as reference
from tests.ensembles.reference_baselines import persistence_forecast

VARIABLES = ["z500", "u500"]
N_MEMBERS = 5
LEADS = np.array([0, 6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")
BOX = Region.box(-50, 30, 300, 60, name="box")
REGIONS = (GLOBAL, TROPICS, BOX)


def _ensemble(truth: xr.DataArray, seed: int = 1) -> xr.Dataset:
    """Seeded members around the truth at valid time: ``(init_time, lead_time, member, lat, lon)`` per
    variable."""
    rng = np.random.default_rng(seed)
    inits = truth[TIME].values[[0, 2, 4, 6]]
    fields = {}
    for c, variable in enumerate(VARIABLES):
        valid = np.stack([truth.sel({TIME: inits + lead}).values[:, c] for lead in LEADS], axis=1)
        scale = float(truth.isel({CHANNEL: c}).std())
        noise = rng.standard_normal((inits.size, LEADS.size, N_MEMBERS, *valid.shape[-2:]))
        growth = (1 + np.arange(LEADS.size))[None, :, None, None, None]
        members = valid[:, :, None] + scale * (0.3 + 0.2 * noise) * growth
        fields[variable] = ((INIT_TIME, LEAD_TIME, MEMBER, LAT, LON), members.astype(np.float32))
    coords = {
        INIT_TIME: inits,
        LEAD_TIME: LEADS,
        MEMBER: np.arange(N_MEMBERS),
        LAT: truth[LAT].values,
        LON: truth[LON].values,
    }
    return xr.Dataset(fields, coords=coords)


@pytest.fixture
def ensemble(truth):
    return _ensemble(truth)


@pytest.fixture
def on_disk(tmp_path, ensemble):
    """The same ensemble as a finalised, lazily opened (Dask) Zarr archive."""
    archive = ZarrArchive(
        tmp_path / "a.zarr",
        VARIABLES,
        ensemble[INIT_TIME].values,
        LEADS,
        N_MEMBERS,
        ensemble[LAT].values,
        ensemble[LON].values,
    )
    for i, init in enumerate(ensemble[INIT_TIME].values):
        for l, lead in enumerate(LEADS):
            x = np.stack([ensemble[v].values[i, l] for v in VARIABLES], axis=1)
            coords = {
                INIT_TIME: np.array([init]),
                LEAD_TIME: np.array([lead]),
                MEMBER: np.arange(N_MEMBERS),
                CHANNEL: np.array(VARIABLES),
                LAT: ensemble[LAT].values,
                LON: ensemble[LON].values,
            }
            archive.write(x, coords)
    return open_archive(archive.finalize())


def _reference(ensemble, truth, climatology, variable, region, weights):
    """Every scorecard metric of fourcast from the in-memory xarray metric definitions."""
    x = ensemble[variable].astype(np.float64)
    inits = x[INIT_TIME].values
    valid = xr.DataArray(
        inits[:, None] + LEADS[None, :],
        dims=(INIT_TIME, LEAD_TIME),
        coords={INIT_TIME: inits, LEAD_TIME: LEADS},
    )
    y = (
        truth.sel({CHANNEL: variable, TIME: valid}, drop=True)
        .astype(np.float64)
        .drop_vars(TIME, errors="ignore")
    )
    c = climatology.sel({CHANNEL: variable}, drop=True).astype(np.float64)
    mean = x.mean(MEMBER)
    rank = reference.rank_histogram(x, y, np.random.default_rng(0), weights, normalise=True)
    return {
        "rmse": reference.rmse(mean, y, weights),
        "mse": reference.mse(mean, y, weights),
        "mae": reference.mae(mean, y, weights),
        "bias": reference.bias(mean, y, weights),
        "acc": reference.acc(mean, y, c, weights),
        "crps": reference.crps(x, y, weights, kind="fair"),
        "crps_plain": reference.crps(x, y, weights, kind="plain"),
        "energy_score": reference.energy_score(x, y, weights, kind="fair"),
        "brier": reference.brier_score(x, y, c, weights, fair=True),
        "spread": reference.ensemble_spread(x, weights),
        "ssr": reference.spread_skill_ratio(x, y, weights),
        "debiased_rmse": reference.debiased_ensemble_mean_rmse(x, y, weights),
        "rank": rank,
        "reliability": np.abs(rank - 1.0 / rank.sizes["rank"]).sum(
            "rank"
        ),  # Delle Monache's index, by definition
    }


def test_dask_chunked_scores_equal_the_in_memory_definitions(on_disk, ensemble, truth, climatology):
    assert on_disk["z500"].chunks is not None  # Dask-backed: read chunk by chunk
    scorecard = score_archive(on_disk, truth, climatology, ScoreOptions(regions=REGIONS))
    assert scorecard["score"].dims == ("metric", "variable", "region", "lead_time", "system")
    for variable in VARIABLES:
        for region in REGIONS:
            weights = region.weights(truth[LAT].values, truth[LON].values)
            expected = _reference(ensemble, truth, climatology, variable, region, weights)
            got = scorecard["score"].sel(variable=variable, region=region.name, system="fourcast")
            for metric in METRICS:
                np.testing.assert_allclose(
                    got.sel(metric=metric),
                    expected[metric].transpose(LEAD_TIME),
                    rtol=1e-6,
                    atol=1e-9,
                    err_msg=f"{metric} {variable} {region.name}",
                )
            ranks = scorecard["rank_histogram"].sel(variable=variable, region=region.name)
            np.testing.assert_allclose(
                ranks, expected["rank"].transpose(LEAD_TIME, "rank"), rtol=1e-6, atol=1e-12
            )


def test_control_and_time_mean_baselines_and_the_skill_records(on_disk, ensemble, truth, climatology):
    time_mean = truth.isel({TIME: slice(0, 6)}).mean(TIME)
    scorecard = score_archive(on_disk, truth, climatology, ScoreOptions(regions=REGIONS), time_mean=time_mean)
    region = REGIONS[0]
    weights = region.weights(truth[LAT].values, truth[LON].values)
    for variable in VARIABLES:
        x = ensemble[variable].astype(np.float64)
        inits = x[INIT_TIME].values
        valid = xr.DataArray(
            inits[:, None] + LEADS[None, :],
            dims=(INIT_TIME, LEAD_TIME),
            coords={INIT_TIME: inits, LEAD_TIME: LEADS},
        )
        y = (
            truth.sel({CHANNEL: variable, TIME: valid}, drop=True)
            .astype(np.float64)
            .drop_vars(TIME, errors="ignore")
        )
        got = scorecard["score"].sel(variable=variable, region=region.name)
        control_mae = reference.mae(x.sel({MEMBER: 0}, drop=True), y, weights)
        np.testing.assert_allclose(
            got.sel(metric="mae", system="control"), control_mae.transpose(LEAD_TIME), rtol=1e-6
        )
        flat = time_mean.sel({CHANNEL: variable}, drop=True).astype(np.float64)
        np.testing.assert_allclose(
            got.sel(metric="rmse", system="time_mean"),
            reference.rmse(flat.broadcast_like(y), y, weights).transpose(LEAD_TIME),
            rtol=1e-6,
        )
    records = scorecard_records(scorecard, region.name)
    derived = {
        (r["variable"], r["lead_hours"], r["system"], r["metric"]): r["value"] for r in skill_records(records)
    }
    value = {(r["variable"], r["lead_hours"], r["system"], r["metric"]): r["value"] for r in records}
    for (variable, lead, system, metric), result in derived.items():
        if system == "best_climatology":
            assert result == min(
                value[(variable, lead, "climatology", metric)], value[(variable, lead, "time_mean", metric)]
            )
        elif metric == "crpss_persistence":
            assert result == pytest.approx(
                1
                - value[(variable, lead, "fourcast", "crps")] / value[(variable, lead, "persistence", "crps")]
            )
    assert any(key[3] == "crpss_climatology" for key in derived)


def test_dask_and_loaded_archives_score_the_same(on_disk, truth, climatology):
    lazy = score_archive(on_disk, truth, climatology)
    loaded = score_archive(on_disk.load(), truth.load(), climatology.load())
    np.testing.assert_allclose(lazy["score"], loaded["score"], rtol=1e-12)
    assert (lazy["n_forecasts"] == 4).all()


def test_baselines_are_scored_by_the_same_definitions(ensemble, truth, climatology):
    scorecard = score_archive(ensemble, truth, climatology)
    persistence = persistence_forecast(truth, ensemble[INIT_TIME].values, LEADS, VARIABLES)
    for variable in VARIABLES:
        valid = ensemble[INIT_TIME] + ensemble[LEAD_TIME]
        y = truth.sel({CHANNEL: variable, TIME: valid}, drop=True).drop_vars(TIME, errors="ignore")
        got = scorecard["score"].sel(variable=variable, region="global", system="persistence")
        np.testing.assert_allclose(
            got.sel(metric="rmse"), reference.rmse(persistence[variable], y).transpose(LEAD_TIME), rtol=1e-6
        )
        np.testing.assert_allclose(got.sel(metric="crps"), got.sel(metric="mae"), rtol=1e-12)
        assert float(got.sel(metric="rmse", lead_time=LEADS[0])) == 0.0
        assert float(got.sel(metric="acc", lead_time=LEADS[0])) == pytest.approx(1.0)
        assert np.isnan(got.sel(metric="spread")).all()
        climate = scorecard["score"].sel(variable=variable, region="global", system="climatology")
        assert (climate.sel(metric="acc") == 0.0).all()


def test_partial_results_of_chunks_add_up_in_any_order(ensemble, truth, climatology):
    first, second = ensemble.isel({INIT_TIME: [0, 1]}), ensemble.isel({INIT_TIME: [2, 3]})
    total = score_archive(ensemble, truth, climatology)
    halves = [score_archive(half, truth, climatology) for half in (first, second)]
    # means over two halves of equal size: the mean of the halves' means for the linear metrics
    for metric in ("mse", "mae", "bias", "acc", "crps", "energy_score"):
        np.testing.assert_allclose(
            total["score"].sel(metric=metric),
            (halves[0]["score"].sel(metric=metric) + halves[1]["score"].sel(metric=metric)) / 2,
            rtol=1e-10,
            atol=1e-12,
        )
    w = weight_matrix([GLOBAL], truth[LAT].values, truth[LON].values)
    parts = []
    for i, init in enumerate(ensemble[INIT_TIME].values):
        members = np.stack([ensemble[v].values[i, 1] for v in VARIABLES], axis=1)
        at = [truth.sel({TIME: t}).values for t in (init + LEADS[1], init)]
        parts.append(
            score_chunk(
                init, LEADS[1], VARIABLES, members, at[0], at[1], climatology.values, w, ScoreOptions()
            )
        )
    forwards = parts[0] + parts[1] + parts[2] + parts[3]
    backwards = (parts[3] + parts[2]) + (parts[1] + parts[0])
    for key, sums in forwards.sums.items():
        for name, value in sums.totals.items():
            np.testing.assert_allclose(value, backwards.sums[key].totals[name], rtol=1e-14, atol=1e-14)
    key = ("fourcast", "z500", LEADS[1])
    np.testing.assert_allclose(
        finalise(forwards.sums[key], "rmse"),
        total["score"].sel(
            metric="rmse", variable="z500", system="fourcast", region="global", lead_time=LEADS[1]
        ),
        rtol=1e-12,
    )


def test_crps_statistic_matches_properscoring_and_the_pairwise_formula():
    rng = np.random.default_rng(3)
    members, y = rng.standard_normal((6, 50)), rng.standard_normal(50)
    w = np.full((1, 50), 1 / 50)
    stats = forecast_statistics(members, y, np.zeros(50), w)
    assert set(stats) == set(metrics.STATISTICS)
    assert stats["crps_plain"][0] == pytest.approx(
        properscoring.crps_ensemble(y, members.T).mean(), rel=1e-12
    )
    pairwise = np.abs(members[:, None] - members[None, :]).sum((0, 1))
    fair = np.abs(members - y).mean(0) - pairwise / (2 * 6 * 5)
    assert stats["crps_fair"][0] == pytest.approx(fair.mean(), rel=1e-12)
    one = forecast_statistics(members[:1], y, np.zeros(50), w)
    assert one["crps_plain"][0] == pytest.approx(one["ae"][0], rel=1e-12)
    assert (
        StatisticSums.of(one, 1) is not None and np.isnan(finalise(StatisticSums.of(one, 1), "spread")).all()
    )


def test_sums_of_different_ensemble_sizes_do_not_merge():
    w = np.full((1, 4), 0.25)
    three = StatisticSums.of(forecast_statistics(np.ones((3, 4)), np.zeros(4), np.zeros(4), w), 3)
    two = StatisticSums.of(forecast_statistics(np.ones((2, 4)), np.zeros(4), np.zeros(4), w), 2)
    with pytest.raises(metrics.ScoringError, match="cannot merge statistics of 3-member forecasts"):
        three + two


def test_scorecard_is_written_as_netcdf_and_csv(tmp_path, ensemble, truth, climatology):
    scorecard = score_archive(ensemble, truth, climatology, ScoreOptions(regions=(GLOBAL, TROPICS)))
    nc, csv = write_scorecard(scorecard, tmp_path / "scores")
    back = open_scorecard(nc)
    xr.testing.assert_identical(back["score"], scorecard["score"])
    table = scorecard_table(scorecard)
    written = __import__("pandas").read_csv(csv)
    assert list(written.columns) == ["metric", "variable", "region", "lead_hours", "system", "value"]
    assert len(written) == len(table) == int(np.isfinite(scorecard["score"]).sum())
    row = written.query(
        "metric == 'rmse' and variable == 'z500' and region == 'tropics' and lead_hours == 6 "
        "and system == 'fourcast'"
    )
    assert row["value"].item() == pytest.approx(
        float(
            scorecard["score"].sel(
                metric="rmse", variable="z500", region="tropics", lead_time=LEADS[1], system="fourcast"
            )
        ),
        rel=1e-8,
    )
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["scorecard.csv", "scorecard.nc"]


def test_empty_accumulator_has_no_means():
    with pytest.raises(metrics.ScoringError, match="no forecast was summed"):
        StatisticSums({}, 0, 1).means()
    assert ScoreAccumulator().sums == {}


def _killed_campaign(path, ensemble):
    """The ensemble as a campaign (blocks of members [0, 1, 2] and [3, 4]) killed part-way.

    Init times 0 and 2: both blocks written and recorded complete; init 1: block 0 complete,
    block 1 written at lead 0 only (the kill came mid-item); init 3: nothing.
    """
    from ensembles.campaign import Campaign, CampaignArchive

    inits = ensemble[INIT_TIME].values
    campaign = Campaign(
        variables=tuple(VARIABLES),
        init_times=inits,
        step=np.timedelta64(6, "h"),
        n_steps=2,
        n_members=N_MEMBERS,
        members_per_batch=3,
        seed=0,
    )
    archive = CampaignArchive(path, campaign, ensemble[LAT].values, ensemble[LON].values)
    for item in campaign.work_items():
        leads = {0: LEADS, 2: LEADS, 1: LEADS if item.block_index == 0 else LEADS[:1]}.get(
            item.init_index, []
        )
        for lead in leads:
            _write(archive, ensemble, item.init_index, lead, item.members)
        if len(leads) == LEADS.size:
            archive.mark_done(item)
    return archive


def _write(archive, ensemble, init_index, lead, members, values=None):
    l = int(np.flatnonzero(LEADS == lead)[0])
    x = (
        np.stack([ensemble[v].values[init_index, l, members] for v in VARIABLES], axis=1)
        if values is None
        else values
    )
    archive.write(
        x,
        {
            INIT_TIME: ensemble[INIT_TIME].values[[init_index]],
            LEAD_TIME: np.array([lead]),
            MEMBER: np.asarray(members),
            CHANNEL: np.array(VARIABLES),
            LAT: ensemble[LAT].values,
            LON: ensemble[LON].values,
        },
    )


def test_partial_scoring_of_a_killed_campaign_keeps_the_init_times_recorded_complete(
    tmp_path, ensemble, truth, climatology
):
    path = tmp_path / "campaign.zarr"
    archive = _killed_campaign(path, ensemble)
    forecasts, completed = open_for_scoring(
        path, partial=True
    )  # nothing committed: the unfinished store is read
    inits = ensemble[INIT_TIME].values
    assert completed.location == archive.partial_path
    np.testing.assert_array_equal(completed.scored, inits[[0, 2]])
    np.testing.assert_array_equal(completed.left_out, inits[[1, 3]])
    assert completed.describe() == (
        f"scoring 2 of 4 init times of {archive.partial_path} (5 of 8 work items recorded "
        "complete); left out 2 init "
        f"times with member blocks not recorded complete ({str(inits[1])[:16]}, {str(inits[3])[:16]})"
    )
    scorecard = score_archive(forecasts, truth, climatology, ScoreOptions(recorded_complete=True))
    expected = score_archive(ensemble.isel({INIT_TIME: [0, 2]}), truth, climatology)
    np.testing.assert_allclose(scorecard["score"], expected["score"], rtol=1e-12)
    assert (scorecard["n_forecasts"] == 2).all() and int(scorecard["n_unwritten"].sum()) == 0

    poisoned = np.stack([ensemble[v].values[2, 1, :3] for v in VARIABLES], axis=1)
    poisoned[0, 0, 0, 0] = np.nan  # a real NaN in a completed item: the NaN policy decides
    _write(archive, ensemble, 2, LEADS[1], [0, 1, 2], poisoned)
    forecasts, _ = open_for_scoring(path, partial=True)
    with pytest.raises(ScoringError, match=r"NaN values in z500 from .* at lead 6 h: forecast 1 of"):
        score_archive(forecasts, truth, climatology, ScoreOptions(recorded_complete=True))
    skipped = score_archive(
        forecasts, truth, climatology, ScoreOptions(nan_policy="skip", recorded_complete=True)
    )
    assert int(skipped["n_skipped"].sum()) == 1


def test_partial_scoring_refuses_a_campaign_with_no_complete_init_time(tmp_path, ensemble):
    from ensembles.campaign import Campaign, CampaignArchive

    campaign = Campaign(
        variables=tuple(VARIABLES),
        init_times=ensemble[INIT_TIME].values,
        step=np.timedelta64(6, "h"),
        n_steps=2,
        n_members=N_MEMBERS,
        members_per_batch=3,
        seed=0,
    )
    archive = CampaignArchive(tmp_path / "c.zarr", campaign, ensemble[LAT].values, ensemble[LON].values)
    archive.mark_done(campaign.work_items()[0])
    with pytest.raises(
        ScoringError,
        match=r"no init time of .*\.c\.zarr\.partial-\w+ has every member block recorded "
        r"complete \(1 of 8 work items done\): nothing to score yet",
    ):
        open_for_scoring(tmp_path / "c.zarr", partial=True)
