"""Data parallelism: the sampler's split, and 2 gloo processes against one process on the combined batch.

Run as a script (``torchrun … test_distributed.py STORE OUT``) this module is the worker of the
equivalence test: each rank trains the same few steps and rank 0 saves the parameters.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ensembles.regions import global_field_scores
from fourcast.data import BatchCursor, ResumableSampler, StoreWindows, batch_stream
from fourcast.distributed import DistContext, all_reduce_mean, gather_objects, process_group, wrap_model
from fourcast.errors import DataWindowError, DistributedSetupError
from fourcast.models.registry import build_model
from fourcast.training import Phase, TrainSettings, seed_rank, seeded_initialisation, train

TRAIN = ("2000-01-01", "2000-01-31T18")
VALID = ("2000-02-01", "2000-02-05T18")
SETTINGS = TrainSettings(
    phases=(Phase(1, 2, 3e-3), Phase(2, 1, 1e-3)),
    batch_size=8,
    warmup_steps=1,
    validate_every=1000,
    validation_leads=(1,),
    validation_samples=4,
    seed=3,
)


def _train(store: Path, ctx: DistContext) -> dict[str, torch.Tensor]:
    with seeded_initialisation(0):
        model = build_model("afno-tiny", (16, 32), 3)
    validation = StoreWindows(store, *VALID, n_ahead=1)
    train(
        model,
        lambda n: StoreWindows(store, *TRAIN, n_ahead=n),
        validation,
        SETTINGS,
        lambda metrics, step: None,
        ctx.device,
        ctx=ctx,
        scores=global_field_scores(("rmse", "acc"), validation.lat, validation.lon),
    )
    return model.state_dict()


def test_ranks_split_each_global_batch_without_repeats(store):
    windows = StoreWindows(store, *TRAIN)
    one = list(ResumableSampler(windows, 1, 0, seed=5))
    two = [list(ResumableSampler(windows, 2, rank, seed=5)) for rank in range(2)]
    assert sorted(one) == list(range(len(windows)))  # one epoch reads every window once
    assert not set(two[0]) & set(two[1]) and len(two[0]) == len(two[1]) == len(windows) // 2
    for k in range(3):  # the ranks' k-th batches of 4 together are the k-th global batch of 8
        assert sorted(two[0][4 * k : 4 * k + 4] + two[1][4 * k : 4 * k + 4]) == sorted(one[8 * k : 8 * k + 8])


def test_batch_stream_resumes_mid_epoch_and_rolls_over(store):
    windows = StoreWindows(store, "2000-01-01", "2000-01-03T18")  # 12 times → 11 windows
    cursor = BatchCursor()
    stream = batch_stream(windows, 4, 0, 1, seed=1, cursor=cursor)
    batches = [next(stream)[0] for _ in range(5)]  # 2 batches per epoch (drop_last)
    assert (cursor.epoch, cursor.batch) == (2, 1)
    resumed = batch_stream(windows, 4, 0, 1, seed=1, cursor=BatchCursor(1, 1))
    torch.testing.assert_close(next(resumed)[0], batches[3], rtol=0, atol=0)
    with pytest.raises(DataWindowError, match="fewer than one batch of 8 for each of 2 rank"):
        next(batch_stream(windows, 8, 0, 2, seed=1, cursor=BatchCursor()))


def test_initial_weights_come_from_the_seed_alone():
    torch.seed()  # a random outer state, as every fresh process now starts with
    outer = torch.get_rng_state()
    with seeded_initialisation(4):
        first = build_model("afno-tiny", (16, 32), 3).state_dict()
    assert torch.equal(torch.get_rng_state(), outer)  # the caller's stream is left as it was
    torch.rand(5)
    with seeded_initialisation(4):
        again = build_model("afno-tiny", (16, 32), 3).state_dict()
    with seeded_initialisation(5):
        other = build_model("afno-tiny", (16, 32), 3).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["pos_embed"], other["pos_embed"])


def test_ranks_draw_repeatable_and_distinct_random_streams():
    draws = {}
    for rank in (0, 1, 0):
        seed_rank(3, rank)
        draws.setdefault(rank, []).append((torch.rand(4), np.random.random_sample(4), random.random()))
    (torch_0, numpy_0, python_0), (torch_again, numpy_again, python_again) = draws[0]
    torch_1, numpy_1, python_1 = draws[1][0]
    assert (
        torch.equal(torch_0, torch_again)
        and np.array_equal(numpy_0, numpy_again)
        and python_0 == python_again
    )
    assert not torch.equal(torch_0, torch_1) and not np.array_equal(numpy_0, numpy_1) and python_0 != python_1


def test_single_process_context_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_distributed) == (0, 1, False)
        value = torch.tensor([2.0, 4.0])
        assert all_reduce_mean(value, ctx).tolist() == [2.0, 4.0] and gather_objects("x", ctx) == ["x"]
        module = torch.nn.Linear(2, 2)
        assert wrap_model(module, ctx) is module
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR"):
        with process_group("cpu"):
            pass


@pytest.mark.distributed
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_on_the_combined_batch(store, tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            __file__,
            str(store),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    single = _train(store, DistContext())
    with seeded_initialisation(0):
        initial = build_model("afno-tiny", (16, 32), 3).state_dict()
    moved = [name for name in single if not torch.equal(single[name], initial[name])]
    assert moved  # the steps changed the weights, so the comparison means something
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=0, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def _worker(store: str, out: str) -> None:
    with process_group("cpu") as ctx:
        assert ctx.world_size == 2 and ctx.backend == "gloo"
        state = _train(Path(store), ctx)
        if ctx.is_main:
            torch.save(state, out)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
