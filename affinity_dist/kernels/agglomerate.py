"""Greedy mean-affinity agglomeration of one task of the tree reduction (pure numpy/numba).

The region graph's edges carry exact statistics: ``sum`` (integer sum of the affinities in
native units: 0-255 for uint8) and ``count`` (voxel pairs), so the mean affinity of a
contact, ``score = sum / (count * scale)``, is the same float64 however its parts were
added. Ties are broken by ``tb``: the smallest (u, v) fragment pair of the original edges
that make up the contact. Edges are ordered by (score descending, tb ascending); that
order is strict, and it is *reducible*: merging regions A and B gives every neighbour C a
contact with A u B that is no better than the better of its contacts with A and B (the
mean of the union lies between the means; rounding is monotone; tb is the smaller tb).

Greedy agglomeration (merge the best edge, recompute, repeat while the score is above
``floor``) therefore has one result however it is reached: merging any *mutual best*
pair (an edge that is the best of both its regions) is a step of it. A task of the tree
reduction sees only the regions of its extent. A region with a contact outside the
extent is **frozen**: its best edge may be unknown, so it never merges here. A region
whose best edge leads to a frozen region is frozen too (its fate waits on that region).
Every merge a task makes is thus a mutual-best merge of the whole volume's graph, and the
root, whose extent is the volume, finishes the greedy agglomeration exactly.

Merge scores never increase along the greedy order, so the *merge tree* (every merge with
its score) cut at any threshold T >= floor — a union-find over the merges scoring above
T — is the greedy agglomeration stopped at T.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .fragments import LOCAL_BITS
from .greedy import greedy
from .merge import _union_find

__all__ = ["Residual", "TreeRecord", "agglomerate", "concat_fields", "cut_labels",
           "empty_residual", "index_dtype", "inside_extent", "reduce_task", "useful_rows"]


class Residual(NamedTuple):
    """What a task passes up: the frozen regions' edges and the exposed fragments.

    Edge endpoints inside the task's extent are region representatives (the smallest
    fragment id of the region); endpoints outside it are raw fragment ids. ``rows`` list
    every fragment on a block face whose neighbouring block lies outside the extent:
    (fragment id, its region's representative, that neighbouring block).
    """

    u: NDArray[np.uint64]
    v: NDArray[np.uint64]
    sums: NDArray[np.int64]
    counts: NDArray[np.int64]
    tbu: NDArray[np.uint64]
    tbv: NDArray[np.uint64]
    row_fragment: NDArray[np.uint64]
    row_rep: NDArray[np.uint64]
    row_neighbor: NDArray[np.int64]
    size_id: NDArray[np.uint64] = np.zeros(0, np.uint64)  # with a size pass: voxels per
    size: NDArray[np.int64] = np.zeros(0, np.int64)  # node (a leaf) or frozen region

    @property
    def num_edges(self) -> int:
        return int(self.u.size)


class TreeRecord(NamedTuple):
    """A task's part of the merge tree: merges ``(a, b, score)`` of representatives, in
    the order made, and ``up``, the sorted representatives of the regions passed up."""

    a: NDArray[np.uint64]
    b: NDArray[np.uint64]
    score: NDArray[np.float64]
    up: NDArray[np.uint64]


def empty_residual() -> Residual:
    z64, zi = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return Residual(z64, z64, zi, zi, z64, z64, z64, z64, zi, z64, zi)


def inside_extent(block_ids: NDArray[np.integer[Any]], grid_shape: Sequence[int],
                  lo: Sequence[int], hi: Sequence[int]) -> NDArray[np.bool_]:
    """Whether each block (C-order id over ``grid_shape``) lies in the box ``[lo, hi)`` of
    block indices."""
    ids = np.asarray(block_ids, np.int64)
    gz, gy, gx = (int(g) for g in grid_shape)
    inside = (ids >= 0) & (ids < gz * gy * gx)
    for stride, g, a, b in zip((gy * gx, gx, 1), (gz, gy, gx), lo, hi, strict=True):
        if a > 0 or b < g:  # one index array at a time; none where the box spans the axis
            i = ids // stride % g
            inside &= (i >= a) & (i < b)
    return inside


def agglomerate(ids: NDArray[np.uint64], frozen: NDArray[np.bool_], end: NDArray[np.integer[Any]],
                sums: NDArray[np.int64], counts: NDArray[np.int64], tbu: NDArray[np.uint64],
                tbv: NDArray[np.uint64], *, scale: float, floor: float = 0.0,
                sizes: NDArray[np.int64] | None = None, min_size: int = 0,
                size_threshold: float = np.inf
                ) -> tuple[NDArray[np.uint64], NDArray[np.bool_], TreeRecord, Residual,
                           NDArray[np.int64]]:
    """Greedy agglomeration of a graph whose ``frozen`` nodes never merge.

    Parameters
    ----------
    ids : (N,) sorted unique node ids (fragment ids or region representatives).
    frozen : (N,) nodes with a contact outside the graph (and outside nodes themselves).
    end : (2M,) the dense endpoints (indices into ``ids``) of the M distinct contacts,
        contact e joining ``end[2e]`` and ``end[2e + 1]``; int32 where N and 2M allow
        (:func:`index_dtype`).
    sums, counts, tbu, tbv : their statistics and tie-breaks (module docstring).
    scale : affinity units per 1.0 (255 for uint8).
    floor : only merges scoring above it are made (and recorded).
    sizes, min_size, size_threshold : the size pass: contacts scoring at or below
        ``size_threshold`` merge only where a region has fewer than ``min_size`` voxels
        (``sizes``: voxels per node, 0 where unknown). With ``floor`` below 0 this is the
        greedy agglomeration to ``size_threshold`` followed by every small region's merge
        into its best neighbour, in one order, so the tree reduction stays exact.

    ``end``, ``sums`` and ``counts`` are the caller's and are overwritten (the root of a
    large volume holds ~10^7 contacts: no copies); ``frozen`` and ``sizes`` are not.

    Returns
    -------
    rep : (N,) the representative (smallest id) of each node's region.
    frozen : (N,) whether each node's region ended frozen (outside nodes included).
    record : the merges made (``up`` empty: the caller knows what it passes up).
    residual : the edges between frozen regions, endpoints as representatives (no rows).
    voxels : (N,) the size of each node's region (with ``sizes``; else empty).
    """
    none = np.zeros(0, np.uint64)
    if end.size == 0:
        voxels = np.zeros(0, np.int64) if sizes is None else sizes.astype(np.int64)
        return (ids.copy(), frozen.copy(), TreeRecord(none, none, np.zeros(0), none),
                empty_residual(), voxels)
    voxels = np.zeros(1, np.int64) if sizes is None else sizes.astype(np.int64)
    parent, rep, fz, alive, ma, mb, ms = greedy(
        frozen.copy(), end, sums, counts, tbu, tbv, float(scale), float(floor), voxels,
        int(min_size), float(size_threshold))
    ends = end.reshape(-1, 2)
    keep = alive & fz[ends[:, 0]] & fz[ends[:, 1]]
    a, b = ids[rep[ends[keep, 0]]], ids[rep[ends[keep, 1]]]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    del a, b
    residual = Residual(lo, hi, sums[keep], counts[keep], tbu[keep], tbv[keep], none, none,
                        np.zeros(0, np.int64))
    del keep, ends, alive
    record = TreeRecord(ids[ma], ids[mb], ms, none)
    rep = rep[parent]
    return (ids[rep], fz[parent], record, residual,
            voxels[parent] if sizes is not None else np.zeros(0, np.int64))


def index_dtype(nodes: int, edges: int) -> type[np.integer[Any]]:
    """int32 for the greedy kernel's indices where they fit (node and edge-side indices
    below 2^31), else int64."""
    return np.int32 if max(nodes, 2 * edges) < np.iinfo(np.int32).max else np.int64


def useful_rows(rows: tuple[NDArray[np.uint64], NDArray[np.uint64], NDArray[np.int64]],
                grid_shape: Sequence[int], lo: Sequence[int], hi: Sequence[int]
                ) -> NDArray[np.bool_]:
    """Which face rows ``(fragment, representative, neighbouring block)`` a task over the
    block box ``[lo, hi)`` needs: those that map a fragment to another representative
    and those that expose a region (its neighbour lies outside the box). A row of a
    fragment that is its own representative, facing a block inside the box, says
    nothing the task's edges do not."""
    fragment, rep, neighbor = rows
    useful: NDArray[np.bool_] = (fragment != rep) | ~inside_extent(neighbor, grid_shape, lo,
                                                                     hi)
    return useful


