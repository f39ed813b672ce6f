"""The tasks of ``segment --method agglomerate`` (:mod:`.agglomerate` drives them): one
per block or tree task, each reading its inputs from the dataset and writing its outputs
there, returning only small counts.

Two trees share the tasks: the **merge tree** (threshold-free: ``merge_tree/``, built from
the fragments' region graph) and, with ``--min-size``, the **size tree** of one threshold
(``_segment_cut/tree/``: greedy to the threshold, then every region below ``min_size``
merged into its best neighbour, cut below every score).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ..kernels.agglomerate import Residual, TreeRecord, cut_labels, reduce_task
from ..kernels.fragments import apply_mapping, global_ids
from ..kernels.graph import (
    block_edges,
    face_edges,
    face_fragments,
    merge_edges,
    native_affinities,
)
from ..kernels.merge import fragment_sizes
from ..kernels.watershed import watershed_block
from ..storage import read_record, record_part, write_parts, write_record
from .segment_tasks import (
    face_outputs,
    parent_part,
    read_affinities,
    read_faces,
    write_faces,
)
from .segment_tasks import open_cached as _open
from .segment_tasks import record_path as _path

if TYPE_CHECKING:
    from .agglomerate import AgglomeratePlan

WORK = "_agglomerate_work"
CUT = "_segment_cut"
STAGED = {"fragments": "_staging_fragments", "merge_tree": "_staging_merge_tree",
          "region_graph": "_staging_region_graph", "segmentation": "_staging_segmentation"}
#: Below every score: the size tree is cut so that all its merges apply.
ALL = -1.0


def tree_root(size: bool, staged: bool = False) -> str:
    """Where a tree's records live: the merge tree (published or staged) or the size tree."""
    if size:
        return f"{CUT}/tree"
    return STAGED["merge_tree"] if staged else "merge_tree"


def _residual_root(size: bool) -> str:
    return f"{CUT}/residual" if size else f"{WORK}/residual"


# ---- 1. fragments ----------------------------------------------------------------------


@dataclass(frozen=True)
class FragmentBlock:
    """Watershed fragments of a block (read with a halo), its face planes, the contacts
    inside it and its fragments' sizes."""

    plan: AgglomeratePlan

    def __call__(self, block_id: int) -> int:
        plan, grid = self.plan, self.plan.grid
        box = grid.write_box(block_id)
        read, _ = grid.read_box(block_id, plan.halo)
        affs = read_affinities(plan, block_id, read)
        native = native_affinities(affs)  # refuses values outside [0, 1]
        crop = box.relative_to(read)
        fragments, n, local = watershed_block(affs, crop, block_id, plan.chunks,
                                              **plan.watershed)
        _open(plan, STAGED["fragments"]).write(box, fragments)
        own = native[(slice(None), *crop)]
        write_faces(plan, block_id, fragments, own, WORK)
        u, v, sums, counts = block_edges(local, own, planar=plan.planar)  # local ids: the
        write_record(plan.dataset, _path(WORK, "edges", block_id),  # same order globally
                     {"u": global_ids(u, block_id), "v": global_ids(v, block_id),
                      "sums": sums, "counts": counts,
                      "sizes": fragment_sizes(local, n + 1)[1:]})
        return n

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        box = self.plan.grid.write_box(block_id)
        return [(STAGED["fragments"], box.slices), *face_outputs(block_id, WORK)]


def _faces(plan: AgglomeratePlan, block_id: int, affinities: bool = False
           ) -> list[NDArray[Any]]:
    """A block's six boundary planes (first0, last0, first1, ...) as global ids, or the
    affinities of its three first planes."""
    planes = read_faces(plan, block_id, affinities, WORK)
    return planes if affinities else [global_ids(p, block_id) for p in planes]


# ---- 2. region graph and leaves --------------------------------------------------------


def _sizes(residual: Residual, record: TreeRecord) -> dict[str, int]:
    return {"regions": int(record.up.size), "edges": residual.num_edges,
            "merges": int(record.a.size)}


def _tree_fields(record: TreeRecord, n: int = -1) -> dict[str, NDArray[Any]]:
    return {"a": record.a, "b": record.b, "score": record.score, "up": record.up,
            "n": np.array([n], np.int64)}


def _write_task(plan: AgglomeratePlan, level: int, task: int, residual: Residual,
                record: TreeRecord, *, size: bool) -> None:
    write_record(plan.dataset, _path(tree_root(size, staged=True), level, task),
                 _tree_fields(record))
    if level < plan.tree.num_levels - 1:
        write_record(plan.dataset, _path(_residual_root(size), level, task),
                     residual._asdict())


