"""Every kind a config may name has an entry in its registry, and every entry a name the config accepts."""

from __future__ import annotations

from typing import get_args

import pytest

from pipeline.config import IngestConfig, ModelErrorConfig, PerturbationConfig
from pipeline.ensemble import MODEL_ERRORS, PERTURBATIONS
from pipeline.sources import SOURCES


@pytest.mark.parametrize(
    ("model", "key", "registry"),
    [
        (PerturbationConfig, "kind", PERTURBATIONS),
        (ModelErrorConfig, "kind", MODEL_ERRORS),
        (IngestConfig, "source", SOURCES),
    ],
)
def test_each_registry_holds_exactly_the_names_the_config_accepts(model, key, registry):
    assert sorted(registry) == sorted(get_args(model.model_fields[key].annotation))
