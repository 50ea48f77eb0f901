"""Campaigns in one process: work items, resume from the store's markers, commit, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ensembles.archive import MemoryArchive, open_archive
from ensembles.campaign import Campaign, CampaignArchive
from ensembles.errors import ArchiveError, CampaignIncompleteError, CampaignMismatchError, EnsembleInputError
from ensembles.perturbations import GaussianPerturbation
from ensembles.runner import run_campaign, run_ensemble
from ingest.dims import INIT_TIME, LAT, LON, MEMBER, TIME
from ingest.locks import LockHeldError

INITS = np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]")
STEP = np.timedelta64(6, "h")
PERTURBATION = GaussianPerturbation(np.array([800.0, 8.0]), 0.3)
REPO = Path(__file__).resolve().parents[2]


def _campaign(**override) -> Campaign:
    settings = dict(
        variables=("z500", "u500"),
        init_times=INITS,
        step=STEP,
        n_steps=3,
        n_members=5,
        members_per_batch=2,
        seed=7,
        identity={"model": "drift"},
    )
    return Campaign(**{**settings, **override})


def _run(path, prognostic, truth, coords, campaign=None, *, rank=0, world_size=1, overwrite=False, **kwargs):
    campaign = campaign or _campaign()
    archive = CampaignArchive(path, campaign, coords[LAT], coords[LON], {"code": "test"}, overwrite=overwrite)
    return run_campaign(
        prognostic,
        lambda t: torch.from_numpy(truth.sel({TIME: t}).values),
        coords,
        campaign,
        archive,
        PERTURBATION,
        rank=rank,
        world_size=world_size,
        **kwargs,
    )


def _arrays(path, allow_partial=False) -> dict[str, np.ndarray]:
    ds = open_archive(path, allow_partial=allow_partial)
    return {name: ds[name].values for name in ds.data_vars}


def test_work_items_cover_every_member_once_whatever_the_world_size():
    campaign = _campaign()
    everything = {(item.init_index, m) for item in campaign.work_items() for m in item.members.tolist()}
    assert everything == {(i, m) for i in range(2) for m in range(5)}
    assert [item.members.tolist() for item in campaign.work_items()[:3]] == [[0, 1], [2, 3], [4]]
    for world_size in (1, 2, 3, 7):
        shares = [campaign.items_for_rank(rank, world_size) for rank in range(world_size)]
        assert sorted((i.init_index, i.block_index) for share in shares for i in share) == sorted(
            (i.init_index, i.block_index) for i in campaign.work_items()
        )
    with pytest.raises(EnsembleInputError, match="0 <= rank < world_size, found rank=2, world_size=2"):
        campaign.items_for_rank(2, 2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"n_members": 0}, r"n_members >= 1; found \{'n_members': 0\}"),
        ({"n_members": -3}, "n_members >= 1"),
        ({"members_per_batch": 0}, "members_per_batch >= 1"),
        ({"init_times": INITS[[0, 0]]}, "distinct init times"),
    ],
)
def test_bad_campaigns_are_refused(override, message):
    with pytest.raises(EnsembleInputError, match=message):
        _campaign(**override)


def test_campaign_equals_the_ensemble_run_of_each_init_time(tmp_path, drift_prognostic, truth, coords):
    result = _run(tmp_path / "a.zarr", drift_prognostic, truth, coords)
    assert (result.items_computed, result.member_steps) == (6, 2 * 5 * 3)
    ds = open_archive(result.archive)
    assert ds.attrs["complete"] is True and ds.attrs["code"] == "test"
    assert ds.attrs["campaign"]["n_members"] == 5 and ds.attrs["start_time"] <= ds.attrs["end_time"]
    assert ds["z500"].data.chunksize == (1, 1, 2, 9, 16)

    reference = MemoryArchive(["z500", "u500"], INITS, _campaign().lead_times, 5, coords[LAT], coords[LON])
    for init in INITS:
        run_ensemble(
            drift_prognostic,
            torch.from_numpy(truth.sel({TIME: init}).values),
            coords,
            init,
            n_members=5,
            n_steps=3,
            perturbation=PERTURBATION,
            archive=reference,
            seed=7,
            members_per_batch=2,
        )
    for name in ("z500", "u500"):
        np.testing.assert_array_equal(ds[name].values, reference.dataset[name].values)
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]


def test_a_rank_alone_times_out_and_a_relaunch_computes_only_what_is_missing(
    tmp_path, drift_prognostic, truth, coords
):
    uninterrupted = _arrays(_run(tmp_path / "full.zarr", drift_prognostic, truth, coords).archive)
    path = tmp_path / "resumed.zarr"
    with pytest.raises(CampaignIncompleteError, match=r"3 work items still missing.*relaunch"):
        _run(path, drift_prognostic, truth, coords, rank=0, world_size=2, wait_timeout=0.3)
    (partial,) = tmp_path.glob(".resumed.zarr.partial-*")
    with pytest.raises(
        ArchiveError,
        match=f"archive at {path} is unfinished: {partial} was never committed .*"
        "relaunching a campaign resumes it.*allow_partial=True",
    ):
        open_archive(path)
    with pytest.raises(ArchiveError, match="never finalised"):
        open_archive(partial)
    half = open_archive(partial, allow_partial=True)["z500"]
    assert bool(half.sel({INIT_TIME: INITS[0], MEMBER: [0, 1, 4]}).notnull().all())
    assert bool(half.sel({INIT_TIME: INITS[0], MEMBER: [2, 3]}).isnull().all())

    resumed = _run(path, drift_prognostic, truth, coords, world_size=1)
    assert resumed.items_computed == 3
    for name, values in _arrays(path).items():
        assert values.tobytes() == uninterrupted[name].tobytes()
    again = _run(path, drift_prognostic, truth, coords, rank=1, world_size=3)
    assert again.items_computed == 0 and again.archive == str(path)


def test_finalize_refuses_missing_items(tmp_path, coords):
    archive = CampaignArchive(tmp_path / "a.zarr", _campaign(), coords[LAT], coords[LON])
    with pytest.raises(CampaignIncompleteError, match="6 work items still missing"):
        archive.finalize()


def test_a_path_holding_another_campaign_is_refused(tmp_path, drift_prognostic, truth, coords):
    path = tmp_path / "a.zarr"
    _run(path, drift_prognostic, truth, coords)
    other = _campaign(seed=8, members_per_batch=1)
    with pytest.raises(
        CampaignMismatchError,
        match=r"holds a different campaign \(members_per_batch: stored 2, "
        r"requested 1; seed: stored 7, requested 8\)",
    ):
        CampaignArchive(path, other, coords[LAT], coords[LON])
    with pytest.raises(CampaignIncompleteError):  # starts building the other campaign, then stops
        _run(path, drift_prognostic, truth, coords, other, world_size=2, overwrite=True, wait_timeout=0.1)
    assert open_archive(path).attrs["campaign"]["seed"] == 7  # the committed one survives until replaced
    replaced = _run(path, drift_prognostic, truth, coords, _campaign(seed=9), overwrite=True)
    assert open_archive(replaced.archive).attrs["campaign"]["seed"] == 9
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]  # the unfinished seed-8 store was discarded


def test_a_path_being_built_by_another_campaign_is_refused(tmp_path, drift_prognostic, truth, coords):
    path = tmp_path / "a.zarr"
    with pytest.raises(CampaignIncompleteError):
        _run(path, drift_prognostic, truth, coords, world_size=2, wait_timeout=0.1)
    with pytest.raises(
        CampaignMismatchError,
        match=r"being built by a different, unfinished campaign .*"
        r"\(n_steps: stored 3, requested 4\)",
    ):
        CampaignArchive(path, _campaign(n_steps=4), coords[LAT], coords[LON])


def test_sinks_receive_this_ranks_writes_and_are_finalised(tmp_path, drift_prognostic, truth, coords):
    sink = MemoryArchive(["z500"], INITS, _campaign().lead_times, 5, coords[LAT], coords[LON])
    result = _run(tmp_path / "a.zarr", drift_prognostic, truth, coords, sinks=[sink])
    assert sink.dataset.attrs["complete"] is True
    np.testing.assert_array_equal(sink.dataset["z500"].values, open_archive(result.archive)["z500"].values)


#: Rank 0 of a two-process campaign: joins the archive, says so, waits for a line on stdin, runs.
RANK_0 = """
import sys, torch
from ensembles.campaign import CampaignArchive
from ensembles.runner import run_campaign
from ingest.dims import LAT, LON, TIME
from tests.ensembles.conftest import DriftPrognostic, grid_coords, make_truth
from tests.ensembles.test_campaign import PERTURBATION, _campaign

