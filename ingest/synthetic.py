"""Synthetic ERA5: a forced-dissipative shallow-water flow written in the new-CDS netCDF layout.

The flow stands in for 500 hPa geopotential and winds when no real ERA5 is at hand. One layer
of fluid on the rotating sphere is integrated with torch-harmonics' spectral
:class:`~torch_harmonics.examples.ShallowWaterSolver` tendencies, to which this module adds

* Newtonian relaxation of the geopotential towards a zonally symmetric, balanced two-jet state
  (time scale :attr:`FlowSpec.relaxation_days`), which keeps the jets alive;
* linear drag on vorticity and divergence (time scale :attr:`FlowSpec.drag_days`);
* red-noise (AR(1)) vorticity stirring in total wavenumbers :attr:`FlowSpec.stir_wavenumbers`,
  with memory :attr:`FlowSpec.stir_memory_days`, which keeps the flow unsteady;
* the solver's own implicit hyperdiffusion of vorticity and divergence.

The constants that shape the flow form one frozen :class:`FlowSpec` (:data:`DEFAULT_FLOW` for
the demo), passed explicitly to everything that integrates the flow and hashed into the
manifest of :func:`generate_files`, so a change of any of them regenerates the files.

After a spin-up the flow is statistically stationary, so any period is as good as another for
training. The shallow-water geopotential ``g·h`` is written as ``z`` at 500 hPa and the winds
as ``u`` and ``v``, in the layout the Climate Data Store has returned since September 2024
(:mod:`ingest.cds_layout`). :class:`SyntheticSource` serves the flow through the source
protocol (:class:`ingest.source.Source`) without writing files.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch_harmonics.examples import ShallowWaterSolver

from ingest.atomic import atomic_output
from ingest.cds_layout import GLOBAL_ATTRS, cds_dataset, write_monthly_files
from ingest.errors import IngestError
from ingest.grid import equiangular_lats, regular_lons
from ingest.lexicon import Variable
from ingest.source import Layout, RawDataset, RawSource

#: Gravity (m s⁻²) and Earth radius (m), as the solver's defaults.
GRAVITY = 9.80616
RADIUS = 6.37122e6


class SyntheticSpecError(IngestError, ValueError):
    """Arguments to the synthetic source are out of range or inconsistent."""


@dataclass(frozen=True)
class FlowSpec:
    """The constants that shape the synthetic flow (DESIGN.md §7b), as one hashable value.

    Attributes
    ----------
    mean_height_m : float
        Global mean height of the fluid (m); ``g`` times it is the mean of ``z``.
    jet_speed : float
        Peak zonal wind (m s⁻¹) of the relaxation state ``u = jet_speed · sin²(2φ)``, jets at ±45°.
    relaxation_days : float
        E-folding time of the geopotential's relaxation towards the jet state (days).
    drag_days : float
        E-folding time of the linear drag on vorticity and divergence (days).
    stir_wavenumbers : tuple of int
        Total wavenumbers stirred (inclusive), clipped to the resolved range at coarse grids.
    stir_memory_days : float
        Memory (e-folding time) of the red-noise stirring (days).
    stir_rms : float
        Grid-point root-mean-square of the stirring's vorticity tendency (s⁻²); 0 switches it off.
    courant : float
        Courant number that sets the time step, for a deliberately fast wave (gravity wave plus
        4 × ``jet_speed`` of advection). At 32×64 it gives 900 s; 1200 s was found stable, 1800 s not.

    Raises
    ------
    SyntheticSpecError
        If a value is out of range.
    """

    mean_height_m: float = 5600.0
    jet_speed: float = 25.0
    relaxation_days: float = 5.0
    drag_days: float = 20.0
    stir_wavenumbers: tuple[int, int] = (6, 12)
    stir_memory_days: float = 2.0
    stir_rms: float = 1.2e-10
    courant: float = 0.75

    def __post_init__(self) -> None:
        for name in ("mean_height_m", "relaxation_days", "drag_days", "stir_memory_days", "courant"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise SyntheticSpecError(f"FlowSpec.{name} must be a finite number > 0, found {value!r}")
        for name in ("jet_speed", "stir_rms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SyntheticSpecError(f"FlowSpec.{name} must be a finite number >= 0, found {value!r}")
        low_high = tuple(self.stir_wavenumbers)
        if (
            len(low_high) != 2
            or not all(isinstance(k, int) for k in low_high)
            or not 1 <= low_high[0] <= low_high[1]
        ):
            raise SyntheticSpecError(
                f"FlowSpec.stir_wavenumbers must be two integers 1 <= low <= high, "
                f"found {self.stir_wavenumbers!r}"
            )
        object.__setattr__(self, "stir_wavenumbers", low_high)

    def as_dict(self) -> dict[str, object]:
        """The constants as JSON-ready values."""
        return {**asdict(self), "stir_wavenumbers": list(self.stir_wavenumbers)}

    def digest(self) -> str:
        """SHA-256 (hex) of the constants' canonical JSON: equal for equal specs, on any machine."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()


