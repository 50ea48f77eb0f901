"""Calibration: perturbation amplitudes chosen so that the ensemble's spread matches its error.

A calibrated ensemble has, on average, an ensemble-mean error equal to its spread. With ``M``
members the debiased spread/skill ratio (Fortin et al. 2014)::

    SSR = sqrt((M + 1) / M) · sqrt(<s²>) / sqrt(<(x̄ − y)²>)

(``s²`` the unbiased member variance, ``x̄`` the ensemble mean, ``y`` the truth, ``<·>`` the
area-weighted mean over the grid and the init times) is 1 for a perfectly reliable ensemble.
:func:`calibrate` chooses per-variable initial-perturbation amplitudes and a model-error
amplitude by fixed-point iteration on the SSR:

1. initial amplitudes only: ``a_v ← a_v / SSR_v(reference lead)`` a few times (the spread
   at a short lead is proportional to the initial amplitude, so this is Newton's step in
   log-amplitude for that regime);
2. if the SSR at the long lead is then short of ``1 − tolerance`` on average over the
   variables, model error is switched on and both amplitudes are iterated per variable. The
   debiased spread ``E = SSR · RMSE`` is split as ``E² = (a/a₀)² E₀² + G(σ)`` at each of the two
   leads, with ``E₀`` measured without model error at amplitude ``a₀`` (the end of step 1) and
   the model-error part ``G ∝ σ²``; the next ``(a, σ)`` solve ``E² = RMSE²`` at both leads (two
   linear equations in ``a²`` and ``σ²``), each factor kept within [1/2, 2] per iteration.

Each evaluation runs a small ensemble (:func:`measure_spread_skill`) from init times the
caller chooses — the validation period, never the scored inits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ensembles.errors import EnsembleInputError
from ensembles.metrics import StatisticSums, finalise, forecast_statistics, needed_statistics
from ensembles.protocols import Coords, ModelError, Perturbation, Prognostic
from ensembles.regions import GLOBAL, weight_matrix
from ensembles.runner import run_ensemble
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON

#: Bounds of the amplitudes calibration may choose (in units of each channel's std; model error: σ).
AMPLITUDE_BOUNDS = (1e-4, 2.0)
MODEL_ERROR_BOUNDS = (0.0, 3.0)
#: The statistics of the spread/skill ratio, the ensemble-mean RMSE and the spread.
SPREAD_SKILL_STATISTICS = needed_statistics(("ssr", "rmse", "spread"), n_members=2)


@dataclass(frozen=True)
class SpreadSkill:
    """Debiased spread/skill of an ensemble per lead step and channel.

    Attributes
    ----------
    lead_steps : tuple of int
        Lead times in model steps.
    channels : tuple of str
    ssr, rmse, spread : numpy.ndarray, shape (lead, channel)
        Debiased spread/skill ratio, RMSE of the ensemble mean and RMS spread, all
        area-weighted and averaged over the init times (mean squares, then roots).
    """

    lead_steps: tuple[int, ...]
    channels: tuple[str, ...]
    ssr: np.ndarray
    rmse: np.ndarray
    spread: np.ndarray

    def effective(self, step: int) -> dict[str, tuple[float, float]]:
        """``(E, RMSE)`` per channel at lead ``step``: the debiased spread ``E = SSR · RMSE`` and the RMSE."""
        row = self.lead_steps.index(step)
        return {
            c: (float(self.ssr[row, i] * self.rmse[row, i]), float(self.rmse[row, i]))
            for i, c in enumerate(self.channels)
        }

    def at(self, step: int) -> dict[str, float]:
        """The SSR of every channel at lead ``step``."""
        row = self.lead_steps.index(step)
        return {c: float(v) for c, v in zip(self.channels, self.ssr[row], strict=True)}


class _SpreadSkillSink:
    """An :class:`~ensembles.protocols.Archive` summing the spread/skill statistics per lead and channel.

    Each forecast's ensemble-mean squared error and member variance are the statistic units of
    :mod:`ensembles.metrics` (global area-weighted means), summed per ``(lead, channel)``.
    """

    def __init__(
        self,
        truth_state: Callable[[np.datetime64], torch.Tensor],
        truth_channels: Sequence[str] | np.ndarray,
        lead_times: np.ndarray,
    ) -> None:
        self.truth_state, self.truth_channels = truth_state, [str(c) for c in truth_channels]
        self.lead_times = lead_times
        self.sums: dict[tuple[int, str], StatisticSums] = {}
        self.weights: np.ndarray | None = None

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None:
        lead = np.timedelta64(coords[LEAD_TIME][0], "ns")
        if lead not in self.lead_times:
            return
        row = int(np.flatnonzero(self.lead_times == lead)[0])
        channels = [str(c) for c in coords[CHANNEL]]
        if self.weights is None:
            self.weights = weight_matrix([GLOBAL], np.asarray(coords[LAT]), np.asarray(coords[LON]))
        members = torch.as_tensor(x).detach().cpu().numpy()
        n_members = members.shape[0]
        valid = np.datetime64(coords[INIT_TIME][0], "ns") + lead
        truth = self.truth_state(valid).cpu().numpy()[[self.truth_channels.index(c) for c in channels]]
        no_climatology = np.zeros(truth[0].size)
        for i, channel in enumerate(channels):
            statistics = forecast_statistics(
                members[:, i].reshape(n_members, -1),
                truth[i].ravel(),
                no_climatology,
                self.weights,
                SPREAD_SKILL_STATISTICS,
            )
            one, key = StatisticSums.of(statistics, n_members), (row, channel)
            self.sums[key] = self.sums[key] + one if key in self.sums else one

    def scores(self, metric: str, channels: Sequence[str]) -> np.ndarray:
        """Global ``metric`` (:func:`ensembles.metrics.finalise`) per lead and channel: (lead, channel)."""
        return np.array(
            [
                [finalise(self.sums[(row, c)], metric)[0] for c in channels]
                for row in range(self.lead_times.size)
            ]
        )

    def finalize(self) -> str:
        return "memory"


def measure_spread_skill(
    prognostic: Prognostic,
    initial_state: Callable[[np.datetime64], torch.Tensor],
    truth_state: Callable[[np.datetime64], torch.Tensor],
    coords: Coords,
    init_times: Sequence[np.datetime64] | np.ndarray,
    perturbation: Perturbation,
    *,
    n_members: int,
    lead_steps: Sequence[int],
    seed: int,
    model_error: ModelError | None = None,
) -> SpreadSkill:
    """Run ``n_members`` from every init time and measure the debiased SSR at ``lead_steps``.

    Parameters
    ----------
    prognostic : Prognostic
    initial_state, truth_state : callable
        ``f(time)`` gives the ``(channel, lat, lon)`` analysis at ``time`` labelled by
        ``coords`` (the same function for both, normally: the store's data).
    coords : Coords
        ``{"channel", "lat", "lon"}`` of the states.
    init_times : sequence of numpy.datetime64
    perturbation : Perturbation
    n_members : int
        At least 2; member 0 is the control.
    lead_steps : sequence of int
        Lead times in model steps (each at least 1).
    seed : int
    model_error : ModelError, optional

    Raises
    ------
    EnsembleInputError
        If fewer than 2 members, no init time or a lead step below 1 is asked for.
    """
    steps = sorted({int(s) for s in lead_steps})
    if n_members < 2 or not len(init_times) or not steps or steps[0] < 1:
        raise EnsembleInputError(
            f"expected at least 2 members, one init time and lead steps >= 1; found "
            f"n_members={n_members}, {len(init_times)} init times, lead_steps={list(lead_steps)}"
        )
    step = np.timedelta64(prognostic.step_size).astype("timedelta64[ns]")
    sink = _SpreadSkillSink(truth_state, coords[CHANNEL], np.array(steps) * step)
    for init in init_times:
        run_ensemble(
            prognostic,
            initial_state(init),
            coords,
            np.datetime64(init).astype("datetime64[ns]"),
            n_members=n_members,
            n_steps=steps[-1],
            perturbation=perturbation,
            archive=sink,
            seed=seed,
            members_per_batch=n_members,
            model_error=model_error,
        )
    channels = tuple(str(c) for c in prognostic.input_coords[CHANNEL])
    return SpreadSkill(
        tuple(steps),
        channels,
        sink.scores("ssr", channels),
        sink.scores("rmse", channels),
        sink.scores("spread", channels),
    )


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` chose and what it measured.

    Attributes
    ----------
    amplitudes : dict of str to float
        Initial-perturbation amplitude per variable (units of each channel's std).
    model_error : dict of str to float
        Model-error amplitude per variable (all 0: no model error).
    reference_step, long_step : int
        The lead steps matched.
    ssr_reference, ssr_long : dict of str to float
        SSR per variable at those leads with the chosen amplitudes.
    history : list of dict
        Every evaluation: amplitudes, model error and the SSR at both leads.
    """

    amplitudes: dict[str, float]
    model_error: dict[str, float]
    reference_step: int
    long_step: int
    ssr_reference: dict[str, float]
    ssr_long: dict[str, float]
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


#: ``measure(amplitudes, model_error, lead_steps) -> SpreadSkill``: one evaluation of the ensemble, with
#: initial and model-error amplitudes per variable.
Measure = Callable[[dict[str, float], dict[str, float], Sequence[int]], SpreadSkill]


def calibrate(
    measure: Measure,
    amplitudes: dict[str, float],
    *,
    reference_step: int,
    long_step: int,
    iterations: int = 4,
    model_error: float = 0.5,
    allow_model_error: bool = True,
    tolerance: float = 0.1,
    on_evaluation: Callable[[dict], None] | None = None,
) -> Calibration:
    """Choose amplitudes so that the debiased SSR is 1 (module docstring).

    Parameters
    ----------
    measure : callable
        ``measure(amplitudes, model_error, lead_steps)`` runs the ensemble with those
        amplitudes (e.g. :func:`measure_spread_skill` on validation init times).
    amplitudes : dict of str to float
        Starting initial-perturbation amplitude per variable (positive).
    reference_step, long_step : int
        Lead steps at which the initial amplitudes, and the model error, are matched.
    iterations : int
        Updates in each phase.
    model_error : float
        Starting model-error amplitude of every variable when model error is switched on.
    allow_model_error : bool
        Never switch model error on when false.
    tolerance : float
        Model error is switched on when the mean SSR at ``long_step`` is below ``1 - tolerance``.
    on_evaluation : callable, optional
        Called with each evaluation's history record (for progress).

    Raises
    ------
    EnsembleInputError
        If an amplitude is not positive or the steps are not ``1 <= reference_step <= long_step``.
    """
    if not amplitudes or any(not np.isfinite(a) or a <= 0 for a in amplitudes.values()):
        raise EnsembleInputError(f"expected positive starting amplitudes per variable, found {amplitudes}")
    if not 1 <= reference_step <= long_step:
        raise EnsembleInputError(
            f"expected 1 <= reference_step <= long_step, found {reference_step}, {long_step}"
        )
    history: list[dict] = []

    def evaluate(current: dict[str, float], sigma: dict[str, float], steps: Sequence[int]) -> SpreadSkill:
        result = measure(current, sigma, steps)
        record = {
            "amplitudes": dict(current),
            "model_error": dict(sigma),
            **{f"ssr_{s}": result.at(s) for s in result.lead_steps},
        }
        history.append(record)
        if on_evaluation is not None:
            on_evaluation(record)
        return result

    current, sigma = dict(amplitudes), dict.fromkeys(amplitudes, 0.0)
    for _ in range(iterations):
        current = _rescaled(current, evaluate(current, sigma, [reference_step]).at(reference_step))
    both = [reference_step, long_step]
    result = evaluate(current, sigma, both)
    if allow_model_error and np.mean(list(result.at(long_step).values())) < 1 - tolerance:
        base, base_amplitudes = result, dict(current)
        sigma = dict.fromkeys(amplitudes, model_error)
        for _ in range(iterations):
            result = evaluate(current, sigma, both)
            current, sigma = _split_update(
                current, sigma, base_amplitudes, base, result, reference_step, long_step
            )
        result = evaluate(current, sigma, both)
    return Calibration(
        current, sigma, reference_step, long_step, result.at(reference_step), result.at(long_step), history
    )


def _split_update(
    amplitudes: dict[str, float],
    sigma: dict[str, float],
    base_amplitudes: dict[str, float],
    base: SpreadSkill,
    result: SpreadSkill,
    reference: int,
    long: int,
) -> tuple[dict[str, float], dict[str, float]]:
    """The next initial and model-error amplitudes from the spread split (module docstring, step 2).

    A variable whose split is degenerate (no model-error spread measured, or the two leads
    carry the same proportions) falls back to ``a ← a / SSR(reference)``, ``σ ← σ / SSR(long)``.
    """
    new_a, new_sigma = {}, {}
    now = {lead: result.effective(lead) for lead in (reference, long)}
    before = {lead: base.effective(lead) for lead in (reference, long)}
    for v, a in amplitudes.items():
        ratio2 = (a / base_amplitudes[v]) ** 2
        e0 = [before[lead][v][0] ** 2 for lead in (reference, long)]
        e2 = [now[lead][v][0] ** 2 for lead in (reference, long)]
        r2 = [now[lead][v][1] ** 2 for lead in (reference, long)]
        g = [max(e - ratio2 * e_0, 0.0) for e, e_0 in zip(e2, e0, strict=True)]
        det = e0[0] * g[1] - e0[1] * g[0]
        if not np.isfinite(det) or g[1] <= 0 or abs(det) <= 1e-9 * e0[0] * g[1] or sigma[v] <= 0:
            new_a[v] = _rescaled({v: a}, result.at(reference))[v]
            new_sigma[v] = _rescaled({v: sigma[v]}, result.at(long), MODEL_ERROR_BOUNDS)[v]
            continue
        x = (r2[0] * g[1] - r2[1] * g[0]) / det  # (a'/a0)²
        y = (e0[0] * r2[1] - e0[1] * r2[0]) / det  # (σ'/σ)²
        a_factor = np.clip(np.sqrt(max(x, 0.0) / ratio2), 0.5, 2.0)
        new_a[v] = float(np.clip(a * a_factor, *AMPLITUDE_BOUNDS))
        new_sigma[v] = float(np.clip(sigma[v] * np.clip(np.sqrt(max(y, 0.0)), 0.5, 2.0), *MODEL_ERROR_BOUNDS))
    return new_a, new_sigma


def _rescaled(
    amplitudes: dict[str, float], ssr: dict[str, float], bounds: tuple[float, float] = AMPLITUDE_BOUNDS
) -> dict[str, float]:
    """``a_v / SSR_v`` per variable, within ``bounds`` (a variable without a finite SSR keeps ``a_v``)."""
    out = {}
    for variable, amplitude in amplitudes.items():
        ratio = ssr.get(variable, float("nan"))
        factor = 1.0 / ratio if np.isfinite(ratio) and ratio > 0 else 1.0
        out[variable] = float(np.clip(amplitude * factor, *bounds))
    return out
