"""What a run hands on: ``summary.json`` (headline scores and where everything lives) and the WeatherBench 2
export."""

from __future__ import annotations

import json
from pathlib import Path

from ensembles.archive import open_archive
from ensembles.export import climatology_to_weatherbench2, to_weatherbench2, truth_to_weatherbench2, write_wb2
from ensembles.scorecard import headline_records
from ingest.atomic import atomic_output
from ingest.dims import TIME
from ingest.schema import DATA, open_climatology, open_store


def export_wb2(
    archive: Path, store: Path, climatology: Path, out_dir: Path, zarr_format: int = 3
) -> dict[str, Path]:
    """The archive, the truth at its valid times and the climatology in WeatherBench 2's layout, under
    ``out_dir``.

    Writes ``forecast.zarr``, ``truth.zarr`` (the store's fields from the first init time to
    the last valid time) and ``climatology.zarr``, each atomically, with consolidated metadata,
    in Zarr ``zarr_format`` (3, or 2 for tools that read only v2). Returns their paths by role.
    """
    forecasts = open_archive(archive)
    inits, leads = forecasts["init_time"].values, forecasts["lead_time"].values
    truth = open_store(store)[DATA].sel({TIME: slice(inits.min(), inits.max() + leads.max())})
    written = {
        "forecast": write_wb2(to_weatherbench2(forecasts), out_dir / "forecast.zarr", zarr_format),
        "truth": write_wb2(truth_to_weatherbench2(truth), out_dir / "truth.zarr", zarr_format),
        "climatology": write_wb2(
            climatology_to_weatherbench2(open_climatology(climatology)),
            out_dir / "climatology.zarr",
            zarr_format,
        ),
    }
    return {role: Path(path) for role, path in written.items()}


def publish(
    path: Path,
    records: list[dict],
    lead_hours: list[int],
    store: Path,
    archive: Path,
    tracking_uri: str,
    run_ids: dict[str, str],
) -> Path:
    """Write ``summary.json`` (headline scores at ``lead_hours`` and where everything lives) atomically."""
    summary = {
        "scores": [r for r in headline_records(records) if r["lead_hours"] in lead_hours],
        "store": str(store.resolve()),
        "archive": str(archive.resolve()),
        "mlflow_tracking_uri": tracking_uri,
        "mlflow_run_ids": run_ids,
    }
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return path
