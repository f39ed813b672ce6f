"""Merge benchmark: the global union-find over face pairs, time and peak memory.

Pairs as the segment stage makes them: uint64 fragment ids (block id << 32 | local id)
over 10^5 blocks, M pairs among 0.7 M distinct fragments. Each case runs in a fresh
process; peak memory is that process's VmHWM minus its RSS once the pairs exist, so it is
what the union-find itself adds. Methods, all after the same dense re-indexing:

* ``ours``     — ``affinity_dist.kernels.merge.components``: a compiled union-find (path halving)
  over the dense ids, components numbered by their smallest id;
* ``scipy``    — ``scipy.sparse.csgraph.connected_components`` of the dense graph;
* ``networkx`` — ``connected_components`` of an nx.Graph (10^6 only unless --all: ~30x slower).

    .venv/bin/python benchmarks/bench_merge.py [--sizes 1e6 1e7 1e8] [--all]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_pairs(m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(2, int(0.7 * m))
    ids = (rng.integers(0, 100_000, n, dtype=np.uint64) << np.uint64(32)) | rng.integers(
        1, 2**20, n, dtype=np.uint64)
    return ids[rng.integers(0, n, (2, m))]


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_ours(pairs: np.ndarray) -> int:
    from affinity_dist.kernels.merge import components

    _, comp = components(pairs)
    return int(comp.max()) + 1


def run_networkx(pairs: np.ndarray) -> int:
    import networkx as nx

    graph = nx.Graph()
    graph.add_edges_from(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))
    return nx.number_connected_components(graph)


def run_scipy(pairs: np.ndarray) -> int:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids, dense = np.unique(pairs.ravel(), return_inverse=True)
    dense = dense.reshape(2, -1)
    graph = coo_matrix((np.ones(dense.shape[1], np.int8), (dense[0], dense[1])),
                       shape=(len(ids), len(ids)))
    return int(connected_components(graph, directed=False)[0])


def child(method: str, m: int) -> None:
    pairs = make_pairs(m)
    if method == "ours":
        run_ours(make_pairs(10))  # compile (or load the cache) outside the timing
    base = rss_kb("VmRSS")
    t0 = time.perf_counter()
    n = {"ours": run_ours, "scipy": run_scipy, "networkx": run_networkx}[method](pairs)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "extra_mb": (rss_kb("VmHWM") - base) / 1e3,
                      "components": n}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--all", action="store_true", help="networkx at every size")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(float(args.child[1])))
        return
    print(f"{'pairs':>8} {'method':<10} {'seconds':>9} {'Mpairs/s':>9} {'extra MB':>9} "
          f"{'components':>11}")
    for m in (int(s) for s in args.sizes):
        for method in ("ours", "scipy", "networkx"):
            if method == "networkx" and m > 1e6 and not args.all:
                continue
            out = subprocess.run([sys.executable, __file__, "--child", method, str(m)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{m:>8.0e} {method:<10} {r['seconds']:>9.2f} {m / r['seconds'] / 1e6:>9.2f} "
                  f"{r['extra_mb']:>9.0f} {r['components']:>11}", flush=True)


if __name__ == "__main__":
    main()
