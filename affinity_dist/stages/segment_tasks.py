"""The tasks of ``segment --method cc`` (:mod:`.segment` drives them): label a block's
connected components and save its faces; a block's leaf of the tree reduction (its pairs
across all six faces); a tree task; the cut from the root down; relabel a block. Each
reads its inputs from the dataset and writes its outputs there; results are small
counts. The face helpers are shared with ``--method agglomerate``."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..geometry import Box
from ..kernels.agglomerate import inside_extent
from ..kernels.cc_tree import (
    Pending,
    TaskRecord,
    component_labels,
    leaf,
    reduce_components,
)
from ..kernels.fragments import (
    LOCAL_BITS,
    LOCAL_MASK,
    apply_mapping,
    boundary_planes,
    face_pairs,
    face_row_lengths,
    global_ids,
    label_block,
    pack_planes,
    plane_shapes,
    unpack_planes,
)
from ..kernels.merge import block_map, fragment_sizes, fragment_stats
from ..kernels.values import require_unit_range
from ..storage import (
    Volume,
    create_work_array,
    open_volume,
    read_record,
    record_part,
    write_parts,
    write_record,
)

if TYPE_CHECKING:
    from .segment import SegmentPlan

WORK = "_segment_work"
LOOKUP = "_staging_lookup"
STAGED = {"fragments": "_staging_fragments", "segmentation": "_staging_segmentation"}
COUNTS = f"{WORK}/counts"
INDEX = f"{LOOKUP}/index"


@functools.lru_cache(maxsize=32)
def _cached(dataset: str, name: str, token: str) -> Volume:
    return open_volume(dataset, name, "r+")


def open_cached(plan: Any, name: str) -> Volume:
    """Array ``name`` of a run's dataset (a plan with ``dataset`` and ``token``), opened
    once per worker process and run (every open parses the group's and the array's
    metadata: ~1 ms, 10+ times per block)."""
    return _cached(plan.dataset, name, plan.token)


_open = open_cached


def create_face_arrays(work: Any, block_shape: tuple[int, ...], num_blocks: int,
                       aff_dtype: DTypeLike) -> None:
    """The two face arrays of a run's work group: one row of boundary planes (uint32
    local ids) and one of first-plane affinities per block."""
    kinds: tuple[tuple[str, DTypeLike], ...] = (("labels", np.uint32), ("affs", aff_dtype))
    for (kind, dtype), length in zip(kinds, face_row_lengths(block_shape), strict=True):
        create_work_array(work, kind, shape=(num_blocks, length), dtype=dtype,
                          chunks=(1, length))


def write_faces(plan: Any, block_id: int, fragments: NDArray[np.uint64],
                affs: NDArray[Any], work: str = WORK) -> list[NDArray[np.uint32]]:
    """Save a block's six boundary planes (local ids) and the affinities of its first
    planes in the face arrays of ``work``, one row per block: two writes per block, not
    nine. Returns the boundary planes."""
    planes = boundary_planes(fragments)
    labels, aff_length = face_row_lengths(plan.grid.block_shape)
    _open(plan, f"{work}/labels").write_rows(block_id, pack_planes(planes, labels))
    _open(plan, f"{work}/affs").write_rows(block_id, pack_planes(
        [np.take(affs[axis], 0, axis=axis) for axis in range(3)], aff_length))
    return planes


def face_outputs(block_id: int, work: str = WORK) -> list[tuple[str, tuple[slice, ...]]]:
    """The rows :func:`write_faces` writes, as ``(array, selection)`` pairs."""
    return [(f"{work}/{kind}", (slice(block_id, block_id + 1), slice(None)))
            for kind in ("labels", "affs")]


def read_faces(plan: Any, block_id: int, affinities: bool = False, work: str = WORK
               ) -> list[NDArray[Any]]:
    """A block's planes as written by :func:`write_faces`: first and last plane of each
    axis (first0, last0, first1, ...), or the three affinity planes."""
    shapes = plane_shapes(plan.grid.write_box(block_id).shape)
    name, shapes = (("affs", shapes) if affinities else
                    ("labels", [s for s in shapes for _ in (0, 1)]))
    row = _open(plan, f"{work}/{name}").read_rows(block_id, block_id + 1)[0]
    return unpack_planes(row, shapes)


def read_affinities(plan: Any, block_id: int, box: Box) -> NDArray[Any]:
    """The three nearest-neighbour affinity channels over ``box``, refusing NaN, infinity
    and values outside [0, 1] (the block and the first bad voxel named)."""
    affs = _open(plan, "affinities").read(box)[:3]
    require_unit_range("affinities", affs, f"block {block_id}", box.start)
    return affs


def _label(plan: SegmentPlan, block_id: int, tiled: bool = True
           ) -> tuple[Box, NDArray[Any], NDArray[np.uint64], int]:
    """Read a block's affinities (refusing NaN) and label its fragments (global ids),
    tiled by the chunk shape where it divides the block (written chunk by chunk with no
    copy: a 256^3 uint64 block in 34 ms instead of 55)."""
    box = plan.grid.write_box(block_id)
    affs = read_affinities(plan, block_id, box)
    fragments, n = label_block(affs, plan.threshold, block_id,
                               plan.chunks if tiled else None)
    return box, affs, fragments, n


def record_path(*parts: object) -> str:
    """The name of a per-task record inside the dataset, e.g. ``_segment_work/pending/1/7``."""
    return "/".join(str(p) for p in parts)


# ---- 1. fragments ----------------------------------------------------------------------


@dataclass(frozen=True)
class FragmentBlock:
    """A block's connected components, its face planes and (with ``min_size``) the sizes
    of its fragments on a face."""

    plan: SegmentPlan

    def __call__(self, block_id: int) -> dict[str, int]:
        plan = self.plan
        box, affs, fragments, n = _label(plan, block_id)
        if plan.keep_fragments:
            _open(plan, STAGED["fragments"]).write(box, fragments)
        planes = write_faces(plan, block_id, fragments, affs)
        stats = fragment_stats(fragments, n, block_id, planes, plan.min_size)
        if plan.min_size:
            write_record(plan.dataset, record_path(WORK, "sizes", block_id),
                         {"ids": stats.boundary_ids, "sizes": stats.boundary_sizes})
        return {"fragments": n, "small": stats.num_small}

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        box = self.plan.grid.write_box(block_id)
        kept = [(STAGED["fragments"], box.slices)] if self.plan.keep_fragments else []
        return kept + face_outputs(block_id)


# ---- 2. leaves -------------------------------------------------------------------------


def _pending(plan: SegmentPlan, level: int, task: int) -> Pending:
    if level > 0:
        return Pending(**read_record(plan.dataset,
                                     record_path(WORK, "pending", level, task)))
    return Pending(**parent_part(plan, record_path(WORK, "pending"), 0, task))


def _sizes(pending: Pending, record: TaskRecord | None = None) -> dict[str, int]:
    merges = 0 if record is None else int(record.a.size - np.unique(record.b).size)
    return {"regions": int(np.unique(pending.rep).size), "edges": int(pending.u.size),
            "merges": merges, "final": 0 if record is None else record.num_kept}


@dataclass(frozen=True)
class LeafGroup:
    """The leaves of a leaf group's blocks (``ReductionTree.leaf_group``): each block's
    pairs across all six faces (each pair is thus known from both sides), recorded in one record;
    returns each block's counts and unmerged kept fragments, which it numbers itself."""

    plan: SegmentPlan

    def __call__(self, group: int) -> list[dict[str, int]]:
        blocks = self.plan.tree.leaf_group(group)
        parts, out = [], []
        for block_id in blocks:
            pending, sizes = self._leaf(block_id)
            parts.append(pending._asdict())
            out.append({**_sizes(pending), "unmerged": self._unmerged(block_id, pending,
                                                                       sizes)})
        write_parts(self.plan.dataset, record_path(WORK, "pending", 0, group), parts)
        return out

    def _leaf(self, block_id: int) -> tuple[Pending, tuple[NDArray[Any], NDArray[Any]] | None]:
        plan, grid = self.plan, self.plan.grid
        planes, affs = read_faces(plan, block_id), read_faces(plan, block_id, True)
        us, vs = [np.zeros(0, np.uint64)], [np.zeros(0, np.uint64)]
        for side, other in enumerate(grid.neighbors(block_id)):
            if other < 0:
                continue
            axis, above = divmod(side, 2)
            theirs = read_faces(plan, other)
            if above:  # their first plane against our last; the edge is theirs
                p = face_pairs(planes[2 * axis + 1], theirs[2 * axis],
                               read_faces(plan, other, True)[axis], plan.threshold)
                mine, their = p[0], p[1]
            else:
                p = face_pairs(theirs[2 * axis + 1], planes[2 * axis], affs[axis],
                               plan.threshold)
                mine, their = p[1], p[0]
            us.append(global_ids(mine, block_id))
            vs.append(global_ids(their, other))
        u, v = np.concatenate(us), np.concatenate(vs)
        sizes = None
        if plan.min_size:
            got = read_record(plan.dataset, record_path(WORK, "sizes", block_id))
            sizes = (got["ids"], got["sizes"])
        return leaf(u, v, sizes), sizes

    def _unmerged(self, block_id: int, pending: Pending,
                  sizes: tuple[NDArray[Any], NDArray[Any]] | None) -> int:
        """Fragments in no pair (kept: at least ``min_size`` voxels): numbered by their
        block from its offset, before every merged component."""
        counts = _counts(self.plan)
        n, small = int(counts["fragments"][block_id]), int(counts["small"][block_id])
        if sizes is None:
            return n - pending.frag.size
        return n - pending.frag.size - (small - int(np.count_nonzero(
            pending.size < self.plan.min_size)))


