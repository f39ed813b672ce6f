"""Segment: affinities -> fragments -> global merge -> consecutive segmentation.

The driver reads as the algorithm (one Dask task per block or tree task in every pass,
small payloads; :mod:`.segment_tasks` holds the tasks):

1. **fragments** — every block labels the connected components of its own affinity graph
   (:func:`~affinity_dist.kernels.fragments.label_block`), writes them with globally unique
   ids (block id in the high bits), saves its six boundary planes and the affinities of
   its first planes to small face arrays, and returns its counts;
2. **leaves** — every block pairs its planes with those of its six neighbours: the
   fragment pairs joined across its faces, its leaf of the tree reduction (one task and
   one record per group of blocks under a level-1 task, not per block);
3. **tree** — each level of the :class:`~affinity_dist.geometry.ReductionTree` joins its
   children's components along the pairs inside its extent
   (:func:`~affinity_dist.kernels.cc_tree.reduce_components`); a component with a pair
   leaving the extent is passed up, the others are final. No process holds all pairs:
   the client holds O(blocks) counts;
4. **cut** — from the root down, every task numbers its final components from its base
   (a prefix sum of the kept ones per task, after the blocks' unmerged fragments) and
   hands its children the ids of the components they passed up (``lookup/``);
5. **relabel** — every block maps its fragments to consecutive segment ids 1..K.

The result equals the connected components of the whole volume's affinity graph, for any
block shape and fan-out. Outputs are written under staging names and renamed into place
at the end, so a failed run leaves the dataset as it was.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, DestinationExistsError
from ..geometry import BlockGrid, ReductionTree, default_block
from ..kernels.fragments import native_threshold
from ..options import SegmentOptions
from ..runtime.locks import check_free, leased
from ..runtime.scheduling import BlockCounts, LocalScheduler
from ..runtime.state import StageState, array_key, recording, run_recorded
from ..storage import (
    DEFAULT_CHUNKS,
    Volume,
    check_chunk_alignment,
    create_volume,
    dataset_from_array,
    delete_node,
    move_node,
    open_dataset,
    open_volume,
    rename_volume,
    shard_shape,
    write_record,
)
from ..storage.location import as_path
from .agglomerate import LevelSizes, SegmentSummary
from .segment_tasks import (
    COUNTS,
    INDEX,
    LOOKUP,
    STAGED,
    WORK,
    CutTask,
    FragmentBlock,
    LeafGroup,
    RelabelBlock,
    TreeTask,
    create_face_arrays,
)

__all__ = ["SegmentPlan", "prepare_segment", "run_segment", "segment"]

log = logging.getLogger(__name__)
#: Default threshold of either method when the affinities name none.
DEFAULT_THRESHOLD = 0.5
#: Bump when a change of this module changes what segment writes (keys the run state).
VERSION = 4  # 2: face planes in one row per block; 3: the tree reduction; 4: leaves and labels
# recorded per parent task


@dataclass(frozen=True)
class SegmentPlan:
    """A validated segment run."""

    dataset: str
    threshold: float
    grid: BlockGrid
    chunks: tuple[int, int, int]
    aff_dtype: str
    min_size: int
    overwrite: bool
    keep_fragments: bool = True
    token: str = ""  # unique per prepared run: keys the per-process cache of open arrays
    affinities_key: str = ""
    fanout: tuple[int, int, int] = (2, 2, 2)
    shards: tuple[int, int, int] | None = None  # of the outputs (one per block), or none

    @property
    def tree(self) -> ReductionTree:
        return ReductionTree(self.grid.grid_shape, self.fanout)

    @property
    def state(self) -> StageState:
        """The run state: keyed by the affinities and every option that decides the result."""
        return StageState.of(self.dataset, "segment", {
            "version": VERSION, "affinities": self.affinities_key,
            "threshold": self.threshold, "block": list(self.grid.block_shape),
            "chunks": list(self.chunks), "min_size": self.min_size,
            "keep_fragments": self.keep_fragments, "fanout": list(self.fanout),
            **({"shards": list(self.shards)} if self.shards else {})})

    @property
    def outputs(self) -> dict[str, str]:
        """Final array name -> staging name of every array this run writes."""
        names = ("fragments", "segmentation") if self.keep_fragments else ("segmentation",)
        return {name: STAGED[name] for name in names}

    @property
    def output_keys(self) -> dict[str, str]:
        """The run key each finished output carries."""
        return {name: self.state.key for name in self.outputs}


def default_threshold(attrs: Any, method: str) -> float:
    """The threshold tuned for the model that made the affinities (``segment_defaults`` in
    their attributes, copied by predict from the checkpoint), else 0.5; a stored value is
    checked before it is used."""
    defaults = attrs.get("segment_defaults")
    entry = defaults.get(method) if isinstance(defaults, dict) else None
    value = entry.get("threshold") if isinstance(entry, dict) else None
    if value is None:
        return DEFAULT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise DataError(f"affinities: got segment_defaults.{method}.threshold = {value!r} in "
                        "their attributes, expected a number in [0, 1] (or pass --threshold)")
    return float(value)


def prepare_segment(dataset: str | os.PathLike[str], options: SegmentOptions | None = None,
                    *, overwrite: bool = False, **kwargs: Any) -> Any:
    """Validate a segment run against the dataset without writing anything: a
    :class:`SegmentPlan` (``method`` "cc") or an
    :class:`~affinity_dist.stages.agglomerate.AgglomeratePlan`."""
    o = SegmentOptions.of(options, **kwargs)
    check_free(dataset, "segment")  # a live run holds the outputs: refuse before any work
    affs = open_volume(dataset, "affinities")
    threshold = default_threshold(affs.attrs, o.method) if o.threshold is None else o.threshold
    if len(affs.shape) != 4:
        raise DataError(f"affinities: got {len(affs.shape)}D array of shape {affs.shape}, "
                        "expected 4D (c, z, y, x)")
    if affs.shape[0] < 3:
        raise DataError(f"affinities: got {affs.shape[0]} channels, expected at least 3 "
                        "(-z, -y, -x)")
    native_threshold(threshold, affs.dtype)  # validates the dtype
    if o.within_sections and o.method != "agglomerate":
        raise ConfigError(f"--within-sections: got --method {o.method}, expected --method "
                          "agglomerate")
    cz, cy, cx = o.chunks if o.chunks is not None else affs.chunks[1:]  # of the outputs
    shape = affs.spatial_shape
    block = o.block if o.block is not None else default_block((cz, cy, cx), shape)
    check_chunk_alignment(block, (cz, cy, cx), shape)
    shards = shard_shape(o.shards, shape, (cz, cy, cx), block)
    group = open_dataset(dataset)
    existing = [n for n in ("fragments", "segmentation") if n in group]
    if existing and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     f"{existing}; expected none (or pass --overwrite)")
    if o.method == "agglomerate":
        from .agglomerate import prepare_agglomerate

        return prepare_agglomerate(dataset, o, affs, BlockGrid(shape, block), (cz, cy, cx),
                                   threshold=threshold, overwrite=overwrite, shards=shards)
    return SegmentPlan(str(dataset), threshold, BlockGrid(shape, block), (cz, cy, cx),
                       str(affs.dtype), o.min_size, overwrite, o.keep_fragments,
                       uuid.uuid4().hex, array_key(dataset, "affinities"), o.fanout, shards)


def _usable(group: Any, plan: SegmentPlan) -> bool:
    """Whether an interrupted run with this key left its partial outputs in place."""
    key = plan.state.key
    return all(name in group and group[name].attrs.get("run_key") == key
               for name in (*plan.outputs.values(), WORK, LOOKUP))


def _create_outputs(plan: SegmentPlan, group: Any, affs: Volume) -> None:
    """The staged outputs and face arrays, stamped with the run key (the face arrays last)."""
    grid, key = plan.grid, plan.state.key
    common: dict[str, Any] = {"shape": grid.shape, "voxel_size": affs.voxel_size,
                              "offset": affs.offset, "chunks": plan.chunks,
                              "shards": plan.shards,
                              "register": False, "attributes": {"run_key": key}}
    for name in plan.outputs.values():
        create_volume(group, name, dtype=np.uint64, overwrite=True, **common)
    work = group.require_group(WORK, overwrite=True)
    create_face_arrays(work, grid.block_shape, grid.num_blocks, plan.aff_dtype)
    group.require_group(LOOKUP, overwrite=True).attrs["run_key"] = key
    work.attrs["run_key"] = key  # last: the partial outputs are complete


def _discard(plan: SegmentPlan, group: Any) -> None:
    """Remove the partial outputs (a run stopped by bad input)."""
    for name in (*plan.outputs.values(), WORK, LOOKUP):
        delete_node(group, name)


class _Counts:
    """Named counts of a pass's tasks, one int64 array per name indexed by task, filled as
    the results arrive (``run_recorded``'s ``reduce``: numbers, not an object per task),
    and the pass's :class:`~.agglomerate.LevelSizes`. A leaf group's task gives a list,
    one per block of the group (``tree``: its groups' blocks)."""

    def __init__(self, names: Sequence[str], size: int, tree: Any = None) -> None:
        self.arrays = {name: np.zeros(size, np.int64) for name in names}
        self.tree, self.level, self.edges = tree, LevelSizes(), 0

    def __call__(self, task: int, result: dict[str, int] | list[dict[str, int]]) -> None:
        if isinstance(result, list):
            for block, counts in zip(self.tree.leaf_group(task), result, strict=True):
                self(block, counts)
            return
        for name, array in self.arrays.items():
            array[task] = result[name]
        if "regions" in result:
            self.level(task, result)
            self.edges += int(result["edges"])


def _fragments(plan: SegmentPlan, passes: Callable[..., list[Any]]) -> int:
    """1. Every block's fragments and face planes, written; its counts, stored for the
    leaves (O(blocks) numbers). Returns the number of fragments."""
    clock = time.perf_counter()
    counts = _Counts(("fragments", "small"), plan.grid.num_blocks)
    passes("fragments", FragmentBlock(plan), plan.grid.blocks, reduce=counts)
    write_record(plan.dataset, COUNTS, counts.arrays)
    total = int(counts.arrays["fragments"].sum())
    log.info("fragments: %d in %d blocks, %.2f s", total, plan.grid.num_blocks,
             time.perf_counter() - clock)
    return total


def _reduce(plan: SegmentPlan, passes: Callable[..., list[Any]]) -> list[_Counts]:
    """2.-3. The leaves (every block's face pairs) and the tree levels above them: each
    level's counts (the leaves first: per block; then per task)."""
    clock = time.perf_counter()
    tree = plan.tree
    levels = [_Counts(("unmerged", "final"), plan.grid.num_blocks, tree)]
    passes("leaves", LeafGroup(plan), range(tree.num_leaf_groups), reduce=levels[0])
    for level in range(1, tree.num_levels):
        levels.append(_Counts(("final",), tree.num_tasks(level)))
        passes(f"tree{level}", TreeTask(plan, level), range(tree.num_tasks(level)),
               reduce=levels[-1])
    log.info("tree: %d levels, largest residual per level %s in %.2f s", tree.num_levels,
             [(c.level.out["regions"], c.level.out["edges"]) for c in levels],
             time.perf_counter() - clock)
    return levels


def _number(plan: SegmentPlan, levels: Sequence[_Counts]) -> int:
    """The numbering, stored for the cut and relabel: each block's unmerged fragments
    from its offset, then each task's kept final components from its base (a prefix sum
    over blocks, then over levels and tasks). Returns the number of segments."""
    unmerged = levels[0].arrays["unmerged"]
    offsets = np.concatenate([[0], np.cumsum(unmerged)[:-1]]).astype(np.int64)
    kept = np.concatenate([c.arrays["final"] for c in levels])
    bases = int(unmerged.sum()) + np.concatenate([[0], np.cumsum(kept)[:-1]]).astype(np.int64)
    write_record(plan.dataset, INDEX, {"offsets": offsets, "bases": bases})
    return int(unmerged.sum() + kept.sum())


def _ignore(task: int, result: Any) -> None:
    """``reduce`` of a pass whose results nothing needs (none kept on the client)."""


def _cut(plan: SegmentPlan, passes: Callable[..., list[Any]]) -> None:
    """4.-5. The cut from the root down, then every block relabelled."""
    clock = time.perf_counter()
    for level in range(plan.tree.num_levels - 1, 0, -1):
        passes(f"cut{level}", CutTask(plan, level), range(plan.tree.num_tasks(level)),
               reduce=_ignore)
    passes("relabel", RelabelBlock(plan), plan.grid.blocks, previous=False, release=True,
           reduce=_ignore)
    log.info("cut and relabel: %.2f s", time.perf_counter() - clock)


def _publish(plan: SegmentPlan, group: Any, state: StageState, summary: SegmentSummary
             ) -> None:
    """The lookup records and the staged arrays moved into place; the stage marked
    complete."""
    group[LOOKUP].attrs.update({
        "run_key": state.key, "threshold": plan.threshold,
        "block": list(plan.grid.block_shape), "fanout": list(plan.fanout),
        "levels": plan.tree.num_levels, "num_segments": summary.num_segments,
        "num_fragments": summary.num_fragments, "residuals": summary.levels})
    delete_node(group, "lookup")
    move_node(group, LOOKUP, "lookup")
    if not plan.keep_fragments:
        delete_node(group, "fragments")  # a stale one would contradict the table
    for final, staged in plan.outputs.items():
        rename_volume(group, staged, final)
    state.finish({"blocks": plan.grid.num_blocks, "segments": summary.num_segments,
                  "levels": summary.levels})
    delete_node(group, WORK)


@leased("segment")
def run_segment(plan: Any, *, client: Any | None = None,
                scheduler: LocalScheduler = "threads", progress: bool = True,
                counts: BlockCounts | None = None) -> SegmentSummary:
    """Execute a validated plan; see :func:`segment`. Returns a
    :class:`~affinity_dist.stages.agglomerate.SegmentSummary` (``num_fragments``,
    ``num_segments``, the largest residual per reduction level).

    The steps of the module docstring, between creating the staged outputs and publishing
    them. Resumable: tasks recorded as done by an interrupted run with the same key (same
    affinities, threshold, block, ...) are not computed again; ``counts`` accumulates the
    tasks computed, skipped and retried over all passes.
    """
    if not isinstance(plan, SegmentPlan):
        from .agglomerate import run_agglomerate

        return run_agglomerate(plan, client=client, scheduler=scheduler, progress=progress,
                               counts=counts)
    group = open_dataset(plan.dataset, "r+")
    affs = open_volume(plan.dataset, "affinities")
    state = plan.state
    passes = functools.partial(run_recorded, state,
                               counts=counts if counts is not None else BlockCounts(),
                               client=client, scheduler=scheduler, progress=progress,
                               release=False)
    if not state.begin(keep=_usable(group, plan)):
        _create_outputs(plan, group, affs)
    with recording(state, "segment", lambda: _discard(plan, group)):
        fragments = _fragments(plan, passes)
        levels = _reduce(plan, passes)
        segments = _number(plan, levels)
        _cut(plan, passes)
    summary = SegmentSummary(fragments, segments, levels[0].edges // 2,
                             [c.level.out for c in levels])
    _publish(plan, group, state, summary)
    return summary


def segment(data: str | os.PathLike[str] | Any, options: SegmentOptions | None = None, *,
            out: str | os.PathLike[str] | None = None,
            voxel_size: Sequence[float] = (1.0, 1.0, 1.0), overwrite: bool = False,
            client: Any | None = None, scheduler: LocalScheduler = "threads",
            progress: bool = True, **kwargs: Any) -> Path:
    """Segment affinities into ``fragments`` and ``segmentation``.

    Parameters
    ----------
    data : a dataset path holding ``affinities`` (c, z, y, x) — the outputs are added to it —
        or a dask/numpy array of affinities, which is first stored as the ``affinities`` of a
        new dataset at ``out`` (with ``voxel_size`` and the options' chunks). uint8 (0-255 =
        0-1) or float; channels 0-2 are the -z, -y, -x affinities.
    options : :class:`~affinity_dist.options.SegmentOptions` (threshold: voxels joined by an
        affinity above it belong to one segment; block; min_size; keep_fragments; chunks),
        or its fields as keyword arguments.
    client : ``distributed.Client``; ``None`` runs in this process (``scheduler``:
        threads or synchronous).

    Returns
    -------
    The dataset path. Its ``lookup/`` group holds the tree's records (attributes:
    ``num_segments``, the residual per level).
    """
    o = SegmentOptions.of(options, **kwargs)
    if isinstance(data, str | os.PathLike):
        dataset: str | os.PathLike[str] = data
    else:
        shape = tuple(getattr(data, "shape", ()))
        if len(shape) != 4 or shape[0] < 3:
            raise DataError(f"affinities: got shape {shape}, expected (c >= 3, z, y, x)")
        native_threshold(o.threshold if o.threshold is not None else DEFAULT_THRESHOLD,
                         np.dtype(data.dtype))  # uint8 or float only
        dataset = dataset_from_array(out, "affinities", data, voxel_size=voxel_size,
                                     chunks=o.chunks or DEFAULT_CHUNKS, overwrite=overwrite)
    plan = prepare_segment(dataset, o, overwrite=overwrite)
    run_segment(plan, client=client, scheduler=scheduler, progress=progress)
    return as_path(dataset)
