"""kernels.merge: per-block fragment statistics and the min-size bookkeeping that combines
them, against a whole-volume oracle (scipy's csgraph over label pieces)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from affinity_dist.geometry import BlockGrid
from affinity_dist.kernels.fragments import LOCAL_BITS, LOCAL_MASK, global_ids
from affinity_dist.kernels.merge import (
    FragmentStats,
    block_map,
    block_starts,
    boundary_sizes,
    build_table,
    fragment_sizes,
    fragment_stats,
    merge_blocks,
)


def planes(local: np.ndarray) -> list[np.ndarray]:
    """The six boundary planes of a block (first0, last0, first1, ...)."""
    return [np.take(local, i, axis=a) for a in range(3) for i in (0, -1)]


def test_fragment_sizes_count_voxels_per_local_id() -> None:
    local = np.array([[[0, 1, 1], [3, 3, 3]]], np.uint32)
    assert fragment_sizes(local).tolist() == [1, 2, 0, 3]
    assert fragment_sizes(global_ids(local, 5), 6).tolist() == [1, 2, 0, 3, 0, 0]


def test_fragment_stats_of_one_block() -> None:
    local = np.zeros((4, 5, 6), np.uint32)
    local[1:3, 1:4, 1:5] = 1  # interior: 24 voxels, on no face
    local[0, 0, 0] = 2  # a corner: 1 voxel
    local[:, 4, :] = 3  # the last y plane: 24 voxels
    local[2, 2, 2] = 4  # interior, 1 voxel
    stats = fragment_stats(global_ids(local, 7), 4, 7, planes(local), min_size=2)
    assert stats.num_fragments == 4
    assert stats.num_small == 2  # fragments 2 and 4
    high = 7 << LOCAL_BITS
    assert stats.boundary_ids.tolist() == [0, high | 2, high | 3]  # background stays 0
    assert stats.boundary_ids.dtype == np.uint64
    assert stats.boundary_sizes.tolist() == [(local == 0).sum(), 1, 24]
    assert stats.boundary_sizes.dtype == np.int64


def test_without_min_size_only_the_count_is_kept() -> None:
    local = np.ones((2, 2, 2), np.uint32)
    stats = fragment_stats(local, 1, 0, planes(local))
    assert (stats.num_fragments, stats.num_small) == (1, 0)
    assert stats.boundary_ids.size == stats.boundary_sizes.size == 0


def test_boundary_sizes_combine_blocks_sorted_by_id() -> None:
    a = FragmentStats(3, 1, np.array([9, 2 << LOCAL_BITS], np.uint64),
                      np.array([5, 6], np.int64))
    b = FragmentStats(2, 0, np.array([1], np.uint64), np.array([7], np.int64))
    ids, sizes = boundary_sizes([a, b])
    assert ids.tolist() == [1, 9, 2 << LOCAL_BITS]
    assert sizes.tolist() == [7, 5, 6]
    ids, sizes = boundary_sizes([])
    assert ids.dtype == np.uint64 and sizes.dtype == np.int64 and ids.size == sizes.size == 0


def blocks_of(labels: np.ndarray, block: tuple[int, ...]
              ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Cut a labelling into blocks whose fragments are the label pieces of each block
    (local ids 1.. in label order; label 0 is background), and pair the pieces that hold
    the same label across every lower face."""
    grid = BlockGrid(labels.shape, block)
    fragments = []
    for block_id in grid:
        piece = labels[grid.write_box(block_id).slices]
        values, local = np.unique(piece, return_inverse=True)
        local = local.reshape(piece.shape).astype(np.uint32) + (values[0] != 0)
        fragments.append(global_ids(local, block_id))
    pairs = [np.zeros((2, 0), np.uint64)]
    for lower, upper, axis in grid.faces():
        a = np.take(fragments[lower], -1, axis=axis).ravel()
        b = np.take(fragments[upper], 0, axis=axis).ravel()
        joined = (a != 0) & (labels_of(labels, grid, int(lower), fragments[lower], a)
                            == labels_of(labels, grid, int(upper), fragments[upper], b))
        pairs.append(np.unique(np.stack([a[joined], b[joined]]), axis=1))
    return fragments, pairs


