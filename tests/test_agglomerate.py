"""Agglomeration kernels against whole-volume oracles: the region graph against plain
numpy, the tree reduction (any block shape, any fan-out) against one global priority
queue, the reference against waterz."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity_dist.geometry import BlockGrid, ReductionTree
from affinity_dist.kernels.agglomerate import Residual, TreeRecord, cut_labels, reduce_task
from affinity_dist.kernels.fragments import LOCAL_BITS
from affinity_dist.kernels.graph import block_edges, face_fragments

from .helpers import greedy_reference, same_partition, volume_contacts


def blockwise_ids(labels: np.ndarray, block: tuple[int, ...]) -> tuple[np.ndarray, BlockGrid]:
    """A labelling cut at the block faces, with global ids (block id in the high bits)."""
    grid = BlockGrid(labels.shape, block)
    out = np.zeros(labels.shape, np.uint64)
    for b in grid:
        s = grid.write_box(b).slices
        _, local = np.unique(labels[s], return_inverse=True)
        out[s] = (local.reshape(labels[s].shape) + 1).astype(np.uint64) | np.uint64(
            b << LOCAL_BITS)
    return out, grid


def leaf(fragments: np.ndarray, affs: np.ndarray, grid: BlockGrid, b: int) -> Residual:
    """A block's own edge table, face rows and fragment sizes, as a leaf of the reduction."""
    box = grid.write_box(b)
    below = []
    for axis in range(3):
        if box.start[axis] == 0:
            below.append(None)
        else:
            s = list(box.slices)
            s[axis] = box.start[axis] - 1
            below.append(fragments[tuple(s)])
    u, v, sums, counts = block_edges(fragments[box.slices],
                                     affs[(slice(None), *box.slices)], below)
    block = fragments[box.slices]
    planes = [np.take(block, i, axis=a) for a in range(3) for i in (0, -1)]
    rf, rn = face_fragments(planes, grid.neighbors(b))
    ids, sizes = np.unique(block, return_counts=True)
    return Residual(u, v, sums, counts, u.copy(), v.copy(), rf, rf.copy(), rn,
                    ids.astype(np.uint64), sizes.astype(np.int64))


def tree_segment(fragments: np.ndarray, affs: np.ndarray, grid: BlockGrid,
                 fanout: tuple[int, int, int], thresholds: list[float], *, scale: float,
                 floor: float = 0.0, min_size: int = 0, size_threshold: float = np.inf
                 ) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """The tree reduction in memory, then the top-down cut at each threshold."""
    tree = ReductionTree(grid.grid_shape, fanout)
    residuals = [leaf(fragments, affs, grid, b) for b in grid]
    records: list[list[TreeRecord]] = []
    sizes = []
    for level in range(tree.num_levels):
        out, recs = [], []
        for t in range(tree.num_tasks(level)):
            parts = [residuals[t]] if level == 0 else [residuals[c] for c in
                                                      tree.children(level, t)]
            res, rec = reduce_task(parts, grid.grid_shape, *tree.extent(level, t),
                                   scale=scale, floor=floor, min_size=min_size,
                                   size_threshold=size_threshold,
                                   parent=tree.parent_extent(level, t))
            out.append(res)
            recs.append(rec)
        sizes.append({"regions": max(r.up.size for r in recs),
                      "edges": max(r.num_edges for r in out)})
        residuals = out
        records.append(recs)
    assert records[-1][0].up.size == 0 and residuals[0].num_edges == 0  # the root finishes
    segs = []
    for t in thresholds:
        labels = {0: (np.zeros(0, np.uint64), np.zeros(0, np.uint64))}  # task -> (ids, labels)
        for level in range(tree.num_levels - 1, -1, -1):
            below: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for task, rec in enumerate(records[level]):
                up_ids, up_labels = labels[task]
                if level == 0:
                    ids = np.unique(fragments[grid.write_box(task).slices])
                    below[task] = (ids, cut_labels(rec, t, up_ids, up_labels, ids))
                    continue
                kids = tree.children(level, task)
                queries = np.concatenate([records[level - 1][k].up for k in kids])
                got = cut_labels(rec, t, up_ids, up_labels, queries)
                start = 0
                for k in kids:
                    n = records[level - 1][k].up.size
                    below[k] = (queries[start:start + n], got[start:start + n])
                    start += n
            labels = below
        seg = np.zeros(fragments.shape, np.uint64)
        for b in grid:
            s = grid.write_box(b).slices
            ids, lab = labels[b]
            seg[s] = lab[np.searchsorted(ids, fragments[s])]
        segs.append(seg)
    return segs, sizes


