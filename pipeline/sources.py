"""Where the ERA5 files of a run come from: synthesized, fetched from the CDS, or found in a folder.

:data:`SOURCES` maps each ``ingest.source`` to its :class:`Source`: what the step is called in
the log and the function that returns the files to ingest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from ingest.cds import CdsRequest, plan_requests
from ingest.progress import progress
from ingest.synthetic import generate_files
from pipeline.config import CdsConfig, RunConfig, SyntheticConfig
from pipeline.errors import StageInputError
from pipeline.paths import Paths
from pipeline.settings import config_time, download_settings, plan_options

#: File name endings of the layouts :func:`ingest.readers.open_sources` reads (netCDF, GRIB, CDS zip).
RAW_SUFFIXES = (".nc", ".grib", ".grb", ".grib2", ".grb2", ".zip")


def synthesize(cfg: SyntheticConfig, out_dir: Path) -> list[Path]:
    """Shallow-water synthetic ERA5 as new-CDS netCDF files (reused if already there); progress in simulated
    days."""
    start, end = config_time(cfg.period.start), config_time(cfg.period.end)
    days = int(math.ceil(cfg.spinup_days + (end - start) / np.timedelta64(1, "D")))
    with progress(
        days,
        f"simulating {days} days of shallow-water weather on {cfg.nlat}x{cfg.nlon} (spin-up "
        f"{cfg.spinup_days:g} d)",
        "days",
    ) as bar:
        return generate_files(
            out_dir,
            start,
            end,
            nlat=cfg.nlat,
            nlon=cfg.nlon,
            seed=cfg.seed,
            spinup_days=cfg.spinup_days,
            progress=lambda done: bar.update(int(done * days) - bar.n),
        )


def cds_plan(cfg: CdsConfig, variables: list[str]) -> list[CdsRequest]:
    """The CDS requests that fetch ``variables`` over ``cfg.period``, each with its cost; nothing is sent."""
    return plan_requests(variables, cfg.period.start, cfg.period.end, cfg.step_hours, plan_options(cfg))


def download(cfg: CdsConfig, variables: list[str], cache_dir: Path) -> list[Path]:
    """ERA5 from the CDS into ``cfg.cache_dir`` (default ``cache_dir``); only what is not cached is fetched.

    The key comes from ``CDSAPI_URL``/``CDSAPI_KEY`` or ``~/.cdsapirc``, never from the config.

    Raises
    ------
    StageInputError
        If the CDS client (the ``[ingest]`` extra) is not installed.
    """
    try:  # the CDS client is the [ingest] extra
        from ingest.cds_download import download_plan
    except ImportError as err:
        raise StageInputError(
            f"ingest.source 'cds' needs the CDS client: pip install 'fourcast[ingest]' ({err})"
        ) from err
    return download_plan(cds_plan(cfg, variables), download_settings(cfg, cache_dir))


def raw_files(folder: Path) -> list[Path]:
    """The ERA5 files in ``folder`` (not its subfolders or hidden files), sorted by name.

    Raises
    ------
    StageInputError
        If the folder is missing or holds no file ending in one of :data:`RAW_SUFFIXES`.
    """
    if not folder.is_dir():
        raise StageInputError(f"ingest.source 'files' reads ERA5 files from {folder}, which does not exist")
    present = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    files = [p for p in present if p.suffix.lower() in RAW_SUFFIXES]
    if not files:
        found = ", ".join(p.name for p in present[:5]) + (", …" if len(present) > 5 else "") or "nothing"
        raise StageInputError(
            f"expected ERA5 files ending in {', '.join(RAW_SUFFIXES)} (netCDF, GRIB or CDS zip) "
            f"in {folder}; found {found}"
        )
    return files


@dataclass(frozen=True)
class Source:
    """One ``ingest.source``: the name of its step in the log and how it finds the files.

    Attributes
    ----------
    step : str
        What the step is called in the stage log (``synthesize``, ``download``, ``find files``).
    files : callable
        ``(cfg, paths) -> list of pathlib.Path``: the ERA5 files to ingest.
    """

    step: str
    files: Callable[[RunConfig, Paths], list[Path]]


def _cds(cfg: RunConfig) -> CdsConfig:
    """``ingest.cds``, which the config requires when ``ingest.source`` is ``cds``."""
    return cast(CdsConfig, cfg.ingest.cds)


def _synthetic(cfg: RunConfig) -> SyntheticConfig:
    """The ``synthetic`` section, which the config requires when ``ingest.source`` is ``synthetic``."""
    return cast(SyntheticConfig, cfg.synthetic)


#: Each ``ingest.source`` (:class:`pipeline.config.IngestConfig`) by name.
SOURCES: dict[str, Source] = {
    "cds": Source("download", lambda cfg, paths: download(_cds(cfg), cfg.ingest.variables, paths.cds_cache)),
    "synthetic": Source("synthesize", lambda cfg, paths: synthesize(_synthetic(cfg), paths.raw)),
    "files": Source("find files", lambda cfg, paths: raw_files(paths.raw)),
}


def source_files(cfg: RunConfig, paths: Paths) -> list[Path]:
    """The ERA5 files to ingest: fetched from the CDS, synthesized, or found in ``paths.raw`` (``files``)."""
    return SOURCES[cfg.ingest.source].files(cfg, paths)