def _write_leaves(plan: AgglomeratePlan, group: int,
                  leaves: list[tuple[Residual, TreeRecord, int]], *, size: bool) -> None:
    """The leaves of a leaf group's blocks (``ReductionTree.leaf_group``): one record of
    their merges and one of their residuals, a part per block (not one each)."""
    write_parts(plan.dataset, _path(tree_root(size, staged=True), 0, group),
                [_tree_fields(record, n) for _, record, n in leaves])
    if plan.tree.num_levels > 1:
        write_parts(plan.dataset, _path(_residual_root(size), 0, group),
                    [residual._asdict() for residual, _, _ in leaves])


def _group_parts(plan: AgglomeratePlan, root: str, group: int
                 ) -> list[dict[str, NDArray[Any]]]:
    """Every part of a leaf group's record, in the order of its blocks."""
    name = _path(root, 0, group)
    record = read_record(plan.dataset, name)
    count = len(plan.tree.leaf_group(group))
    return [record_part(record, name, i, count) for i in range(count)]


def _leaf(graph: dict[str, NDArray[Any]], sizes: bool) -> Residual:
    u, v = graph["u"], graph["v"]
    frag = graph["row_fragment"]
    extra = (graph["size_id"], graph["size"]) if sizes else ()
    return Residual(u, v, graph["sums"], graph["counts"], u.copy(), v.copy(), frag,
                    frag.copy(), graph["row_neighbor"], *extra)


@dataclass(frozen=True)
class GraphGroup:
    """For each block of a leaf group (``ReductionTree.leaf_group``: the children of a
    task of tree level 1), the contacts it owns (inside and across its lower faces)
    and its leaf of the merge tree; the group's region graph, merges and residuals in one
    record each (``region_graph/0/<group>``, ...: a part per block)."""

    plan: AgglomeratePlan

    def __call__(self, group: int) -> list[dict[str, int]]:
        plan, graphs, leaves, out = self.plan, [], [], []
        for block_id in plan.tree.leaf_group(group):
            graph = self._graph(block_id)
            residual, record = _reduce(plan, [_leaf(graph, False)], 0, block_id, False)
            graphs.append(graph)
            leaves.append((residual, record, int(graph["size"].size)))
            out.append({**_sizes(residual, record), "edges_owned": int(graph["u"].size)})
        write_parts(plan.dataset, _path(STAGED["region_graph"], 0, group), graphs)
        _write_leaves(plan, group, leaves, size=False)
        return out

    def _graph(self, block_id: int) -> dict[str, NDArray[Any]]:
        plan, grid = self.plan, self.plan.grid
        edges = read_record(plan.dataset, _path(WORK, "edges", block_id))
        neighbors = grid.neighbors(block_id)
        if plan.planar:  # no contact across z: the z faces join nothing, freeze nothing
            neighbors = (-1, -1, *neighbors[2:])
        own, affs = _faces(plan, block_id), _faces(plan, block_id, affinities=True)
        parts = [(edges["u"], edges["v"], edges["sums"], edges["counts"])]
        for axis in range(3):
            below = neighbors[2 * axis]
            if below >= 0:
                parts.append(face_edges(_faces(plan, below)[2 * axis + 1], own[2 * axis],
                                        affs[axis]))
        u, v, sums, counts = merge_edges(*(np.concatenate([p[i] for p in parts])
                                           for i in range(4)))
        frag, nbr = face_fragments(own, neighbors)
        n = edges["sizes"].size
        return {"u": u, "v": v, "sums": sums, "counts": counts, "row_fragment": frag,
                "row_neighbor": nbr,
                "size_id": global_ids(np.arange(1, n + 1, dtype=np.uint64), block_id),
                "size": edges["sizes"]}


def _reduce(plan: AgglomeratePlan, parts: list[Residual], level: int, task: int,
            size: bool) -> tuple[Residual, TreeRecord]:
    extent, above = plan.tree.extent(level, task), plan.tree.parent_extent(level, task)
    if size:  # greedy to the threshold, then small regions into their best neighbour
        return reduce_task(parts, plan.grid.grid_shape, *extent, scale=plan.scale,
                           floor=ALL, min_size=plan.min_size, size_threshold=plan.threshold,
                           parent=above)
    return reduce_task(parts, plan.grid.grid_shape, *extent, scale=plan.scale,
                       floor=plan.floor, parent=above)