def reference_segment(fragments: np.ndarray, affs: np.ndarray, threshold: float,
                      scale: float, **size: Any) -> np.ndarray:
    u, v, sums, counts = volume_contacts(fragments, affs)
    ids, voxels = np.unique(fragments, return_counts=True)
    labels, _ = greedy_reference(u, v, sums, counts, scale, threshold,
                                 sizes=dict(zip(ids.tolist(), voxels.tolist(), strict=True)),
                                 **size)
    keys = np.array(sorted(labels), np.uint64)
    values = np.array([labels[k] for k in sorted(labels)], np.uint64)
    return np.where(np.isin(fragments, keys),
                    values[np.minimum(np.searchsorted(keys, fragments), max(keys.size - 1, 0))]
                    if keys.size else fragments, fragments)


def random_case(seed: int, shape: tuple[int, int, int], fragments_per_axis: int = 3
                ) -> tuple[np.ndarray, np.ndarray]:
    """Random fragments (blobs of a coarse grid, jittered) and uint8 affinities that are
    high inside a few hidden segments and low between them."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 1 << 20, [max(1, n // fragments_per_axis) for n in shape])
    idx = [np.minimum((np.arange(n) + rng.integers(0, 2, n)) // fragments_per_axis,
                      c - 1) for n, c in zip(shape, coarse.shape, strict=True)]
    labels = coarse[np.ix_(*idx)]
    hidden = rng.integers(0, 4, coarse.shape)[np.ix_(*idx)]
    affs = rng.integers(0, 120, (3, *shape)).astype(np.uint8)
    for c, off in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
        here = tuple(slice(o, None) for o in off)
        there = tuple(slice(0, n - o) for o, n in zip(off, shape, strict=True))
        same = hidden[here] == hidden[there]
        affs[c][here][same] = rng.integers(100, 256, int(same.sum()))
    return labels, affs


THRESHOLDS = [0.0, 0.2, 0.35, 0.5, 0.62, 0.8]


@pytest.mark.parametrize("block", [(7, 5, 6), (1, 4, 13), (4, 4, 4), (13, 13, 13)])
@pytest.mark.parametrize("fanout", [(2, 2, 2), (3, 2, 4)])
def test_tree_reduction_equals_one_global_queue(block: tuple[int, int, int],
                                                fanout: tuple[int, int, int]) -> None:
    labels, affs = random_case(0, (13, 11, 12))
    fragments, grid = blockwise_ids(labels, block)
    segs, _ = tree_segment(fragments, affs, grid, fanout, THRESHOLDS, scale=255)
    for t, seg in zip(THRESHOLDS, segs, strict=True):
        ref = reference_segment(fragments, affs, t, 255)
        assert np.array_equal(seg, ref), (block, fanout, t)  # same ids too: smallest fragment


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), bz=st.integers(1, 6), by=st.integers(1, 6),
       bx=st.integers(1, 6), f=st.integers(2, 3), ties=st.booleans())
def test_tree_reduction_on_random_affinities(seed: int, bz: int, by: int, bx: int, f: int,
                                             ties: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 10, 3))
    labels, affs = random_case(seed, shape, fragments_per_axis=int(rng.integers(1, 4)))
    if ties:  # few distinct values: many equal means, the tie order decides
        affs = (affs // 128 * 255).astype(np.uint8)
    fragments, grid = blockwise_ids(labels, (bz, by, bx))
    segs, _ = tree_segment(fragments, affs, grid, (f, f, f), [0.0, 0.3, 0.6], scale=255)
    for t, seg in zip([0.0, 0.3, 0.6], segs, strict=True):
        assert np.array_equal(seg, reference_segment(fragments, affs, t, 255))


def test_segmentations_are_nested_over_thresholds() -> None:
    labels, affs = random_case(1, (12, 12, 12))
    fragments, grid = blockwise_ids(labels, (5, 5, 5))
    thresholds = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]
    segs, _ = tree_segment(fragments, affs, grid, (2, 2, 2), thresholds, scale=255)
    for coarse, fine in itertools.pairwise(segs):
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1]  # each fine segment in one coarse
    assert len(np.unique(segs[0])) < len(np.unique(segs[-1]))


def test_floor_leaves_merges_below_it_out() -> None:
    labels, affs = random_case(2, (10, 10, 10))
    fragments, grid = blockwise_ids(labels, (4, 4, 4))
    segs, _ = tree_segment(fragments, affs, grid, (2, 2, 2), [0.5, 0.7], scale=255,
                           floor=0.5)
    for t, seg in zip([0.5, 0.7], segs, strict=True):
        assert np.array_equal(seg, reference_segment(fragments, affs, t, 255))


def test_block_edges_equal_the_whole_volume_contacts() -> None:
    labels, affs = random_case(3, (11, 9, 10))
    fragments, grid = blockwise_ids(labels, (4, 3, 5))
    tables = [leaf(fragments, affs, grid, b) for b in grid]
    u = np.concatenate([t.u for t in tables])
    v = np.concatenate([t.v for t in tables])
    order = np.lexsort((v, u))
    want = volume_contacts(fragments, affs)
    got = (u[order], v[order], np.concatenate([t.sums for t in tables])[order],
           np.concatenate([t.counts for t in tables])[order])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)  # every contact owned by exactly one block


def test_reference_agrees_with_waterz() -> None:
    waterz = pytest.importorskip("waterz")
    rng = np.random.default_rng(5)
    labels, affs8 = random_case(5, (10, 24, 24), fragments_per_axis=4)
    fragments = (np.unique(labels, return_inverse=True)[1].reshape(labels.shape) + 1)
    fragments = fragments.astype(np.uint64)
    q = affs8.astype(np.int64) * 256 + rng.integers(0, 256, affs8.shape)  # 16 bits
    affs = (q / 65536.0).astype(np.float32)  # exact in float32 and in fixed point
    u, v, sums, counts = volume_contacts(fragments, np.rint(affs.astype(np.float64) * 2**24)
                                         .astype(np.int64))
    means = sums / counts
    assert np.unique(means).size == means.size  # no ties among the contacts: one order
    for t in (0.3, 0.5, 0.7):
        labels_ref, _ = greedy_reference(u, v, sums, counts, 2**24, t)
        ref = np.array([labels_ref.get(int(f), int(f)) for f in fragments.ravel()],
                       np.uint64).reshape(fragments.shape)
        got = next(waterz.agglomerate(
            affs, [1 - t], fragments=fragments.astype(np.uint64).copy(),
            scoring_function="OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
            discretize_queue=0))
        assert same_partition(got.astype(np.uint64), ref), t


@pytest.mark.parametrize("block", [(7, 5, 6), (1, 4, 13), (13, 13, 13)])
@pytest.mark.parametrize("min_size", [3, 20, 200])
def test_size_pass_equals_one_global_queue(block: tuple[int, int, int], min_size: int) -> None:
    """Agglomeration to T, then every region under min_size merged into its best
    neighbour (whatever the score): blockwise equals the global queue, and every region
    left small has no contact at all."""
    labels, affs = random_case(6, (13, 11, 12), fragments_per_axis=2)
    fragments, grid = blockwise_ids(labels, block)
    for t in (0.3, 0.6):
        segs, _ = tree_segment(fragments, affs, grid, (2, 2, 2), [-1.0], scale=255,
                               floor=-1.0, min_size=min_size, size_threshold=t)
        ref = reference_segment(fragments, affs, -1.0, 255, min_size=min_size,
                                size_threshold=t)
        assert np.array_equal(segs[0], ref), (block, min_size, t)
        ids, sizes = np.unique(segs[0], return_counts=True)
        assert sizes.min() >= min_size or len(ids) == 1
        plain = reference_segment(fragments, affs, t, 255)
        assert len(ids) <= len(np.unique(plain))  # coarser than the cut at t


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), bz=st.integers(1, 6), by=st.integers(1, 6),
       bx=st.integers(1, 6), min_size=st.integers(1, 60), ties=st.booleans())
def test_size_pass_on_random_affinities(seed: int, bz: int, by: int, bx: int, min_size: int,
                                        ties: bool) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 10, 3))
    labels, affs = random_case(seed, shape, fragments_per_axis=int(rng.integers(1, 4)))
    if ties:
        affs = (affs // 128 * 255).astype(np.uint8)
    fragments, grid = blockwise_ids(labels, (bz, by, bx))
    segs, _ = tree_segment(fragments, affs, grid, (2, 2, 2), [-1.0], scale=255, floor=-1.0,
                           min_size=min_size, size_threshold=0.5)
    assert np.array_equal(segs[0], reference_segment(fragments, affs, -1.0, 255,
                                                     min_size=min_size, size_threshold=0.5))
