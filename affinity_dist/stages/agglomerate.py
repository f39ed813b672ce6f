"""Segment by agglomeration (``segment --method agglomerate``, the default).

The driver reads as the algorithm (one Dask task per block or tree task, small payloads;
every task reads its inputs from the dataset and writes its outputs there):

1. **fragments** — every block, read with a halo, is cut into watershed fragments
   (:func:`~affinity_dist.kernels.watershed.watershed_block`, cropped to the block, block
   id in the high bits), writes them, its boundary planes and the affinities of its first
   planes, and the contacts inside it (:func:`~affinity_dist.kernels.graph.block_edges`);
2. **graph** — every block adds the contacts across its lower faces (its first planes
   against the last planes of the blocks below), stores the edges it owns
   (``region_graph/<block>``) and agglomerates them as the leaf of the tree reduction;
3. **tree** — each level of the :class:`~affinity_dist.geometry.ReductionTree` merges its
   children's residuals (:func:`~affinity_dist.kernels.agglomerate.reduce_task`); every
   task stores its merges (``merge_tree/<level>/<task>``); the root finishes: the result is
   the whole volume's greedy mean-affinity agglomeration of the fragments, exactly;
4. **cut** — from the root down, every task cuts its merges at the threshold and hands its
   children the segments of the regions they passed up; the blocks relabel their fragments
   (segment id: the smallest fragment id of the segment).

Steps 1-3 are keyed without the threshold (run state ``agglomerate``): a new threshold
redoes only step 4. Outputs are written under staging names and published at the end of
each part, so a failed run leaves the dataset as it was.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, DestinationExistsError
from ..geometry import BlockGrid, ReductionTree, default_block
from ..kernels.agglomerate import Residual, TreeRecord, cut_labels, reduce_task
from ..kernels.fragments import (
    apply_mapping,
    boundary_planes,
    face_row_lengths,
    global_ids,
    pack_planes,
    plane_shapes,
    unpack_planes,
    untile,
)
from ..kernels.graph import (
    affinity_scale,
    block_edges,
    face_edges,
    face_fragments,
    merge_edges,
    native_affinities,
)
from ..kernels.watershed import SEED_THRESHOLDS, watershed_block
from ..options import SegmentOptions
from ..runtime.scheduling import BlockCounts, LocalScheduler
from ..runtime.state import StageState, array_key, recording, run_recorded
from ..storage import (
    Volume,
    check_chunk_alignment,
    create_volume,
    create_work_array,
    delete_node,
    move_node,
    open_dataset,
    open_volume,
    read_record,
    rename_volume,
    write_record,
)

__all__ = ["AgglomeratePlan", "AgglomerateSummary", "prepare_agglomerate", "run_agglomerate"]

log = logging.getLogger(__name__)
WORK = "_agglomerate_work"
CUT = "_segment_cut"
STAGED = {"fragments": "_staging_fragments", "merge_tree": "_staging_merge_tree",
          "region_graph": "_staging_region_graph", "segmentation": "_staging_segmentation"}
#: Bump when a change of this module changes what it writes (keys the run state).
VERSION = 1
#: Default segment threshold (mean contact affinity) when the affinities name none.
DEFAULT_THRESHOLD = 0.5
HALO_NM_VOXELS = 16  # default halo: this many voxels of the finest axis, in nm per axis


@dataclass(frozen=True)
class AgglomeratePlan:
    """A validated agglomeration run."""

    dataset: str
    threshold: float
    grid: BlockGrid
    chunks: tuple[int, int, int]
    aff_dtype: str
    halo: tuple[int, int, int]
    watershed: dict[str, Any]  # options of watershed_block
    fanout: tuple[int, int, int]
    floor: float
    overwrite: bool
    token: str = ""
    affinities_key: str = ""
    voxel_size: tuple[float, ...] = (1.0, 1.0, 1.0)
    offset: tuple[float, ...] = (0.0, 0.0, 0.0)

    @property
    def scale(self) -> int:
        return affinity_scale(np.dtype(self.aff_dtype))

    @property
    def tree(self) -> ReductionTree:
        return ReductionTree(self.grid.grid_shape, self.fanout)

    @property
    def tree_state(self) -> StageState:
        """Fragments, region graph and merge tree: keyed by all but the threshold."""
        return StageState.of(self.dataset, "agglomerate", {
            "version": VERSION, "affinities": self.affinities_key,
            "block": list(self.grid.block_shape), "chunks": list(self.chunks),
            "halo": list(self.halo), "watershed": self.watershed,
            "fanout": list(self.fanout), "floor": self.floor})

    @property
    def state(self) -> StageState:
        """The segmentation: the merge tree's key and the threshold."""
        return StageState.of(self.dataset, "segment", {
            "version": VERSION, "method": "agglomerate", "tree": self.tree_state.key,
            "threshold": self.threshold})

    @property
    def outputs(self) -> dict[str, str]:
        """Final array name -> staging name of the arrays this run writes."""
        return {"fragments": STAGED["fragments"], "segmentation": STAGED["segmentation"]}

    @property
    def output_keys(self) -> dict[str, str]:
        """The run key each finished output carries (fragments: the merge tree's)."""
        return {"fragments": self.tree_state.key, "segmentation": self.state.key}