@dataclass(frozen=True)
class SizeGroup:
    """The leaves of the size tree of a leaf group's blocks, from its stored region
    graph; recorded as :class:`GraphGroup` records the merge tree's."""

    plan: AgglomeratePlan

    def __call__(self, group: int) -> list[dict[str, int]]:
        plan, leaves, out = self.plan, [], []
        graphs = _group_parts(plan, "region_graph", group)
        for block_id, graph in zip(plan.tree.leaf_group(group), graphs, strict=True):
            residual, record = _reduce(plan, [_leaf(graph, True)], 0, block_id, True)
            leaves.append((residual, record, int(graph["size"].size)))
            out.append(_sizes(residual, record))
        _write_leaves(plan, group, leaves, size=True)
        return out


# ---- 3. tree ---------------------------------------------------------------------------


def read_tree(plan: AgglomeratePlan, level: int, task: int, size: bool = False
              ) -> dict[str, NDArray[Any]]:
    """A task's merges; a block's (level 0) are its part of its leaf group's record."""
    if level == 0:
        return parent_part(plan, tree_root(size), 0, task)
    return read_record(plan.dataset, _path(tree_root(size), level, task))


def _children(plan: AgglomeratePlan, level: int, task: int, root: str
              ) -> list[dict[str, NDArray[Any]]]:
    """The records under ``root`` of a task's children, in order (those of level 0: the
    parts of the one leaf-group record, the task's children being that group)."""
    if level == 1:
        return _group_parts(plan, root, task)
    return [read_record(plan.dataset, _path(root, level - 1, c))
            for c in plan.tree.children(level, task)]


@dataclass(frozen=True)
class TreeTask:
    """One task of a tree level above the leaves: its children's residuals merged."""

    plan: AgglomeratePlan
    level: int
    size: bool = False

    def __call__(self, task: int) -> dict[str, int]:
        plan = self.plan
        children = [Residual(**r) for r in _children(plan, self.level, task,
                                                     _residual_root(self.size))]
        residual, record = _reduce(plan, children, self.level, task, self.size)
        _write_task(plan, self.level, task, residual, record, size=self.size)
        return _sizes(residual, record)


# ---- 4. cut and relabel ----------------------------------------------------------------


def _parent_labels(plan: AgglomeratePlan, level: int, task: int
                   ) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The segments of the regions a task passed up, as its parent's cut handed them down
    (none at the root)."""
    if level == plan.tree.num_levels - 1:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    got = parent_part(plan, _path(CUT, "labels"), level, task)
    return got["ids"], got["labels"]


def _record(rec: dict[str, NDArray[Any]]) -> TreeRecord:
    return TreeRecord(rec["a"], rec["b"], rec["score"], rec["up"])


@dataclass(frozen=True)
class CutTask:
    """A task's merges cut at the threshold; its children get their regions' segments."""

    plan: AgglomeratePlan
    level: int
    size: bool = False

    def __call__(self, task: int) -> int:
        plan = self.plan
        kids = plan.tree.children(self.level, task)
        ups = [r["up"] for r in _children(plan, self.level, task, tree_root(self.size))]
        queries = np.concatenate([np.zeros(0, np.uint64), *ups])
        labels = cut_labels(_record(read_tree(plan, self.level, task, self.size)),
                            ALL if self.size else plan.threshold,
                            *_parent_labels(plan, self.level, task), queries)
        starts = np.cumsum([0, *(up.size for up in ups)])
        write_parts(plan.dataset, _path(CUT, "labels", self.level - 1, task),
                    [{"ids": up, "labels": labels[a:b]}
                     for up, a, b in zip(ups, starts[:-1], starts[1:], strict=True)])
        return len(kids)


@dataclass(frozen=True)
class RelabelBlock:
    """A block's fragments mapped to their segments (the smallest fragment of each)."""

    plan: AgglomeratePlan
    size: bool = False

    def __call__(self, block_id: int) -> int:
        plan = self.plan
        rec = read_tree(plan, 0, block_id, self.size)
        n = int(rec["n"][0])
        queries = global_ids(np.arange(1, n + 1, dtype=np.uint64), block_id)
        labels = cut_labels(_record(rec), ALL if self.size else plan.threshold,
                            *_parent_labels(plan, 0, block_id), queries)
        mapping = np.concatenate([np.zeros(1, np.uint64), labels])
        box = plan.grid.write_box(block_id)
        fragments = _open(plan, "fragments").read(box)
        _open(plan, STAGED["segmentation"]).write(
            box, apply_mapping(fragments, mapping, tile=plan.chunks, in_place=True))
        # a segment is counted by the block of its smallest fragment, which is its id
        return int(np.count_nonzero(labels == queries))

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        return [(STAGED["segmentation"], self.plan.grid.write_box(block_id).slices)]
