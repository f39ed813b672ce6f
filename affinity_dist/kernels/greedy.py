"""The compiled core of :mod:`.agglomerate`: greedy mean-affinity merging of one graph.

Built to hold a tree root's graph in few bytes per edge (the root of a 10^9-fragment
volume holds ~10^7 edges): indices are int32 where the graph allows (the caller picks the
dtype of ``end``), every region keeps its contacts in a circular list of (edge, side)
nodes, an open-addressing table of edge indices (the key, a region pair, is read from the
edges' endpoints) finds the contact between two regions, and a max-heap of (score, edge)
with lazy deletion orders the merges. Of two contacts that become one when their regions
merge, the one with the smaller tie-break survives with the summed statistics, so an
edge's tie-break never changes and the heap reads it from the edge. Frozen regions never
merge; a region whose best edge leads to a frozen one becomes frozen. The rules and why
they give the whole volume's result are in :mod:`.agglomerate`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

__all__ = ["greedy"]

_EMPTY, _TOMB = -1, -2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True, inline="always")
def _slot(a: Any, b: Any, n: Any, shift: Any) -> Any:  # pragma: no cover - compiled
    key = np.uint64(np.int64(min(a, b)) * n + np.int64(max(a, b)))
    return np.int64((key * _GOLDEN) >> shift)


@njit(cache=True, nogil=True)
def _find(table: Any, end: Any, a: Any, b: Any, n: Any,
          shift: Any) -> Any:  # pragma: no cover - compiled
    """Slot of the contact between regions ``a`` and ``b``, or -1."""
    mask = table.size - 1
    i = _slot(a, b, n, shift)
    while True:
        e = table[i]
        if e == _EMPTY:
            return -1
        if e != _TOMB:
            x, y = end[2 * e], end[2 * e + 1]
            if (x == a and y == b) or (x == b and y == a):
                return i
        i = (i + 1) & mask


@njit(cache=True, nogil=True)
def _insert(table: Any, end: Any, e: Any, n: Any, shift: Any) -> Any:  # pragma: no cover
    """Insert edge ``e`` (absent) at its endpoints' key; 1 if it took an empty slot."""
    mask = table.size - 1
    i = _slot(end[2 * e], end[2 * e + 1], n, shift)
    while table[i] != _EMPTY and table[i] != _TOMB:
        i = (i + 1) & mask
    fresh = 1 if table[i] == _EMPTY else 0
    table[i] = e
    return fresh


@njit(cache=True, nogil=True)
def _rebuild(table: Any, end: Any, alive: Any, n: Any, shift: Any) -> Any:  # pragma: no cover
    """The table again from the live edges (deleted slots gone); the slots now used."""
    table[:] = _EMPTY
    used = 0
    for e in range(alive.size):
        if alive[e]:
            used += _insert(table, end, e, n, shift)
    return used


@njit(cache=True, nogil=True, inline="always")
def _better(hs: Any, he: Any, tbu: Any, tbv: Any, i: int, j: int) -> Any:  # pragma: no cover
    """Heap entry i before j: higher score, then smaller (tbu, tbv) of its edge."""
    if hs[i] != hs[j]:
        return hs[i] > hs[j]
    ei, ej = he[i], he[j]
    if tbu[ei] != tbu[ej]:
        return tbu[ei] < tbu[ej]
    return tbv[ei] < tbv[ej]


@njit(cache=True, nogil=True)
def _sift_down(hs: Any, he: Any, tbu: Any, tbv: Any, j: int,
               size: int) -> None:  # pragma: no cover - compiled
    while True:
        c = 2 * j + 1
        if c >= size:
            return
        if c + 1 < size and _better(hs, he, tbu, tbv, c + 1, c):
            c += 1
        if not _better(hs, he, tbu, tbv, c, j):
            return
        hs[j], hs[c] = hs[c], hs[j]
        he[j], he[c] = he[c], he[j]
        j = c


@njit(cache=True, nogil=True)
def _push(hs: Any, he: Any, tbu: Any, tbv: Any, size: int, score: float,
          e: Any) -> None:  # pragma: no cover - compiled
    i = size
    hs[i], he[i] = score, e
    while i > 0:
        p = (i - 1) // 2
        if not _better(hs, he, tbu, tbv, i, p):
            return
        hs[i], hs[p] = hs[p], hs[i]
        he[i], he[p] = he[p], he[i]
        i = p


@njit(cache=True, nogil=True, inline="always")
def _score(esum: Any, ecount: Any, e: Any, scale: float) -> Any:  # pragma: no cover
    return esum[e] / (ecount[e] * scale)