#: The flow of the demo and of every default.
DEFAULT_FLOW = FlowSpec()
#: Canonical ids of the fields written, in file order.
VARIABLE_IDS = ("z500", "u500", "v500")
#: What CDS files carry as ``GRIB_paramId`` and ``standard_name`` per GRIB short name.
_GRIB_IDENTITY = {
    "z": (129, "geopotential"),
    "u": (131, "eastward_wind"),
    "v": (132, "northward_wind"),
}
_SECONDS_PER_DAY = 86400.0
_MANIFEST = "synthetic_manifest.json"
_SOURCE = "fourcast ingest.synthetic (torch-harmonics ShallowWaterSolver)"


class _ForcedShallowWater:
    """Forced-dissipative shallow water on one equiangular grid, stepped by Adams–Bashforth 3.

    The state is one spectral tensor of shape ``(3, lmax, mmax)`` (complex128) holding
    geopotential (m² s⁻²), vorticity (s⁻¹) and divergence (s⁻¹). The last three total
    tendencies are kept between calls to :meth:`advance`, so output snapshots do not restart
    the multistep scheme.

    Parameters
    ----------
    nlat, nlon : int
        Grid size; latitudes include both poles and run north to south.
    step_seconds : float
        Output interval (s), a whole number of hours.
    seed : int
        Seed of the stirring's random numbers.
    spec : FlowSpec
        The constants of the flow.
    """

    def __init__(
        self, nlat: int, nlon: int, step_seconds: float, seed: int, spec: FlowSpec = DEFAULT_FLOW
    ) -> None:
        self.spec = spec
        self.solver = solver_for(nlat, nlon, spec)
        self.dt = self.solver.dt
        self.substeps = round(step_seconds / self.dt)
        self.generator = torch.Generator().manual_seed(seed)
        self.target = balanced_jet_state(self.solver, spec)
        self.state = self.target.clone()
        self.stir_mask = self._stir_mask()
        self.stir_decay = math.exp(-self.dt / (spec.stir_memory_days * _SECONDS_PER_DAY))
        self.stirring = self._stir_noise()
        self.tendencies: list[torch.Tensor] = []

    def _stir_mask(self) -> torch.Tensor:
        """Amplitude of each stirred spectral coefficient, zero outside the band.

        Returns
        -------
        torch.Tensor, shape (lmax, mmax), float64
            Standard deviation (s⁻²) per coefficient for a grid-point RMS of :attr:`FlowSpec.stir_rms`;
            complex coefficients with ``m > 0`` stand for two real modes each.
        """
        lmax, mmax = self.solver.lmax, self.solver.mmax
        low, high = stir_band(lmax, self.spec)
        l = torch.arange(lmax, dtype=torch.float64).reshape(-1, 1).expand(lmax, mmax)
        m = torch.arange(mmax, dtype=torch.float64).reshape(1, -1).expand(lmax, mmax)
        in_band = (l >= low) & (l <= high) & (m <= l)
        modes = (high + 1) ** 2 - low**2
        return torch.where(in_band, self.spec.stir_rms * math.sqrt(4 * math.pi / modes), 0.0)

    def _stir_noise(self) -> torch.Tensor:
        """One draw of the stirring's stationary distribution, shape (lmax, mmax), complex128.

        ``m = 0`` coefficients are real; for ``m > 0`` the real and imaginary parts share the
        variance, so the field is statistically isotropic.
        """
        re, im = torch.randn((2, *self.stir_mask.shape), dtype=torch.float64, generator=self.generator)
        im[:, 0] = 0.0
        re[:, 1:] *= math.sqrt(0.5)
        im[:, 1:] *= math.sqrt(0.5)
        return torch.complex(re, im) * self.stir_mask

    def _tendency(self, state: torch.Tensor) -> torch.Tensor:
        """Total tendency: shallow-water dynamics + relaxation + drag + stirring, per second."""
        forcing = torch.zeros_like(state)
        forcing[0] = (self.target[0] - state[0]) / (self.spec.relaxation_days * _SECONDS_PER_DAY)
        forcing[1:] = -state[1:] / (self.spec.drag_days * _SECONDS_PER_DAY)
        forcing[1] += self.stirring
        return self.solver.dudtspec(state) + forcing

    def advance(self, nsteps: int) -> None:
        """Integrate ``nsteps`` time steps of :attr:`dt` seconds, updating the state in place."""
        innovation = math.sqrt(1.0 - self.stir_decay**2)
        for _ in range(nsteps):
            self.tendencies = [self._tendency(self.state), *self.tendencies[:2]]
            self.state = self.state + self.dt * _adams_bashforth(self.tendencies)
            self.state[1:] = self.solver.hyperdiff * self.state[1:]
            self.stirring = self.stir_decay * self.stirring + innovation * self._stir_noise()

    def fields(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Geopotential (m² s⁻²), eastward and northward wind (m s⁻¹), each (nlat, nlon) float32."""
        grid = self.solver.gethuv(self.state).numpy().astype(np.float32)
        return grid[0], grid[1], grid[2]


def balanced_jet_state(s: ShallowWaterSolver, spec: FlowSpec = DEFAULT_FLOW) -> torch.Tensor:
    """Zonal jets ``u = jet_speed · sin²(2φ)`` with the geopotential in gradient-wind balance.

    The state the geopotential relaxes towards (:attr:`FlowSpec.relaxation_days`).

    Parameters
    ----------
    s : ShallowWaterSolver
        Grid and transforms (any dtype; float64 for the simulation).
    spec : FlowSpec
        Jet speed and mean height.

    Returns
    -------
    torch.Tensor, shape (3, lmax, mmax), complex
        Spectral geopotential (m² s⁻²), vorticity and (zero) divergence (s⁻¹).
    """
    lat = s.lats.reshape(-1, 1).expand(s.nlat, s.nlon)
    u = spec.jet_speed * torch.sin(2 * lat) ** 2
    wind = torch.stack((u, torch.zeros_like(u)))
    vrtdiv = s.vrtdivspec(wind)
    # ∂δ/∂t = 0 for the zonal flow: ∇²(Φ + |v|²/2) = k·∇×((ζ + f) v)
    flux = s.vrtdivspec(wind * (s.spec2grid(vrtdiv[0]) + s.coriolis))
    phi = s.invlap * flux[0] - s.grid2spec(0.5 * (wind**2).sum(dim=0))
    phi[0, 0] = s.grid2spec(torch.full_like(u, GRAVITY * spec.mean_height_m))[0, 0]
    return torch.tril(torch.cat((phi[None], vrtdiv)))


def stir_band(lmax: int, spec: FlowSpec = DEFAULT_FLOW) -> tuple[int, int]:
    """Stirred total wavenumbers (inclusive): :attr:`FlowSpec.stir_wavenumbers` within ``1 … lmax−1``."""
    high = min(spec.stir_wavenumbers[1], lmax - 1)
    return min(spec.stir_wavenumbers[0], max(1, high // 2)), high


def solver_for(nlat: int, nlon: int, spec: FlowSpec = DEFAULT_FLOW) -> ShallowWaterSolver:
    """The (float64) solver whose tendencies drive the flow on an ``nlat × nlon`` grid, at its own time
    step."""
    lmax = (nlat + 1) // 2
    return ShallowWaterSolver(
        nlat,
        nlon,
        _time_step(lmax, spec),
        lmax=lmax,
        mmax=lmax,
        radius=RADIUS,
        gravity=GRAVITY,
        havg=spec.mean_height_m,
    ).double()


def _time_step(lmax: int, spec: FlowSpec) -> float:
    """Time step (s): the largest that divides one hour and keeps the Courant number <= ``spec.courant``.

    The fastest resolved wave is a gravity wave at total wavenumber ``lmax − 1`` carried by a
    wind of 4 × ``spec.jet_speed``. Dividing the hour makes the step, and hence the flow, the
    same for every output interval.
    """
    wave_speed = math.sqrt(GRAVITY * spec.mean_height_m) + 4 * spec.jet_speed
    stable = spec.courant * RADIUS / (wave_speed * math.sqrt(lmax * (lmax - 1)))
    return 3600.0 / math.ceil(3600.0 / stable)


def _adams_bashforth(tendencies: list[torch.Tensor]) -> torch.Tensor:
    """Adams–Bashforth combination of the newest-first tendencies (Euler, AB2, then AB3)."""
    if len(tendencies) == 1:
        return tendencies[0]
    if len(tendencies) == 2:
        return 1.5 * tendencies[0] - 0.5 * tendencies[1]
    return (23.0 * tendencies[0] - 16.0 * tendencies[1] + 5.0 * tendencies[2]) / 12.0


def simulate(
    start: str | np.datetime64,
    end: str | np.datetime64,
    *,
    nlat: int = 32,
    nlon: int = 64,
    seed: int = 0,
    step_hours: int = 6,
    spinup_days: float = 30.0,
    progress: Callable[[float], None] | None = None,
    flow: FlowSpec = DEFAULT_FLOW,
) -> xr.Dataset:
    """Integrate the synthetic flow and return it in the new-CDS netCDF layout.

    The model clock starts ``spinup_days`` before ``start`` from the balanced jet state, so
    every call with the same arguments (and the same ``start``) sees the same flow, whatever
    ``end`` or ``step_hours`` is (the time step divides every output interval). Runs on the
    CPU in float64 with a seeded :class:`torch.Generator`, using only deterministic CPU
    operations: the same seed gives bit-identical arrays on the same machine and library
    versions.

    Parameters
    ----------
    start, end : str or numpy.datetime64
        First and last valid time (inclusive), each on the ``step_hours`` grid of its day.
    nlat, nlon : int
        Equiangular grid including both poles; ``nlat >= 8`` and ``nlon >= nlat``.
    seed : int
        Seed of the stirring noise, in ``[0, 2**63)``.
    step_hours : int
        Output interval in hours; must divide 24.
    spinup_days : float
        Model days integrated before ``start`` and discarded, ``>= 0``.
    progress : callable, optional
        Called with the fraction of the integration done (0–1) after every output interval.
    flow : FlowSpec
        The constants of the flow.

    Returns
    -------
    xarray.Dataset
        ``z`` (m² s⁻²), ``u`` and ``v`` (m s⁻¹), float32 with dims
        ``(valid_time, pressure_level, latitude, longitude)`` of shape ``(ntime, 1, nlat, nlon)``;
        coords ``valid_time`` (datetime64), ``pressure_level`` ``[500.]`` hPa, ``latitude``
        90 → −90, ``longitude`` 0 → <360, scalar ``number`` and per-time ``expver``.

    Raises
    ------
    SyntheticSpecError
        If an argument is out of range or the times do not fit the output grid.
    """
    times = _valid_times(start, end, step_hours)
    _check_grid(nlat, nlon)
    _check_seed_and_spinup(seed, spinup_days)
    model = _ForcedShallowWater(nlat, nlon, step_hours * 3600.0, seed, flow)
    spinup_steps = round(spinup_days * _SECONDS_PER_DAY / model.dt)
    total_steps = spinup_steps + (len(times) - 1) * model.substeps
    done = 0

    def advance(nsteps: int) -> None:
        nonlocal done
        model.advance(nsteps)
        done += nsteps
        if progress is not None:
            progress(done / total_steps if total_steps else 1.0)

    for _ in range(spinup_steps // model.substeps):
        advance(model.substeps)
    advance(spinup_steps % model.substeps)
    snapshots = [model.fields()]
    for _ in times[1:]:
        advance(model.substeps)
        snapshots.append(model.fields())
    fields = dict(zip(VARIABLE_IDS, (np.stack(field) for field in zip(*snapshots, strict=True)), strict=True))
    attrs = {**GLOBAL_ATTRS, "history": _history(seed, nlat, nlon, spinup_days), "source": _SOURCE}
    return cds_dataset(
        times, equiangular_lats(nlat), regular_lons(nlon), fields, field_attrs=_grib_attrs, attrs=attrs
    )


def generate_files(
    directory: str | Path,
    start: str | np.datetime64,
    end: str | np.datetime64,
    *,
    nlat: int = 32,
    nlon: int = 64,
    seed: int = 0,
    step_hours: int = 6,
    spinup_days: float = 30.0,
    prefix: str = "era5_synthetic",
    progress: Callable[[float], None] | None = None,
    flow: FlowSpec = DEFAULT_FLOW,
) -> list[Path]:
    """Simulate and write monthly files, or reuse those a previous identical call wrote.

    A JSON manifest (``synthetic_manifest.json``) recording the arguments, the flow's
    constants and their SHA-256 (:meth:`FlowSpec.digest`) and the file names is written
    atomically after the last file. When it matches this call and all its files exist,
    nothing is recomputed. Files listed by a previous, different manifest and not produced by
    this call are removed, so the directory holds one flow only.

    Parameters
    ----------
    directory : str or pathlib.Path
        Where the files and the manifest go; created if missing.
    start, end, nlat, nlon, seed, step_hours, spinup_days, progress, flow
        As for :func:`simulate`.
    prefix : str
        File names are ``{prefix}_{YYYY}{MM}.nc`` (:func:`ingest.cds_layout.write_monthly_files`).

    Returns
    -------
    list of pathlib.Path
        The monthly files, sorted.
    """
    directory = Path(directory)
    times = _valid_times(start, end, step_hours)
    request = {
        "start": str(times[0]),
        "end": str(times[-1]),
        "nlat": nlat,
        "nlon": nlon,
        "seed": seed,
        "step_hours": step_hours,
        "spinup_days": float(spinup_days),
        "prefix": prefix,
        "flow": flow.as_dict(),
        "flow_sha256": flow.digest(),
    }
    previous = _read_manifest(directory)
    if previous.get("request") == request:
        paths = [directory / name for name in previous["files"]]
        if all(path.is_file() for path in paths):
            return paths
    (directory / _MANIFEST).unlink(missing_ok=True)
    ds = simulate(
        times[0],
        times[-1],
        nlat=nlat,
        nlon=nlon,
        seed=seed,
        step_hours=step_hours,
        spinup_days=spinup_days,
        progress=progress,
        flow=flow,
    )
    paths = write_monthly_files(ds, directory, prefix=prefix)
    for stale in set(previous.get("files", [])) - {path.name for path in paths}:
        (directory / stale).unlink(missing_ok=True)
    _write_manifest(directory, {"request": request, "files": [path.name for path in paths]})
    return paths


class SyntheticSource(RawSource):
    """The synthetic flow as a :class:`~ingest.source.Source`: simulated in memory on first use.

    Parameters
    ----------
    start, end, nlat, nlon, seed, step_hours, spinup_days, flow
        As for :func:`simulate`; checked here, before anything is simulated.

    Raises
    ------
    SyntheticSpecError
        If an argument is out of range or the times do not fit the output grid.
    """

    layout = Layout.NEW_CDS_NETCDF

    def __init__(
        self,
        start: str | np.datetime64,
        end: str | np.datetime64,
        *,
        nlat: int = 32,
        nlon: int = 64,
        seed: int = 0,
        step_hours: int = 6,
        spinup_days: float = 30.0,
        flow: FlowSpec = DEFAULT_FLOW,
    ) -> None:
        times = _valid_times(start, end, step_hours)
        _check_grid(nlat, nlon)
        _check_seed_and_spinup(seed, spinup_days)
        self._arguments = dict(
            start=times[0],
            end=times[-1],
            nlat=nlat,
            nlon=nlon,
            seed=seed,
            step_hours=step_hours,
            spinup_days=spinup_days,
            flow=flow,
        )
        self.label = f"synthetic flow (seed {seed}, {nlat}x{nlon}, spec {flow.digest()[:12]})"

    def _open_raw(self) -> list[RawDataset]:
        return [RawDataset(self.label, self.layout, simulate(**self._arguments))]


def _valid_times(start: str | np.datetime64, end: str | np.datetime64, step_hours: int) -> np.ndarray:
    """Output times ``start, start + step, …, end``, shape (ntime,), datetime64[s]."""
    if not isinstance(step_hours, int) or step_hours <= 0 or 24 % step_hours:
        raise SyntheticSpecError(
            "step_hours must be a whole number of hours dividing 24 (1, 2, 3, 4, 6, 8, 12, 24), "
            f"found {step_hours!r}"
        )
    step = np.timedelta64(step_hours, "h")
    first, last = _parse_time(start, "start"), _parse_time(end, "end")
    for label, time in (("start", first), ("end", last)):
        if (time - time.astype("datetime64[D]")) % step:
            raise SyntheticSpecError(
                f"{label} must fall on the {step_hours}-hourly output grid (00 UTC + k·{step_hours} h), "
                f"found {time}"
            )
    if last < first:
        raise SyntheticSpecError(f"end must not be before start, found start={first} and end={last}")
    return np.arange(first, last + step, step).astype("datetime64[s]")


def _parse_time(value: str | np.datetime64, label: str) -> np.datetime64:
    """One time as datetime64[s]; ``label`` names the argument in the error."""
    try:
        time = np.datetime64(value, "s")
    except (TypeError, ValueError) as err:
        raise SyntheticSpecError(
            f"{label} must be an ISO date/time or numpy.datetime64, found {value!r}"
        ) from err
    if np.isnat(time):
        raise SyntheticSpecError(f"{label} must be an actual time, found {value!r}")
    return time


def _check_grid(nlat: int, nlon: int) -> None:
    """Refuse grids the spectral model cannot resolve."""
    if not isinstance(nlat, int) or nlat < 8:
        raise SyntheticSpecError(f"nlat must be an integer >= 8, found {nlat!r}")
    if not isinstance(nlon, int) or nlon < nlat:
        raise SyntheticSpecError(f"nlon must be an integer >= nlat ({nlat}), found {nlon!r}")


def _check_seed_and_spinup(seed: int, spinup_days: float) -> None:
    """Refuse negative or non-integer seeds and negative or non-finite spin-ups."""
    if not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise SyntheticSpecError(f"seed must be an integer in [0, 2**63), found {seed!r}")
    if not math.isfinite(spinup_days) or spinup_days < 0:
        raise SyntheticSpecError(f"spinup_days must be a finite number >= 0, found {spinup_days!r}")


def _history(seed: int, nlat: int, nlon: int, spinup_days: float) -> str:
    """The ``history`` attribute: what made the data, with every argument that shapes it."""
    return (
        "fourcast synthetic ERA5: forced-dissipative shallow-water flow standing in for 500 hPa "
        f"(ingest.synthetic; seed={seed}, nlat={nlat}, nlon={nlon}, spinup_days={spinup_days:g}); "
        "not real ERA5"
    )


def _grib_attrs(var: Variable, lat: np.ndarray, lon: np.ndarray) -> dict[str, object]:
    """Attributes cfgrib gives a pressure-level field in a CDS netCDF file.

    Parameters
    ----------
    var : Variable
        Lexicon entry; its GRIB short name must be in :data:`_GRIB_IDENTITY`.
    lat, lon : numpy.ndarray, shapes (nlat,) and (nlon,)
        The grid in degrees, latitude north to south.
    """
    param_id, standard_name = _GRIB_IDENTITY[var.short_name]
    name = var.long_name.removesuffix(f" at {var.level} hPa")
    return {
        "GRIB_paramId": np.int64(param_id),
        "GRIB_dataType": "an",
        "GRIB_numberOfPoints": np.int64(lat.size * lon.size),
        "GRIB_typeOfLevel": "isobaricInhPa",
        "GRIB_stepUnits": np.int64(1),
        "GRIB_stepType": "instant",
        "GRIB_gridType": "regular_ll",
        "GRIB_uvRelativeToGrid": np.int64(0),
        "GRIB_NV": np.int64(0),
        "GRIB_Nx": np.int64(lon.size),
        "GRIB_Ny": np.int64(lat.size),
        "GRIB_cfName": standard_name,
        "GRIB_cfVarName": var.short_name,
        "GRIB_gridDefinitionDescription": "Latitude/Longitude Grid",
        "GRIB_iDirectionIncrementInDegrees": float(lon[1] - lon[0]),
        "GRIB_iScansNegatively": np.int64(0),
        "GRIB_jDirectionIncrementInDegrees": float(lat[0] - lat[1]),
        "GRIB_jPointsAreConsecutive": np.int64(0),
        "GRIB_jScansPositively": np.int64(0),
        "GRIB_latitudeOfFirstGridPointInDegrees": float(lat[0]),
        "GRIB_latitudeOfLastGridPointInDegrees": float(lat[-1]),
        "GRIB_longitudeOfFirstGridPointInDegrees": float(lon[0]),
        "GRIB_longitudeOfLastGridPointInDegrees": float(lon[-1]),
        "GRIB_missingValue": float(np.finfo(np.float32).max),
        "GRIB_name": name,
        "GRIB_shortName": var.short_name,
        "GRIB_totalNumber": np.int64(0),
        "GRIB_units": var.units,
        "long_name": name,
        "units": var.units,
        "standard_name": standard_name,
    }


def _read_manifest(directory: Path) -> dict:
    """The manifest in ``directory``, or ``{}`` when there is none or it is unreadable."""
    try:
        manifest = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _write_manifest(directory: Path, manifest: dict) -> None:
    """Write the manifest atomically (temporary sibling, then rename)."""
    with atomic_output(directory / _MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
