"""The one atomic-output helper: a writer stopped at any point (Ctrl-C included) leaves the previous
result intact and no temporary behind."""

import json

import numpy as np
import pytest
import torch

from fourcast.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from fourcast.models.registry import build_model
from ingest.atomic import atomic_output
from ingest.grid import equiangular_lats, regular_lons


def test_a_finished_block_replaces_the_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with atomic_output(path) as tmp:
        assert tmp.parent == path.parent and not tmp.exists()
        tmp.write_text("new")
        assert path.read_text() == "old"  # nothing visible before the block ends
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, ValueError])
def test_an_interrupted_file_write_leaves_the_previous_file_and_no_temporary(tmp_path, interruption):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"version": 1}))
    with pytest.raises(interruption):
        with atomic_output(path) as tmp:
            with open(tmp, "w") as out:
                out.write('{"version": 2, "half')  # a partial write is on disk when the interruption comes
                out.flush()
                raise interruption()
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_an_interrupted_directory_write_leaves_the_previous_directory(tmp_path):
    path = tmp_path / "store.zarr"
    path.mkdir()
    (path / "zarr.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(path) as tmp:
            tmp.mkdir()
            (tmp / "zarr.json").write_text("new")
            raise KeyboardInterrupt
    assert (path / "zarr.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]
    with atomic_output(path) as tmp:
        tmp.mkdir()
        (tmp / "zarr.json").write_text("new")
    assert (path / "zarr.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


class _CtrlCWhilePickled:
    """A metadata value whose pickling (inside ``torch.save``, after the file is opened) is interrupted."""

    def __deepcopy__(self, memo):
        return self

    def __reduce_ex__(self, protocol):
        raise KeyboardInterrupt


def test_ctrl_c_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    lat, lon = equiangular_lats(16), regular_lons(32)
    meta = CheckpointMeta("afno-tiny", ["z500"], lat.tolist(), lon.tolist(), 6, [0.0], [1.0])
    path = save_checkpoint(tmp_path / "best.pt", build_model("afno-tiny", (16, 32), 1), meta)
    saved, _ = load_checkpoint(path)
    interrupted = CheckpointMeta(**{**meta.__dict__, "extra": {"why": _CtrlCWhilePickled()}})
    torch.manual_seed(1)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, build_model("afno-tiny", (16, 32), 1), interrupted)
    again, meta_again = load_checkpoint(path)
    assert meta_again == meta
    assert all(np.array_equal(saved[k].numpy(), again[k].numpy()) for k in saved)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