@njit(cache=True, nogil=True)
def _compact(hs: Any, he: Any, size: int, alive: Any, esum: Any, ecount: Any,
             tbu: Any, tbv: Any, scale: float) -> int:  # pragma: no cover - compiled
    """Drop stale heap entries (one entry per live edge is left) and heapify."""
    seen = np.zeros(alive.size, np.bool_)
    j = 0
    for i in range(size):
        e = he[i]
        if alive[e] and not seen[e] and hs[i] == _score(esum, ecount, e, scale):
            seen[e] = True
            hs[j], he[j] = hs[i], e
            j += 1
    for i in range(j // 2 - 1, -1, -1):
        _sift_down(hs, he, tbu, tbv, i, j)
    return j


@njit(cache=True, nogil=True)
def greedy(frozen: Any, end: Any, esum: Any, ecount: Any, etbu: Any, etbv: Any,
           scale: float, floor: float, voxels: Any, min_size: int,
           size_threshold: float, slots: int = 0) -> Any:  # pragma: no cover - compiled
    """Greedy merging of the graph whose edge ``e`` joins ``end[2e]`` and ``end[2e+1]``.

    ``frozen``, ``end``, ``esum``, ``ecount`` and ``voxels`` (one per node, or a
    placeholder of another size where sizes do not matter) are updated in place;
    ``end`` holds the edges' current regions at the end. ``slots``: the size of the
    contact table, 0 for the smallest power of 2 of at least 2m.
    """
    n, m = frozen.size, end.size // 2
    idx = end.dtype
    nxt = np.empty(2 * m, idx)  # circular lists of (edge, side) nodes: node = 2e + side
    head = np.full(n, -1, idx)
    deg = np.zeros(n, idx)
    for node in range(2 * m):
        r = end[node]
        h = head[r]
        if h < 0:
            head[r] = node
            nxt[node] = node
        else:
            nxt[node] = nxt[h]
            nxt[h] = node
        deg[r] += 1
    cap = slots  # the table's size: a power of 2 whose 3/4 exceed m (tests set it small)
    if cap == 0:
        cap = 16
        while cap < 2 * m:
            cap *= 2
    shift = np.uint64(64 - int(np.log2(cap)))
    limit = cap * 3 // 4  # rebuild the table when live + deleted slots pass it
    nn = np.int64(n)
    table = np.full(cap, _EMPTY, idx)
    used = 0
    for e in range(m):
        used += _insert(table, end, e, nn, shift)
    alive = np.ones(m, np.bool_)
    hcap = m + m // 4 + 16  # the heap compacts when full: pages past its size stay untouched
    hs = np.empty(hcap, np.float64)
    he = np.empty(hcap, idx)
    for e in range(m):
        hs[e], he[e] = _score(esum, ecount, e, scale), e
    size = m
    for i in range(size // 2 - 1, -1, -1):
        _sift_down(hs, he, etbu, etbv, i, size)
    parent = np.arange(n).astype(idx)
    rep = np.arange(n).astype(idx)
    most = max(min(n - 1, m), 0)  # every merge removes an edge and a region
    ma, mb = np.empty(most, idx), np.empty(most, idx)
    ms = np.empty(most, np.float64)
    k = 0
    while size > 0:
        e, score = he[0], hs[0]
        size -= 1  # pop: last entry to the root, sift down
        hs[0], he[0] = hs[size], he[size]
        _sift_down(hs, he, etbu, etbv, 0, size)
        if not alive[e] or score != _score(esum, ecount, e, scale):
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
        table[_find(table, end, a, b, nn, shift)] = _TOMB
        s, o = (a, b) if deg[a] >= deg[b] else (b, a)  # o's edges move to s
        deg[s] -= 1
        start = head[o]
        node = start
        while node >= 0:
            ee = node >> 1
            if alive[ee]:
                other = end[node ^ 1]
                table[_find(table, end, o, other, nn, shift)] = _TOMB
                slot = _find(table, end, s, other, nn, shift)
                end[node] = s
                if slot >= 0:  # s already touches other: one contact, summed statistics
                    e2 = table[slot]
                    if etbu[ee] < etbu[e2] or (etbu[ee] == etbu[e2] and etbv[ee] < etbv[e2]):
                        e2, ee = ee, e2  # the smaller tie-break survives
                        table[slot] = e2
                    esum[e2] += esum[ee]
                    ecount[e2] += ecount[ee]
                    alive[ee] = False
                    deg[other] -= 1
                    if size == hcap:
                        size = _compact(hs, he, size, alive, esum, ecount, etbu, etbv, scale)
                    _push(hs, he, etbu, etbv, size, _score(esum, ecount, e2, scale), e2)
                    size += 1
                else:
                    if used >= limit:
                        used = _rebuild(table, end, alive, nn, shift)
                    else:
                        used += _insert(table, end, ee, nn, shift)
                    deg[s] += 1
            node = nxt[node]
            if node == start:
                break
        if start >= 0:  # splice o's list into s's
            if head[s] < 0:
                head[s] = start
            else:
                nxt[head[s]], nxt[start] = nxt[start], nxt[head[s]]
        head[o] = -1
        deg[o] = 0
        parent[o] = s
        rep[s] = min(rep[s], rep[o])
        if voxels.size == n:
            voxels[s] += voxels[o]
    for i in range(n):  # every node's region root
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent, rep, frozen, alive, ma[:k], mb[:k], ms[:k]
