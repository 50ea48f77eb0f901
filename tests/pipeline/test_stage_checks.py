"""Checks at the stage boundary: a request the store or the archive cannot honour stops before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from ensembles.archive import ZarrArchive
from ingest.schema import DATA, open_store
from pipeline.cli import main


def _archive(store: Path, path: Path, init: str) -> Path:
    """A finalised 2-member archive at ``init`` with leads 0..48 h every 12 h: seeded noise around the truth
    at init."""
    truth = open_store(store)[DATA]
    inits = np.array([init], dtype="datetime64[ns]")
    leads = np.arange(0, 49, 12).astype("timedelta64[h]").astype("timedelta64[ns]")
    variables = [str(c) for c in truth["channel"].values]
    lat, lon = truth["lat"].values, truth["lon"].values
    archive = ZarrArchive(path, variables, inits, leads, 2, lat, lon, attrs={})
    state = truth.sel(time=inits[0]).values
    rng = np.random.default_rng(0)
    for lead in leads:
        x = state[None] * (1 + 0.01 * rng.standard_normal((2, *state.shape)))
        archive.write(
            x,
            {
                "init_time": inits,
                "lead_time": np.array([lead]),
                "member": np.arange(2),
                "channel": np.array(variables),
                "lat": lat,
                "lon": lon,
            },
        )
    return Path(archive.finalize())


@pytest.fixture
def workdir(tmp_path, store_paths) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    store, climatology = store_paths
    (work / "store.zarr").symlink_to(store)
    (work / "climatology.zarr").symlink_to(climatology)
    return work


def _score_config(workdir: Path, write_run_config) -> Path:
    return write_run_config(
        workdir / "run.yaml", workdir, score={"lead_hours": [24], "regions": ["global"], "plots": False}
    )


def test_headline_leads_the_archive_lacks_are_refused_naming_its_leads(
    workdir, store, write_run_config, capsys
):
    archive = _archive(store, workdir / "a.zarr", "2000-02-10T00")
    config = _score_config(workdir, write_run_config)
    assert (
        main(["score", "--config", str(config), "--archive", str(archive), "--lead-hours", "24", "240"]) == 1
    )
    err = capsys.readouterr().err
    assert (
        f"StageInputError: score.lead_hours [240] are not lead times of the archive {archive}, which holds "
        "[0, 12, 24, 36, 48] h"
    ) in err
    assert not (workdir / "scores").exists()


def test_max_lead_hours_scores_an_archive_whose_last_leads_run_past_the_store(
    workdir, store, write_run_config, capsys
):
    archive = _archive(store, workdir / "a.zarr", "2000-02-28T00")  # the store ends 2000-02-29T18
    config = _score_config(workdir, write_run_config)
    assert main(["score", "--config", str(config), "--archive", str(archive)]) == 1
    assert "reach beyond the truth available" in capsys.readouterr().err
    assert main(["score", "--config", str(config), "--archive", str(archive), "--max-lead-hours", "36"]) == 0
    with xr.open_dataset(workdir / "scores" / "scorecard.nc") as scorecard:
        assert scorecard["lead_hours"].values.tolist() == [0, 12, 24, 36]


def test_a_training_period_reaching_outside_the_store_is_refused(workdir, write_run_config, capsys):
    # ingest.source files: no synthetic period to check against, so only the store can tell
    config = write_run_config(
        workdir / "run.yaml",
        workdir,
        ingest={"source": "files"},
        train={"train": {"start": "1999-12-01T00:00", "end": "2000-01-31T18:00"}},
    )
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert (
        "StageInputError: train.train 1999-12-01T00:00..2000-01-31T18:00 reaches outside the "
        "store, which covers "
        "2000-01-01T00:00..2000-02-29T18:00; training would silently use less: choose dates within the store"
    ) in err
    assert not (workdir / "checkpoints").exists()
