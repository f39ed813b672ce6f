"""The compiled seeded watershed (kernels/watershed.py) against one global priority queue
in plain Python: the same basins, voxel for voxel, ties included (levels drain in FIFO
order of their pushes), in 3D and within sections; buckets that grow past a pool block
while they drain; the prefetch hint changes nothing."""

from __future__ import annotations

import heapq
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from affinity_dist.kernels.prefetch import prefetch
from affinity_dist.kernels.seeds import seeds
from affinity_dist.kernels.watershed import _BLOCK, flood, watershed


def flood_reference(b: np.ndarray, seeds: np.ndarray, per_section: bool) -> np.ndarray:
    """One heap keyed (level, push order): a voxel reached from a basin at level l enters
    at max(l, its own level); seeds with an unlabelled neighbour enter in raster order;
    neighbours in the order -x, +x, -y, +y (, -z, +z)."""
    labels = seeds.copy()
    steps = [(0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0)]
    if not per_section:
        steps += [(-1, 0, 0), (1, 0, 0)]
    shape = labels.shape

    def neighbours(p: tuple[int, ...]) -> list[tuple[int, ...]]:
        out = []
        for s in steps:
            q = tuple(a + d for a, d in zip(p, s, strict=True))
            if all(0 <= c < n for c, n in zip(q, shape, strict=True)):
                out.append(q)
        return out

    order = itertools.count()
    heap: list[tuple[int, int, tuple[int, ...]]] = []
    for p in zip(*np.nonzero(labels), strict=True):
        if any(labels[q] == 0 for q in neighbours(p)):
            heapq.heappush(heap, (int(b[p]), next(order), p))
    while heap:
        level, _, p = heapq.heappop(heap)
        for q in neighbours(p):
            if labels[q] == 0:
                labels[q] = labels[p]
                heapq.heappush(heap, (max(level, int(b[q])), next(order), q))
    return labels


def random_case(seed: int, shape: tuple[int, int, int], levels: int, n_seeds: int
                ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    b = rng.integers(0, levels, shape).astype(np.uint8) * np.uint8(255 // max(1, levels - 1))
    seeds = np.zeros(shape, np.uint32)
    flat = rng.choice(seeds.size, size=min(n_seeds, seeds.size), replace=False)
    seeds.ravel()[flat] = rng.integers(1, 6, flat.size)  # seeds share labels, touch
    return b, seeds


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), z=st.integers(1, 7), y=st.integers(1, 9),
       x=st.integers(1, 9), levels=st.sampled_from([1, 2, 3, 256]),
       n_seeds=st.integers(0, 12), per_section=st.booleans())
def test_flood_equals_one_global_priority_queue(seed: int, z: int, y: int, x: int,
                                                levels: int, n_seeds: int,
                                                per_section: bool) -> None:
    b, seeds = random_case(seed, (z, y, x), levels, n_seeds)
    expected = flood_reference(b, seeds, per_section)
    labels = seeds.copy()
    flood(b, labels, per_section)
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("per_section", [False, True])
def test_buckets_that_grow_past_a_pool_block_while_they_drain(per_section: bool) -> None:
    # Two levels and few seeds: level 0's bucket outgrows several pool blocks while it
    # drains (the tail block's fill is re-read), and so does level 255's.
    shape = (4, 80, 80) if per_section else (24, 30, 30)
    b, seeds = random_case(7, shape, 2, 3 * shape[0])
    assert b.size > 3 * _BLOCK
    expected = flood_reference(b, seeds, per_section)
    labels = seeds.copy()
    flood(b, labels, per_section)
    np.testing.assert_array_equal(labels, expected)
    assert (labels > 0).all()


def test_watershed_assigns_every_voxel_even_without_seeds() -> None:
    affs = np.full((3, 5, 6, 7), 10, np.uint8)  # nothing confident: no seeds at all
    labels, n = watershed(affs)
    assert n == 1 and (labels == 1).all()


def cores_reference(affs: np.ndarray, t: float, min_size: int, per_section: bool
                    ) -> np.ndarray:
    """Cores spelled out: scipy's components of the graph of edges above ``t`` (voxel p
    and p - offset[c] joined when affs[c, p] > t; no z edges per section), those of at
    least ``min_size`` voxels numbered 1.. in raster order of first voxels, others 0."""
    shape = affs.shape[1:]
    index = np.arange(int(np.prod(shape))).reshape(shape)
    rows, cols = [], []
    for axis in range(1 if per_section else 0, 3):
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        lo = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        on = affs[axis][tuple(sl)] > np.floor(255 * t)
        rows.append(index[tuple(sl)][on])
        cols.append(index[tuple(lo)][on])
    r, q = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(r.size), (r, q)), shape=(index.size, index.size))
    _, comp = connected_components(graph, directed=False)
    _, first = np.unique(comp, return_index=True)  # each component's first voxel
    sizes = np.bincount(comp)
    labels = np.zeros(index.size, np.uint32)
    k = 0
    for label in np.argsort(first):  # components in raster order of first voxels
        if sizes[label] >= min_size:
            k += 1
            labels[comp == label] = k
    return labels.reshape(shape)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), z=st.integers(1, 7), y=st.integers(1, 9),
       x=st.integers(1, 9), min_size=st.integers(1, 12), per_section=st.booleans())
def test_cores_are_the_large_components_numbered_in_label_order(
        seed: int, z: int, y: int, x: int, min_size: int, per_section: bool) -> None:
    # the compiled cores (sizes counted on provisional labels, one table to the seeds)
    # against label_block's components counted by bincount
    rng = np.random.default_rng(seed)
    affs = rng.integers(0, 256, (3, z, y, x), dtype=np.uint8)
    affs[rng.random(affs.shape) < 0.5] = 255  # confident edges form larger components
    labels, k = seeds(affs, "cores", seed_threshold=0.9, min_seed_size=min_size,
                      per_section=per_section)
    expected = cores_reference(affs, 0.9, min_size, per_section)
    np.testing.assert_array_equal(labels, expected)
    assert k == int(expected.max())


@njit(cache=False)
def _sum_with_hints(a: np.ndarray) -> int:  # pragma: no cover - compiled
    s = 0
    for i in range(a.size):
        prefetch(a, i + 16)  # past the end too: a hint is never read
        s += a[i]
    return s


def test_prefetch_is_only_a_hint() -> None:
    a = np.arange(1000, dtype=np.int64)
    assert _sum_with_hints(a) == int(a.sum())
