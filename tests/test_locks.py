"""Writer leases (integrity issue): one run at a time writes a stage's outputs.

A second writer exits 2 with one line naming the holder; a stale lease (its process is
gone, or its heartbeat too old) is taken over; readers are never blocked. Tested with
real processes and a real LocalCluster: a run paused while it holds the lease blocks a
second run with other options, and its result equals an undisturbed run.
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

from affinity_dist.errors import DatasetBusyError
from affinity_dist.geometry import Box
from affinity_dist.runtime import locks
from affinity_dist.runtime.locks import lease_path, writer_lease
from affinity_dist.stages.sample import sample
from affinity_dist.storage import create_volume, open_dataset, open_volume

from .helpers import run_cli


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _forge(dataset: Path, stage: str, **fields: object) -> Path:
    path = lease_path(dataset, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"owner": "someone", "started": "earlier", "token": "t0",
                                **fields}))
    return path


def test_a_held_lease_refuses_a_second_writer_and_is_released(tmp_path: Path) -> None:
    with writer_lease(tmp_path, "segment") as path:
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid() and info["stage"] == "segment"
        with (pytest.raises(DatasetBusyError, match=f"pid {os.getpid()}") as err,
              writer_lease(tmp_path, "segment")):
            pass
        assert err.value.exit_code == 2 and "\n" not in str(err.value)
        with writer_lease(tmp_path, "predict"):  # another stage's outputs: not blocked
            pass
    assert not path.exists() and not path.parent.exists()  # nothing left behind
    with pytest.raises(RuntimeError), writer_lease(tmp_path, "segment"):
        raise RuntimeError("the run failed")
    assert not path.exists()  # released whatever the outcome


def test_stale_leases_are_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    _forge(tmp_path, "segment", host=socket.gethostname(), pid=_dead_pid())
    with writer_lease(tmp_path, "segment") as path:  # its process is gone
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "took over the stale writer lease" in caplog.text
    old = _forge(tmp_path, "segment", host="node-elsewhere", pid=1)
    with (pytest.raises(DatasetBusyError, match="node-elsewhere"),  # alive, as far as we know
          writer_lease(tmp_path, "segment")):
        pass
    past = time.time() - locks.STALE - 5
    os.utime(old, (past, past))  # its heartbeat stopped: a run killed on another node
    with writer_lease(tmp_path, "segment"):
        pass
    assert not old.exists()


def test_the_heartbeat_keeps_a_long_run_fresh(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "HEARTBEAT", 0.05)
    with writer_lease(tmp_path, "segment") as path:
        past = time.time() - 1000
        os.utime(path, (past, past))
        deadline = time.monotonic() + 30
        while time.time() - path.stat().st_mtime > 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - path.stat().st_mtime < 100


def _affinity_dataset(path: Path) -> None:
    sample(path, shape=(48, 96, 96), seed=4, chunks=(16, 32, 32), progress=False)
    labels = open_volume(path, "labels").read(Box((0, 0, 0), (48, 96, 96)))
    rng = np.random.default_rng(0)
    affs = np.empty((3, *labels.shape), np.uint8)
    for axis in range(3):
        same = labels == np.roll(labels, 1, axis=axis)
        affs[axis] = np.clip(np.where(same, 190, 60) + rng.normal(0, 40, labels.shape), 0,
                             255)
    create_volume(open_dataset(path, "r+"), "affinities", shape=labels.shape, channels=3,
                  dtype=np.uint8, chunks=(16, 32, 32)).write(Box((0, 0, 0), labels.shape), affs)


def _segment(path: Path, threshold: float) -> list[str]:
    return [sys.executable, "-m", "affinity_dist", "-q", "segment", "--input", str(path),
            "--threshold", str(threshold), "--block", "16", "32", "32", "--workers", "2"]


def _read(path: Path) -> np.ndarray:
    return open_volume(path, "segmentation").read(Box((0, 0, 0), (48, 96, 96)))


def _held(path: Path, threshold: float) -> subprocess.Popen[bytes]:
    """A segment run started and paused (SIGSTOP, with its workers) once it holds the lease."""
    proc = subprocess.Popen(_segment(path, threshold), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    lease = lease_path(path, "segment")
    deadline = time.monotonic() + 300
    while not lease.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGSTOP)
    assert lease.exists(), "the run never took its lease"
    return proc


def test_two_segment_runs_exactly_one_writes(tmp_path: Path) -> None:
    first, clean = tmp_path / "a.zarr", tmp_path / "clean.zarr"
    _affinity_dataset(first)
    shutil.copytree(first, clean)
    proc = _held(first, 0.5)
    try:
        second = run_cli("segment", "--input", first, "--threshold", "0.7",
                         "--block", "16", "32", "32", "--workers", "2")
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2, second.stderr
        assert len(lines) == 1 and f"pid {proc.pid}" in lines[0], second.stderr
        assert "is being written by another run" in lines[0]
        reader = run_cli("info", first)  # readers are never blocked
        assert reader.returncode == 0, reader.stderr
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    assert proc.wait(timeout=300) == 0
    assert subprocess.run(_segment(clean, 0.5), capture_output=True, check=False
                          ).returncode == 0
    np.testing.assert_array_equal(_read(first), _read(clean))
    assert not lease_path(first, "segment").exists()


def test_a_killed_runs_lease_is_taken_over(tmp_path: Path) -> None:
    first, clean = tmp_path / "a.zarr", tmp_path / "clean.zarr"
    _affinity_dataset(first)
    shutil.copytree(first, clean)
    proc = _held(first, 0.6)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers: the lease stays behind
    proc.wait()
    assert lease_path(first, "segment").exists()
    again = subprocess.run(_segment(first, 0.6), capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert subprocess.run(_segment(clean, 0.6), capture_output=True, check=False
                          ).returncode == 0
    np.testing.assert_array_equal(_read(first), _read(clean))
