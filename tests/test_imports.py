"""The packages import one way (DESIGN.md §1) and each third-party side effect has one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "ingest": set(),
    "fourcast": {"ingest"},
    "ensembles": {"ingest"},
    "pipeline": {"ingest", "fourcast", "ensembles"},
}
HOMES = {
    "mlflow": "pipeline/tracking.py",
    "torch.distributed": "fourcast/distributed.py",
    "dask.distributed": "pipeline/cluster.py",
    "argparse": "pipeline/cli.py",
    "sqlite3": "pipeline/tracking.py",
}  # loaded before ecCodes for MLflow (see tracking.py)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_one_way(package):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(package)
        for line, module in _imports(path)
        if module.split(".")[0] in ALLOWED and module.split(".")[0] not in ALLOWED[package] | {package}
    ]
    assert wrong == []


def test_side_effects_live_in_their_home():
    stray = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for package in ALLOWED
        for path in _sources(package)
        for line, module in _imports(path)
        for lib, home in HOMES.items()
        if (module == lib or module.startswith(lib + ".")) and path.relative_to(ROOT).as_posix() != home
    ]
    assert stray == []
