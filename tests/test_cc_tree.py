"""kernels/cc_tree: connected components of face pairs by the tree reduction, against
scipy's csgraph over the whole pair list, for grids the fan-out does not divide."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from affinity_dist.geometry import BlockGrid, ReductionTree
from affinity_dist.kernels.cc_tree import (
    Pending,
    TaskRecord,
    component_labels,
    leaf,
    reduce_components,
)
from affinity_dist.kernels.fragments import global_ids


def random_faces(grid_shape: tuple[int, int, int], per_block: int, pairs_per_face: int,
                 seed: int) -> tuple[BlockGrid, list[np.ndarray], list[np.ndarray]]:
    """Random pairs across every face of a grid of unit blocks: (u in block, v in the
    neighbour) for both sides, as the leaves see them; and every block's fragments."""
    rng = np.random.default_rng(seed)
    grid = BlockGrid(grid_shape, (1, 1, 1))
    frags = [global_ids(np.arange(1, per_block + 1, dtype=np.uint32), b)
             for b in range(grid.num_blocks)]
    us: list[list[np.ndarray]] = [[] for _ in range(grid.num_blocks)]
    vs: list[list[np.ndarray]] = [[] for _ in range(grid.num_blocks)]
    for b in range(grid.num_blocks):
        for side, other in enumerate(grid.neighbors(b)):
            if other < 0 or side % 2 == 0:
                continue  # each face once, from its lower block
            k = rng.integers(0, pairs_per_face + 1)
            a = frags[b][rng.integers(0, per_block, k)]
            c = frags[other][rng.integers(0, per_block, k)]
            us[b].append(a), vs[b].append(c)
            us[other].append(c), vs[other].append(a)
    cat = [np.concatenate([np.zeros(0, np.uint64), *x]) for x in us]
    return grid, frags, [cat, [np.concatenate([np.zeros(0, np.uint64), *x]) for x in vs]]


def reduce_all(grid: BlockGrid, u: list[np.ndarray], v: list[np.ndarray],
               fanout: tuple[int, int, int], sizes: dict[int, int] | None = None,
               min_size: int = 0) -> tuple[dict[int, int], list[int]]:
    """The whole tree and the cut: label of every merged fragment; largest residual
    (edges) per level."""
    tree = ReductionTree(grid.grid_shape, fanout)
    pending: list[Pending] = []
    for b in range(grid.num_blocks):
        s = None
        if sizes is not None:
            ids = np.unique(u[b])
            s = (ids, np.array([sizes[int(i)] for i in ids], np.int64))
        pending.append(leaf(u[b], v[b], s))
    records: list[list[TaskRecord]] = [[]]
    widest = [max(p.u.size for p in pending)]
    for level in range(1, tree.num_levels):
        up, recs = [], []
        for task in range(tree.num_tasks(level)):
            p, r = reduce_components([pending[c] for c in tree.children(level, task)],
                                     grid.grid_shape, *tree.extent(level, task),
                                     min_size=min_size)
            up.append(p), recs.append(r)
        pending, widest = up, [*widest, max(p.u.size for p in up)]
        records.append(recs)
    assert pending[0].u.size == 0 and pending[0].frag.size == 0  # the root: all final
    base = 0
    bases: dict[tuple[int, int], int] = {}
    for level in range(1, tree.num_levels):
        for task, r in enumerate(records[level]):
            bases[level, task] = base
            base += r.num_kept
    given: dict[int, int] = {}
    for level in range(tree.num_levels - 1, 0, -1):
        for task, r in enumerate(records[level]):
            ids = np.array(sorted(k for k in given if k in set(r.b.tolist())), np.uint64)
            labels = component_labels(r, bases[level, task], ids,
                                      np.array([given[int(i)] for i in ids], np.uint64))
            given.update(zip(r.a.tolist(), labels.tolist(), strict=True))
    return given, widest


