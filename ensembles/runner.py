"""Run an ensemble forecast: perturb the initial state, step the prognostic, archive every step.

Each member's perturbation is drawn from its own generator seeded only from ``(seed,
init_time, member)``, so a member is reproducible alone, whatever the batch size and whichever
other members run beside it.

:func:`run_ensemble` forecasts one init time; :func:`run_campaign` runs one process's share of
a :class:`~ensembles.campaign.Campaign` (its rank and the world size are plain arguments, e.g.
from ``torchrun``'s ``RANK``/``WORLD_SIZE``), skipping work items already recorded in the
archive, and commits the archive once every process's items are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ensembles.archive import Tee
from ensembles.campaign import Campaign, CampaignArchive
from ensembles.errors import EnsembleGridError, EnsembleInputError, NonFiniteForecastError
from ensembles.protocols import Archive, Coords, ModelError, Perturbation, Prognostic, StepNoise
from ingest.dims import CHANNEL, INIT_TIME, LAT, LEAD_TIME, LON, MEMBER
from ingest.grid import check_coords
from ingest.progress import progress as progress_of

_GRID_DIMS = (CHANNEL, LAT, LON)


def forecast_lead_times(step_size: np.timedelta64, n_steps: int) -> np.ndarray:
    """Lead times ``0, step, …, n_steps·step`` a run writes, as timedelta64[ns], shape (n_steps + 1,)."""
    return np.arange(n_steps + 1) * np.timedelta64(step_size).astype("timedelta64[ns]")


#: Generator streams of a member: its initial perturbation, and its model-error noise.
INITIAL_STREAM, MODEL_ERROR_STREAM = 0, 1


def member_generator(
    seed: int, init_time: np.datetime64, member: int, stream: int = INITIAL_STREAM
) -> torch.Generator:
    """A CPU generator seeded from ``(seed, init_time, member, stream)`` and nothing else.

    The values are mixed by :class:`numpy.random.SeedSequence`, so neighbouring seeds,
    members, init times or streams give unrelated streams. ``stream`` 0 (the initial
    perturbation) is the stream of ``(seed, init_time, member)`` alone, as before streams existed.
    """
    seconds = np.datetime64(init_time, "s").astype(np.int64)
    time_key = int(np.array(seconds, dtype=np.int64).view(np.uint64))
    entropy = [int(seed), time_key, int(member)] + ([int(stream)] if stream else [])
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(state))
    return generator


def run_ensemble(
    prognostic: Prognostic,
    initial: torch.Tensor,
    coords: Coords,
    init_time: np.datetime64,
    *,
    n_members: int,
    n_steps: int,
    perturbation: Perturbation,
    archive: Archive,
    seed: int,
    members_per_batch: int = 8,
    control_member: bool = True,
    members: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[int], None] | None = None,
    model_error: ModelError | None = None,
) -> None:
    """Forecast ``n_members`` perturbed copies of ``initial`` for ``n_steps`` steps into ``archive``.

    Lead 0 (the perturbed initial states) and every step ``k`` (lead ``k · step_size``) are
    written with ``init_time``; the archive is not finalised here, so several init times can
    share it.

    Parameters
    ----------
    prognostic : Prognostic
        Model stepped autoregressively; its input and output channels must be the same.
    initial : torch.Tensor, shape (channel, lat, lon)
        Initial state in physical units. Channels are selected by label to the prognostic's
        order; channels it does not use are ignored.
    coords : Coords
        ``{"channel", "lat", "lon"}`` labelling ``initial``.
    init_time : numpy.datetime64
        Initialisation time, written to the archive and mixed into every member's seed.
    n_members : int
        Ensemble size; members are labelled ``0 … n_members - 1``.
    n_steps : int
        Number of model steps (at least 1).
    perturbation : Perturbation
        Applied to each member with that member's own generator (:func:`member_generator`).
    archive : Archive
        Receives ``(member, channel, lat, lon)`` blocks with ``init_time`` and ``lead_time``.
    seed : int
        Non-negative campaign seed.
    members_per_batch : int
        Members stepped together; results do not depend on it beyond floating-point rounding.
    control_member : bool
        Leave member 0 unperturbed.
    members : sequence of int, optional
        Labels of the members this call runs (default all): a rank's share, or one member
        rerun alone.
    device : torch.device or str, optional
        Where the model runs; default ``initial.device``.
    on_step : callable, optional
        Called with the number of member-steps just completed (the batch size) after each
        model step has been written.
    model_error : ModelError, optional
        Stochastic model error applied after every step to every member but the control,
        each member drawing from its own generator (stream :data:`MODEL_ERROR_STREAM`).

    Raises
    ------
    EnsembleInputError
        Before anything is written, if counts are not positive or ``coords`` do not match
        ``initial`` or the prognostic's input coordinates.
    NonFiniteForecastError
        If a block of members holds a NaN or an infinity at some lead time; that block is not
        written at that lead (nor later), naming init time, members, lead and variables.
    """
    _check_counts(n_members=n_members, n_steps=n_steps, members_per_batch=members_per_batch, seed=seed)
    run_members = _members_to_run(members, n_members)
    state, state_coords = _model_input(prognostic, initial, coords)
    device = initial.device if device is None else torch.device(device)
    init_label = np.array([init_time], dtype="datetime64[ns]")
    lead_times = forecast_lead_times(prognostic.step_size, n_steps)
    with torch.inference_mode():
        state = state.to(device)
        for block in _blocks(run_members, members_per_batch):
            x = _initial_members(state, state_coords, block, init_time, perturbation, seed, control_member)
            x_coords = {MEMBER: block, **state_coords}
            noise = _model_error_noise(model_error, x_coords, block, init_time, seed, control_member)
            for step in range(lead_times.size):
                if step:
                    before = x
                    x, x_coords = prognostic.step(x, x_coords)
                    if noise is not None:
                        x = _keep_control(noise.apply(before, x), x, block, control_member)
                _check_finite(x, x_coords, init_time, lead_times[step])
                archive.write(x, {INIT_TIME: init_label, LEAD_TIME: lead_times[step : step + 1], **x_coords})
                if step and on_step is not None:
                    on_step(int(block.size))


@dataclass(frozen=True)
class CampaignRun:
    """What one process did for a campaign.

    Attributes
    ----------
    archive : str
        Location of the committed archive.
    items_computed : int
        Work items this process computed (items already done were skipped).
    member_steps : int
        Model steps times members this process computed.
    seconds : float
        Wall time this process spent computing them (not waiting for the others).
    """

    archive: str
    items_computed: int
    member_steps: int
    seconds: float

    @property
    def member_steps_per_second(self) -> float:
        """This process's throughput, 0 when it computed nothing."""
        return self.member_steps / self.seconds if self.member_steps else 0.0


