"""Resumable runs: done blocks recorded after their data and keyed by what decides them.

A rerun after success computes 0 blocks and rewrites no chunk; a run killed with SIGKILL
mid-predict, rerun, equals an uninterrupted run bit for bit; a changed threshold redoes
only segment (and the evaluation of its result); a block that keeps failing stops the run
with exit 1 naming it, and its stage is not marked complete.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import BlockFailedError
from affinity_dist.geometry import Box
from affinity_dist.runtime.donelog import DoneLog
from affinity_dist.runtime.scheduling import BlockCounts
from affinity_dist.runtime.state import STATE_DIR, StageState, run_recorded
from affinity_dist.stages.sample import sample
from affinity_dist.storage import list_arrays, open_volume

from .helpers import run_cli, tiny_model

WORKFLOW = '''
stages = ["predict", "segment", "evaluate"]
[input]
dataset = "{dataset}"
[predict]
{model}block = [16, 32, 32]
{shards}[segment]
threshold = {threshold}
block = [16, 32, 32]
{shards}[evaluate]
preview = false
[cluster]
scheduler = "{scheduler}"
workers = 2
'''


def _workflow(folder: Path, dataset: str, *, threshold: float = 0.5, model: Path | None = None,
              scheduler: str = "local", name: str = "wf.toml", sharded: bool = False) -> Path:
    """``sharded``: predict and segment write shards of 16x32x32 (one per block) holding
    16x16x16 chunks."""
    wf = folder / name
    shards = 'chunks = [16, 16, 16]\nshards = "block"\n' if sharded else ""
    wf.write_text(WORKFLOW.format(dataset=dataset, threshold=threshold, scheduler=scheduler,
                                  model=f'model = "{model}"\n' if model else "",
                                  shards=shards))
    return wf


def _snapshot(dataset: Path) -> dict[str, int]:
    """Every file of the dataset with its modification time (ns)."""
    return {str(p.relative_to(dataset)): p.stat().st_mtime_ns
            for p in dataset.rglob("*") if p.is_file()}


def _stages(report_path: Path) -> dict[str, dict[str, int]]:
    report = json.loads(report_path.read_text())
    return {s["stage"]: s for s in report["stages"]}


def _read(dataset: Path, name: str) -> np.ndarray:
    volume = open_volume(dataset, name)
    return volume.read(Box((0, 0, 0), volume.spatial_shape))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    sample(tmp_path / "s.zarr", shape=(40, 48, 56), seed=3, chunks=(16, 16, 16), progress=False)
    tiny_model(tmp_path / "tiny.pt")
    return tmp_path


def test_rerun_after_success_computes_nothing_and_rewrites_no_chunk(run_dir: Path) -> None:
    wf = _workflow(run_dir, "s.zarr", model=run_dir / "tiny.pt")
    first = run_cli("-q", "run", wf)
    assert first.returncode == 0, first.stderr
    before = _snapshot(run_dir / "s.zarr")
    again = run_cli("-q", "run", wf)
    assert again.returncode == 0, again.stderr
    stages = _stages(run_dir / "s-report.json")
    assert [s["computed"] for s in stages.values()] == [0, 0, 0]
    assert stages["predict"]["skipped"] == stages["predict"]["blocks"] == 3 * 2 * 2
    assert stages["evaluate"]["voi_split"] >= 0  # the scores of the finished evaluation
    assert _snapshot(run_dir / "s.zarr") == before  # no chunk, no metadata rewritten
    assert "done earlier" in again.stdout


def test_changed_threshold_redoes_only_segment(run_dir: Path) -> None:
    """... and of segment (agglomerate) only the cut of the stored merge tree and the
    relabelling: fragments, region graph and merge tree stay."""
    from affinity_dist.geometry import ReductionTree

    wf = _workflow(run_dir, "s.zarr", model=run_dir / "tiny.pt", scheduler="threads")
    assert run_cli("-q", "run", wf).returncode == 0
    kept = ("affinities/", "fragments/", "merge_tree/", "region_graph/")
    affinities = {k: v for k, v in _snapshot(run_dir / "s.zarr").items()
                  if k.startswith(kept)}
    seg_before = _read(run_dir / "s.zarr", "segmentation")
    _workflow(run_dir, "s.zarr", threshold=0.9, model=run_dir / "tiny.pt", scheduler="threads")
    result = run_cli("-q", "run", wf)
    assert result.returncode == 0, result.stderr
    stages = _stages(run_dir / "s-report.json")
    assert stages["predict"]["computed"] == 0
    tree = ReductionTree((3, 2, 2))  # (40, 48, 56) in blocks of (16, 32, 32)
    cut = sum(tree.num_tasks(level) for level in range(1, tree.num_levels))
    assert stages["segment"]["blocks"] == 12
    assert stages["segment"]["computed"] == cut + 12  # the cut, then the relabelling
    assert stages["segment"]["skipped"] == 0 and stages["evaluate"]["computed"] > 0
    after = _snapshot(run_dir / "s.zarr")
    assert {k: after[k] for k in affinities} == affinities  # affinities and tree untouched
    assert not np.array_equal(_read(run_dir / "s.zarr", "segmentation"), seg_before)


@pytest.mark.parametrize("sharded", [False, True], ids=["chunk files", "shards"])
def test_sigkill_mid_predict_then_rerun_is_bit_identical(tmp_path: Path, sharded: bool
                                                         ) -> None:
    # the shipped model on 27 small blocks: each block takes long enough to kill mid-stage
    sample(tmp_path / "a.zarr", shape=(48, 96, 96), seed=5, chunks=(16, 32, 32),
           progress=False)
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    killed = _workflow(tmp_path, "a.zarr", name="a.toml", sharded=sharded)
    clean = _workflow(tmp_path, "b.zarr", name="b.toml")  # unsharded: the same data
    done = tmp_path / "a.zarr" / STATE_DIR / "predict" / "done" / "predict"
    import affinity_dist.stages.predict_tasks  # noqa: F401 - registers BlockPrediction,
    # the result type of predict's markers (decoding accepts registered types only)

    def recorded() -> int:
        return len(DoneLog(done).read()[0]) if done.is_dir() else 0

    # every finished block recorded at once (a batch file each)
    env = {**os.environ, "AFFINITY_DIST_RECORD_SECONDS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "affinity_dist", "-q", "run", killed],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if recorded() >= 4:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its Dask workers
        proc.wait()
    recorded = recorded()
    assert 4 <= recorded < 27, "the run was not killed mid-predict"
    assert "affinities" not in list_arrays(tmp_path / "a.zarr")  # never looks finished
    resumed = run_cli("-q", "run", killed)
    assert resumed.returncode == 0, resumed.stderr
    stages = _stages(tmp_path / "a-report.json")
    assert stages["predict"]["skipped"] >= recorded
    assert stages["predict"]["computed"] + stages["predict"]["skipped"] == 27
    assert run_cli("-q", "run", clean).returncode == 0
    for name in ("affinities", "fragments", "segmentation"):
        assert np.array_equal(_read(tmp_path / "a.zarr", name),
                              _read(tmp_path / "b.zarr", name)), name
        assert (open_volume(tmp_path / "a.zarr", name).shards is not None) == sharded


def test_block_that_keeps_failing_stops_the_run(run_dir: Path) -> None:
    """(A block failing on an unexpected error is retried first: tests/test_scheduling.py,
    test_transient_errors_are_retried.)"""
    chunk = run_dir / "s.zarr" / "raw" / "c" / "1" / "1" / "1"
    assert chunk.is_file()
    chunk.write_bytes(b"not a chunk")  # every read of this chunk fails
    wf = _workflow(run_dir, "s.zarr", model=run_dir / "tiny.pt")
    result = run_cli("-q", "run", wf)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    # damage, not a passing fault: not retried, the block and the chunk named
    assert "predict: block" in last and "raw: chunk c/1/1/1 does not decode" in last, \
        result.stderr
    assert "a rerun with the same options resumes" in last
    state = StageState.of(run_dir / "s.zarr", "predict", {})
    assert not (Path(state.root) / "complete.json").exists()
    assert "affinities" not in list_arrays(run_dir / "s.zarr")


def test_run_recorded_skips_done_blocks_and_checks_coverage(tmp_path: Path) -> None:
    state = StageState.of(tmp_path, "demo", {"threshold": 0.5})
    assert not state.begin()
    calls: list[int] = []

    def square(block: int) -> int:
        calls.append(block)
        return block * block

    counts = BlockCounts()
    run = {"scheduler": "synchronous", "progress": False}
    assert run_recorded(state, "pass", square, [0, 1, 2], counts, **run) == [0, 1, 4]
    assert state.begin()  # same key, not finished: resuming
    assert run_recorded(state, "pass", square, [0, 1, 2, 3], counts, **run) == [0, 1, 4, 9]
    assert sorted(calls) == [0, 1, 2, 3] and counts.as_dict() == {
        "computed": 4, "skipped": 3, "retried": 0}
    other = StageState.of(tmp_path, "demo", {"threshold": 0.6})
    assert other.key != state.key and not other.begin()  # a new key starts afresh
    assert other.done("pass") == set()
    with pytest.raises(BlockFailedError, match="block 7"):
        other.check_coverage("pass", [7])
    other.finish({"blocks": 0})
    assert other.complete and not state.complete


def test_transient_errors_are_retried(tmp_path: Path) -> None:
    failures = {1: 2}

    def flaky(block: int) -> int:
        if failures.get(block, 0):
            failures[block] -= 1
            raise OSError("transient")
        return block

    counts = BlockCounts()
    state = StageState.of(tmp_path, "flaky", {})
    state.begin()
    assert run_recorded(state, "pass", flaky, [0, 1], counts, scheduler="synchronous",
                        progress=False) == [0, 1]
    assert counts.retried == 1 and counts.computed == 2
