"""Run state that scales (terabyte issue, part 2): a step's done markers live in a few
batch files written by the client, not one file per block; they survive a killed run
and concurrent writers, and a cluster holds a bounded window of tasks, not one per block.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import BlockFailedError, ConfigError
from affinity_dist.runtime import scheduling
from affinity_dist.runtime.donelog import DoneLog, flush_seconds
from affinity_dist.runtime.markers import Marker
from affinity_dist.runtime.scheduling import BlockCounts, run_blocks
from affinity_dist.runtime.state import StageState, block_mask, run_recorded


def _marker(block: int, result: int = 0) -> Marker:
    return Marker("pass", block, "k", [], result)


def test_many_blocks_are_recorded_in_a_few_files(tmp_path: Path) -> None:
    state = StageState.of(tmp_path, "demo", {})
    state.begin()
    blocks = list(range(20000))
    got = run_recorded(state, "pass", abs, blocks, BlockCounts(), scheduler="synchronous",
                       progress=False)
    assert got == blocks
    assert len(state.log("pass").files()) == 5  # 4096 markers per batch
    assert state.done("pass") == set(blocks)
    log_ = DoneLog(tmp_path / "log", batch=100, seconds=float("inf"))
    for block in range(1000):
        log_.add(_marker(block))
    assert len(log_.files()) == 10 and not log_.waiting
    log_.add(_marker(5, 55))  # a block computed again: its latest marker counts
    log_.flush()
    markers, problems = DoneLog(tmp_path / "log").read()
    assert len(markers) == 1000 and markers[5].result == 55 and problems == []


def test_a_torn_batch_loses_only_its_own_blocks(tmp_path: Path) -> None:
    state = StageState.of(tmp_path, "demo", {})
    state.begin()
    log_ = DoneLog(state.folder("pass"), batch=10, seconds=float("inf"))
    for block in range(30):
        log_.add(Marker("pass", block, state.key, [], block))
    torn = log_.files()[1]
    torn.write_bytes(torn.read_bytes()[:100])  # a partial write (not atomic, elsewhere)
    calls: list[int] = []

    def fn(block: int) -> int:
        calls.append(block)
        return block

    got = run_recorded(state, "pass", fn, list(range(30)), BlockCounts(),
                       scheduler="synchronous", progress=False)
    assert got == list(range(30)) and sorted(calls) == list(range(10, 20))
    assert not torn.exists()  # nothing in it could be used
    assert len(state.log("pass").files()) == 3  # blocks 10-19 again: a batch of their own


def _write_many(folder: str, first: int) -> None:
    log_ = DoneLog(folder, batch=50, seconds=float("inf"))
    for block in range(first, first + 500):
        log_.add(_marker(block, block))
    log_.flush()


def test_concurrent_writers_never_lose_or_mix_records(tmp_path: Path) -> None:
    folder = str(tmp_path / "done")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(_write_many, [(folder, 500 * i) for i in range(4)])
    markers, problems = DoneLog(folder).read()
    assert problems == [] and len(DoneLog(folder).files()) == 40
    assert {b: m.result for b, m in markers.items()} == {b: b for b in range(2000)}


_KILLED = """
import sys, time
from affinity_dist.runtime.scheduling import BlockCounts
from affinity_dist.runtime.state import StageState, run_recorded

def slow(block):
    time.sleep(0.005)
    return block * 3

state = StageState.of(sys.argv[1], "demo", {})
state.begin()
run_recorded(state, "pass", slow, list(range(2000)), BlockCounts(), scheduler="threads",
             progress=False)
"""


def test_a_killed_run_keeps_what_it_recorded(tmp_path: Path) -> None:
    state = StageState.of(tmp_path, "demo", {})
    env = {**os.environ, "AFFINITY_DIST_RECORD_SECONDS": "0.05"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED), str(tmp_path)],
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if Path(state.folder("pass")).is_dir() and len(state.done("pass")) >= 200:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    recorded = state.done("pass")
    assert 200 <= len(recorded) < 2000, "the run was not killed midway"
    calls: list[int] = []

    def fn(block: int) -> int:
        calls.append(block)
        return block * 3

    assert state.begin()  # resuming
    counts = BlockCounts()
    got = run_recorded(state, "pass", fn, list(range(2000)), counts,
                       scheduler="synchronous", progress=False)
    assert got == [3 * b for b in range(2000)]
    assert set(calls) == set(range(2000)) - recorded and counts.skipped == len(recorded)


def test_a_bad_flush_interval_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFINITY_DIST_RECORD_SECONDS", "soon")
    with pytest.raises(ConfigError, match="AFFINITY_DIST_RECORD_SECONDS='soon'"):
        flush_seconds()
    monkeypatch.setenv("AFFINITY_DIST_RECORD_SECONDS", "2.5")
    assert flush_seconds() == 2.5


def _fail_at(block: int) -> int:
    if block == 150:
        raise ValueError("injected")
    time.sleep(0.001)
    return block


def test_a_cluster_holds_a_window_of_tasks_not_one_per_block(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    monkeypatch.setattr(scheduling, "WINDOW", 40)
    monkeypatch.setattr(scheduling, "SUBMIT", 10)
    with (distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                   dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        most = [0]

        def collect(value: int) -> int:
            most[0] = max(most[0], len(client.futures))
            return value * 2

        got = run_blocks(abs, list(range(500)), client=client, stage="w", progress=False,
                         collect=collect)
        assert got == [2 * b for b in range(500)]
        assert 10 <= most[0] <= 40
        with pytest.raises(Exception, match="block 150") as failed:
            run_blocks(_fail_at, list(range(400)), client=client, stage="f",
                       progress=False, retries=0)
        # the window's other tasks were cancelled and released: what is left is held by
        # the error's traceback (the failed block's batch), finished
        left = {int(key.rsplit("-", 1)[1]): f for key, f in client.futures.items()}
        assert 150 in left and len(left) < 10, failed
        assert all(f.done() for f in left.values())


@pytest.mark.parametrize("blocks", [range(0), range(7), range(3, 20, 4), [5, 0, 9], []])
def test_block_mask_sets_exactly_the_blocks(blocks: Sequence[int]) -> None:
    """Ranges (as the stages pass their blocks) are set by slice, lists by index: the same
    mask either way, one byte per block."""
    mask = block_mask(blocks)
    assert mask.dtype == np.bool_ and mask.size == (max(blocks) + 1 if len(blocks) else 0)
    assert sorted(np.flatnonzero(mask).tolist()) == sorted(blocks)


def test_coverage_names_the_first_block_without_a_record(tmp_path: Path) -> None:
    state = StageState.of(tmp_path, "cover", {"n": 1})
    state.begin()
    log = state.log("pass")
    for block in (0, 1, 2, 4, 6):
        log.add(Marker("pass", block, state.key, [], 0))
    log.flush()
    state.check_coverage("pass", [0, 1, 2, 4, 6])
    state.check_coverage("pass", range(0, 7, 2))
    with pytest.raises(BlockFailedError, match="2 blocks have no verified done record "
                                               r"\(first: block 3\)"):
        state.check_coverage("pass", range(1, 6))