def run_campaign(
    prognostic: Prognostic,
    initial_state: Callable[[np.datetime64], torch.Tensor],
    coords: Coords,
    campaign: Campaign,
    archive: CampaignArchive,
    perturbation: Perturbation,
    *,
    rank: int = 0,
    world_size: int = 1,
    sinks: Sequence[Archive] = (),
    device: torch.device | str | None = None,
    progress: bool = False,
    wait_timeout: float = 600.0,
    model_error: ModelError | None = None,
) -> CampaignRun:
    """Compute this rank's missing work items of ``campaign``, then commit the archive.

    Work item ``k`` of :meth:`Campaign.work_items` belongs to rank ``k % world_size``; items
    the archive records as done are skipped, so a relaunch (with any world size) computes only
    what is missing. Each item runs its member block as one batch and is marked done once its
    last step is written. The process then waits until every rank's items are done and commits
    the archive (exactly one process does; see :meth:`CampaignArchive.finalize_when_complete`).

    Parameters
    ----------
    prognostic : Prognostic
        Model stepped autoregressively.
    initial_state : callable
        ``initial_state(init_time)`` returns the ``(channel, lat, lon)`` state labelled by
        ``coords``; called once per init time this rank computes.
    coords : Coords
        ``{"channel", "lat", "lon"}`` labelling every initial state.
    campaign : Campaign
        Members, steps, batch size, seed and init times.
    archive : CampaignArchive
        The campaign's archive; when already :attr:`~CampaignArchive.complete`, nothing runs.
    perturbation : Perturbation
        Applied to each member with its own generator (:func:`member_generator`).
    rank, world_size : int
        This process's place among the processes sharing the campaign.
    sinks : sequence of Archive
        Further destinations receiving every write of this rank (e.g. a streaming scorer);
        they are finalised once this rank's items are written, and see only this rank's items
        computed in this launch.
    device : torch.device or str, optional
        Where states live while stepping.
    progress : bool
        Show a progress bar of member-steps with their rate.
    wait_timeout : float
        Seconds to wait for the other ranks without any of their items completing.
    model_error : ModelError, optional
        Stochastic model error of every step (see :func:`run_ensemble`).

    Returns
    -------
    CampaignRun

    Raises
    ------
    NonFiniteForecastError
        If a work item's forecast holds a NaN or an infinity: the item is not marked done and
        the archive is not committed (see :func:`run_ensemble`).
    """
    if archive.campaign.fingerprint() != campaign.fingerprint():
        raise EnsembleInputError(
            f"the archive at {archive.path} is for campaign {archive.fingerprint}, not "
            f"{campaign.fingerprint()}"
        )
    mine = (
        []
        if archive.complete
        else [item for item in campaign.items_for_rank(rank, world_size) if not archive.is_done(item)]
    )
    destination = Tee(archive, *sinks) if sinks else archive
    member_steps = sum(item.members.size for item in mine) * campaign.n_steps
    label = (
        f"forecast {len({item.init_time for item in mine})} inits x {campaign.n_members} members x "
        f"{campaign.n_steps} steps" + (f" (process {rank + 1} of {world_size})" if world_size > 1 else "")
    )
    bar = progress_of(member_steps, label, "member-steps", enabled=progress)
    started = time.perf_counter()
    cached: tuple[np.datetime64 | None, torch.Tensor | None] = (None, None)
    with bar:
        for item in mine:
            if cached[0] != item.init_time:
                cached = (item.init_time, initial_state(item.init_time))
            run_ensemble(
                prognostic,
                cached[1],
                coords,
                item.init_time,
                n_members=campaign.n_members,
                n_steps=campaign.n_steps,
                perturbation=perturbation,
                archive=destination,
                seed=campaign.seed,
                members_per_batch=campaign.members_per_batch,
                control_member=campaign.control_member,
                members=item.members,
                device=device,
                on_step=bar.update,
                model_error=model_error,
            )
            archive.mark_done(item)
    seconds = time.perf_counter() - started
    for sink in sinks:
        sink.finalize()
    location = str(archive.path) if archive.complete else archive.finalize_when_complete(wait_timeout)
    return CampaignRun(location, len(mine), member_steps, seconds)


