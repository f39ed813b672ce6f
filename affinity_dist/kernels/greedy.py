"""The compiled core of :mod:`.agglomerate`: greedy mean-affinity merging of one graph.

An indexed edge list with per-region linked lists of (edge, side) nodes, an
open-addressing table from region pair to edge (contacts of merged regions are summed
into one), and a max-heap of (score, tie-break) with lazy deletion. Frozen regions never
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
def greedy(frozen: Any, eu: Any, ev: Any, esum: Any, ecount: Any, etbu: Any,
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
