"""The calibrate stage: perturbation amplitudes chosen on the validation period, before the forecast.

:func:`calibrate_model` runs :func:`ensembles.calibration.calibrate` for the model the forecast
will use, from init times of ``calibrate.period`` (default ``train.validation``) only — every
state it reads (initial conditions and truth at every valid time) lies inside that period, so
the scored inits cannot influence it. It writes ``<workdir>/calibration.json`` atomically, and
records the amplitudes as params and tags of its MLflow run and as tags of the registered model
version. :func:`apply_calibration` gives the forecast config those amplitudes; ``forecast``
uses it by default (``forecast.calibrated``), and the archive's lineage names the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ensembles.calibration import Calibration, calibrate, measure_spread_skill
from ingest.atomic import atomic_output
from ingest.dims import CHANNEL, LAT, LON, TIME
from ingest.schema import DATA, open_store
from pipeline.config import CalibrationConfig, ForecastConfig, ModelErrorConfig, Period, RunConfig
from pipeline.ensemble import build_model_error, build_perturbation
from pipeline.errors import CalibrationError
from pipeline.model_loading import load_forecast_model
from pipeline.tracking import Tracker, run_tags, tag_model_version

log = logging.getLogger(__name__)

#: The calibration file's name in the workdir.
CALIBRATION_FILE = "calibration.json"


def calibration_init_times(
    cfg: CalibrationConfig, validation: Period, times: np.ndarray, long_lead: np.timedelta64
) -> np.ndarray:
    """``cfg.n_inits`` init times spread over the calibration period, each with its long lead inside it.

    Parameters
    ----------
    cfg : CalibrationConfig
    validation : Period
        ``train.validation``, the period used when ``cfg.period`` is not set.
    times : numpy.ndarray of datetime64
        The store's times.
    long_lead : numpy.timedelta64
        The longest lead the calibration runs: ``init + long_lead`` must lie in the period too.

    Raises
    ------
    CalibrationError
        If the period holds no init time whose long lead ends inside it.
    """
    period = cfg.period or validation
    start, end = np.datetime64(period.start, "ns"), np.datetime64(period.end, "ns")
    times = np.asarray(times).astype("datetime64[ns]")
    candidates = times[(times >= start) & (times + long_lead <= end) & np.isin(times + long_lead, times)]
    if not candidates.size:
        raise CalibrationError(
            f"the calibration period {str(start)[:16]}..{str(end)[:16]} holds no init time whose "
            f"{long_lead / np.timedelta64(1, 'h'):g} h forecast ends inside it (in the store); "
            "lengthen calibrate.period (or train.validation) or shorten calibrate.long_lead_hours"
        )
    picks = np.unique(
        np.round(np.linspace(0, candidates.size - 1, min(cfg.n_inits, candidates.size))).astype(int)
    )
    return candidates[picks]


def calibrate_model(
    cfg: CalibrationConfig,
    forecast_cfg: ForecastConfig,
    validation: Period,
    forecaster,
    checkpoint_sha256: str,
    store: Path,
    out: Path,
    tracker: Tracker,
) -> Calibration:
    """Calibrate ``forecaster``'s perturbations on the validation period; write ``out``, log to ``tracker``.

    Starts from ``forecast_cfg.perturbation`` (kind, length scale, amplitude) and the SPPT
    settings of ``forecast_cfg.model_error`` (its amplitude, or 0.5, as the starting value).

    Raises
    ------
    CalibrationError
        If the leads are not multiples of the model step or the period is too short.
    """
    long_hours = cfg.long_lead_hours or forecast_cfg.lead_hours
    cfg = cfg.model_copy(
        update={
            "long_lead_hours": long_hours,
            "reference_lead_hours": min(cfg.reference_lead_hours, long_hours),
        }
    )
    step = np.timedelta64(forecaster.step_size).astype("timedelta64[ns]")
    leads = {}
    for key in ("reference_lead_hours", "long_lead_hours"):
        lead = np.timedelta64(getattr(cfg, key), "h").astype("timedelta64[ns]")
        if lead % step:
            raise CalibrationError(
                f"calibrate.{key} {getattr(cfg, key)} is not a multiple of the model step {step}"
            )
        leads[key] = int(lead // step)
    data = open_store(store)[DATA]
    inits = calibration_init_times(cfg, validation, data[TIME].values, leads["long_lead_hours"] * step)
    period = cfg.period or validation
    window = data.sel(
        {TIME: slice(np.datetime64(period.start, "ns"), np.datetime64(period.end, "ns"))}
    ).load()
    coords = {CHANNEL: window[CHANNEL].values, LAT: window[LAT].values, LON: window[LON].values}

    def state(time: np.datetime64) -> torch.Tensor:
        return torch.as_tensor(window.sel({TIME: time}).values)

    channels = [str(c) for c in forecaster.input_coords[CHANNEL]]
    settings = forecast_cfg.perturbation
    start = {c: (settings.amplitudes or {}).get(c, settings.amplitude) or 0.05 for c in channels}
    sppt = forecast_cfg.model_error
    sppt = sppt if sppt.kind == "sppt" else ModelErrorConfig(kind="sppt", amplitude=0.5)

    def measure(amplitudes, model_error, lead_steps):
        perturbation = build_perturbation(settings.model_copy(update={"amplitudes": amplitudes}), forecaster)
        noise = build_model_error(
            sppt.model_copy(update={"amplitude": 0.0, "amplitudes": model_error}), forecaster.step_size
        )
        return measure_spread_skill(
            forecaster,
            state,
            state,
            coords,
            inits,
            perturbation,
            n_members=cfg.members,
            lead_steps=lead_steps,
            seed=cfg.seed,
            model_error=noise,
        )

    started = time.perf_counter()

    def report(record: dict) -> None:
        log.info("calibration after %.0f s: %s", time.perf_counter() - started, json.dumps(record))

    log.info(
        "calibrating %s perturbations on %d inits %s..%s, %d members",
        settings.kind,
        inits.size,
        str(inits[0])[:13],
        str(inits[-1])[:13],
        cfg.members,
    )
    result = calibrate(
        measure,
        start,
        reference_step=leads["reference_lead_hours"],
        long_step=leads["long_lead_hours"],
        iterations=cfg.iterations,
        model_error=sppt.amplitude or 0.5,
        allow_model_error=cfg.model_error,
        tolerance=cfg.tolerance,
        on_evaluation=report,
    )
    document = {
        **result.to_dict(),
        "init_times": [str(t)[:19] for t in inits],
        "period": [str(period.start), str(period.end)],
        "members": cfg.members,
        "seed": cfg.seed,
        "reference_lead_hours": cfg.reference_lead_hours,
        "long_lead_hours": cfg.long_lead_hours,
        "perturbation": settings.model_dump(mode="json", exclude={"amplitudes"}),
        "model_error_settings": sppt.model_dump(mode="json", exclude={"amplitude", "amplitudes"}),
        "checkpoint_sha256": checkpoint_sha256,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_calibration(out, document)
    record_calibration(tracker, result, cfg)
    return result


def write_calibration(path: Path, document: dict) -> Path:
    """Write the calibration document as JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return path