@dataclass
class AgglomerateSummary:
    """What a run did: counts and the largest residual per reduction level."""

    num_fragments: int
    num_segments: int
    num_edges: int
    levels: list[dict[str, int]] = field(default_factory=list)


@functools.lru_cache(maxsize=32)
def _cached(dataset: str, name: str, token: str) -> Volume:
    return open_volume(dataset, name, "r+")


def _open(plan: AgglomeratePlan, name: str) -> Volume:
    return _cached(plan.dataset, name, plan.token)


def _path(plan: AgglomeratePlan, *parts: object) -> str:
    return "/".join(str(p) for p in parts)


# ---- 1. fragments ----------------------------------------------------------------------


@dataclass(frozen=True)
class _FragmentBlock:
    plan: AgglomeratePlan

    def __call__(self, block_id: int) -> int:
        plan, grid = self.plan, self.plan.grid
        box = grid.write_box(block_id)
        read, _ = grid.read_box(block_id, plan.halo)
        affs = _open(plan, "affinities").read(read)[:3]
        if affs.dtype.kind == "f" and np.isnan(affs).any():
            raise DataError(f"affinities: block {block_id} at {box.start} holds NaN, "
                            "expected values in [0, 1]")
        native = native_affinities(affs)  # refuses values outside [0, 1]
        crop = box.relative_to(read)
        fragments, n = watershed_block(affs, crop, block_id, plan.chunks, **plan.watershed)
        _open(plan, STAGED["fragments"]).write(box, fragments)
        block = untile(fragments)
        own = native[(slice(None), *crop)]
        labels, aff_length = face_row_lengths(grid.block_shape)
        planes = boundary_planes(block)
        _open(plan, f"{WORK}/labels").array[block_id:block_id + 1] = pack_planes(planes, labels)
        _open(plan, f"{WORK}/affs").array[block_id:block_id + 1] = pack_planes(
            [np.take(own[axis], 0, axis=axis) for axis in range(3)], aff_length)
        u, v, sums, counts = block_edges(block, own)
        write_record(plan.dataset, _path(plan, WORK, "edges", block_id),
                     {"u": u, "v": v, "sums": sums, "counts": counts,
                      "n": np.array([n], np.int64)})
        return n


