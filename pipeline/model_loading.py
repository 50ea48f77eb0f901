"""The model a forecast runs: where it is (a checkpoint path or an MLflow model URI), on which device, on
which grid.

A ``models:/NAME@ALIAS`` URI is resolved once to ``models:/NAME/VERSION``
(:func:`resolved_model`), so an alias moved meanwhile cannot change what was loaded;
:func:`load_forecast_model` does both and returns a :class:`LoadedModel`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import xarray as xr

from fourcast.checkpoint import CheckpointMeta
from fourcast.device import default_device
from fourcast.distributed import LaunchEnv
from fourcast.errors import CheckpointError
from fourcast.forecaster import Forecaster
from ingest.dims import CHANNEL, LAT, LON
from pipeline.config import ForecastConfig
from pipeline.errors import StageInputError
from pipeline.lineage import file_sha256
from pipeline.tracking import MODEL_URI_SCHEMES, ModelUriError, download_checkpoint, resolve_model_version

log = logging.getLogger(__name__)


def forecast_device(cfg: ForecastConfig, launch: LaunchEnv) -> torch.device:
    """``cfg.device``, else this process's CUDA device (by local rank) when CUDA is there, else the
    default."""
    if cfg.device is None and torch.cuda.is_available():
        return torch.device("cuda", launch.local_rank % torch.cuda.device_count())
    return default_device(cfg.device)


def resolved_model(model: str, tracking_uri: str | None) -> dict[str, str]:
    """``{"model_name", "model_version"}`` a ``models:/`` URI names now (an alias resolved once); else ``{}``.

    Raises
    ------
    StageInputError
        If the URI names a model, version or alias the registry does not hold (the message
        names the model and its aliases), or no tracking URI is given.
    """
    if not model.startswith("models:/"):
        return {}
    if tracking_uri is None:
        raise StageInputError(f"model {model} is an MLflow URI but no tracking URI was given")
    try:
        name, version = resolve_model_version(model, tracking_uri)
    except ModelUriError as err:
        raise StageInputError(str(err)) from err
    return {"model_name": name, "model_version": version}


def _load(
    model: str,
    tracking_uri: str | None,
    device: torch.device,
    autocast: bool,
    cuda_graphs: bool = False,
    compile: bool = False,
) -> tuple[Forecaster, CheckpointMeta, str]:
    """The forecaster, its checkpoint metadata and the checkpoint's SHA-256, from a path or an MLflow model
    URI.

    A ``models:/NAME@ALIAS`` URI should be resolved first (:func:`resolved_model`) and given as
    ``models:/NAME/VERSION``, so that an alias moved meanwhile cannot change what was loaded.
    """
    with tempfile.TemporaryDirectory(prefix="fourcast-model-") as scratch:
        if model.startswith(MODEL_URI_SCHEMES):
            if tracking_uri is None:
                raise StageInputError(f"model {model} is an MLflow URI but no tracking URI was given")
            try:
                path = download_checkpoint(model, tracking_uri, Path(scratch))
            except ModelUriError as err:
                raise StageInputError(str(err)) from err
        else:
            path = Path(model)
        meta = Forecaster.meta_of(path)
        forecaster = Forecaster.from_checkpoint(
            path, device, autocast=autocast, cuda_graphs=cuda_graphs, compile=compile
        )
        return forecaster, meta, file_sha256(path)


@dataclass(frozen=True)
class LoadedModel:
    """A forecast's model, loaded.

    Attributes
    ----------
    model : str
        The model as given: a checkpoint path or an MLflow model URI (alias unresolved).
    registered : dict of str to str
        ``model_name`` and ``model_version`` of a ``models:/`` URI (:func:`resolved_model`), else empty.
    forecaster : Forecaster
    meta : CheckpointMeta
        The checkpoint's metadata.
    sha256 : str
        The checkpoint's SHA-256.
    """

    model: str
    registered: dict[str, str]
    forecaster: Forecaster
    meta: CheckpointMeta
    sha256: str


def load_forecast_model(
    model: str,
    tracking_uri: str | None,
    device: torch.device,
    autocast: bool,
    cuda_graphs: bool = False,
    compile: bool = False,
) -> LoadedModel:
    """Resolve ``model`` (:func:`resolved_model`) and load the version it names now (from a path, or
    downloaded from MLflow)."""
    registered = resolved_model(model, tracking_uri)
    pinned = f"models:/{registered['model_name']}/{registered['model_version']}" if registered else model
    forecaster, meta, sha256 = _load(pinned, tracking_uri, device, autocast, cuda_graphs, compile)
    return LoadedModel(model, registered, forecaster, meta, sha256)


def forecast_model(
    cfg: ForecastConfig, checkpoint: Path, tracking_uri: str | None, device: torch.device
) -> LoadedModel:
    """The forecast's model on ``device``: ``cfg.model``, else ``checkpoint`` (:func:`load_forecast_model`).

    It runs under bfloat16 autocast when ``cfg.autocast`` asks for it on CUDA, with CUDA graphs
    and ``torch.compile`` as ``cfg`` says.
    """
    autocast = cfg.autocast and device.type == "cuda"
    return load_forecast_model(
        str(cfg.model or checkpoint), tracking_uri, device, autocast, cfg.cuda_graphs, cfg.compile
    )


def on_store_grid(forecaster: Forecaster, meta: CheckpointMeta, truth: xr.Dataset) -> Forecaster:
    """The forecaster on the store's grid: as it is, or moved there without retraining (SFNO only).

    Raises
    ------
    CheckpointError
        If the channels differ; :class:`~fourcast.errors.ResolutionTransferError` if the grid
        differs and the model cannot move (AFNO), naming why.
    """
    lat, lon = truth[LAT].values, truth[LON].values
    try:
        meta.check_matches(list(truth[CHANNEL].values), lat, lon)
    except CheckpointError:
        if list(meta.channels) != [str(c) for c in truth[CHANNEL].values]:
            raise
        log.warning(
            "the model was trained on a %dx%d grid; forecasting zero-shot on the store's %dx%d grid",
            len(meta.lat),
            len(meta.lon),
            lat.size,
            lon.size,
        )
        return forecaster.on_grid(lat, lon)
    return forecaster