def calibration_tags(result: Calibration) -> dict[str, str]:
    """``calibration/<var>/amplitude`` and ``…/model_error``: the tags of a run or a model version."""
    return {
        **{f"calibration/{v}/amplitude": f"{a:.6g}" for v, a in result.amplitudes.items()},
        **{f"calibration/{v}/model_error": f"{s:.6g}" for v, s in result.model_error.items()},
    }


def record_calibration(tracker: Tracker, result: Calibration, cfg: CalibrationConfig) -> None:
    """Params, tags and SSR metrics of the calibration on its run."""
    tags = calibration_tags(result)
    tracker.log_params(tags)
    tracker.set_tags(tags)
    metrics = {f"calibration/{v}/ssr_{cfg.reference_lead_hours}h": s for v, s in result.ssr_reference.items()}
    metrics.update({f"calibration/{v}/ssr_{cfg.long_lead_hours}h": s for v, s in result.ssr_long.items()})
    tracker.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})


def read_calibration(path: Path) -> dict:
    """The calibration document at ``path``.

    Raises
    ------
    CalibrationError
        If it cannot be read or lacks the amplitudes.
    """
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CalibrationError(f"cannot read the calibration {path}: {err}") from err
    if (
        not isinstance(document, dict)
        or not isinstance(document.get("amplitudes"), dict)
        or "model_error" not in document
    ):
        raise CalibrationError(
            f"the calibration {path} lacks 'amplitudes' or 'model_error'; rerun `fourcast calibrate`"
        )
    return document