def _faces(plan: AgglomeratePlan, block_id: int, affinities: bool = False
           ) -> list[NDArray[Any]]:
    """A block's six boundary planes (first0, last0, first1, ...) as global ids, or the
    affinities of its three first planes."""
    shapes = plane_shapes(plan.grid.write_box(block_id).shape)
    if affinities:
        row = np.asarray(_open(plan, f"{WORK}/affs").array[block_id])
        return unpack_planes(row, shapes)
    row = np.asarray(_open(plan, f"{WORK}/labels").array[block_id])
    return [global_ids(p, block_id) for p in
            unpack_planes(row, [s for s in shapes for _ in (0, 1)])]


# ---- 2. graph and leaves ---------------------------------------------------------------


def _sizes(residual: Residual, record: TreeRecord) -> dict[str, int]:
    return {"regions": int(record.up.size), "edges": residual.num_edges,
            "merges": int(record.a.size)}


def _write_task(plan: AgglomeratePlan, level: int, task: int, residual: Residual,
                record: TreeRecord, *, n: int = -1) -> None:
    write_record(plan.dataset, _path(plan, STAGED["merge_tree"], level, task),
                 {"a": record.a, "b": record.b, "score": record.score, "up": record.up,
                  "n": np.array([n], np.int64)})
    if level < plan.tree.num_levels - 1:
        write_record(plan.dataset, _path(plan, WORK, "residual", level, task),
                     residual._asdict())


@dataclass(frozen=True)
class _GraphBlock:
    plan: AgglomeratePlan

    def __call__(self, block_id: int) -> dict[str, int]:
        plan, grid = self.plan, self.plan.grid
        edges = read_record(plan.dataset, _path(plan, WORK, "edges", block_id))
        index = grid.block_index(block_id)
        neighbors = grid.neighbors(block_id)
        own, affs = _faces(plan, block_id), _faces(plan, block_id, affinities=True)
        parts = [(edges["u"], edges["v"], edges["sums"], edges["counts"])]
        for axis in range(3):
            below = neighbors[2 * axis]
            if below >= 0:
                parts.append(face_edges(_faces(plan, below)[2 * axis + 1], own[2 * axis],
                                        affs[axis]))
        u, v, sums, counts = merge_edges(*(np.concatenate([p[i] for p in parts])
                                           for i in range(4)))
        write_record(plan.dataset, _path(plan, STAGED["region_graph"], block_id),
                     {"u": u, "v": v, "sums": sums, "counts": counts})
        frag, nbr = face_fragments(own, neighbors)
        leaf = Residual(u, v, sums, counts, u.copy(), v.copy(), frag, frag.copy(), nbr)
        hi = tuple(i + 1 for i in index)
        residual, record = reduce_task([leaf], grid.grid_shape, index, hi, scale=plan.scale,
                                       floor=plan.floor)
        _write_task(plan, 0, block_id, residual, record, n=int(edges["n"][0]))
        return {**_sizes(residual, record), "edges_owned": int(u.size)}


# ---- 3. tree ---------------------------------------------------------------------------


def _read_residual(plan: AgglomeratePlan, level: int, task: int) -> Residual:
    fields = read_record(plan.dataset, _path(plan, WORK, "residual", level, task))
    return Residual(**fields)


def _read_tree(plan: AgglomeratePlan, level: int, task: int, staged: bool = False
               ) -> dict[str, NDArray[Any]]:
    root = STAGED["merge_tree"] if staged else "merge_tree"
    return read_record(plan.dataset, _path(plan, root, level, task))


@dataclass(frozen=True)
class _TreeTask:
    plan: AgglomeratePlan
    level: int

    def __call__(self, task: int) -> dict[str, int]:
        plan, tree = self.plan, self.plan.tree
        children = [_read_residual(plan, self.level - 1, c)
                    for c in tree.children(self.level, task)]
        residual, record = reduce_task(children, plan.grid.grid_shape,
                                       *tree.extent(self.level, task), scale=plan.scale,
                                       floor=plan.floor)
        _write_task(plan, self.level, task, residual, record)
        return _sizes(residual, record)


# ---- 4. cut and relabel ----------------------------------------------------------------


