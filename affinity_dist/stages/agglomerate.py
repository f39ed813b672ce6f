"""Segment by agglomeration (``segment --method agglomerate``, the default).

The driver reads as the algorithm (one Dask task per block or tree task, small payloads;
every task reads its inputs from the dataset and writes its outputs there):

1. **fragments** — every block, read with a halo, is cut into watershed fragments
   (:func:`~affinity_dist.kernels.watershed.watershed_block`, cropped to the block, block
   id in the high bits), writes them, its boundary planes and the affinities of its first
   planes, and the contacts inside it (:func:`~affinity_dist.kernels.graph.block_edges`);
2. **graph** — every block adds the contacts across its lower faces (its first planes
   against the last planes of the blocks below) and agglomerates the edges it owns as
   its leaf of the tree reduction; one task per leaf group (the blocks under a task of
   tree level 1) stores its blocks' edges and merges in one record each
   (``region_graph/0/<group>``, ``merge_tree/0/<group>``: a part per block);
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

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError
from ..geometry import BlockGrid, ReductionTree
from ..kernels.graph import affinity_scale
from ..kernels.watershed import SEED_THRESHOLDS
from ..options import SegmentOptions
from ..runtime.scheduling import BlockCounts, LocalScheduler
from ..runtime.state import StageState, array_key, recording, run_recorded
from ..storage import (
    Volume,
    create_volume,
    delete_node,
    move_node,
    open_dataset,
    open_volume,
    rename_volume,
)
from .agglomerate_tasks import (
    CUT,
    STAGED,
    WORK,
    CutTask,
    FragmentBlock,
    GraphGroup,
    RelabelBlock,
    SizeGroup,
    TreeTask,
)
from .segment_tasks import create_face_arrays

__all__ = ["AgglomeratePlan", "AgglomerateSummary", "LevelSizes", "SegmentSummary",
           "prepare_agglomerate", "run_agglomerate"]

log = logging.getLogger(__name__)
#: Bump when a change of this module changes what it writes (keys the run state).
VERSION = 3  # 2: region graph records hold face rows and fragment sizes; 3: leaves
# recorded per leaf group
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
    min_size: int = 0  # > 0: the size tree (small segments into their best neighbour)
    shards: tuple[int, int, int] | None = None  # of the outputs (one per block), or none

    @property
    def scale(self) -> int:
        return affinity_scale(np.dtype(self.aff_dtype))

    @property
    def tree(self) -> ReductionTree:
        return ReductionTree(self.grid.grid_shape, self.fanout)

    @property
    def planar(self) -> bool:
        """``--within-sections``: no fragment, contact or merge across z sections."""
        return bool(self.watershed.get("planar", False))

    @property
    def tree_state(self) -> StageState:
        """Fragments, region graph and merge tree: keyed by all but the threshold."""
        return StageState.of(self.dataset, "agglomerate", {
            "version": VERSION, "affinities": self.affinities_key,
            "block": list(self.grid.block_shape), "chunks": list(self.chunks),
            "halo": list(self.halo), "watershed": self.watershed,
            "fanout": list(self.fanout), "floor": self.floor,
            **({"shards": list(self.shards)} if self.shards else {})})

    @property
    def state(self) -> StageState:
        """The segmentation: the merge tree's key and the threshold."""
        return StageState.of(self.dataset, "segment", {
            "version": VERSION, "method": "agglomerate", "tree": self.tree_state.key,
            "threshold": self.threshold, "min_size": self.min_size})

    @property
    def outputs(self) -> dict[str, str]:
        """Final array name -> staging name of the arrays this run writes."""
        return {"fragments": STAGED["fragments"], "segmentation": STAGED["segmentation"]}

    @property
    def output_keys(self) -> dict[str, str]:
        """The run key each finished output carries (fragments: the merge tree's)."""
        return {"fragments": self.tree_state.key, "segmentation": self.state.key}


@dataclass
class SegmentSummary:
    """What a segment run did (either method): counts and the largest residual per
    reduction level."""

    num_fragments: int
    num_segments: int
    num_edges: int
    levels: list[dict[str, int]] = field(default_factory=list)
    size_levels: list[dict[str, int]] = field(default_factory=list)  # with min_size


