"""Canonical variable ids and how they map onto ERA5 as the Climate Data Store names it.

Every package downstream of :mod:`ingest` sees only the short ids (``z500``, ``u10m``, …);
ERA5 names, GRIB short names and pressure levels stay here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingest.errors import UnknownVariableError

PRESSURE_LEVELS_DATASET = "reanalysis-era5-pressure-levels"
SINGLE_LEVELS_DATASET = "reanalysis-era5-single-levels"


@dataclass(frozen=True)
class Variable:
    """One canonical variable and its ERA5 identity.

    Attributes
    ----------
    id : str
        Canonical short id, e.g. ``"z500"``.
    cds_name : str
        Name in CDS requests, e.g. ``"geopotential"``.
    short_name : str
        Variable name in CDS netCDF files and GRIB ``shortName``, e.g. ``"z"``.
    level : int or None
        Pressure level in hPa, ``None`` for single-level fields.
    units : str
        Units as ERA5 delivers them (and as the store keeps them).
    long_name : str
        Human-readable name, used for CF ``long_name`` attributes.
    step_type : str
        GRIB ``stepType`` of the ERA5 product fourcast reads: ``"instant"`` for analysed states;
        an accumulated field (total precipitation) would say ``"accum"``. Files holding another
        product of the variable (a monthly mean ``avgua``, a maximum ``max``, …) are refused.
    """

    id: str
    cds_name: str
    short_name: str
    level: int | None
    units: str
    long_name: str
    step_type: str = "instant"

    @property
    def dataset(self) -> str:
        """CDS dataset the variable is requested from."""
        return SINGLE_LEVELS_DATASET if self.level is None else PRESSURE_LEVELS_DATASET


_PRESSURE_FIELDS = {
    "z": ("geopotential", "m**2 s**-2", "Geopotential"),
    "t": ("temperature", "K", "Temperature"),
    "u": ("u_component_of_wind", "m s**-1", "U component of wind"),
    "v": ("v_component_of_wind", "m s**-1", "V component of wind"),
    "r": ("relative_humidity", "%", "Relative humidity"),
    "q": ("specific_humidity", "kg kg**-1", "Specific humidity"),
}
_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)

_SINGLE_FIELDS = {
    "u10m": ("10m_u_component_of_wind", "u10", "m s**-1", "10 metre U wind component"),
    "v10m": ("10m_v_component_of_wind", "v10", "m s**-1", "10 metre V wind component"),
    "t2m": ("2m_temperature", "t2m", "K", "2 metre temperature"),
    "msl": ("mean_sea_level_pressure", "msl", "Pa", "Mean sea level pressure"),
    "sp": ("surface_pressure", "sp", "Pa", "Surface pressure"),
    "tcwv": (
        "total_column_water_vapour",
        "tcwv",
        "kg m**-2",
        "Total column vertically-integrated water vapour",
    ),
}


def _build_lexicon() -> dict[str, Variable]:
    table: dict[str, Variable] = {}
    for short, (cds_name, units, long_name) in _PRESSURE_FIELDS.items():
        for level in _LEVELS:
            vid = f"{short}{level}"
            table[vid] = Variable(vid, cds_name, short, level, units, f"{long_name} at {level} hPa")
    for vid, (cds_name, short, units, long_name) in _SINGLE_FIELDS.items():
        table[vid] = Variable(vid, cds_name, short, None, units, long_name)
    return table


LEXICON: dict[str, Variable] = _build_lexicon()


def get_variable(variable_id: str) -> Variable:
    """Look up one canonical id.

    Raises
    ------
    UnknownVariableError
        If the id is not in the lexicon; the message lists close and valid choices.
    """
    try:
        return LEXICON[variable_id]
    except KeyError as err:
        raise UnknownVariableError(
            f"unknown variable id {variable_id!r}; expected one of: {', '.join(sorted(LEXICON))}"
        ) from err


def get_variables(variable_ids: list[str] | tuple[str, ...]) -> list[Variable]:
    """Look up several ids, refusing duplicates."""
    duplicates = sorted({v for v in variable_ids if list(variable_ids).count(v) > 1})
    if duplicates:
        raise UnknownVariableError(f"variable ids listed more than once: {duplicates}")
    return [get_variable(v) for v in variable_ids]


#: Physically plausible bounds of each field (in the store's units), by ERA5 short name: wide
#: enough for any ERA5 value at any level, tight enough to catch wrong units or corrupt data.
_VALID_RANGES: dict[str, tuple[float, float]] = {
    "z": (-1.0e4, 2.5e5),
    "t": (150.0, 350.0),
    "u": (-150.0, 150.0),
    "v": (-150.0, 150.0),
    "r": (0.0, 160.0),
    "q": (-1.0e-3, 5.0e-2),
    "u10": (-80.0, 80.0),
    "v10": (-80.0, 80.0),
    "t2m": (170.0, 345.0),
    "msl": (8.5e4, 1.1e5),
    "sp": (4.5e4, 1.1e5),
    "tcwv": (0.0, 120.0),
}

#: Geopotential (m² s⁻²) by pressure level (hPa): the standard atmosphere's height times g with
#: wide margins (deep lows, cold highs, ERA5's extrapolation below the ground; at 500 hPa also the
#: shallow-water stand-in of :mod:`ingest.synthetic`, whose z500 reaches ~3.8e4). Tight enough
#: that a geopotential height in metres mislabelled ``m**2 s**-2`` (g ≈ 9.8 times too small)
#: falls outside at 850 hPa and above; near 1000 hPa the two overlap and only the units tell.
_GEOPOTENTIAL_RANGES: dict[int, tuple[float, float]] = {
    50: (1.7e5, 2.3e5),
    100: (1.4e5, 1.8e5),
    150: (1.15e5, 1.5e5),
    200: (9.5e4, 1.3e5),
    250: (8.5e4, 1.15e5),
    300: (7.3e4, 1.0e5),
    400: (5.5e4, 8.0e4),
    500: (2.5e4, 8.0e4),
    600: (3.0e4, 4.8e4),
    700: (2.0e4, 3.5e4),
    850: (5.0e3, 2.0e4),
    925: (-1.0e4, 1.5e4),
    1000: (-1.5e4, 8.0e3),
}


def valid_range(variable_id: str) -> tuple[float, float]:
    """Inclusive ``(low, high)`` bounds a value of ``variable_id`` can physically take.

    The one table of physical ranges: ``fourcast ingest validate`` checks a whole store
    against it, and the readers check every field they open (:mod:`ingest.readers`).
    Geopotential has bounds per pressure level, every other field one range for all levels.
    """
    variable = get_variable(variable_id)
    if variable.short_name == "z" and variable.level is not None:
        return _GEOPOTENTIAL_RANGES[variable.level]
    return _VALID_RANGES[variable.short_name]