def concat_fields(children: list[Any], empty: Sequence[NDArray[Any]]) -> list[NDArray[Any]]:
    """The children's fields (tuples shaped as ``empty``) concatenated field by field in
    ``empty``'s dtypes, the list emptied and each field let go once copied: a large task
    (a tree's root) never holds its input twice."""
    parts: list[list[Any]] = [list(c) for c in children]
    children.clear()
    out = []
    for i, first in enumerate(empty):
        out.append(np.concatenate([first, *(np.asarray(p[i], first.dtype) for p in parts)]))
        for p in parts:
            p[i] = None
    return out


def _combine(children: list[Residual]) -> Residual:
    """The children's residuals as one (the list emptied: :func:`concat_fields`), every
    endpoint mapped to its region's current representative and duplicate contacts
    summed (tie-break: the smallest)."""
    u, v, sums, counts, tbu, tbv, frag, rep, nbr, size_id, size = concat_fields(
        children, empty_residual())
    order = np.argsort(frag, kind="stable")
    frag, rep, nbr = frag[order], rep[order], nbr[order]
    u, v = _map(u, frag, rep), _map(v, frag, rep)
    lo_, hi_ = np.minimum(u, v), np.maximum(u, v)
    del u, v
    if np.any(lo_ == hi_):
        raise ValueError("a contact joins a region to itself: inconsistent residuals")
    order = np.lexsort((tbv, tbu, hi_, lo_))
    lo_, hi_, sums, counts, tbu, tbv = (x[order] for x in (lo_, hi_, sums, counts, tbu, tbv))
    del order
    first = np.ones(lo_.size, bool)
    first[1:] = (lo_[1:] != lo_[:-1]) | (hi_[1:] != hi_[:-1])
    if not first.all():
        starts = np.flatnonzero(first)
        sums, counts = np.add.reduceat(sums, starts), np.add.reduceat(counts, starts)
        lo_, hi_, tbu, tbv = lo_[first], hi_[first], tbu[first], tbv[first]
    return Residual(lo_, hi_, sums, counts, tbu, tbv, frag, rep, nbr, size_id, size)


