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
from numba import njit
from numpy.typing import NDArray

from .fragments import LOCAL_BITS

__all__ = ["Residual", "TreeRecord", "agglomerate", "cut_labels", "empty_residual",
           "inside_extent", "reduce_task"]


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
    index = (ids // (gy * gx), ids // gx % gy, ids % gx)
    inside = (ids >= 0) & (ids < gz * gy * gx)
    for i, a, b in zip(index, lo, hi, strict=True):
        inside &= (i >= a) & (i < b)
    return inside


# ---- the compiled core ----------------------------------------------------------------

_EMPTY, _TOMB = -1, -2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True, inline="always")
def _slot(key: Any, shift: Any) -> Any:  # pragma: no cover - compiled
    return np.int64((np.uint64(key) * _GOLDEN) >> shift)


@njit(cache=True, nogil=True)
def _find_edge(keys: Any, vals: Any, key: Any, shift: Any) -> Any:  # pragma: no cover
    """Slot of ``key`` in the open-addressing table, or -1."""
    mask = keys.size - 1
    i = _slot(key, shift)
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == _EMPTY:
            return -1
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _insert_edge(keys: Any, vals: Any, key: Any, value: Any,
                 shift: Any) -> None:  # pragma: no cover - compiled
    """Insert a key known to be absent (into the first free or deleted slot)."""
    mask = keys.size - 1
    i = _slot(key, shift)
    while keys[i] != _EMPTY and keys[i] != _TOMB:
        i = (i + 1) & mask
    keys[i] = key
    vals[i] = value


@njit(cache=True, nogil=True, inline="always")
def _better(score: Any, tbu: Any, tbv: Any, i: int, j: int) -> Any:  # pragma: no cover
    """Heap entry i before j: higher score, then smaller (tbu, tbv)."""
    if score[i] != score[j]:
        return score[i] > score[j]
    if tbu[i] != tbu[j]:
        return tbu[i] < tbu[j]
    return tbv[i] < tbv[j]


@njit(cache=True, nogil=True, inline="always")
def _swap(hs: Any, hu: Any, hv: Any, he: Any, hver: Any, i: int,
          j: int) -> None:  # pragma: no cover - compiled
    hs[i], hs[j] = hs[j], hs[i]
    hu[i], hu[j] = hu[j], hu[i]
    hv[i], hv[j] = hv[j], hv[i]
    he[i], he[j] = he[j], he[i]
    hver[i], hver[j] = hver[j], hver[i]


@njit(cache=True, nogil=True)
def _sift_down(hs: Any, hu: Any, hv: Any, he: Any, hver: Any, j: int,
               size: int) -> None:  # pragma: no cover - compiled
    while True:
        c = 2 * j + 1
        if c >= size:
            return
        if c + 1 < size and _better(hs, hu, hv, c + 1, c):
            c += 1
        if not _better(hs, hu, hv, c, j):
            return
        _swap(hs, hu, hv, he, hver, j, c)
        j = c


@njit(cache=True, nogil=True)
def _sift_up(hs: Any, hu: Any, hv: Any, he: Any, hver: Any, i: int) -> None:  # pragma: no cover
    while i > 0:
        p = (i - 1) // 2
        if not _better(hs, hu, hv, i, p):
            return
        _swap(hs, hu, hv, he, hver, i, p)
        i = p