def apply_calibration(
    cfg: ForecastConfig, path: Path | None, checkpoint_sha256: str
) -> tuple[ForecastConfig, dict]:
    """``cfg`` with the calibrated amplitudes of ``path``, and the lineage entries naming it.

    Nothing changes when ``cfg.calibrated`` is false, ``path`` is ``None`` or missing, or the
    file was made for another checkpoint (then with a warning): a calibration is only valid
    for the model it was measured with.
    """
    if not cfg.calibrated or path is None or not Path(path).is_file():
        return cfg, {}
    document = read_calibration(path)
    kind = document.get("perturbation", {}).get("kind")
    if kind != cfg.perturbation.kind:
        log.warning(
            "the calibration %s is of %s perturbations, not the configured %s; forecasting with the "
            "configured amplitudes: rerun `fourcast calibrate`",
            path,
            kind,
            cfg.perturbation.kind,
        )
        return cfg, {}
    if document.get("checkpoint_sha256") != checkpoint_sha256:
        log.warning(
            "the calibration %s was made for another checkpoint (%s, not %s); forecasting with the "
            "configured amplitudes: rerun `fourcast calibrate`",
            path,
            str(document.get("checkpoint_sha256"))[:12],
            checkpoint_sha256[:12],
        )
        return cfg, {}
    sigma = {k: float(v) for k, v in dict(document["model_error"]).items()}
    model_error = cfg.model_error.model_copy(
        update={"kind": "sppt" if any(sigma.values()) else "none", "amplitudes": sigma}
    )
    perturbation = cfg.perturbation.model_copy(
        update={"amplitudes": {k: float(v) for k, v in document["amplitudes"].items()}}
    )
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    lineage = {
        "calibration": str(Path(path).resolve()),
        "calibration_sha256": digest,
        "calibration_period": "..".join(document.get("period", [])),
    }
    return cfg.model_copy(update={"perturbation": perturbation, "model_error": model_error}), lineage


def calibrate_stage(
    cfg: RunConfig,
    checkpoint: Path,
    store: Path,
    out: Path,
    tracker: Tracker,
    tracking_uri: str | None = None,
    train_run_id: str | None = None,
) -> Path:
    """The calibrate stage of a run config: load the forecast's model, calibrate, tag its registered version.

    The model is ``cfg.forecast.model`` or ``checkpoint`` (a ``models:/`` alias resolved once,
    as the forecast stage does). The registered version tagged is the URI's, or the one the
    training run ``train_run_id`` registered (its ``registered_model`` tag). Returns ``out``.
    """
    loaded = load_forecast_model(
        str(cfg.forecast.model or checkpoint), tracking_uri, torch.device("cpu"), autocast=False
    )
    forecaster, sha256, registered = loaded.forecaster, loaded.sha256, loaded.registered
    tracker.set_tags(
        {
            "stage": "calibrate",
            "checkpoint_sha256": sha256,
            **registered,
            **({"train_run_id": train_run_id} if train_run_id else {}),
        }
    )
    result = calibrate_model(
        cfg.calibrate, cfg.forecast, cfg.train.validation, forecaster, sha256, store, out, tracker
    )
    version = _registered_version(registered, tracking_uri, train_run_id)
    if version is not None and tracking_uri is not None:  # a registered model implies a tracking URI
        tag_model_version(tracking_uri, version[0], version[1], calibration_tags(result))
    log.info(
        "calibrated amplitudes %s, model error %s; SSR %s at step %d, %s at step %d",
        _rounded(result.amplitudes),
        _rounded(result.model_error),
        _rounded(result.ssr_reference),
        result.reference_step,
        _rounded(result.ssr_long),
        result.long_step,
    )
    return out


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in values.items()}


def _registered_version(
    registered: dict[str, str], tracking_uri: str | None, train_run_id: str | None
) -> tuple[str, str] | None:
    """``(name, version)`` of the registered model to tag, or ``None`` when there is none."""
    if registered:
        return registered["model_name"], registered["model_version"]
    if not tracking_uri or not train_run_id:
        return None
    name_version = run_tags(tracking_uri, train_run_id).get("registered_model", "")
    name, _, version = name_version.rpartition("/")
    return (name, version) if name and version else None
