"""kernels/merge: components and the lookup table against scipy's csgraph.

The oracle numbers segments as the module docstring promises, from scipy's connected
components of the graph over every fragment of every block: the unmerged fragments (in no
pair) first, in block order and local-id order; then the merged components, in order of
their smallest fragment id; with ``min_size``, segments with fewer voxels get 0 and no id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from affinity_dist.kernels.fragments import LOCAL_BITS, LOCAL_MASK, global_ids
from affinity_dist.kernels.merge import (
    LookupTable,
    block_map,
    block_starts,
    build_table,
    components,
)

from .helpers import same_partition

U64 = np.uint64


def as_pairs(pairs: list[tuple[int, int]]) -> NDArray[np.uint64]:
    """(2, M) uint64 from a list of (a, b), also for M = 0."""
    return np.array(pairs, U64).reshape(-1, 2).T.copy()


def scipy_labels(pairs: NDArray[np.uint64], nodes: NDArray[np.uint64]) -> NDArray[Any]:
    """scipy's component of each of the sorted ``nodes``, with ``pairs`` as the edges."""
    if nodes.size == 0:
        return np.zeros(0, np.int64)
    a, b = np.searchsorted(nodes, pairs[0]), np.searchsorted(nodes, pairs[1])
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(nodes.size, nodes.size))
    return connected_components(graph, directed=False)[1]


# --------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------

def check_components(pairs: NDArray[np.uint64]) -> None:
    ids, comp = components(pairs)
    assert ids.dtype == U64 and comp.dtype == np.int64 and ids.shape == comp.shape
    np.testing.assert_array_equal(ids, np.unique(pairs))
    if ids.size == 0:
        return
    assert same_partition(comp, scipy_labels(pairs, ids))
    # numbered 0.. in order of each component's smallest id (ids are sorted)
    _, first = np.unique(comp, return_index=True)
    np.testing.assert_array_equal(comp[np.sort(first)], np.arange(comp.max() + 1))


@settings(max_examples=80, deadline=None)
@given(pool=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=12, unique=True),
       picks=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=25))
def test_components_equal_scipy_for_any_uint64_ids(pool: list[int],
                                                   picks: list[tuple[int, int]]) -> None:
    """Arbitrary ids (also near 2**64), self-pairs and duplicate pairs."""
    check_components(as_pairs([(pool[i % len(pool)], pool[j % len(pool)]) for i, j in picks]))


def test_components_edge_cases() -> None:
    ids, comp = components(np.zeros((2, 0), U64))
    assert ids.dtype == U64 and comp.dtype == np.int64 and ids.size == comp.size == 0
    ids, comp = components(as_pairs([(7, 7), (7, 7)]))  # a self-pair, twice
    assert ids.tolist() == [7] and comp.tolist() == [0]
    ids, comp = components(as_pairs([(9, 3), (3, 9), (2**64 - 1, 0)]))
    assert ids.tolist() == [0, 3, 9, 2**64 - 1] and comp.tolist() == [0, 1, 1, 0]


# --------------------------------------------------------------------------
# build_table, block_starts, block_map
# --------------------------------------------------------------------------

def fragments_of(counts: list[int]) -> NDArray[np.uint64]:
    """Every fragment's global id, in block order and local-id order (= sorted)."""
    ids = [global_ids(np.arange(1, n + 1, dtype=np.uint32), b) for b, n in enumerate(counts)]
    return np.concatenate([np.zeros(0, U64), *ids])


def oracle_segments(counts: list[int], pairs: NDArray[np.uint64], sizes: NDArray[np.int64],
                    min_size: int) -> NDArray[np.uint64]:
    """The promised segment id of every fragment (see the module docstring)."""
    frags = fragments_of(counts)
    labels = scipy_labels(pairs, frags)
    merged = np.isin(frags, pairs)
    voxels = np.bincount(labels, weights=sizes, minlength=frags.size)
    kept = voxels[labels] >= min_size
    out = np.zeros(frags.size, U64)
    next_id = 1
    for i in range(frags.size):
        if not merged[i] and kept[i]:
            out[i], next_id = next_id, next_id + 1
    for i in range(frags.size):  # the smallest member comes first in this order
        if merged[i] and kept[i] and out[i] == 0:
            out[labels == labels[i]] = next_id
            next_id += 1
    return out


def relabel_all(table: LookupTable, counts: list[int], sizes: NDArray[np.int64],
                min_size: int) -> NDArray[np.uint64]:
    """Every fragment's segment id through block_starts and block_map, as segment does."""
    starts = block_starts(table)
    assert starts.dtype == np.int64 and starts.shape == (len(counts) + 1,)
    assert starts[0] == 0 and starts[-1] == table.fragment_ids.size
    assert (np.diff(starts) >= 0).all()
    out, first = [], 0
    for b, n in enumerate(counts):
        ids = table.fragment_ids[starts[b]:starts[b + 1]]
        assert ((ids >> U64(LOCAL_BITS)) == b).all()  # exactly block b's merged fragments
        block_sizes = np.concatenate([[0], sizes[first:first + n]]) if min_size else None
        mapping = block_map(ids & LOCAL_MASK, table.segment_ids[starts[b]:starts[b + 1]], n,
                            int(table.offsets[b]), min_size=min_size, sizes=block_sizes)
        assert mapping.dtype == U64 and mapping.shape == (n + 1,) and mapping[0] == 0
        out.append(mapping[1:])
        first += n
    return np.concatenate([np.zeros(0, U64), *out])


