"""Shared, seeded test data: small synthetic ERA5 files and a training store built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ingest.store import StatsPeriod, StoreLayout, open_sources, write_store
from ingest.synthetic import generate_files

VARIABLES = ["z500", "u500", "v500"]
START, END = np.datetime64("2000-01-01T00"), np.datetime64("2000-02-29T18")
STATS = StatsPeriod(np.datetime64("2000-01-01T00"), np.datetime64("2000-01-31T18"))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def era5_files(tmp_path_factory) -> list[Path]:
    """Two months of 16x32 shallow-water fields in the new-CDS netCDF layout."""
    out = tmp_path_factory.mktemp("era5")
    return generate_files(out, START, END, nlat=16, nlon=32, seed=1, spinup_days=5.0)


@pytest.fixture(scope="session")
def store_paths(era5_files, tmp_path_factory) -> tuple[Path, Path]:
    """``(store, climatology)`` written with the default (threaded) Dask scheduler."""
    root = tmp_path_factory.mktemp("stores")
    data = open_sources(era5_files, VARIABLES, shard_steps=40)
    store = write_store(
        data,
        root / "store.zarr",
        STATS,
        StoreLayout(shard_steps=40),
        climatology_path=root / "climatology.zarr",
    )
    return store, root / "climatology.zarr"


@pytest.fixture(scope="session")
def store(store_paths) -> Path:
    return store_paths[0]


#: A run config for the shared test store (``era5_files``/``store_paths``), slice by slice: the
#: synthetic period and grid of those files, its statistics period, a one-step afno-tiny training.
STORE_RUN_CONFIG = {
    "synthetic": {"period": {"start": "2000-01-01T00:00", "end": "2000-02-29T18:00"}, "nlat": 16, "nlon": 32},
    "ingest": {
        "variables": VARIABLES,
        "statistics": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"},
    },
    "train": {
        "model": "afno-tiny",
        "train": {"start": "2000-01-01T00:00", "end": "2000-01-31T18:00"},
        "validation": {"start": "2000-02-01T00:00", "end": "2000-02-10T18:00"},
        "phases": [{"rollout_steps": 1, "optimizer_steps": 1, "learning_rate": 1e-3}],
    },
    "forecast": {"inits": {"start": "2000-02-15T00:00", "end": "2000-02-16T00:00"}},
}


@pytest.fixture(scope="session")
def write_run_config():
    """``write(path, workdir, **slices)``: write a YAML run config for the shared test store to ``path``.

    Each given slice updates that slice of :data:`STORE_RUN_CONFIG` key by key (new slices are
    added as given); returns ``path``.
    """
    import yaml

    def write(path: Path, workdir: Path, **slices: dict) -> Path:
        config = {name: {**STORE_RUN_CONFIG.get(name, {}), **values} for name, values in slices.items()}
        path.write_text(yaml.safe_dump({**STORE_RUN_CONFIG, **config, "workdir": str(workdir)}))
        return path

    return write