def _model_error_noise(
    model_error: ModelError | None,
    coords: Coords,
    block: np.ndarray,
    init_time: np.datetime64,
    seed: int,
    control_member: bool,
) -> StepNoise | None:
    """The block's model-error noise, each member on its own generator; ``None`` without model error."""
    if model_error is None or (control_member and block.tolist() == [0]):
        return None
    generators = [member_generator(seed, init_time, member, MODEL_ERROR_STREAM) for member in block.tolist()]
    return model_error.start(coords, generators)


def _keep_control(
    perturbed: torch.Tensor, plain: torch.Tensor, block: np.ndarray, control_member: bool
) -> torch.Tensor:
    """``perturbed`` with the control member's row (member 0, if in ``block``) taken from ``plain``."""
    if not control_member or 0 not in block:
        return perturbed
    perturbed = perturbed.clone()
    row = int(np.flatnonzero(block == 0)[0])
    perturbed[row] = plain[row]
    return perturbed


def _check_finite(x: torch.Tensor, coords: Coords, init_time: np.datetime64, lead: np.timedelta64) -> None:
    """Raise :class:`NonFiniteForecastError` if ``x`` ``(member, channel, lat, lon)`` holds a NaN or an
    infinity."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return
    bad = (~finite).flatten(2).sum(dim=-1).cpu()  # (member, channel) counts
    variables = {str(c): int(n) for c, n in zip(coords[CHANNEL], bad.sum(dim=0).tolist(), strict=True) if n}
    members = [int(m) for m, n in zip(coords[MEMBER], bad.sum(dim=1).tolist(), strict=True) if n]
    hours = np.timedelta64(lead, "ns") / np.timedelta64(1, "h")
    raise NonFiniteForecastError(
        f"the forecast from init time {np.datetime64(init_time, 's')!s} for the member block "
        f"{[int(m) for m in coords[MEMBER]]} is not finite at lead {hours:g} h: NaN or "
        "infinite values in variables "
        f"{list(variables)} (count per variable {variables}, in members {members}); it is not "
        "archived and its work "
        "item is not recorded complete, so the archive stays unfinished. Check the model "
        "(did its training diverge?)"
    )


def _check_counts(**counts: int) -> None:
    minimum = {"n_members": 1, "n_steps": 1, "members_per_batch": 1, "seed": 0}
    bad = {name: value for name, value in counts.items() if int(value) != value or value < minimum[name]}
    if bad:
        wanted = ", ".join(f"{name} >= {minimum[name]}" for name in bad)
        raise EnsembleInputError(f"expected integers {wanted}; found {bad}")


def _members_to_run(members: Sequence[int] | None, n_members: int) -> np.ndarray:
    if members is None:
        return np.arange(n_members, dtype=np.int64)
    labels = np.asarray(members, dtype=np.int64)
    outside = labels[(labels < 0) | (labels >= n_members)]
    if labels.ndim != 1 or labels.size == 0 or outside.size or np.unique(labels).size != labels.size:
        raise EnsembleInputError(
            f"expected distinct member labels in 0 … {n_members - 1}, found {np.asarray(members).tolist()}"
        )
    return labels


def _model_input(
    prognostic: Prognostic, initial: torch.Tensor, coords: Coords
) -> tuple[torch.Tensor, Coords]:
    """``initial`` with its channels in the prognostic's order, and its coords (grid checked, kept)."""
    absent = [dim for dim in _GRID_DIMS if dim not in coords]
    if absent:
        raise EnsembleInputError(
            f"initial coords lack {absent}; expected {list(_GRID_DIMS)}, found {list(coords)}"
        )
    sizes = tuple(len(coords[dim]) for dim in _GRID_DIMS)
    if tuple(initial.shape) != sizes:
        raise EnsembleInputError(
            f"expected initial of shape (channel, lat, lon) = {sizes} as its coords say, found "
            f"{tuple(initial.shape)}"
        )
    expected = prognostic.input_coords
    given = [str(c) for c in coords[CHANNEL]]
    wanted = [str(c) for c in expected[CHANNEL]]
    produced = [str(c) for c in prognostic.output_coords[CHANNEL]]
    if produced != wanted:
        raise EnsembleInputError(
            f"cannot step autoregressively: the prognostic takes channels {wanted} but returns {produced}"
        )
    missing = [c for c in wanted if c not in given]
    if missing:
        raise EnsembleInputError(
            f"initial state lacks channels {missing} the prognostic needs; expected {wanted}, found {given}"
        )
    check_coords(
        expected,
        coords,
        (LAT, LON),
        what="the initial state",
        reference="the prognostic",
        error=EnsembleGridError,
    )
    state = initial[[given.index(c) for c in wanted]]
    return state, {CHANNEL: np.asarray(wanted), LAT: np.asarray(coords[LAT]), LON: np.asarray(coords[LON])}


def _blocks(members: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, members.size, size):
        yield members[start : start + size]


def _initial_members(
    state: torch.Tensor,
    coords: Coords,
    block: np.ndarray,
    init_time: np.datetime64,
    perturbation: Perturbation,
    seed: int,
    control_member: bool,
) -> torch.Tensor:
    """The block's initial states, shape (member, channel, lat, lon), each perturbed with its own
    generator."""
    states = []
    for member in block.tolist():
        x = state[None]
        if not (control_member and member == 0):
            x, _ = perturbation(
                x, {MEMBER: np.array([member]), **coords}, member_generator(seed, init_time, member)
            )
        states.append(x)
    return torch.cat(states)
