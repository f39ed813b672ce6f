"""Run-state markers are data checked against the disk, never code (integrity issue).

A marker holds a block's result and the files it wrote (size, CRC-32); one that is
forged, copied from another block, or whose data is missing or changed is not trusted:
its block is computed again and the output equals an undisturbed run. Pickles, old or
forged, are never loaded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from affinity_dist.geometry import BlockGrid, Box
from affinity_dist.options import PredictOptions
from affinity_dist.runtime.donelog import DoneLog
from affinity_dist.runtime.markers import (
    FORMAT,
    Marker,
    MarkerError,
    decode_markers,
    encode_markers,
    register_result,
)
from affinity_dist.runtime.scheduling import BlockCounts
from affinity_dist.runtime.state import StageState, run_recorded
from affinity_dist.stages.predict import BlockPrediction, predict
from affinity_dist.stages.sample import sample
from affinity_dist.storage import create_volume, open_dataset, open_volume

from .helpers import tiny_model


class _Evil:
    """Unpickling it creates a folder: proof that code from a marker ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


class _Unregistered(NamedTuple):
    n: int


@register_result
class FragmentStats(NamedTuple):
    """A registered named tuple result with array fields (as a stage would register)."""

    num_fragments: int
    num_small: int
    boundary_ids: np.ndarray
    boundary_sizes: np.ndarray


def test_every_result_kind_round_trips() -> None:
    stats = FragmentStats(7, 2, np.array([3, 9], np.uint64), np.array([5, 6], np.int64))
    result = {"none": None, "flag": True, "n": 2**63 + 5, "x": 0.25, "s": "a",
              "list": [1, [2.5, None]], "pairs": np.arange(6, dtype=np.uint64).reshape(2, 3),
              "stats": stats, "pred": BlockPrediction(1, 2, 3, 0.5, 1.5)}
    other = Marker("step", 5, "k", [], {"pairs": np.ones(3, np.int64)})
    (back, second), problems = decode_markers(encode_markers(
        [Marker("step", 4, "k", [["a/c/0", 3, 7]], result), other]))
    assert problems == [] and second.block == 5
    np.testing.assert_array_equal(second.result["pairs"], [1, 1, 1])
    assert (back.step, back.block, back.key, back.files) == ("step", 4, "k", [["a/c/0", 3, 7]])
    got = back.result
    assert isinstance(got["stats"], FragmentStats) and isinstance(got["pred"], BlockPrediction)
    assert got["pred"] == result["pred"] and got["list"] == [1, [2.5, None]]
    assert got["n"] == 2**63 + 5 and got["flag"] is True and got["none"] is None
    np.testing.assert_array_equal(got["pairs"], result["pairs"])
    assert got["pairs"].dtype == np.uint64
    np.testing.assert_array_equal(got["stats"].boundary_ids, stats.boundary_ids)


@pytest.mark.parametrize("value", [_Unregistered(1), np.array([object()]), {1: 2}, {3}])
def test_what_is_not_plain_data_is_refused_when_recorded(value: Any) -> None:
    with pytest.raises(TypeError):
        encode_markers([Marker("s", 0, "k", [], value)])


def _forgeries(sentinel: Path) -> dict[str, bytes]:
    evil = _Evil(sentinel)
    with_object = io.BytesIO()
    np.savez(with_object, meta=np.frombuffer(b"{}", np.uint8), a0=np.array([evil]))
    return {"pickle": pickle.dumps(evil), "npz with an object array": with_object.getvalue(),
            "garbage": b"PK\x03\x04 not a zip", "empty": b"",
            "a marker of the old format": _npz({"format": "affinity_dist.marker/1",
                                                "step": "s", "block": 0, "key": "k",
                                                "files": [], "result": None})}