AgglomerateSummary = SegmentSummary


# ---- the driver ------------------------------------------------------------------------


def default_halo(voxel_size: tuple[float, ...]) -> tuple[int, int, int]:
    """:data:`HALO_NM_VOXELS` voxels of the finest axis, in nm, on every axis.

    >>> default_halo((40.0, 4.0, 4.0))
    (2, 16, 16)
    """
    finest = min(voxel_size)
    z, y, x = (max(1, math.ceil(HALO_NM_VOXELS * finest / v)) for v in voxel_size)
    return z, y, x


def prepare_agglomerate(dataset: str | os.PathLike[str], o: SegmentOptions, affs: Volume,
                        grid: BlockGrid, chunks: tuple[int, int, int], *, threshold: float,
                        overwrite: bool = False, shards: tuple[int, int, int] | None = None
                        ) -> AgglomeratePlan:
    """The agglomeration part of :func:`~affinity_dist.stages.segment.prepare_segment`,
    which checks the affinities, block, chunks and existing outputs and resolves the
    threshold first."""
    voxel_size = tuple(float(v) for v in affs.voxel_size)
    finest = min(voxel_size)
    watershed = {"seeds_method": o.seeds,
                 "seed_threshold": (SEED_THRESHOLDS[o.seeds] if o.seed_threshold is None
                                    else o.seed_threshold),
                 "min_seed_size": o.min_seed_size, "min_seed_distance": o.min_seed_distance,
                 "sampling": [v / finest for v in voxel_size],
                 "per_section": o.per_section,
                 **({"planar": True} if o.within_sections else {})}
    if threshold < o.floor:
        raise DataError(f"--threshold: got {threshold}, expected at least the merge tree's "
                        f"floor {o.floor}")
    halo = o.halo if o.halo is not None else default_halo(voxel_size)
    return AgglomeratePlan(str(dataset), float(threshold), grid, chunks, str(affs.dtype),
                           halo, watershed, o.fanout, o.floor,
                           overwrite, uuid.uuid4().hex, array_key(dataset, "affinities"),
                           voxel_size, tuple(float(v) for v in affs.offset), o.min_size,
                           shards)


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
                  shards=plan.shards, register=False, overwrite=True,
                  attributes={"run_key": key})
    for name in (STAGED["merge_tree"], STAGED["region_graph"]):
        group.require_group(name, overwrite=True).attrs["run_key"] = key
    work = group.require_group(WORK, overwrite=True)
    create_face_arrays(work, plan.grid.block_shape, plan.grid.num_blocks,
                       np.uint8 if plan.aff_dtype == "uint8" else np.int64)  # native units
    work.attrs["run_key"] = key  # last: the partial outputs are complete


def _tree_usable(plan: AgglomeratePlan, group: Any) -> bool:
    key = plan.tree_state.key
    return all(name in group and group[name].attrs.get("run_key") == key
               for name in (STAGED["fragments"], STAGED["merge_tree"],
                            STAGED["region_graph"], WORK))


def _build_tree(plan: AgglomeratePlan, group: Any, passes: Callable[..., list[Any]]
                ) -> SegmentSummary:
    """Steps 1-3: fragments, region graph, the tree reduction; published at the end."""
    state, tree = plan.tree_state, plan.tree
    if not state.begin(keep=_tree_usable(plan, group)):
        _create_tree_outputs(plan, group)
    blocks = plan.grid.blocks
    with recording(state, "segment", lambda: _discard(group, (*STAGED.values(), WORK))):
        clock = time.perf_counter()
        fragments = Total()
        passes(state, "fragments", FragmentBlock(plan), blocks=blocks, reduce=fragments)
        log.info("fragments: %d in %d blocks, %.2f s", fragments.n, len(blocks),
                 time.perf_counter() - clock)
        levels = [_level(passes, state, "graph", GraphGroup(plan),
                         range(tree.num_leaf_groups))]
        for level in range(1, tree.num_levels):
            levels.append(_level(passes, state, f"tree{level}", TreeTask(plan, level),
                                 range(tree.num_tasks(level))))
        log.info("tree: %d levels, largest residual per level %s", tree.num_levels,
                 [(s["regions"], s["edges"]) for s in levels])
    summary = SegmentSummary(fragments.n, 0, int(levels[0]["edges_owned"]), levels)
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


