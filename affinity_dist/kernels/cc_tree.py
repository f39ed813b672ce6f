"""Connected components of the face pairs by a tree reduction over the block grid (pure
numpy/numba, no I/O): ``segment --method cc`` with no process holding all pairs.

A fragment never crosses a block face, so the components of the whole volume are those
of the graph whose edges are the fragment pairs joined across faces. The **leaf** of a
block holds the pairs across all six of its faces (every pair is known from both sides),
each fragment in a pair ("merged") its own component. A task over the block box ``[lo,
hi)`` joins the components of its children along the pairs whose both ends lie inside
its extent (one union-find over the children's representatives). A component with a pair
leaving the extent is **pending**: passed up with the rows of its fragments that have
such a pair and the pairs themselves; every other component is **final** here: no pair
outside the extent can reach it. The root's extent is the volume, so every component
ends final at exactly one task, and the result is the whole graph's components for any
block shape and fan-out. A task holds its children's pending surface, never more.

Representatives are smallest fragment ids. A task's record maps each child
representative to its component's representative and lists the final ones (with their
sizes' verdict under ``min_size``); the cut, from the root down, numbers the kept final
components of each task from that task's base (:func:`component_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from .agglomerate import concat_fields, index_dtype, inside_extent
from .fragments import LOCAL_BITS
from .merge import _union_find

__all__ = ["Pending", "TaskRecord", "component_labels", "leaf", "reduce_components"]

_U64 = np.zeros(0, np.uint64)
_I64 = np.zeros(0, np.int64)


class Pending(NamedTuple):
    """What a task passes up: ``frag -> rep`` for every fragment (inside the extent) with
    a pair leaving it, sorted by fragment; those pairs ``(u inside, v outside)``; with
    ``min_size``, the voxels of every pending component (``size_id``: its rep)."""

    frag: NDArray[np.uint64]
    rep: NDArray[np.uint64]
    u: NDArray[np.uint64]
    v: NDArray[np.uint64]
    size_id: NDArray[np.uint64] = _U64
    size: NDArray[np.int64] = _I64


class TaskRecord(NamedTuple):
    """A task's part of the cut: ``a`` (sorted child representatives) -> ``b`` (their
    component's representative); ``final`` (sorted) the components final here and
    ``keep`` whether each is kept (at least ``min_size`` voxels, or no size rule)."""

    a: NDArray[np.uint64]
    b: NDArray[np.uint64]
    final: NDArray[np.uint64]
    keep: NDArray[np.bool_]

    @property
    def num_kept(self) -> int:
        return int(np.count_nonzero(self.keep))


def leaf(u: NDArray[np.uint64], v: NDArray[np.uint64],
         sizes: tuple[NDArray[np.uint64], NDArray[np.int64]] | None = None) -> Pending:
    """A block's leaf: its pairs ``(u in the block, v in a neighbour)`` over all faces;
    ``sizes`` (sorted fragment ids, voxels) must hold every ``u`` when given."""
    frag = np.unique(u)
    if sizes is None:
        return Pending(frag, frag.copy(), u, v)
    at = np.minimum(np.searchsorted(sizes[0], frag), max(sizes[0].size - 1, 0))
    if frag.size and not np.array_equal(sizes[0][at], frag):
        raise ValueError("a fragment with a face pair has no size: inconsistent block")
    return Pending(frag, frag.copy(), u, v, frag.copy(), sizes[1][at].astype(np.int64))


def _dense(x: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.integer[Any]]]:
    """``np.unique(x, return_inverse=True)`` in 25 bytes per element at most, not 41 (the
    inverse int32 where it fits): the root's peak at 10^9 fragments."""
    perm = np.argsort(x, kind="stable")
    ordered = x[perm]
    new = np.ones(ordered.size, bool)
    new[1:] = ordered[1:] != ordered[:-1]
    unique = ordered[new]
    del ordered
    inverse = np.empty(x.size, index_dtype(unique.size, 0))
    inverse[perm] = np.cumsum(new, dtype=inverse.dtype) - 1
    return unique, inverse


def reduce_components(children: list[Pending], grid_shape: Sequence[int],
                      lo: Sequence[int], hi: Sequence[int], *, min_size: int = 0
                      ) -> tuple[Pending, TaskRecord]:
    """One task over the block box ``[lo, hi)``: its children's components joined along
    the pairs inside it; returns what it passes up and its record (module docstring).
    The list ``children`` is emptied (its residuals are not changed)."""
    frag, rep, u, v, size_id, size = concat_fields(children, Pending(_U64, _U64, _U64, _U64))
    order = np.argsort(frag, kind="stable")
    frag, rep = frag[order], rep[order]
    del order  # the largest task (the root at 10^9 fragments) holds ~10^7 pairs: free early
    nodes, row_node = _dense(rep)  # each row's node
    del rep
    iu = row_node[np.searchsorted(frag, u)] if u.size else _I64
    inside = inside_extent((v >> np.uint64(LOCAL_BITS)).astype(np.int64), grid_shape, lo, hi)
    vin = v[inside]
    at = np.minimum(np.searchsorted(frag, vin), max(frag.size - 1, 0))
    if at.size and not np.array_equal(frag[at], vin):
        raise ValueError("a pair inside the extent lacks its other side: inconsistent "
                         "children")
    del vin
    iv = row_node[at] if at.size else _I64
    del at
    comp = _union_find(iu[inside], iv, nodes.size)
    del iv
    count = int(comp.max()) + 1 if comp.size else 0
    first = np.zeros(count, np.int64)
    first[comp[::-1]] = np.arange(comp.size)[::-1]  # components are numbered by smallest
    new = nodes[first[comp]]
    pending = np.zeros(count, bool)
    pending[comp[iu[~inside]]] = True
    voxels = np.zeros(count, np.int64)
    if min_size:
        np.add.at(voxels, comp[np.searchsorted(nodes, size_id)], size)
    final = nodes[first[~pending]]
    keep = voxels[~pending] >= min_size if min_size else np.ones(final.size, bool)
    out_u, out_v = u[~inside], v[~inside]
    rows = np.unique(out_u)
    rows_rep = new[row_node[np.searchsorted(frag, rows)]] if rows.size else _U64
    up = Pending(rows, rows_rep, out_u, out_v,
                 *((nodes[first[pending]], voxels[pending]) if min_size else ()))
    return up, TaskRecord(nodes, new, final, keep)


def component_labels(record: TaskRecord, base: int, parent_ids: NDArray[np.uint64],
                     parent_labels: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The segment id of each of ``record.a``: a component final at this task gets
    ``base + k`` (k = 1.. over the kept ones, in representative order) or 0 when not
    kept; a pending one the label its parent's cut gave its representative
    (``parent_ids``, sorted, -> ``parent_labels``)."""
    ids = np.zeros(record.final.size, np.uint64)
    ids[record.keep] = np.arange(1, record.num_kept + 1, dtype=np.uint64) + np.uint64(base)
    at = np.minimum(np.searchsorted(record.final, record.b), max(record.final.size - 1, 0))
    is_final = (record.final[at] == record.b) if record.final.size else np.zeros(
        record.b.size, bool)
    labels = np.zeros(record.b.size, np.uint64)
    labels[is_final] = ids[at[is_final]]
    rest = record.b[~is_final]
    where = np.minimum(np.searchsorted(parent_ids, rest), max(parent_ids.size - 1, 0))
    if rest.size and not (parent_ids.size and np.array_equal(parent_ids[where], rest)):
        raise ValueError("a pending component has no label from the parent's cut")
    labels[~is_final] = parent_labels[where] if rest.size else _U64
    return labels
