"""Driving the Cylc 8 workflows of ``workflows/`` from Python: install, play, find what a run left.

Cylc lives in its own virtual environment (``make cylc-env``: ``.venv-cylc``), because cylc-flow
pins jinja2 and protobuf versions that conflict with mlflow; its jobs find ``cylc`` through the
generated global config ``.cylc-conf/global.cylc`` (``CYLC_CONF_PATH``). The task scripts call
this project's ``fourcast`` (given to the workflow as the ``FOURCAST`` template variable).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ingest.atomic import atomic_output
from pipeline.errors import CylcSetupError  # re-exported

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
CYLC_VENV = ROOT / ".venv-cylc"
CYLC_CONF = ROOT / ".cylc-conf"


def cylc_executable() -> Path:
    """The ``cylc`` of ``$CYLC`` or of ``.venv-cylc``.

    Raises
    ------
    CylcSetupError
        If neither exists (run ``make cylc-env``).
    """
    candidate = Path(os.environ.get("CYLC", CYLC_VENV / "bin" / "cylc"))
    if not candidate.is_file():
        raise CylcSetupError(
            f"expected the cylc executable at {candidate}; run `make cylc-env` (a separate venv "
            "with cylc-flow) or set $CYLC"
        )
    return candidate


def cylc_environment(home: Path | None = None) -> dict[str, str]:
    """The environment Cylc commands run in: ``cylc`` first on ``PATH``, ``CYLC_CONF_PATH`` (written if
    missing).

    ``home`` replaces ``HOME``, so runs go to ``<home>/cylc-run``.

    Raises
    ------
    CylcSetupError
        If ``rsync`` (needed by ``cylc install``) is not installed.
    """
    if shutil.which("rsync") is None:
        raise CylcSetupError(
            "`cylc install` needs rsync, which is not installed: `apt-get install -y rsync` "
            "(or `make cylc-env` as root)"
        )
    conf = Path(os.environ.get("CYLC_CONF_PATH", CYLC_CONF))
    if not (conf / "global.cylc").is_file():
        write_global_config(conf, cylc_executable().parent)
    # the scheduler runs `cylc jobs-submit`
    path = f"{cylc_executable().parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "CYLC_CONF_PATH": str(conf), "PATH": path}
    if home is not None:
        env["HOME"] = str(home)
    return env


def write_global_config(folder: Path, cylc_bin: Path) -> Path:
    """Write ``global.cylc`` telling background jobs where ``cylc`` lives (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "global.cylc"
    with atomic_output(path) as tmp:
        tmp.write_text(f"[platforms]\n    [[localhost]]\n        cylc path = {Path(cylc_bin).resolve()}\n")
    return path


def fourcast_command() -> str:
    """How task scripts call this project's CLI: this interpreter running ``pipeline.cli``."""
    return f"{sys.executable} -m pipeline.cli"


def template_options(variables: Mapping[str, object]) -> list[str]:
    """``--set NAME=VALUE`` options (values as Python literals, as Cylc's Jinja2 ``--set`` expects)."""
    options = []
    for name, value in variables.items():
        options += ["--set", f"{name}={value!r}"]
    return options


def run_cylc(
    args: list[str], env: Mapping[str, str], timeout: float | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``cylc ARGS``; raise :class:`subprocess.CalledProcessError` (output attached) if ``check`` and it
    fails."""
    result = subprocess.run(
        [str(cylc_executable()), *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def validate(workflow: str, variables: Mapping[str, object], env: Mapping[str, str]) -> str:
    """``cylc validate`` a workflow of ``workflows/`` with template variables; returns its output."""
    return run_cylc(["validate", str(WORKFLOWS / workflow), *template_options(variables)], env).stdout


def install(workflow: str, name: str, env: Mapping[str, str]) -> str:
    """``cylc install`` a workflow of ``workflows/`` as ``name`` (a new ``runN``); returns the workflow id."""
    run_cylc(["install", str(WORKFLOWS / workflow), f"--workflow-name={name}"], env)
    return name


def play(
    workflow_id: str,
    env: Mapping[str, str],
    variables: Mapping[str, object] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """``cylc play --no-detach`` (a first start with template ``variables``, or a restart without them).

    Returns the finished process (not checked: a stalled workflow exits non-zero by design).
    """
    return run_cylc(
        ["play", "--no-detach", "--no-timestamp", workflow_id, *template_options(variables or {})],
        env,
        timeout=timeout,
        check=False,
    )


def start_play(
    workflow_id: str, env: Mapping[str, str], variables: Mapping[str, object] | None = None
) -> subprocess.Popen:
    """``cylc play --no-detach`` in the background (its own session); the caller waits or kills it."""
    return subprocess.Popen(
        [
            str(cylc_executable()),
            "play",
            "--no-detach",
            "--no-timestamp",
            workflow_id,
            *template_options(variables or {}),
        ],
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_dir(env: Mapping[str, str], workflow_id: str) -> Path:
    """The run directory of the latest run of ``workflow_id`` (``~/cylc-run/<id>/runN``)."""
    return Path(env.get("HOME", str(Path.home()))) / "cylc-run" / workflow_id / "runN"


def hindcast_variables(
    config: Path,
    workdir: Path,
    initial: str,
    points: int,
    interval_hours: int = 24,
    lead_hours: int = 48,
    members: int = 4,
    model: str = "fourcast-afno-tiny",
) -> dict[str, object]:
    """Template variables of a bounded forecast-cycle hindcast of ``points`` cycle points from ``initial``."""
    import numpy as np

    start = np.datetime64(initial, "h")
    final = start + np.timedelta64(interval_hours * (points - 1), "h")
    score_leads = " ".join(str(h) for h in range(interval_hours, lead_hours + 1, interval_hours))
    return {
        "CONFIG": str(Path(config).resolve()),
        "WORKDIR": str(Path(workdir).resolve()),
        "FOURCAST": fourcast_command(),
        "PYTHONPATH": str(ROOT),
        "INITIAL": str(start)[:13],
        "FINAL": str(final)[:13],
        "INTERVAL_HOURS": interval_hours,
        "LEAD_HOURS": lead_hours,
        "SCORE_LEAD_HOURS": score_leads,
        "MEMBERS": members,
        "MODEL": model,
        "DATA_TIMEOUT": 60,
        "DATA_POLL": 5,
        "RETRY_DELAYS": "PT5S, PT30S",
    }
