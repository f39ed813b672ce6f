"""Shared fixtures: the real FIB-SEM volumes in ../shared/data, tiny synthetic datasets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AFFINITY_DIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """Path of a file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} not found: these tests need the shared data folder "
                    "../shared/data beside the checkout (or AFFINITY_DIST_SHARED_DATA)")
    return path


@pytest.fixture
def fib25() -> Path:
    return shared_file("fib25_sample2.h5")


@pytest.fixture
def gala() -> Path:
    return shared_file("gala_train.h5")


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m affinity_dist ARGS`` in a subprocess, capturing its output."""
    return subprocess.run([sys.executable, "-m", "affinity_dist", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600, check=False)
