"""Helpers shared by the benchmarks: timing medians, peak RSS, real data."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "affinity_dist"]
SHARED_DATA = REPO.parent / "shared" / "data"


@contextlib.contextmanager
def local_cluster(workers: int, *, plain: bool = False) -> Iterator[Any]:
    """A client of ``workers`` single-threaded worker processes on 127.0.0.1: started as
    the CLI starts them (``runtime.cluster.cluster``: its worker environment), or with
    ``plain`` as a bare ``distributed.LocalCluster`` (Dask's defaults, the peer)."""
    from distributed import Client, LocalCluster

    from affinity_dist.runtime.cluster import cluster

    if not plain:
        with cluster("local", n_workers=workers) as client:
            yield client
        return
    from affinity_dist.runtime.memory import WORKER_ENVIRON

    # a nanny exports its pre-spawn variables into this process's environment for good
    # (distributed's Nanny: os.environ.update): an earlier cluster's would leak in here
    saved = {name: os.environ.pop(name) for name in WORKER_ENVIRON if name in os.environ}
    try:
        with (LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None) as local, Client(local) as client):
            yield client
    finally:
        os.environ.update(saved)


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


def fib25_with_truth(argparser: Any) -> tuple[Any, np.ndarray, np.ndarray]:
    """An evaluation's ``--precision`` option, its parsed arguments, fib25's raw and its
    neuron ids (uint64), or exit with one line where ../shared/data is absent."""
    argparser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                           help="predict's precision (auto: bf16 where native, else fp32)")
    args = argparser.parse_args()
    raw, labels = fib25("volumes/raw"), fib25("volumes/labels/neuron_ids")
    if raw is None or labels is None:
        raise SystemExit(f"{SHARED_DATA} not found: this evaluation needs ../shared/data")
    return args, raw, labels.astype(np.uint64)


def mirror_index(n: int, size: int) -> np.ndarray:
    """The source index of each of ``size`` positions along an axis of length ``n``
    mirror-tiled (0 .. n-1, n-1 .. 0, 0 ..), as :func:`tile_to` lays them out."""
    j = np.arange(size) % (2 * n)
    return np.where(j < n, j, 2 * n - 1 - j)


def tile_to(data: np.ndarray, size: int) -> np.ndarray:
    """Mirror-tile ``data`` (z, y, x) to ``size``^3 so real texture fills a large volume."""
    return data[np.ix_(*(mirror_index(n, size) for n in data.shape))]


def peak_rss(cmd: list[str]) -> tuple[float, float, float, float]:
    """Run ``cmd``; return (seconds, peak main RSS, peak worker RSS, peak tree RSS) in MB."""
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"main": 0.0, "worker": 0.0, "tree": 0.0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                kids = proc.children(recursive=True)
                main = proc.memory_info().rss
                rss = [k.memory_info().rss for k in kids if k.is_running()]
            except psutil.Error:
                continue
            peaks["main"] = max(peaks["main"], main / 1e6)
            peaks["worker"] = max(peaks["worker"], max(rss, default=0) / 1e6)
            peaks["tree"] = max(peaks["tree"], (main + sum(rss)) / 1e6)
            time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return seconds, peaks["main"], peaks["worker"], peaks["tree"]
