"""Figures for MLflow: forecast-vs-truth maps and skill against lead time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def forecast_map(path: Path, lat: np.ndarray, lon: np.ndarray, fields: dict[str, np.ndarray], title: str,
                 units: str) -> Path:
    """Side-by-side maps, e.g. ``{"truth": …, "forecast": …, "error": …}``, each ``(lat, lon)``.

    The first two panels share one colour scale; a panel named ``error`` gets a symmetric one.
    """
    fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 2.8), constrained_layout=True)
    shared = [v for k, v in fields.items() if k != "error"]
    vmin, vmax = min(float(np.min(v)) for v in shared), max(float(np.max(v)) for v in shared)
    for ax, (name, field) in zip(np.atleast_1d(axes), fields.items()):
        if name == "error":
            limit = float(np.max(np.abs(field))) or 1.0
            mesh = ax.pcolormesh(lon, lat, field, cmap="RdBu_r", vmin=-limit, vmax=limit, shading="auto")
        else:
            mesh = ax.pcolormesh(lon, lat, field, cmap="viridis", vmin=vmin, vmax=vmax, shading="auto")
        ax.set_title(name)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        fig.colorbar(mesh, ax=ax, label=units, shrink=0.85)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def skill_vs_lead(path: Path, scores: Sequence[dict], variable: str, metric: str, units: str) -> Path:
    """One line per system of ``metric`` for ``variable`` against lead hours, from score records."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    systems = sorted({s["system"] for s in scores if s["variable"] == variable and s["metric"] == metric})
    for system in systems:
        points = sorted((s["lead_hours"], s["value"]) for s in scores
                        if s["variable"] == variable and s["metric"] == metric and s["system"] == system)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system)
    ax.set_xlabel("lead time (h)")
    ax.set_ylabel(f"{metric} ({units})" if units else metric)
    ax.set_title(f"{variable} {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