def _map(x: NDArray[np.uint64], keys: NDArray[np.uint64], values: NDArray[np.uint64]
         ) -> NDArray[np.uint64]:
    """``values`` at ``x``'s place in the sorted ``keys``; ``x`` itself where absent."""
    if not keys.size:
        return x
    i = np.minimum(np.searchsorted(keys, x), keys.size - 1)
    return np.where(keys[i] == x, values[i], x)


def _inside_ids(ids: NDArray[np.uint64], grid_shape: Sequence[int], lo: Sequence[int],
                hi: Sequence[int]) -> NDArray[np.bool_]:
    """Whether each of the sorted ``ids`` lies in a block of the box (one test per
    block, not per id: a root holds ~10^7 ids in ~10^4 blocks)."""
    blocks = ids >> np.uint64(LOCAL_BITS)
    first = np.ones(blocks.size, bool)
    first[1:] = blocks[1:] != blocks[:-1]
    starts = np.flatnonzero(first)
    del first
    inside = inside_extent(blocks[starts].astype(np.int64), grid_shape, lo, hi)
    return np.repeat(inside, np.diff(np.append(starts, blocks.size)))


def reduce_task(children: list[Residual], grid_shape: Sequence[int], lo: Sequence[int],
                hi: Sequence[int], *, scale: float, floor: float = 0.0, min_size: int = 0,
                size_threshold: float = np.inf,
                parent: tuple[Sequence[int], Sequence[int]] | None = None
                ) -> tuple[Residual, TreeRecord]:
    """One task of the tree reduction over the block box ``[lo, hi)``.

    ``children`` are the residuals of the task's parts (a leaf task: the block's own edge
    table, with rows ``(fragment, fragment, neighbour block)`` for every fragment on a face
    to another block, and for a size pass the fragments' sizes); the list is emptied as
    they are combined (its residuals are not changed). Returns the task's residual and
    its part of the merge tree. ``min_size``, ``size_threshold``: the size pass of
    :func:`agglomerate`. ``parent``: the box of the task above; the rows it does not
    need (:func:`useful_rows`) are left out of the residual.
    """
    c = _combine(children)
    exposed = ~inside_extent(c.row_neighbor, grid_shape, lo, hi)
    ids = np.unique(np.concatenate([c.u, c.v, c.row_rep]))
    inside = _inside_ids(ids, grid_shape, lo, hi)
    frozen = ~inside
    frozen[np.searchsorted(ids, c.row_rep[exposed])] = True
    sizes = None
    if min_size:  # voxels per node; 0 where unknown (outside nodes)
        sizes = np.zeros(ids.size, np.int64)
        at = np.minimum(np.searchsorted(ids, c.size_id), max(ids.size - 1, 0))
        known = ids[at] == c.size_id if ids.size else np.zeros(0, bool)
        sizes[at[known]] = c.size[known]
    end = np.empty(2 * c.u.size, index_dtype(ids.size, c.u.size))
    end[0::2] = np.searchsorted(ids, c.u)
    end[1::2] = np.searchsorted(ids, c.v)
    rows = (c.row_fragment[exposed], c.row_rep[exposed], c.row_neighbor[exposed])
    sums, counts, tbu, tbv = c.sums, c.counts, c.tbu, c.tbv
    del c, exposed
    rep, fz, record, residual, voxels = agglomerate(
        ids, frozen, end, sums, counts, tbu, tbv, scale=scale, floor=floor, sizes=sizes,
        min_size=min_size, size_threshold=size_threshold)
    del end, sums, counts, tbu, tbv
    rows = (rows[0], rep[np.searchsorted(ids, rows[1])], rows[2])
    if parent is not None:
        keep = useful_rows(rows, grid_shape, *parent)
        rows = (rows[0][keep], rows[1][keep], rows[2][keep])
    up_mask = fz & inside
    up, first = np.unique(rep[up_mask], return_index=True)
    residual = residual._replace(row_fragment=rows[0], row_rep=rows[1], row_neighbor=rows[2])
    if min_size:
        residual = residual._replace(size_id=up, size=voxels[up_mask][first])
    return residual, record._replace(up=up)


