"""Campaigns: (init time, member block) work items, and the resumable archive that records them.

A campaign forecasts ``n_members`` members from each of its init times. Its work is cut into
*work items*, one per (init time, block of ``members_per_batch`` consecutive members); item
``k`` (init-major order) belongs to rank ``k % world_size``. An item is always computed the same
way — same members, same batch, same generators — whichever process runs it, so the archive is
the same bytes whatever the number of processes.

:class:`CampaignArchive` is the Zarr v3 archive of one campaign, built under a hidden sibling
named by the campaign's fingerprint::

    .<name>.partial-<fingerprint>      being written; every rank of every launch joins it
    .<name>.finalising-<fingerprint>   claimed by the one process that commits it
    <name>                              committed: ``complete = True``

Each variable is chunked one (init time, lead time, member block) per chunk, so ranks write
disjoint chunks. Completion is recorded in the store itself, in ``progress/done[init_time,
block]`` (one chunk per item, written after the item's fields): a killed run relaunched with
any number of processes computes only the items not marked done. No process group is needed:
whichever process finds every item done claims the partial store by renaming it (only one
rename can succeed), writes the final attributes once and moves it into place. From joining
until :meth:`CampaignArchive.finalize_when_complete` ends, every process of the campaign shares
the archive's lock (:class:`ingest.locks.CampaignLock`): processes of another campaign are
refused meanwhile, even with ``overwrite``, instead of discarding a store being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask.array
import numpy as np
import torch
import zarr
import zarr.errors

from ensembles.archive import (
    ARCHIVE_MARKER,
    COMPLETE,
    FINGERPRINT,
    ArchiveLayout,
    check_replaceable,
    checked_attrs,
)
from ensembles.errors import ArchiveError, CampaignIncompleteError, CampaignMismatchError, EnsembleInputError
from ensembles.protocols import Coords
from ingest.atomic import discard, replace_path, temporary_sibling
from ingest.locks import CampaignLock
from ingest.schema import CONVENTIONS, consolidate

#: Root attribute holding the campaign's settings (:meth:`Campaign.describe`).
CAMPAIGN = "campaign"
#: Completion markers: uint8 ``[init_time, member_block]``, one chunk per work item.
DONE = "progress/done"


@dataclass(frozen=True)
class WorkItem:
    """One init time and one block of consecutive members.

    Attributes
    ----------
    init_index, block_index : int
        Positions in the campaign's init times and member blocks.
    init_time : numpy.datetime64
    members : numpy.ndarray of int64, shape (member,)
    """

    init_index: int
    block_index: int
    init_time: np.datetime64
    members: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Campaign:
    """What a campaign computes; two campaigns with equal :meth:`describe` write the same archive.

    Parameters
    ----------
    variables : tuple of str
        Lexicon ids archived (the prognostic's channels).
    init_times : numpy.ndarray of datetime64[ns], shape (init_time,)
    step : numpy.timedelta64
        Model step.
    n_steps : int
        Steps per forecast; lead times are ``0, step, …, n_steps · step``.
    n_members : int
    members_per_batch : int
        Members stepped together, and the member-block size of a work item.
    seed : int
        Non-negative campaign seed.
    control_member : bool
        Member 0 unperturbed.
    identity : mapping
        JSON-serialisable facts that change the result: checkpoint hash, perturbation and its
        settings, initial-condition source fingerprint, grid.
    """

    variables: tuple[str, ...]
    init_times: np.ndarray
    step: np.timedelta64
    n_steps: int
    n_members: int
    members_per_batch: int
    seed: int
    control_member: bool = True
    identity: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = {
            "n_steps": self.n_steps,
            "n_members": self.n_members,
            "members_per_batch": self.members_per_batch,
            "seed": self.seed,
        }
        minimum = {"n_steps": 1, "n_members": 1, "members_per_batch": 1, "seed": 0}
        bad = {name: value for name, value in counts.items() if int(value) != value or value < minimum[name]}
        if bad:
            wanted = ", ".join(f"{name} >= {minimum[name]}" for name in bad)
            raise EnsembleInputError(f"expected integers {wanted}; found {bad}")
        init_times = np.atleast_1d(np.asarray(self.init_times).astype("datetime64[ns]"))
        if init_times.size == 0 or np.unique(init_times).size != init_times.size:
            raise EnsembleInputError(f"expected distinct init times, at least one; found {init_times}")
        if not self.variables:
            raise EnsembleInputError("expected at least one variable, found none")
        object.__setattr__(self, "init_times", init_times)
        object.__setattr__(self, "step", np.timedelta64(self.step).astype("timedelta64[ns]"))
        object.__setattr__(self, "identity", checked_attrs(self.identity))

    @property
    def lead_times(self) -> np.ndarray:
        """``0, step, …, n_steps · step`` as timedelta64[ns], shape (n_steps + 1,)."""
        return np.arange(self.n_steps + 1) * self.step

    @property
    def n_blocks(self) -> int:
        """Member blocks per init time."""
        return -(-self.n_members // self.members_per_batch)

    def describe(self) -> dict[str, Any]:
        """Every setting of the campaign as plain JSON values (stored in the archive)."""
        return {
            "variables": list(self.variables),
            "init_times": [str(t) for t in self.init_times.astype("datetime64[s]")],
            "step_seconds": int(self.step / np.timedelta64(1, "s")),
            "n_steps": int(self.n_steps),
            "n_members": int(self.n_members),
            "members_per_batch": int(self.members_per_batch),
            "seed": int(self.seed),
            "control_member": bool(self.control_member),
            **{key: self.identity[key] for key in sorted(self.identity)},
        }

    def fingerprint(self) -> str:
        """16 hex digits of the SHA-256 of :meth:`describe`."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]

    def work_items(self) -> list[WorkItem]:
        """Every work item, init-major: ``(init 0, block 0), (init 0, block 1), …``."""
        items = []
        for i, init_time in enumerate(self.init_times):
            for b in range(self.n_blocks):
                members = np.arange(
                    b * self.members_per_batch,
                    min((b + 1) * self.members_per_batch, self.n_members),
                    dtype=np.int64,
                )
                items.append(WorkItem(i, b, init_time, members))
        return items

    def items_for_rank(self, rank: int, world_size: int) -> list[WorkItem]:
        """The share of rank ``rank`` of ``world_size``: every ``world_size``-th item from ``rank``."""
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise EnsembleInputError(
                f"expected 0 <= rank < world_size, found rank={rank}, world_size={world_size}"
            )
        return self.work_items()[rank::world_size]


class CampaignArchive:
    """The Zarr v3 archive of one :class:`Campaign`, shared by every process and every launch.

    Constructing it joins the campaign's partial store, creating it if no process has yet
    (concurrent creators race on one rename; the losers discard their copy). Satisfies
    :class:`ensembles.protocols.Archive`.

    Parameters
    ----------
    path : str or pathlib.Path
        Final location of the archive.
    campaign : Campaign
    lat, lon : numpy.ndarray
        Grid in degrees, in the order fields are written.
    lineage : mapping, optional
        JSON-serialisable provenance stored with the campaign when its store is created (model
        URI, code version, …); ``start_time`` is added then and ``end_time`` when committed.
    overwrite : bool
        Replace an archive of a different campaign at ``path`` (at commit) and discard
        unfinished stores of other campaigns there. Without it, both are refused. Whatever
        it says, something at ``path`` that is not a forecast archive is never replaced.

    Attributes
    ----------
    complete : bool
        The committed archive at ``path`` already is this campaign: nothing to compute.

    Raises
    ------
    CampaignMismatchError
        If ``path`` holds, or is building, another campaign and ``overwrite`` is false.
    ingest.locks.LockHeldError
        If processes of another campaign are writing at ``path`` now (whatever ``overwrite``).
    ArchiveError
        If ``path`` holds something that is not a forecast archive (a training store, a file, …).
    """

    def __init__(
        self,
        path: str | Path,
        campaign: Campaign,
        lat: np.ndarray,
        lon: np.ndarray,
        lineage: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.campaign = campaign
        self.fingerprint = campaign.fingerprint()
        self.layout = ArchiveLayout.build(
            campaign.variables,
            campaign.init_times,
            campaign.lead_times,
            campaign.n_members,
            lat,
            lon,
            member_chunk=campaign.members_per_batch,
        )
        self.lineage = checked_attrs(lineage)
        self.partial_path = self._sibling("partial", self.fingerprint)
        self.claimed_path = self._sibling("finalising", self.fingerprint)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = CampaignLock(self.path, self.fingerprint)  # held until finalize_when_complete ends
        try:
            self.complete = self._committed_is_ours(overwrite)
            if not self.complete:
                self._check_other_campaigns(overwrite)
                self._join_or_create()
                # a process that finished everything may have committed while we were joining
                self.complete = self._committed_is_ours(overwrite=True)
        except BaseException:
            self._lock.release()
            raise
        if self.complete:
            self._lock.release()
        self._group: zarr.Group | None = None

    def _sibling(self, tag: str, fingerprint: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{tag}-{fingerprint}")

    def _committed_is_ours(self, overwrite: bool) -> bool:
        """Whether ``path`` holds this campaign, complete; refuses another campaign there."""
        if not self.path.exists() and not self.path.is_symlink():
            return False
        check_replaceable(self.path)
        attrs = _root_attrs(self.path)
        if attrs.get(FINGERPRINT) == self.fingerprint and attrs.get(COMPLETE) is True:
            return True
        if not overwrite:
            raise CampaignMismatchError(
                f"{self.path} holds a different campaign "
                f"({_differences(attrs.get(CAMPAIGN), self.campaign)}); "
                "choose another archive path, or overwrite to replace it"
            )
        return False

    def _check_other_campaigns(self, overwrite: bool) -> None:
        others = [
            p
            for tag in ("partial", "finalising")
            for p in self.path.parent.glob(f".{self.path.name}.{tag}-*")
            if not p.name.endswith(self.fingerprint)
        ]
        if others and not overwrite:
            attrs = _root_attrs(others[0])
            raise CampaignMismatchError(
                f"{self.path} is being built by a different, unfinished campaign at {others[0].name} "
                f"({_differences(attrs.get(CAMPAIGN), self.campaign)}); relaunch that campaign to finish it, "
                "or overwrite to discard it"
            )
        for other in others:
            discard(other)

    def _join_or_create(self) -> None:
        if self.claimed_path.exists() and not self.partial_path.exists():
            # a committer was killed after claiming: hand the store back to the protocol
            _rename_if_there(self.claimed_path, self.partial_path)
        if self.partial_path.exists():
            return
        building = temporary_sibling(self.path, tag="creating")
        try:
            self._lay_out(building)
            os.rename(building, self.partial_path)
        except OSError:
            if not self.partial_path.exists():
                raise
        finally:
            discard(building)  # the loser of a creation race, or a failed layout

    def _lay_out(self, where: Path) -> None:
        """Write the empty store: coordinates, chunked variables, markers, campaign attributes."""
        template = self.layout.template(lambda shape: _lazy_nan(shape, self.layout.chunk_shape), attrs={})
        encoding = {v: {"chunks": self.layout.chunk_shape} for v in self.layout.variables}
        template.to_zarr(
            where, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding
        )
        group = zarr.open_group(where, mode="r+", zarr_format=3)
        group.create_group("progress").create_array(
            "done",
            shape=(self.campaign.init_times.size, self.campaign.n_blocks),
            chunks=(1, 1),
            dtype="uint8",
            fill_value=0,
            attributes={"long_name": "1 once the (init_time, member block) work item is written"},
        )
        group.attrs.update(
            {
                **self.lineage,
                CAMPAIGN: self.campaign.describe(),
                FINGERPRINT: self.fingerprint,
                ARCHIVE_MARKER: 1,
                "start_time": _now(),
            }
        )

    @property
    def group(self) -> zarr.Group:
        """The partial store, opened for writing."""
        if self._group is None:
            self._group = zarr.open_group(self.partial_path, mode="r+", zarr_format=3)
        return self._group

    def write(self, x: torch.Tensor | np.ndarray, coords: Coords) -> None:
        """Store ``x`` of shape ``(member, channel, lat, lon)`` at the labels in ``coords``.

        A block of consecutive members is written as one slice, i.e. whole chunks.
        """
        (i_init, i_lead, i_members), fields = self.layout.locate(x, coords)
        if i_members.size and np.array_equal(
            i_members, np.arange(i_members[0], i_members[0] + i_members.size)
        ):
            region = (i_init, i_lead, slice(int(i_members[0]), int(i_members[-1]) + 1))
            for variable, values in fields.items():
                self.group[variable][region] = values
        else:
            for variable, values in fields.items():
                self.group[variable].oindex[i_init, i_lead, i_members, :, :] = values

    def mark_done(self, item: WorkItem) -> None:
        """Record that every field of ``item`` is written."""
        self.group[DONE][item.init_index, item.block_index] = 1

    def done(self) -> np.ndarray | None:
        """Completion markers ``[init_time, block]`` (bool), or None once the store was claimed."""
        try:
            return zarr.open_array(self.partial_path / DONE, mode="r", zarr_format=3)[...].astype(bool)
        except (FileNotFoundError, zarr.errors.ArrayNotFoundError):
            if self.partial_path.exists():
                raise
            return None

    def is_done(self, item: WorkItem) -> bool:
        """Whether ``item`` is recorded as written (true of every item once the store is claimed)."""
        done = self.done()
        return True if done is None else bool(done[item.init_index, item.block_index])

    def missing(self) -> list[WorkItem]:
        """Work items not yet recorded as written."""
        done = self.done()
        if done is None:
            return []
        return [item for item in self.campaign.work_items() if not done[item.init_index, item.block_index]]

    def finalize(self) -> str:
        """Commit the archive now; every work item must be done.

        Raises
        ------
        CampaignIncompleteError
            If items are missing.
        """
        return self.finalize_when_complete(timeout=0.0)

    def finalize_when_complete(self, timeout: float = 600.0, poll: float = 0.2) -> str:
        """Wait until every work item is done, then commit the archive exactly once.

        Every process of a campaign may call this: the first to find the work complete claims
        the store (a rename only one process can win), writes ``end_time`` and ``complete =
        True``, and moves it to :attr:`path`; the others wait until it is there.

        Parameters
        ----------
        timeout : float
            Seconds to wait without any item completing before giving up.
        poll : float
            Seconds between looks at the markers.

        Returns
        -------
        str
            The archive's location.

        Raises
        ------
        CampaignIncompleteError
            If no item completed for ``timeout`` seconds while some are missing: another
            process died. Relaunching resumes the campaign.
        """
        try:
            return self._commit_when_complete(timeout, poll)
        finally:
            self._lock.release()

    def _commit_when_complete(self, timeout: float, poll: float) -> str:
        last_missing, last_change = None, time.monotonic()
        while True:
            if self._committed_is_ours(overwrite=True):
                self.complete = True
                return str(self.path)
            missing = self.missing() if self.partial_path.exists() else None
            if missing == [] and self._claim():
                self._commit()
                continue
            count = None if missing is None else len(missing)
            if count != last_missing:
                last_missing, last_change = count, time.monotonic()
            if time.monotonic() - last_change >= timeout:
                raise CampaignIncompleteError(
                    f"campaign {self.fingerprint} at {self.path}: "
                    + (
                        f"{count} work items still missing, e.g. init {missing[0].init_time} members "
                        f"{missing[0].members.tolist()},"
                        if count
                        else "its commit did not finish"
                    )
                    + f" after waiting {timeout:.0f} s without progress; relaunch the same campaign to "
                    "resume it"
                )
            time.sleep(poll)

    def _claim(self) -> bool:
        self._group = None
        try:
            os.rename(self.partial_path, self.claimed_path)
        except FileNotFoundError:
            return False
        return True

    def _commit(self) -> None:
        try:
            group = zarr.open_group(self.claimed_path, mode="r+", zarr_format=3)
            group.attrs.update({"end_time": _now(), COMPLETE: True, "Conventions": CONVENTIONS})
            consolidate(self.claimed_path)  # plain xr.open_zarr opens the committed archive without a warning
            check_replaceable(self.path)  # something else may have been put there since the launch
            replace_path(self.claimed_path, self.path)
        except FileNotFoundError:
            pass  # a relaunch took the claimed store back; the protocol goes on from there


def recorded_items(path: str | Path) -> np.ndarray | None:
    """The completion records ``[init_time, member block]`` (bool) of the campaign store at ``path``.

    Returns None if the store holds no records (an archive not written by a campaign).
    """
    try:
        return zarr.open_array(Path(path) / DONE, mode="r", zarr_format=3)[...].astype(bool)
    except (FileNotFoundError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError):
        return None


def _rename_if_there(source: Path, target: Path) -> None:
    try:
        os.rename(source, target)
    except OSError:
        pass  # another process moved it first


def _root_attrs(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError) as err:
        raise ArchiveError(f"{path} exists but is not a Zarr v3 forecast archive: {err}") from err


def _differences(stored: Any, campaign: Campaign) -> str:
    """The settings in which the stored campaign description differs from ``campaign``."""
    if not isinstance(stored, dict):
        return "no campaign description found there"
    wanted = campaign.describe()
    keys = sorted(set(stored) | set(wanted))
    changed = [
        f"{key}: stored {_short(stored.get(key))}, requested {_short(wanted.get(key))}"
        for key in keys
        if stored.get(key) != wanted.get(key)
    ]
    return "; ".join(changed) or "same settings, but not committed"


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _lazy_nan(shape: tuple[int, ...], chunks: tuple[int, ...]) -> dask.array.Array:
    return dask.array.full(shape, np.nan, dtype=np.float32, chunks=chunks)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