def labels_of(labels: np.ndarray, grid: BlockGrid, block_id: int, fragments: np.ndarray,
              ids: np.ndarray) -> np.ndarray:
    """The labels of fragments ``ids`` of a block."""
    piece = labels[grid.write_box(block_id).slices].ravel()
    table = dict(zip(fragments.ravel().tolist(), piece.tolist(), strict=True))
    return np.array([table[i] for i in ids.tolist()], labels.dtype)


def oracle(fragments: list[np.ndarray], pairs: list[np.ndarray], min_size: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Whole-volume components of the pieces joined by the pairs (scipy csgraph), and
    which of them reach ``min_size`` voxels."""
    ids, sizes = np.unique(np.concatenate([f.ravel() for f in fragments]), return_counts=True)
    sizes, ids = sizes[ids != 0], ids[ids != 0]
    edges = np.concatenate(pairs, axis=1)
    a, b = np.searchsorted(ids, edges[0]), np.searchsorted(ids, edges[1])
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(ids.size, ids.size))
    _, component = connected_components(graph, directed=False)
    total = np.bincount(component, weights=sizes)
    return ids, np.where(total[component] >= min_size, component, -1)


@settings(max_examples=60, deadline=None)
@given(st.tuples(*[st.integers(1, 7)] * 3), st.tuples(*[st.integers(1, 4)] * 3),
       st.integers(1, 5), st.integers(0, 12), st.integers(0, 2**16))
def test_merged_table_with_min_size_equals_the_whole_volume_oracle(
        shape: tuple[int, ...], block: tuple[int, ...], k: int, min_size: int,
        seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, k + 1, shape)
    fragments, pairs = blocks_of(labels, block)
    stats = []
    for block_id, f in enumerate(fragments):
        n = int((f & LOCAL_MASK).max())
        local = (f & LOCAL_MASK).astype(np.uint32)
        stats.append(fragment_stats(f, n, block_id, planes(local), min_size))
    table = merge_blocks(pairs, stats, min_size)
    if min_size:  # the same as calling build_table with the concatenated statistics
        direct = build_table(np.concatenate(pairs, axis=1),
                             np.array([s.num_fragments for s in stats]),
                             boundary_sizes(stats), np.array([s.num_small for s in stats]),
                             min_size)
        np.testing.assert_array_equal(direct.segment_ids, table.segment_ids)
        np.testing.assert_array_equal(direct.offsets, table.offsets)
    starts = block_starts(table)
    mapped = {}
    for block_id, f in enumerate(fragments):
        a, b = starts[block_id], starts[block_id + 1]
        local_ids = table.fragment_ids[a:b] & LOCAL_MASK
        mapping = block_map(local_ids, table.segment_ids[a:b], int(table.counts[block_id]),
                            int(table.offsets[block_id]), min_size=min_size,
                            sizes=fragment_sizes(f))
        segmentation = mapping[(f & LOCAL_MASK).astype(np.int64)]
        assert segmentation[f == 0].sum() == 0
        mapped.update(zip(f.ravel().tolist(), segmentation.ravel().tolist(), strict=True))
    ids, expected = oracle(fragments, pairs, min_size)
    got = np.array([mapped[i] for i in ids.tolist()], np.int64)
    assert ((got == 0) == (expected < 0)).all()  # exactly the small segments are removed
    kept = expected >= 0
    _, first = np.unique(expected[kept], return_index=True)
    relabel = dict(zip(expected[kept][first].tolist(), got[kept][first].tolist(),
                       strict=True))
    assert [relabel[e] for e in expected[kept].tolist()] == got[kept].tolist()
    assert len(set(relabel.values())) == len(relabel)  # one id per component
    assert table.num_segments == len(relabel)
    if kept.any():
        assert sorted(relabel.values()) == list(range(1, len(relabel) + 1))  # consecutive