class Total:
    """The sum of a pass's integer results, taken as they arrive (``run_recorded``'s
    ``reduce``: the client keeps nothing per block)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, _: int, result: int) -> None:
        self.n += int(result)


class LevelSizes:
    """A tree level's largest residual (regions, edges), its total merges (and owned
    edges), from its tasks' counts as they arrive; a leaf group's task gives a list, one
    per block (the leaves are counted per block)."""

    def __init__(self) -> None:
        self.out = {"tasks": 0, "regions": 0, "edges": 0, "merges": 0}

    def __call__(self, _: int, result: dict[str, int] | list[dict[str, int]]) -> None:
        out = self.out
        for counts in result if isinstance(result, list) else [result]:
            out["tasks"] += 1
            out["regions"] = max(out["regions"], int(counts["regions"]))
            out["edges"] = max(out["edges"], int(counts["edges"]))
            out["merges"] += int(counts["merges"])
            if "edges_owned" in counts:
                out["edges_owned"] = out.get("edges_owned", 0) + int(counts["edges_owned"])


def _level(passes: Callable[..., list[Any]], state: StageState, step: str,
           fn: Callable[[int], Any], tasks: Sequence[int]) -> dict[str, int]:
    """One level's pass, its tasks' counts reduced as they arrive."""
    level = LevelSizes()
    passes(state, step, fn, blocks=tasks, reduce=level)
    return level.out


def _discard(group: Any, names: tuple[str, ...]) -> None:
    for name in names:
        delete_node(group, name)


def run_agglomerate(plan: AgglomeratePlan, *, client: Any | None = None,
                    scheduler: LocalScheduler = "threads", progress: bool = True,
                    counts: BlockCounts | None = None) -> SegmentSummary:
    """Execute a validated plan (module docstring). Resumable in both parts; a merge tree
    already built under the same key is only cut again."""
    group = open_dataset(plan.dataset, "r+")
    counts = counts if counts is not None else BlockCounts()

    def passes(state: StageState, step: str, fn: Callable[[int], Any], *,
               blocks: Sequence[int], previous: bool = True,
               reduce: Callable[[int, Any], None] | None = None) -> list[Any]:
        return run_recorded(state, step, fn, blocks, counts, previous=previous,
                            client=client, scheduler=scheduler, progress=progress,
                            release=False, reduce=reduce)

    if _tree_ready(plan, group):
        done = plan.tree_state.summary()
        summary = SegmentSummary(int(done.get("fragments", 0)), 0, 0,
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
                      shards=plan.shards, register=False, overwrite=True,
                      attributes={"run_key": key})
        group.require_group(CUT, overwrite=True).attrs["run_key"] = key
    size = plan.min_size > 0
    with recording(state, "segment", lambda: _discard(group, (STAGED["segmentation"], CUT))):
        if size:  # the size tree of this threshold: small segments into their neighbours
            summary.size_levels = [_level(passes, state, "size0", SizeGroup(plan),
                                          range(tree.num_leaf_groups))]
            for level in range(1, tree.num_levels):
                summary.size_levels.append(_level(
                    passes, state, f"size{level}", TreeTask(plan, level, size=True),
                    range(tree.num_tasks(level))))
        for level in range(tree.num_levels - 1, 0, -1):
            passes(state, f"cut{level}", CutTask(plan, level, size),
                   blocks=range(tree.num_tasks(level)), reduce=Total())
        segments = Total()
        passes(state, "relabel", RelabelBlock(plan, size), blocks=plan.grid.blocks,
               reduce=segments)
    summary.num_segments = segments.n
    group[STAGED["segmentation"]].attrs.update({"threshold": plan.threshold,
                                                "min_size": plan.min_size,
                                                "merge_tree": plan.tree_state.key})
    rename_volume(group, STAGED["segmentation"], "segmentation")
    state.finish({"blocks": plan.grid.num_blocks, "segments": summary.num_segments,
                  "fragments": summary.num_fragments, "threshold": plan.threshold})
    delete_node(group, CUT)
    return summary