@st.composite
def merge_inputs(draw: st.DrawFn) -> tuple[list[int], NDArray[np.uint64], NDArray[np.int64],
                                           NDArray[np.bool_]]:
    """Blocks of 0-6 fragments, pairs among them (self-pairs and duplicates included),
    voxel counts, and which unmerged fragments also touch a face."""
    counts = draw(st.lists(st.integers(0, 6), min_size=1, max_size=5))
    n = sum(counts)
    frags = fragments_of(counts)
    index = st.integers(0, max(n - 1, 0))
    picks = draw(st.lists(st.tuples(index, index), max_size=20 if n else 0))
    pairs = as_pairs([(int(frags[i]), int(frags[j])) for i, j in picks])
    sizes = np.array(draw(st.lists(st.integers(1, 9), min_size=n, max_size=n)), np.int64)
    on_face = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    return counts, pairs, sizes, on_face


def build(counts: list[int], pairs: NDArray[np.uint64], sizes: NDArray[np.int64],
          on_face: NDArray[np.bool_], min_size: int) -> LookupTable:
    """build_table with the inputs segment gives it: with min_size, the sizes of the face
    fragments (every merged one, and some others) and each block's count of small ones."""
    if not min_size:
        return build_table(pairs, np.array(counts))
    frags = fragments_of(counts)
    face = on_face | np.isin(frags, pairs)
    block = (frags >> U64(LOCAL_BITS)).astype(np.int64)
    small = np.bincount(block[sizes < min_size], minlength=len(counts))
    return build_table(pairs, np.array(counts), (frags[face], sizes[face]), small, min_size)


@settings(max_examples=100, deadline=None)
@given(inputs=merge_inputs(), min_size=st.sampled_from([0, 0, 1, 2, 5, 12]))
def test_build_table_equals_the_scipy_oracle(
        inputs: tuple[list[int], NDArray[np.uint64], NDArray[np.int64], NDArray[np.bool_]],
        min_size: int) -> None:
    counts, pairs, sizes, on_face = inputs
    table = build(counts, pairs, sizes, on_face, min_size)
    np.testing.assert_array_equal(table.fragment_ids, np.unique(pairs))  # the merged ones
    assert table.fragment_ids.dtype == table.segment_ids.dtype == U64
    assert table.counts.tolist() == counts and table.min_size == min_size
    got = relabel_all(table, counts, sizes, min_size)
    expected = oracle_segments(counts, pairs, sizes, min_size)
    np.testing.assert_array_equal(got, expected)
    kept = got[got > 0]
    assert table.num_segments == len(np.unique(kept))
    np.testing.assert_array_equal(np.unique(kept), np.arange(1, table.num_segments + 1))
    if min_size == 0:  # every fragment keeps an id: the same partition as scipy's
        frags = fragments_of(counts)
        assert frags.size == 0 or same_partition(got, scipy_labels(pairs, frags))


def test_build_table_without_pairs_numbers_blocks_in_order() -> None:
    table = build_table(np.zeros((2, 0), U64), np.array([2, 0, 3]))
    assert table.fragment_ids.size == table.segment_ids.size == 0
    assert table.offsets.tolist() == [0, 2, 2] and table.num_segments == 5
    assert block_starts(table).tolist() == [0, 0, 0, 0]
    assert block_map(np.zeros(0, U64), np.zeros(0, U64), 0, 2).tolist() == [0]
    assert block_map(np.zeros(0, U64), np.zeros(0, U64), 3, 2).tolist() == [0, 3, 4, 5]


def test_merged_components_come_after_unmerged_fragments() -> None:
    b0 = global_ids(np.array([1, 2, 3], np.uint32), 0)
    b2 = global_ids(np.array([1], np.uint32), 2)
    pairs = as_pairs([(b0[2], b2[0]), (b0[1], b0[1])])  # 3 joins block 2's 1; 2 self-pair
    table = build_table(pairs, np.array([3, 0, 1]))
    assert table.fragment_ids.tolist() == [b0[1], b0[2], b2[0]]
    assert table.segment_ids.tolist() == [2, 3, 3]  # after the one unmerged fragment (0:1)
    assert table.offsets.tolist() == [0, 1, 1] and table.num_segments == 3


def test_min_size_needs_sizes_and_small_counts() -> None:
    pairs = as_pairs([(int(global_ids(np.array([1], np.uint32), 0)[0]),
                       int(global_ids(np.array([1], np.uint32), 1)[0]))])
    with pytest.raises(ValueError, match="min_size needs"):
        build_table(pairs, np.array([1, 1]), min_size=2)
    with pytest.raises(ValueError, match="needs the block's fragment sizes"):
        block_map(np.zeros(0, U64), np.zeros(0, U64), 2, 0, min_size=2)
