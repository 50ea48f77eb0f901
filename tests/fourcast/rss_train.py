"""Train 2 steps from a store in a fresh process and print its peak resident memory growth as JSON.

Run by ``test_loader.py`` as ``python rss_train.py STORE TRAIN_START TRAIN_END VALID_START VALID_END CACHE``:
peak RSS (``VmHWM``, reset at the baseline; ``resource.getrusage`` where there is no /proc) is a per-process
high-water mark, so each loader is measured in
a process of its own. The baseline is taken after the model has run one forward and backward
pass of a batch of the training shape, so the growth is what the data loading adds.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

from ensembles.regions import global_field_scores
from fourcast.data import StoreWindows
from fourcast.models.registry import build_model
from fourcast.training import Phase, TrainSettings, train

BATCH = 2


def reset_peak_rss() -> None:
    """Restart the peak-RSS high-water mark at the current RSS (Linux ``clear_refs`` 5), where possible.

    Without it the baseline would be whatever transient peak the imports reached, which on some
    machines is above the resident size plus the whole training range.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak resident set size since :func:`reset_peak_rss` (``VmHWM``), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main(store: str, train_start: str, train_end: str, valid_start: str, valid_end: str, cache: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    validation = StoreWindows(store, valid_start, valid_end, n_ahead=1)
    model = build_model("afno-tiny", (validation.lat.size, validation.lon.size), len(validation.channels))
    x = torch.zeros(BATCH, len(validation.channels), validation.lat.size, validation.lon.size)
    model(x).square().mean().backward()
    model.zero_grad(set_to_none=True)
    reset_peak_rss()
    baseline = peak_rss_bytes()
    made = []

    def make_windows(n_ahead: int) -> StoreWindows:
        made.append(StoreWindows(store, train_start, train_end, n_ahead=n_ahead, cache=cache))
        return made[-1]

    settings = TrainSettings(
        phases=(Phase(1, 2, 1e-3),),
        batch_size=BATCH,
        warmup_steps=0,
        validation_leads=(1,),
        validation_samples=BATCH,
        loader_workers=0,
    )
    scores = global_field_scores(("rmse", "acc"), validation.lat, validation.lon)
    result = train(
        model,
        make_windows,
        validation,
        settings,
        lambda metrics, step: None,
        torch.device("cpu"),
        scores=scores,
    )
    windows = made[0]
    print(
        json.dumps(
            {
                "steps": result.steps,
                "growth_bytes": peak_rss_bytes() - baseline,
                "range_bytes": windows.range_bytes,
                "budget_bytes": windows.memory_budget(BATCH),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