def _parent_labels(plan: AgglomeratePlan, level: int, task: int
                   ) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The segments of the regions a task passed up, as its parent's cut handed them down
    (none at the root)."""
    if level == plan.tree.num_levels - 1:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    got = read_record(plan.dataset, _path(plan, CUT, level, task))
    return got["ids"], got["labels"]


@dataclass(frozen=True)
class _CutTask:
    plan: AgglomeratePlan
    level: int

    def __call__(self, task: int) -> int:
        plan, tree = self.plan, self.plan.tree
        rec = _read_tree(plan, self.level, task)
        record = TreeRecord(rec["a"], rec["b"], rec["score"], rec["up"])
        kids = tree.children(self.level, task)
        ups = [_read_tree(plan, self.level - 1, c)["up"] for c in kids]
        queries = np.concatenate([np.zeros(0, np.uint64), *ups])
        labels = cut_labels(record, plan.threshold, *_parent_labels(plan, self.level, task),
                            queries)
        start = 0
        for child, up in zip(kids, ups, strict=True):
            write_record(plan.dataset, _path(plan, CUT, self.level - 1, child),
                         {"ids": up, "labels": labels[start:start + up.size]})
            start += up.size
        return len(kids)


@dataclass(frozen=True)
class _RelabelBlock:
    plan: AgglomeratePlan

    def __call__(self, block_id: int) -> int:
        plan = self.plan
        rec = _read_tree(plan, 0, block_id)
        n = int(rec["n"][0])
        record = TreeRecord(rec["a"], rec["b"], rec["score"], rec["up"])
        local = np.arange(n + 1, dtype=np.uint64)
        queries = global_ids(local[1:], block_id)
        labels = cut_labels(record, plan.threshold, *_parent_labels(plan, 0, block_id),
                            queries)
        mapping = np.concatenate([np.zeros(1, np.uint64), labels])
        box = plan.grid.write_box(block_id)
        fragments = _open(plan, "fragments").read(box)
        _open(plan, STAGED["segmentation"]).write(
            box, apply_mapping(fragments, mapping, tile=plan.chunks, in_place=True))
        # a segment is counted by the block of its smallest fragment, which is its id
        return int(np.count_nonzero(labels == queries))


# ---- the driver ------------------------------------------------------------------------


def default_halo(voxel_size: tuple[float, ...]) -> tuple[int, int, int]:
    """:data:`HALO_NM_VOXELS` voxels of the finest axis, in nm, on every axis.

    >>> default_halo((40.0, 4.0, 4.0))
    (2, 16, 16)
    """
    finest = min(voxel_size)
    z, y, x = (max(1, math.ceil(HALO_NM_VOXELS * finest / v)) for v in voxel_size)
    return z, y, x


def prepare_agglomerate(dataset: str | os.PathLike[str], o: SegmentOptions, *,
                        overwrite: bool = False) -> AgglomeratePlan:
    """Validate an agglomeration run against the dataset without writing anything."""
    affs = open_volume(dataset, "affinities")  # shape and dtype checked by prepare_segment
    if o.min_size:
        raise DataError(f"--min-size: got {o.min_size} with --method agglomerate, which "
                        "assigns every voxel; expected 0 (or --method cc)")
    cz, cy, cx = o.chunks if o.chunks is not None else affs.chunks[1:]
    shape = affs.spatial_shape
    block = o.block if o.block is not None else default_block((cz, cy, cx))
    check_chunk_alignment(block, (cz, cy, cx), shape)
    group = open_dataset(dataset)
    existing = [n for n in ("fragments", "segmentation") if n in group]
    if existing and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     f"{existing}; expected none (or pass --overwrite)")
    voxel_size = tuple(float(v) for v in affs.voxel_size)
    finest = min(voxel_size)
    watershed = {"seeds_method": o.seeds,
                 "seed_threshold": (SEED_THRESHOLDS[o.seeds] if o.seed_threshold is None
                                    else o.seed_threshold),
                 "min_seed_size": o.min_seed_size, "min_seed_distance": o.min_seed_distance,
                 "sampling": [v / finest for v in voxel_size], "per_section": o.per_section}
    threshold = o.threshold if o.threshold is not None else DEFAULT_THRESHOLD
    if threshold < o.floor:
        raise DataError(f"--threshold: got {threshold}, expected at least the merge tree's "
                        f"floor {o.floor}")
    halo = o.halo if o.halo is not None else default_halo(voxel_size)
    return AgglomeratePlan(str(dataset), float(threshold), BlockGrid(shape, block),
                           (cz, cy, cx), str(affs.dtype), halo, watershed, o.fanout, o.floor,
                           overwrite, uuid.uuid4().hex, array_key(dataset, "affinities"),
                           voxel_size, tuple(float(v) for v in affs.offset))


def _tree_ready(plan: AgglomeratePlan, group: Any) -> bool:
    """Whether fragments and merge tree of this key are in place (a new threshold only
    cuts them)."""
    key = plan.tree_state.key
    return plan.tree_state.complete and all(
        name in group and group[name].attrs.get("run_key") == key
        for name in ("fragments", "merge_tree"))


def _create_tree_outputs(plan: AgglomeratePlan, group: Any) -> None:
    key = plan.tree_state.key
    create_volume(group, STAGED["fragments"], shape=plan.grid.shape, dtype=np.uint64,
                  voxel_size=plan.voxel_size, offset=plan.offset, chunks=plan.chunks,
                  register=False, overwrite=True, attributes={"run_key": key})
    for name in (STAGED["merge_tree"], STAGED["region_graph"]):
        group.require_group(name, overwrite=True).attrs["run_key"] = key
    work = group.require_group(WORK, overwrite=True)
    labels, aff_length = face_row_lengths(plan.grid.block_shape)
    native = np.uint8 if plan.aff_dtype == "uint8" else np.int64
    for kind, dtype, length in (("labels", np.uint32, labels), ("affs", native, aff_length)):
        create_work_array(work, kind, shape=(plan.grid.num_blocks, length), dtype=dtype,
                          chunks=(1, length))
    work.attrs["run_key"] = key  # last: the partial outputs are complete


def _tree_usable(plan: AgglomeratePlan, group: Any) -> bool:
    key = plan.tree_state.key
    return all(name in group and group[name].attrs.get("run_key") == key
               for name in (STAGED["fragments"], STAGED["merge_tree"],
                            STAGED["region_graph"], WORK))


def _build_tree(plan: AgglomeratePlan, group: Any, passes: Callable[..., list[Any]]
                ) -> AgglomerateSummary:
    """Steps 1-3: fragments, region graph, the tree reduction; published at the end."""
    state, tree = plan.tree_state, plan.tree
    if not state.begin(keep=_tree_usable(plan, group)):
        _create_tree_outputs(plan, group)
    blocks = list(plan.grid)
    with recording(state, "segment", lambda: _discard(group, (*STAGED.values(), WORK))):
        clock = time.perf_counter()
        counts = passes(state, "fragments", _FragmentBlock(plan), blocks=blocks)
        log.info("fragments: %d in %d blocks, %.2f s", sum(counts), len(blocks),
                 time.perf_counter() - clock)
        sizes = passes(state, "graph", _GraphBlock(plan), blocks=blocks)
        levels = [_level_sizes(sizes)]
        for level in range(1, tree.num_levels):
            sizes = passes(state, f"tree{level}", _TreeTask(plan, level),
                           blocks=list(range(tree.num_tasks(level))))
            levels.append(_level_sizes(sizes))
        log.info("tree: %d levels, largest residual per level %s", tree.num_levels,
                 [(s["regions"], s["edges"]) for s in levels])
    summary = AgglomerateSummary(int(sum(counts)), 0, int(levels[0]["edges_owned"]), levels)
    key = state.key
    group[STAGED["merge_tree"]].attrs.update({
        "run_key": key, "levels": tree.num_levels, "fanout": list(plan.fanout),
        "grid": list(plan.grid.grid_shape), "floor": plan.floor, "scale": plan.scale,
        "block": list(plan.grid.block_shape), "fragments": summary.num_fragments,
        "residuals": levels})
    for final in ("merge_tree", "region_graph"):
        move_node(group, STAGED[final], final)
    rename_volume(group, STAGED["fragments"], "fragments")
    state.finish({"blocks": len(blocks), "fragments": summary.num_fragments,
                  "levels": levels})
    delete_node(group, WORK)
    return summary


def _level_sizes(sizes: list[dict[str, int]]) -> dict[str, int]:
    """A level's largest residual (regions, edges), its total merges (and owned edges)."""
    out = {"tasks": len(sizes), "regions": max((s["regions"] for s in sizes), default=0),
           "edges": max((s["edges"] for s in sizes), default=0),
           "merges": sum(s["merges"] for s in sizes)}
    if sizes and "edges_owned" in sizes[0]:
        out["edges_owned"] = sum(s["edges_owned"] for s in sizes)
    return out