def cut_labels(record: TreeRecord, threshold: float, up_ids: NDArray[np.uint64],
               up_labels: NDArray[np.uint64], queries: NDArray[np.uint64]
               ) -> NDArray[np.uint64]:
    """The segment of each of ``queries`` (nodes of the task) when the merge tree is cut at
    ``threshold``: a union-find over the task's merges scoring above it; a set holding a
    region the task passed up takes that region's segment (``up_ids`` -> ``up_labels``, from
    the parent's cut), any other set its smallest node. The segment id is thus the
    smallest fragment id of the segment, whatever the tree's shape."""
    keep = record.score > threshold
    a, b = record.a[keep], record.b[keep]
    nodes = np.unique(np.concatenate([a, b, queries, up_ids]))
    comp = _union_find(np.searchsorted(nodes, a), np.searchsorted(nodes, b), nodes.size)
    first = np.zeros(comp.max() + 1 if comp.size else 0, np.int64)
    first[comp[::-1]] = np.arange(comp.size)[::-1]  # each component's smallest node
    label: NDArray[np.uint64] = nodes[first[comp]]
    if up_ids.size:
        where = np.searchsorted(nodes, up_ids)
        by_comp = np.full(label.size, -1, np.int64)
        by_comp[comp[where]] = np.arange(up_ids.size)
        hit = by_comp[comp] >= 0
        label = np.where(hit, up_labels[np.maximum(by_comp[comp], 0)], label)
    return label[np.searchsorted(nodes, queries)]