coords, truth, campaign = grid_coords(), make_truth(), _campaign()
archive = CampaignArchive(sys.argv[1], campaign, coords[LAT], coords[LON], {"code": "test"})
print("joined", flush=True)
sys.stdin.readline()
def initial(t):
    return torch.from_numpy(truth.sel({TIME: t}).values)
run_campaign(DriftPrognostic(), initial, coords, campaign, archive, PERTURBATION, rank=0, world_size=2,
             wait_timeout=60)
"""


def test_another_campaign_is_refused_while_one_is_written_and_its_ranks_share_the_lock(
    tmp_path, drift_prognostic, truth, coords
):
    path = tmp_path / "a.zarr"
    rank_0 = subprocess.Popen(
        [sys.executable, "-c", RANK_0, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert rank_0.stdout.readline().strip() == b"joined"
        with pytest.raises(
            LockHeldError,
            match=rf"archive {path} is being written by process {rank_0.pid} on \S+ "
            r"since \S+ for another campaign",
        ):
            CampaignArchive(path, _campaign(seed=8), coords[LAT], coords[LON], overwrite=True)
        rank_0.stdin.write(b"go\n")
        rank_0.stdin.close()
        result = _run(path, drift_prognostic, truth, coords, rank=1, world_size=2, wait_timeout=60)
        assert rank_0.wait(timeout=120) == 0
    finally:
        rank_0.kill()
    assert result.items_computed == 3
    alone = _run(tmp_path / "alone.zarr", drift_prognostic, truth, coords)
    for name, values in _arrays(path).items():
        assert values.tobytes() == _arrays(alone.archive)[name].tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.zarr",
        "alone.zarr",
    ]  # lock files gone with the lock


def test_overwrite_never_replaces_what_is_not_a_forecast_archive(
    tmp_path, store_paths, drift_prognostic, truth, coords
):
    import shutil

    path = tmp_path / "store.zarr"
    shutil.copytree(store_paths[0], path)
    before = sorted((str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file())
    with pytest.raises(
        ArchiveError,
        match=f"refusing to replace {path}: it is a fourcast training store "
        r"\(arrays .*\), not a fourcast forecast archive",
    ):
        _run(path, drift_prognostic, truth, coords, overwrite=True)
    assert (
        sorted((str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file()) == before
    )
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]
    campaign_archive = _run(tmp_path / "a.zarr", drift_prognostic, truth, coords).archive
    assert open_archive(campaign_archive).attrs["fourcast_forecast_archive"] == 1


class _DivergingPrognostic:
    """Drift, except that member 3's u500 turns NaN at every step: a model that blew up for one member."""

    def __init__(self, drift) -> None:
        self.drift = drift

    def __getattr__(self, name):
        return getattr(self.drift, name)

    def step(self, x, coords):
        x, coords = self.drift.step(x, coords)
        members = coords[MEMBER].tolist()
        if 3 in members:
            x[members.index(3), 1] = float("nan")
        return x, coords


def test_a_non_finite_forecast_stops_the_campaign_and_is_never_recorded_complete(
    tmp_path, drift_prognostic, truth, coords
):
    import zarr

    from ensembles.campaign import DONE
    from ensembles.errors import NonFiniteForecastError

    path = tmp_path / "a.zarr"
    with pytest.raises(
        NonFiniteForecastError,
        match=r"from init time 2020-01-01T00:00:00 for the member block \[2, 3\] "
        r"is not finite at lead 6 h: NaN or infinite values in variables "
        r"\['u500'\] \(count per variable \{'u500': 144\}, in members \[3\]\)"
        r".*not recorded complete",
    ):
        _run(path, _DivergingPrognostic(drift_prognostic), truth, coords)
    assert not path.exists()
    (partial,) = tmp_path.glob(".a.zarr.partial-*")
    done = zarr.open_array(partial / DONE, mode="r")[...]
    assert done.tolist() == [[1, 0, 0], [0, 0, 0]]  # the first block only; the diverged one is not done
    written = open_archive(partial, allow_partial=True)["u500"].isel({INIT_TIME: 0})
    assert bool(written.sel({MEMBER: [2, 3]}).isel(lead_time=slice(1, None)).isnull().all())
