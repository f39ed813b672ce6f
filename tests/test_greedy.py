"""The greedy kernel's own bookkeeping against one global priority queue: the contact
table rebuilt when deleted slots fill it, the heap compacted when stale entries fill it,
int32 and int64 indices."""

from __future__ import annotations

import numpy as np
import pytest

from affinity_dist.kernels.greedy import greedy

from .helpers import greedy_reference


def grid_graph(seed: int, side: int, extra: int) -> np.ndarray:
    """A 2D grid's edges plus ``extra`` random ones: merges move many contacts to new
    pairs (the table fills with deleted slots)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(side * side).reshape(side, side)
    pairs = np.concatenate([np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], 1),
                            np.stack([ids[:-1].ravel(), ids[1:].ravel()], 1),
                            rng.integers(0, side * side, (extra, 2))])
    pairs = np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1)
    return np.unique(pairs, axis=0)


def dense_graph(seed: int, n: int, p: float) -> np.ndarray:
    """A random dense graph: merges sum many contacts (the heap fills with stale entries)."""
    rng = np.random.default_rng(seed)
    a, b = np.triu_indices(n, 1)
    keep = rng.random(a.size) < p
    return np.stack([a[keep], b[keep]], 1)


def run(pairs: np.ndarray, sums: np.ndarray, counts: np.ndarray, dtype: type,
        slots: int, floor: float) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    n = int(pairs.max()) + 1
    tb = pairs.astype(np.uint64)
    parent, rep, _, _, ma, mb, ms = greedy(
        np.zeros(n, bool), pairs.ravel().astype(dtype), sums.copy(), counts.copy(),
        tb[:, 0].copy(), tb[:, 1].copy(), 255.0, floor, np.zeros(1, np.int64), 0, np.inf,
        slots)
    merges = [(min(a, b), max(a, b), s) for a, b, s in zip(ma.tolist(), mb.tolist(),
                                                           ms.tolist(), strict=True)]
    return rep[parent], merges


@pytest.mark.parametrize("graph", ["grid", "dense"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_small_table_and_full_heap_give_the_global_queue(graph: str, seed: int,
                                                         dtype: type) -> None:
    # grid: ~1500 edges in a 2048-slot table (rebuilt 6-7 times, checked by hand with
    # NUMBA_DISABLE_JIT); dense: ~1300 edges, the heap compacted at least once
    pairs = grid_graph(seed, 27, 100) if graph == "grid" else dense_graph(seed, 80, 0.4)
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, len(pairs))
    sums = counts * rng.integers(0, 256, len(pairs)) // (1 + (seed == 2) * 127) * \
        (1 + (seed == 2) * 127)  # seed 2: few distinct means, ties decide
    slots = 2048 if graph == "grid" else 0
    floor = 0.2
    labels, merges = run(pairs, sums, counts, dtype, slots, floor)
    ref_labels, ref_merges = greedy_reference(pairs[:, 0], pairs[:, 1], sums, counts, 255.0,
                                              floor)
    assert merges == [(a, b, s) for a, b, s in ref_merges]
    want = np.arange(labels.size)
    for f, r in ref_labels.items():
        want[f] = r
    assert np.array_equal(labels, want)
    if slots:
        same, same_merges = run(pairs, sums, counts, dtype, 0, floor)
        assert np.array_equal(same, labels) and same_merges == merges