def oracle(u: list[np.ndarray], v: list[np.ndarray]) -> dict[int, int]:
    a, b = np.concatenate(u), np.concatenate(v)
    ids, dense = np.unique(np.concatenate([a, b]), return_inverse=True)
    graph = coo_matrix((np.ones(a.size), (dense[:a.size], dense[a.size:])),
                       shape=(ids.size, ids.size))
    comp = connected_components(graph, directed=False)[1]
    return dict(zip(ids.tolist(), comp.tolist(), strict=True))


def same(mine: dict[int, int], theirs: dict[int, int]) -> bool:
    pairs = {(mine[k], theirs[k]) for k in theirs}
    return (mine.keys() == theirs.keys() and len(pairs) == len(set(mine.values()))
            == len(set(theirs.values())))


@settings(max_examples=40, deadline=None)
@given(grid=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 7)),
       fanout=st.tuples(st.integers(2, 4), st.integers(2, 3), st.integers(2, 5)),
       per_block=st.integers(1, 6), pairs=st.integers(0, 6), seed=st.integers(0, 10**6))
def test_tree_equals_the_whole_pair_list(grid: tuple[int, int, int],
                                         fanout: tuple[int, int, int], per_block: int,
                                         pairs: int, seed: int) -> None:
    g, _, (u, v) = random_faces(grid, per_block, pairs, seed)
    labels, _ = reduce_all(g, u, v, fanout)
    want = oracle(u, v)
    assert same(labels, want)
    if labels:  # consecutive from 1, in task order
        assert sorted(set(labels.values())) == list(range(1, len(set(labels.values())) + 1))


@pytest.mark.parametrize("fanout", [(2, 2, 2), (3, 3, 3), (2, 4, 3)])
def test_min_size_zeroes_exactly_the_small_components(fanout: tuple[int, int, int]) -> None:
    g, frags, (u, v) = random_faces((4, 5, 3), 5, 3, seed=9)
    rng = np.random.default_rng(1)
    sizes = {int(f): int(rng.integers(1, 8)) for fs in frags for f in fs}
    labels, _ = reduce_all(g, u, v, fanout, sizes, min_size=12)
    want = oracle(u, v)
    total: dict[int, int] = {}
    for f, c in want.items():
        total[c] = total.get(c, 0) + sizes[f]
    small = {f for f, c in want.items() if total[c] < 12}
    assert small and len(small) < len(want)
    assert all(labels[f] == 0 for f in small)
    kept = {f: c for f, c in want.items() if f not in small}
    assert same({f: labels[f] for f in kept}, kept)


def test_the_residual_is_the_extent_surface_not_the_volume() -> None:
    """On an 8^3 grid, a task at level k passes up only the pairs that leave it: the
    largest residual grows like the surface of its extent (4x per level at fan-out 2),
    and the root's is empty."""
    g, _, (u, v) = random_faces((8, 8, 8), 4, 4, seed=3)
    _, widest = reduce_all(g, u, v, (2, 2, 2))
    assert widest[-1] == 0
    total = sum(x.size for x in u)
    assert widest[1] < total / 20 and widest[2] < total / 5


def test_an_inconsistent_child_is_refused() -> None:
    one = leaf(np.array([global_ids(np.array([1], np.uint32), 0)[0]], np.uint64),
               np.array([global_ids(np.array([1], np.uint32), 1)[0]], np.uint64))
    with pytest.raises(ValueError, match="lacks its other side"):
        reduce_components([one, leaf(np.zeros(0, np.uint64), np.zeros(0, np.uint64))],
                          (1, 1, 2), (0, 0, 0), (1, 1, 2))


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_dense_ids_equal_numpy_unique_with_inverse(n: int) -> None:
    from affinity_dist.kernels.cc_tree import _dense

    x = np.random.default_rng(n).integers(0, 50, n).astype(np.uint64)
    unique, inverse = _dense(x)
    want, want_inverse = np.unique(x, return_inverse=True)
    assert np.array_equal(unique, want) and np.array_equal(inverse, want_inverse)