@njit(cache=True, nogil=True)
def _agglomerate(frozen: Any, eu: Any, ev: Any, esum: Any, ecount: Any, etbu: Any,
                 etbv: Any, scale: float, floor: float, voxels: Any,
                 min_size: int, size_threshold: float) -> Any:  # pragma: no cover - compiled
    n, m = frozen.size, eu.size
    end = np.empty(2 * m, np.int64)  # end[2e + s]: region at side s of edge e
    nxt = np.full(2 * m, -1, np.int64)  # per-region linked lists of (edge, side) nodes
    head = np.full(n, -1, np.int64)
    tail = np.full(n, -1, np.int64)
    deg = np.zeros(n, np.int64)
    cap = 16
    while cap < 4 * m:
        cap *= 2
    shift = np.uint64(64 - int(np.log2(cap)))
    keys = np.full(cap, _EMPTY, np.int64)
    vals = np.empty(cap, np.int64)
    for e in range(m):
        end[2 * e], end[2 * e + 1] = eu[e], ev[e]
        for node in (2 * e, 2 * e + 1):
            r = end[node]
            if head[r] < 0:
                head[r] = node
            else:
                nxt[tail[r]] = node
            tail[r] = node
            deg[r] += 1
        a, b = min(eu[e], ev[e]), max(eu[e], ev[e])
        _insert_edge(keys, vals, a * n + b, e, shift)
    # max-heap of (score, tbu, tbv) with edge index and version (lazy deletion)
    hs = np.empty(2 * m + 1, np.float64)
    hu = np.empty(2 * m + 1, np.uint64)
    hv = np.empty(2 * m + 1, np.uint64)
    he = np.empty(2 * m + 1, np.int64)
    hver = np.empty(2 * m + 1, np.int64)
    size = 0
    version = np.zeros(m, np.int64)
    alive = np.ones(m, np.bool_)
    parent = np.arange(n)
    rep = np.arange(n)
    ma = np.empty(max(n - 1, 0), np.int64)
    mb = np.empty(max(n - 1, 0), np.int64)
    ms = np.empty(max(n - 1, 0), np.float64)
    k = 0
    for e in range(m):
        hs[size], hu[size], hv[size] = esum[e] / (ecount[e] * scale), etbu[e], etbv[e]
        he[size], hver[size] = e, 0
        size += 1
    for i in range(size // 2 - 1, -1, -1):  # heapify
        _sift_down(hs, hu, hv, he, hver, i, size)
    while size > 0:
        e, ver, score = he[0], hver[0], hs[0]
        size -= 1  # pop: last entry to the root, sift down
        hs[0], hu[0], hv[0], he[0], hver[0] = hs[size], hu[size], hv[size], he[size], hver[size]
        _sift_down(hs, hu, hv, he, hver, 0, size)
        if not alive[e] or ver != version[e]:
            continue  # merged away or re-scored since pushed
        if score <= floor:
            break
        a, b = end[2 * e], end[2 * e + 1]
        if min_size and score <= size_threshold and voxels[a] >= min_size and \
                voxels[b] >= min_size:
            continue  # below the threshold two large regions never merge (sizes only grow)
        if frozen[a] and frozen[b]:
            continue
        if frozen[a] or frozen[b]:  # the best edge of the other leads to a frozen region
            frozen[a] = True
            frozen[b] = True
            continue
        ma[k], mb[k], ms[k] = rep[a], rep[b], score
        k += 1
        alive[e] = False
        slot = _find_edge(keys, vals, min(a, b) * n + max(a, b), shift)
        keys[slot] = _TOMB
        s, o = (a, b) if deg[a] >= deg[b] else (b, a)  # o's edges move to s
        deg[s] -= 1
        node = head[o]
        while node >= 0:
            ee = node >> 1
            if alive[ee]:
                other = end[node ^ 1]
                slot = _find_edge(keys, vals, min(o, other) * n + max(o, other), shift)
                keys[slot] = _TOMB
                slot = _find_edge(keys, vals, min(s, other) * n + max(s, other), shift)
                if slot >= 0:  # s already touches other: one contact, summed statistics
                    e2 = vals[slot]
                    esum[e2] += esum[ee]
                    ecount[e2] += ecount[ee]
                    if etbu[ee] < etbu[e2] or (etbu[ee] == etbu[e2] and etbv[ee] < etbv[e2]):
                        etbu[e2], etbv[e2] = etbu[ee], etbv[ee]
                    alive[ee] = False
                    deg[other] -= 1
                    version[e2] += 1
                    i = size  # push e2 with its new score, sift up
                    hs[i], hu[i], hv[i] = esum[e2] / (ecount[e2] * scale), etbu[e2], etbv[e2]
                    he[i], hver[i] = e2, version[e2]
                    size += 1
                    _sift_up(hs, hu, hv, he, hver, i)
                else:
                    end[node] = s
                    _insert_edge(keys, vals, min(s, other) * n + max(s, other), ee, shift)
                    deg[s] += 1
            node = nxt[node]
        if head[o] >= 0:
            if head[s] < 0:
                head[s] = head[o]
            else:
                nxt[tail[s]] = head[o]
            tail[s] = tail[o]
        head[o] = -1
        deg[o] = 0
        parent[o] = s
        rep[s] = min(rep[s], rep[o])
        voxels[s] += voxels[o]
    for i in range(n):  # every node's region root
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent, rep, frozen, alive, end, ma[:k], mb[:k], ms[:k], voxels


def agglomerate(ids: NDArray[np.uint64], frozen: NDArray[np.bool_], u: NDArray[np.int64],
                v: NDArray[np.int64], sums: NDArray[np.int64], counts: NDArray[np.int64],
                tbu: NDArray[np.uint64], tbv: NDArray[np.uint64], *, scale: float,
                floor: float = 0.0, sizes: NDArray[np.int64] | None = None,
                min_size: int = 0, size_threshold: float = np.inf
                ) -> tuple[NDArray[np.uint64], NDArray[np.bool_], TreeRecord, Residual,
                           NDArray[np.int64]]:
    """Greedy agglomeration of a graph whose ``frozen`` nodes never merge.

    Parameters
    ----------
    ids : (N,) sorted unique node ids (fragment ids or region representatives).
    frozen : (N,) nodes with a contact outside the graph (and outside nodes themselves).
    u, v : (M,) dense endpoints (indices into ``ids``) of the M distinct contacts.
    sums, counts, tbu, tbv : their statistics and tie-breaks (module docstring).
    scale : affinity units per 1.0 (255 for uint8).
    floor : only merges scoring above it are made (and recorded).
    sizes, min_size, size_threshold : the size pass: contacts scoring at or below
        ``size_threshold`` merge only where a region has fewer than ``min_size`` voxels
        (``sizes``: voxels per node, 0 where unknown). With ``floor`` below 0 this is the
        greedy agglomeration to ``size_threshold`` followed by every small region's merge
        into its best neighbour, in one order, so the tree reduction stays exact.

    Returns
    -------
    rep : (N,) the representative (smallest id) of each node's region.
    frozen : (N,) whether each node's region ended frozen (outside nodes included).
    record : the merges made (``up`` empty: the caller knows what it passes up).
    residual : the edges between frozen regions, endpoints as representatives (no rows).
    voxels : (N,) the size of each node's region (with ``sizes``).
    """
    sums, counts = sums.astype(np.int64), counts.astype(np.int64)  # copies: summed in place
    tbu, tbv = tbu.astype(np.uint64), tbv.astype(np.uint64)
    voxels = np.zeros(ids.size, np.int64) if sizes is None else sizes.astype(np.int64)
    if u.size == 0:
        none = np.zeros(0, np.uint64)
        return (ids.copy(), frozen.copy(), TreeRecord(none, none, np.zeros(0), none),
                empty_residual(), voxels)
    parent, rep, fz, alive, end, ma, mb, ms, voxels = _agglomerate(
        frozen.copy(), u.astype(np.int64), v.astype(np.int64), sums, counts, tbu, tbv,
        float(scale), float(floor), voxels, int(min_size), float(size_threshold))
    region = rep[parent]
    ends = end.reshape(-1, 2)
    keep = alive & fz[ends[:, 0]] & fz[ends[:, 1]]
    a, b = ids[rep[ends[keep, 0]]], ids[rep[ends[keep, 1]]]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    none = np.zeros(0, np.uint64)
    residual = Residual(lo, hi, sums[keep], counts[keep], tbu[keep], tbv[keep], none, none,
                        np.zeros(0, np.int64))
    return (ids[region], fz[parent], TreeRecord(ids[ma], ids[mb], ms, none), residual,
            voxels[parent])


def _combine(children: Sequence[Residual]) -> Residual:
    """The children's residuals as one, every endpoint mapped to its region's current
    representative and duplicate contacts summed (tie-break: the smallest)."""
    cat = [np.concatenate([np.zeros(0, f.dtype), *(c[i] for c in children)])
           for i, f in enumerate(empty_residual())]
    u, v, sums, counts, tbu, tbv, frag, rep, nbr, size_id, size = cat
    order = np.argsort(frag, kind="stable")
    frag, rep, nbr = frag[order], rep[order], nbr[order]
    u, v = _map(u, frag, rep), _map(v, frag, rep)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    if np.any(lo == hi):
        raise ValueError("a contact joins a region to itself: inconsistent residuals")
    order = np.lexsort((tbv, tbu, hi, lo))
    lo, hi, sums, counts, tbu, tbv = (x[order] for x in (lo, hi, sums, counts, tbu, tbv))
    first = np.ones(lo.size, bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    starts = np.flatnonzero(first)
    if starts.size:
        sums, counts = np.add.reduceat(sums, starts), np.add.reduceat(counts, starts)
    return Residual(lo[first], hi[first], sums, counts, tbu[first], tbv[first], frag, rep, nbr,
                    size_id, size)


def _map(x: NDArray[np.uint64], keys: NDArray[np.uint64], values: NDArray[np.uint64]
         ) -> NDArray[np.uint64]:
    """``values`` at ``x``'s place in the sorted ``keys``; ``x`` itself where absent."""
    if not keys.size:
        return x
    i = np.minimum(np.searchsorted(keys, x), keys.size - 1)
    return np.where(keys[i] == x, values[i], x)


def reduce_task(children: Sequence[Residual], grid_shape: Sequence[int], lo: Sequence[int],
                hi: Sequence[int], *, scale: float, floor: float = 0.0, min_size: int = 0,
                size_threshold: float = np.inf) -> tuple[Residual, TreeRecord]:
    """One task of the tree reduction over the block box ``[lo, hi)``.

    ``children`` are the residuals of the task's parts (a leaf task: the block's own edge
    table, with rows ``(fragment, fragment, neighbour block)`` for every fragment on a face
    to another block, and for a size pass the fragments' sizes). Returns the task's
    residual and its part of the merge tree. ``min_size``, ``size_threshold``: the size
    pass of :func:`agglomerate`.
    """
    c = _combine(children)
    exposed = ~inside_extent(c.row_neighbor, grid_shape, lo, hi)
    ids = np.unique(np.concatenate([c.u, c.v, c.row_rep]))
    inside = inside_extent((ids >> np.uint64(LOCAL_BITS)).astype(np.int64), grid_shape, lo,
                           hi)
    frozen = ~inside
    frozen[np.searchsorted(ids, c.row_rep[exposed])] = True
    sizes = None
    if min_size:
        order = np.argsort(c.size_id, kind="stable")
        sizes = _map(ids, c.size_id[order], c.size[order].view(np.uint64)).view(np.int64)
        sizes = np.where(np.isin(ids, c.size_id), sizes, 0)  # 0: unknown (outside)
    rep, fz, record, residual, voxels = agglomerate(
        ids, frozen, np.searchsorted(ids, c.u), np.searchsorted(ids, c.v), c.sums, c.counts,
        c.tbu, c.tbv, scale=scale, floor=floor, sizes=sizes, min_size=min_size,
        size_threshold=size_threshold)
    rows_rep = rep[np.searchsorted(ids, c.row_rep[exposed])]
    up_mask = fz & inside
    up, first = np.unique(rep[up_mask], return_index=True)
    residual = residual._replace(row_fragment=c.row_fragment[exposed], row_rep=rows_rep,
                                 row_neighbor=c.row_neighbor[exposed])
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
    from .merge import components

    dense = np.searchsorted(nodes, np.stack([a, b]))
    label = nodes.copy()
    if a.size:
        _, comp = components(np.concatenate([dense, np.stack([np.arange(nodes.size)] * 2)],
                                            axis=1).astype(np.uint64))
        smallest = np.full(int(comp.max()) + 1, np.iinfo(np.uint64).max, np.uint64)
        np.minimum.at(smallest, comp, nodes)
        label = smallest[comp]
    else:
        comp = np.arange(nodes.size)
    if up_ids.size:
        where = np.searchsorted(nodes, up_ids)
        by_comp = np.full(label.size, -1, np.int64)
        by_comp[comp[where]] = np.arange(up_ids.size)
        hit = by_comp[comp] >= 0
        label = np.where(hit, up_labels[np.maximum(by_comp[comp], 0)], label)
    return label[np.searchsorted(nodes, queries)]