def _npz(meta: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return buffer.getvalue()


def test_malformed_entries_of_a_batch_are_left_out_alone() -> None:
    good = {"step": "s", "block": 1, "key": "k", "files": [], "result": 3}
    entries = [good, {**good, "block": -1}, {**good, "block": True},
               {**good, "files": [["../escape", 1, 2]]},
               {**good, "result": {"tuple": "_Evil", "fields": {}}}, "not an entry"]
    markers, problems = decode_markers(_npz({"format": FORMAT, "markers": entries}))
    assert markers == [Marker("s", 1, "k", [], 3)] and len(problems) == 5


def test_forged_markers_never_run_code(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    for name, data in _forgeries(sentinel).items():
        with pytest.raises(MarkerError):
            decode_markers(data)
        assert not sentinel.exists(), name


def _dataset(tmp_path: Path) -> tuple[Path, BlockGrid]:
    root = tmp_path / "d.zarr"
    sample(root, shape=(8, 8, 8), seed=0, chunks=(4, 4, 4), progress=False)
    create_volume(open_dataset(root, "r+"), "out", shape=(8, 8, 8), dtype=np.uint16,
                  chunks=(4, 4, 4))
    return root, BlockGrid((8, 8, 8), (4, 4, 4))


class _Fill:
    """A block task that writes its block of ``out`` (value block + 1) and declares it."""

    def __init__(self, root: Path, grid: BlockGrid, calls: list[int]) -> None:
        self.root, self.grid, self.calls = root, grid, calls

    def __call__(self, block: int) -> int:
        self.calls.append(block)
        box = self.grid.write_box(block)
        open_volume(self.root, "out", "r+").write(box, np.full(box.shape, block + 1, np.uint16))
        return block * 10

    def outputs(self, block: int) -> list[tuple[str, tuple[slice, ...]]]:
        return [("out", self.grid.write_box(block).slices)]


def test_markers_whose_data_is_missing_changed_or_forged_are_redone(tmp_path: Path) -> None:
    root, grid = _dataset(tmp_path)
    state = StageState.of(root, "demo", {"v": 1})
    state.begin()
    calls: list[int] = []
    blocks = list(grid)
    run = dict(scheduler="synchronous", progress=False)
    assert run_recorded(state, "fill", _Fill(root, grid, calls), blocks, BlockCounts(),
                        **run) == [b * 10 for b in blocks]
    done, chunk = state.folder("fill"), root / "out" / "c"
    (chunk / "0" / "0" / "1").unlink()  # block 1: its chunk deleted
    flipped = chunk / "0" / "1" / "0"  # block 2: a byte of its chunk changed
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    markers, _ = state.log("fill").read()
    shutil.rmtree(done)  # blocks 3-7 lose their own markers
    writer = DoneLog(done, seconds=0)  # one batch file per marker
    for block in (0, 1, 2):
        writer.add(markers[block])
    for forged in (Marker("other", 3, state.key, markers[3].files, 30),  # another step's
                   Marker("fill", 4, state.key, [], 40),  # the right key, lists nothing
                   Marker("fill", 5, state.key, markers[0].files, 50)):  # block 0's data
        writer.add(forged)
    sentinel = tmp_path / "pwned"
    (done / "000000090-0badc0de.npz").write_bytes(pickle.dumps(_Evil(sentinel)))
    (done / "000000091-0badc0de.npz").write_bytes(_npz({"format": FORMAT, "markers": [
        {"step": "fill", "block": 6, "key": state.key, "files": markers[6].files,
         "result": {"tuple": "_Evil", "fields": {}}}]}))
    (done / "7.npz").write_bytes(encode_markers([markers[7]]))  # not a batch's name
    (done / "7.pkl").write_bytes(pickle.dumps(_Evil(sentinel)))  # the old format: ignored
    calls.clear()
    counts = BlockCounts()
    again = run_recorded(state, "fill", _Fill(root, grid, calls), blocks, counts, **run)
    assert again == [b * 10 for b in blocks]
    assert sorted(calls) == [1, 2, 3, 4, 5, 6, 7] and counts.skipped == 1
    assert not sentinel.exists()
    assert not (done / "000000090-0badc0de.npz").exists()  # an unreadable batch: removed
    out = open_volume(root, "out").read(Box((0, 0, 0), (8, 8, 8)))
    expected = np.zeros((8, 8, 8), np.uint16)
    for block in blocks:
        expected[grid.write_box(block).slices] = block + 1
    np.testing.assert_array_equal(out, expected)


def test_forged_predict_markers_are_recomputed_to_the_undisturbed_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A predict stopped by a failing block, then markers forged for every block it did
    not do (the right key, no data) and one done block's chunk deleted: the rerun
    computes them and equals an undisturbed run."""
    import affinity_dist.stages.predict_tasks as stage

    model = tiny_model(tmp_path / "tiny.pt")
    for name in ("a.zarr", "b.zarr"):
        sample(tmp_path / name, shape=(24, 40, 40), seed=2, chunks=(8, 16, 16),
               progress=False)
    options = PredictOptions(model=str(model), block=(8, 16, 16))
    predict(tmp_path / "b.zarr", options, scheduler="synchronous", progress=False)
    grid = BlockGrid((24, 40, 40), (8, 16, 16))
    failing, real_kernel = grid.write_box(grid.num_blocks // 2), stage.predict_block

    def kernel(raw: Any, box: Box, *args: Any, **kwargs: Any) -> Any:
        if box == failing:
            raise RuntimeError("injected failure")
        return real_kernel(raw, box, *args, **kwargs)

    monkeypatch.setattr(stage, "predict_block", kernel)
    with pytest.raises(Exception, match="block"):
        predict(tmp_path / "a.zarr", options, scheduler="synchronous", progress=False)
    monkeypatch.setattr(stage, "predict_block", real_kernel)
    state = StageState.of(tmp_path / "a.zarr", "predict", {})
    log_ = DoneLog(state.folder("predict"))  # the key is the stage's, read from a marker
    real, _ = log_.read()
    assert 0 < len(real) < grid.num_blocks
    key = next(iter(real.values())).key
    for block in set(range(grid.num_blocks)) - set(real):
        log_.add(Marker("predict", block, key, [], BlockPrediction(0, 0, 0, 0.0, 0.0)))
    log_.flush()
    files = next(iter(real.values())).files
    (tmp_path / "a.zarr" / files[0][0]).unlink()
    predict(tmp_path / "a.zarr", options, scheduler="synchronous", progress=False)
    a = open_volume(tmp_path / "a.zarr", "affinities")
    b = open_volume(tmp_path / "b.zarr", "affinities")
    box = Box((0, 0, 0), a.spatial_shape)
    np.testing.assert_array_equal(a.read(box), b.read(box))
