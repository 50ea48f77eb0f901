import numpy as np
import pytest

from ingest.errors import UnknownVariableError
from ingest.grid import cell_area_weights, equiangular_lats
from ingest.lexicon import (
    LEXICON,
    PRESSURE_LEVELS_DATASET,
    SINGLE_LEVELS_DATASET,
    get_variable,
    get_variables,
)


def test_lexicon_maps_ids_to_era5_names_and_units():
    z500 = get_variable("z500")
    assert (z500.cds_name, z500.short_name, z500.level, z500.units) == (
        "geopotential",
        "z",
        500,
        "m**2 s**-2",
    )
    assert z500.dataset == PRESSURE_LEVELS_DATASET
    t2m = get_variable("t2m")
    assert (t2m.short_name, t2m.level, t2m.units, t2m.dataset) == ("t2m", None, "K", SINGLE_LEVELS_DATASET)
    assert {"u10m", "v10m", "msl", "sp", "tcwv", "r500", "t850", "z50"} <= set(LEXICON)


def test_unknown_variable_names_the_choices():
    with pytest.raises(UnknownVariableError, match=r"unknown variable id 'z501'.*z500"):
        get_variable("z501")
    with pytest.raises(UnknownVariableError, match="more than once"):
        get_variables(["z500", "z500"])


def test_area_weights_are_exact_band_areas_with_mean_one():
    lat = equiangular_lats(33)
    weights = cell_area_weights(lat)
    assert weights.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(weights, weights[::-1])  # hemispheric symmetry
    # Interior rows: the band between midpoints; area ∝ sin(upper) − sin(lower).
    edges = np.deg2rad(np.concatenate([[90.0], 0.5 * (lat[1:] + lat[:-1]), [-90.0]]))
    band = np.sin(edges[:-1]) - np.sin(edges[1:])
    np.testing.assert_allclose(weights, band / band.mean())
    # Away from the poles the weights follow cos(lat) closely.
    interior = slice(4, -4)
    cos = np.cos(np.deg2rad(lat))
    np.testing.assert_allclose(weights[interior] / weights[16], cos[interior], rtol=2e-3)
    assert weights[0] > 0


def test_area_weights_reject_bad_input():
    with pytest.raises(ValueError, match="1-D latitude"):
        cell_area_weights(np.zeros((2, 2)))
