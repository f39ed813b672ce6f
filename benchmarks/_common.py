"""Helpers shared by the benchmarks: timing medians, peak RSS, real data."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def median_time(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fib25(name: str = "volumes/raw") -> np.ndarray | None:
    """An array of the real fib25_sample2.h5 volume, or None where ../shared is absent."""
    path = SHARED_DATA / "fib25_sample2.h5"
    if not path.is_file():
        return None
    import h5py

    with h5py.File(path, "r") as f:
        return np.asarray(f[name])


def tile_to(data: np.ndarray, size: int) -> np.ndarray:
    """Mirror-tile ``data`` (z, y, x) to ``size``^3 so real texture fills a large volume."""
    reps = [-(-size // n) for n in data.shape]
    out = data
    for axis, r in enumerate(reps):
        parts = [out if i % 2 == 0 else np.flip(out, axis) for i in range(r)]
        out = np.concatenate(parts, axis=axis)
    return np.ascontiguousarray(out[:size, :size, :size])