# ---- 3. tree, 4. cut -------------------------------------------------------------------


def _record(plan: SegmentPlan, level: int, task: int) -> TaskRecord:
    got = read_record(plan.dataset, record_path(LOOKUP, level, task))
    return TaskRecord(got["a"], got["b"], got["final"], got["keep"].astype(bool))


@dataclass(frozen=True)
class TreeTask:
    """One task of a tree level above the leaves: its children's components joined."""

    plan: SegmentPlan
    level: int

    def __call__(self, task: int) -> dict[str, int]:
        plan, tree = self.plan, self.plan.tree
        children = [_pending(plan, self.level - 1, c) for c in tree.children(self.level, task)]
        pending, record = reduce_components(children, plan.grid.grid_shape,
                                            *tree.extent(self.level, task),
                                            min_size=plan.min_size)
        if self.level < tree.num_levels - 1:
            write_record(plan.dataset, record_path(WORK, "pending", self.level, task),
                         pending._asdict())
        write_record(plan.dataset, record_path(LOOKUP, self.level, task),
                     {**record._asdict(), "keep": record.keep.astype(np.int64)})
        return _sizes(pending, record)


@functools.lru_cache(maxsize=8)
def _cached_record(dataset: str, name: str, token: str) -> dict[str, NDArray[Any]]:
    return read_record(dataset, name)