def _discard(group: Any, names: tuple[str, ...]) -> None:
    for name in names:
        delete_node(group, name)


def run_agglomerate(plan: AgglomeratePlan, *, client: Any | None = None,
                    scheduler: LocalScheduler = "threads", progress: bool = True,
                    counts: BlockCounts | None = None) -> AgglomerateSummary:
    """Execute a validated plan (module docstring). Resumable in both parts; a merge tree
    already built under the same key is only cut again."""
    group = open_dataset(plan.dataset, "r+")
    counts = counts if counts is not None else BlockCounts()

    def passes(state: StageState, step: str, fn: Callable[[int], Any], *,
               blocks: list[int], previous: bool = True) -> list[Any]:
        return run_recorded(state, step, fn, blocks, counts, previous=previous,
                            client=client, scheduler=scheduler, progress=progress,
                            release=False)

    if _tree_ready(plan, group):
        done = plan.tree_state.summary()
        summary = AgglomerateSummary(int(done.get("fragments", 0)), 0, 0,
                                     list(done.get("levels", [])))
        log.info("merge tree of this key in place: cutting it at %g", plan.threshold)
    else:
        summary = _build_tree(plan, group, passes)
    state, tree = plan.state, plan.tree
    key = state.key
    usable = (STAGED["segmentation"] in group and CUT in group and
              group[STAGED["segmentation"]].attrs.get("run_key") == key)
    if not state.begin(keep=usable):
        affs = open_volume(plan.dataset, "affinities")
        create_volume(group, STAGED["segmentation"], shape=plan.grid.shape, dtype=np.uint64,
                      voxel_size=affs.voxel_size, offset=affs.offset, chunks=plan.chunks,
                      register=False, overwrite=True, attributes={"run_key": key})
        group.require_group(CUT, overwrite=True).attrs["run_key"] = key
    with recording(state, "segment", lambda: _discard(group, (STAGED["segmentation"], CUT))):
        for level in range(tree.num_levels - 1, 0, -1):
            passes(state, f"cut{level}", _CutTask(plan, level),
                   blocks=list(range(tree.num_tasks(level))))
        segments = passes(state, "relabel", _RelabelBlock(plan), blocks=list(plan.grid))
    summary.num_segments = int(sum(segments))
    group[STAGED["segmentation"]].attrs.update({"threshold": plan.threshold,
                                                "merge_tree": plan.tree_state.key})
    rename_volume(group, STAGED["segmentation"], "segmentation")
    state.finish({"blocks": plan.grid.num_blocks, "segments": summary.num_segments,
                  "fragments": summary.num_fragments, "threshold": plan.threshold})
    delete_node(group, CUT)
    return summary