def _index(plan: SegmentPlan) -> dict[str, NDArray[Any]]:
    """The run's O(blocks) numbering (block offsets; task bases, level after level from
    the leaves, each level in task order), read once per worker
    and run (the driver writes it before the cut)."""
    return _cached_record(plan.dataset, INDEX, plan.token)


def _counts(plan: SegmentPlan) -> dict[str, NDArray[Any]]:
    """Fragments and small fragments per block (the driver writes them after pass 1)."""
    return _cached_record(plan.dataset, COUNTS, plan.token)


def _labels(plan: SegmentPlan, level: int, task: int
            ) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The labels a task's parent gave its pending components (none at the root): the
    task's part of the parent's record (one per parent, not one per child: the blocks
    under a parent read it once per worker)."""
    if level == plan.tree.num_levels - 1:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    got = parent_part(plan, record_path(LOOKUP, "labels"), level, task)
    return got["ids"], got["labels"]


def parent_part(plan: Any, root: str, level: int, task: int) -> dict[str, NDArray[Any]]:
    """A task's part of the record ``<root>/<level>/<parent>`` its parent wrote for all its
    children (:func:`~affinity_dist.storage.write_parts`; the blocks under a parent read
    it once per worker). A task of the top level is the only part of record 0."""
    tree = plan.tree
    if level == tree.num_levels - 1:
        parent, position, count = 0, 0, 1
    else:
        parent, position = tree.parent(level, task)
        count = len(tree.children(level + 1, parent))
    name = record_path(root, level, parent)
    return record_part(_cached_record(plan.dataset, name, plan.token), name, position, count)


@dataclass(frozen=True)
class CutTask:
    """A task's components numbered (final here) or labelled by its parent (pending); each
    child gets the labels of its representatives."""

    plan: SegmentPlan
    level: int

    def __call__(self, task: int) -> int:
        plan, tree = self.plan, self.plan.tree
        index = _index(plan)
        first = sum(tree.num_tasks(k) for k in range(self.level))  # bases: level by level
        base = int(index["bases"][first + task])
        record = _record(plan, self.level, task)
        labels = component_labels(record, base, *_labels(plan, self.level, task))
        owner = (record.a >> np.uint64(LOCAL_BITS)).astype(np.int64)
        parts = []
        for child in tree.children(self.level, task):
            mine = inside_extent(owner, plan.grid.grid_shape,
                                 *tree.extent(self.level - 1, child))
            parts.append({"ids": record.a[mine], "labels": labels[mine]})
        write_parts(plan.dataset, record_path(LOOKUP, "labels", self.level - 1, task), parts)
        return int(record.a.size)


# ---- 5. relabel ------------------------------------------------------------------------


@dataclass(frozen=True)
class RelabelBlock:
    """A block's fragments mapped to segment ids: merged ones through the labels its
    parent task gave them, the others numbered from the block's offset."""

    plan: SegmentPlan

    def __call__(self, block_id: int) -> int:
        plan = self.plan
        if plan.keep_fragments:
            box = plan.grid.write_box(block_id)
            fragments: NDArray[Any] = _open(plan, STAGED["fragments"]).read(box)
            n = int(_counts(plan)["fragments"][block_id])
        else:  # the kernel is deterministic: labelling again beats storing uint64 fragments
            box, _, fragments, n = _label(plan, block_id, tiled=False)
        sizes = fragment_sizes(fragments, n + 1) if plan.min_size else None
        merged, labels = np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        if plan.tree.num_levels > 1:
            merged = _pending(plan, 0, block_id).frag
            ids, given = _labels(plan, 0, block_id)
            labels = given[np.searchsorted(ids, merged)] if merged.size else labels
        offset = int(_index(plan)["offsets"][block_id])
        mapping = block_map(merged & LOCAL_MASK, labels, n, offset, min_size=plan.min_size,
                            sizes=sizes)
        _open(plan, STAGED["segmentation"]).write(
            box, apply_mapping(fragments, mapping, tile=plan.chunks, in_place=True))
        return box.size

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        return [(STAGED["segmentation"], self.plan.grid.write_box(block_id).slices)]
