"""Segment: affinities -> fragments -> global merge -> consecutive segmentation.

The driver reads as the algorithm (one Dask task per block in every pass, small payloads):

1. **fragments** — every block labels the connected components of its own affinity graph
   (:func:`~affinity_dist.kernels.fragments.label_block`), writes them with globally unique
   ids (block id in the high bits), saves its six boundary planes and the affinities of
   its first planes to small face arrays, and returns its statistics
   (:func:`~affinity_dist.kernels.merge.fragment_stats`);
2. **pairs** — every block pairs its first plane along each axis with the last plane of
   the block below: the ``(2, M)`` fragment pairs joined across that face;
3. **merge** — one union-find over all pairs gives the lookup table
   (:func:`~affinity_dist.kernels.merge.merge_blocks`), written beside the arrays
   (``lookup/``);
4. **relabel** — every block maps its fragments through the table to consecutive ids.

The result equals the connected components of the whole volume's affinity graph, for any
block shape. Outputs are written under staging names and renamed into place at the end, so
a failed run leaves the dataset as it was.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import DataError, DestinationExistsError
from ..geometry import BlockGrid, Box, default_block
from ..kernels.fragments import (
    LOCAL_MASK,
    apply_mapping,
    boundary_planes,
    face_pairs,
    face_row_lengths,
    global_ids,
    label_block,
    native_threshold,
    pack_planes,
    plane_shapes,
    unpack_planes,
)
from ..kernels.merge import (
    FragmentStats,
    LookupTable,
    block_map,
    block_starts,
    fragment_sizes,
    fragment_stats,
    merge_blocks,
)
from ..options import SegmentOptions
from ..runtime.scheduling import BlockCounts, LocalScheduler
from ..runtime.state import StageState, array_key, recording, run_recorded
from ..storage import (
    DEFAULT_CHUNKS,
    Volume,
    check_chunk_alignment,
    create_volume,
    create_work_array,
    dataset_from_array,
    delete_node,
    move_node,
    open_dataset,
    open_volume,
    read_table_slice,
    rename_volume,
    write_table,
)

__all__ = ["SegmentPlan", "prepare_segment", "run_segment", "segment"]

log = logging.getLogger(__name__)
WORK = "_segment_work"
LOOKUP = "_staging_lookup"
STAGED = {"fragments": "_staging_fragments", "segmentation": "_staging_segmentation"}
#: Default threshold of ``--method cc``.
CC_THRESHOLD = 0.5
#: Bump when a change of this module changes what segment writes (keys the run state).
VERSION = 2  # 2: face planes in one row per block


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

    @property
    def state(self) -> StageState:
        """The run state: keyed by the affinities and every option that decides the result."""
        return StageState.of(self.dataset, "segment", {
            "version": VERSION, "affinities": self.affinities_key,
            "threshold": self.threshold, "block": list(self.grid.block_shape),
            "chunks": list(self.chunks), "min_size": self.min_size,
            "keep_fragments": self.keep_fragments})

    @property
    def outputs(self) -> dict[str, str]:
        """Final array name -> staging name of every array this run writes."""
        names = ("fragments", "segmentation") if self.keep_fragments else ("segmentation",)
        return {name: STAGED[name] for name in names}


@functools.lru_cache(maxsize=32)
def _cached(dataset: str, name: str, token: str) -> Volume:
    return open_volume(dataset, name, "r+")


def _open(plan: SegmentPlan, name: str) -> Volume:
    """Array ``name`` of the run, opened once per worker process and run (every open
    parses the group's and the array's metadata: ~1 ms, 10+ times per block)."""
    return _cached(plan.dataset, name, plan.token)


def _write_faces(plan: SegmentPlan, block_id: int, fragments: NDArray[np.uint64],
                 affs: NDArray[Any]) -> list[NDArray[np.uint32]]:
    """Save a block's six boundary planes (local ids) and the affinities of its first
    planes, one row per block in two small arrays: two writes per block, not nine.
    Returns the boundary planes."""
    planes = boundary_planes(fragments)
    labels, aff_length = face_row_lengths(plan.grid.block_shape)
    _open(plan, f"{WORK}/labels").array[block_id:block_id + 1] = pack_planes(planes, labels)
    _open(plan, f"{WORK}/affs").array[block_id:block_id + 1] = pack_planes(
        [np.take(affs[axis], 0, axis=axis) for axis in range(3)], aff_length)
    return planes


def _read_faces(plan: SegmentPlan, block_id: int, affinities: bool = False
                ) -> list[NDArray[Any]]:
    """A block's planes as written by :func:`_write_faces`: first and last plane of each
    axis (first0, last0, first1, ...), or the three affinity planes."""
    shapes = plane_shapes(plan.grid.write_box(block_id).shape)
    name, shapes = (("affs", shapes) if affinities else
                    ("labels", [s for s in shapes for _ in (0, 1)]))
    return unpack_planes(np.asarray(_open(plan, f"{WORK}/{name}").array[block_id]), shapes)


def _label(plan: SegmentPlan, block_id: int, tiled: bool = True
           ) -> tuple[Box, NDArray[Any], NDArray[np.uint64], int]:
    """Read a block's affinities (refusing NaN) and label its fragments (global ids),
    tiled by the chunk shape where it divides the block (written chunk by chunk with no
    copy: a 256^3 uint64 block in 34 ms instead of 55)."""
    box = plan.grid.write_box(block_id)
    affs = _open(plan, "affinities").read(box)[:3]
    if affs.dtype.kind == "f" and np.isnan(affs).any():
        raise DataError(f"affinities: block {block_id} at {box.start} holds NaN, "
                        "expected values in [0, 1]")
    fragments, n = label_block(affs, plan.threshold, block_id,
                               plan.chunks if tiled else None)
    return box, affs, fragments, n


@dataclass(frozen=True)
class _FragmentBlock:
    plan: SegmentPlan

    def __call__(self, block_id: int) -> FragmentStats:
        plan = self.plan
        box, affs, fragments, n = _label(plan, block_id)
        if plan.keep_fragments:
            _open(plan, STAGED["fragments"]).write(box, fragments)
        planes = _write_faces(plan, block_id, fragments, affs)
        return fragment_stats(fragments, n, block_id, planes, plan.min_size)


@dataclass(frozen=True)
class _PairBlock:
    plan: SegmentPlan

    def __call__(self, block_id: int) -> NDArray[np.uint64]:
        plan, grid = self.plan, self.plan.grid
        index = grid.block_index(block_id)
        pairs = [np.zeros((2, 0), np.uint64)]
        if not any(index):
            return pairs[0]
        labels, affs = _read_faces(plan, block_id), _read_faces(plan, block_id, True)
        for axis in range(3):
            if index[axis] == 0:
                continue
            below = grid.block_id(tuple(i - (a == axis) for a, i in enumerate(index)))
            p = face_pairs(_read_faces(plan, below)[2 * axis + 1], labels[2 * axis],
                           affs[axis], plan.threshold)
            pairs.append(np.stack([global_ids(p[0], below), global_ids(p[1], block_id)]))
        return np.concatenate(pairs, axis=1)


@functools.lru_cache(maxsize=4)
def _block_index(dataset: str, token: str) -> tuple[NDArray[np.int64], ...]:
    """The lookup table's per-block arrays (O(blocks), read once per worker and run)."""
    return tuple(read_table_slice(dataset, LOOKUP, key).astype(np.int64)
                 for key in ("counts", "offsets", "starts"))


def _block_mapping(plan: SegmentPlan, block_id: int, min_size: int,
                   sizes: NDArray[Any] | None) -> NDArray[np.uint64]:
    """A block's dense id map, from its slice of the stored table: a task never carries
    the table (10^8 merged fragments on a terabyte volume), only its block id."""
    counts, offsets, starts = _block_index(plan.dataset, plan.token)
    a, b = int(starts[block_id]), int(starts[block_id + 1])
    ids = read_table_slice(plan.dataset, LOOKUP, "fragment_ids", a, b)
    seg = read_table_slice(plan.dataset, LOOKUP, "segment_ids", a, b)
    return block_map(ids & LOCAL_MASK, seg, int(counts[block_id]), int(offsets[block_id]),
                     min_size=min_size, sizes=sizes)


@dataclass(frozen=True)
class _RelabelBlock:
    plan: SegmentPlan
    min_size: int

    def __call__(self, block_id: int) -> int:
        plan = self.plan
        if plan.keep_fragments:
            box = plan.grid.write_box(block_id)
            fragments: NDArray[Any] = _open(plan, STAGED["fragments"]).read(box)
        else:  # the kernel is deterministic: labelling again beats storing uint64 fragments
            box, _, fragments, _ = _label(plan, block_id, tiled=False)
        sizes = fragment_sizes(fragments) if self.min_size else None
        mapping = _block_mapping(plan, block_id, self.min_size, sizes)
        _open(plan, STAGED["segmentation"]).write(
            box, apply_mapping(fragments, mapping, tile=plan.chunks, in_place=True))
        return box.size


def default_threshold(attrs: Any, method: str) -> float:
    """The threshold tuned for the model that made the affinities (``segment_defaults`` in
    their attributes, copied by predict from the checkpoint), else 0.5; a stored value is
    checked before it is used."""
    defaults = attrs.get("segment_defaults")
    entry = defaults.get(method) if isinstance(defaults, dict) else None
    value = entry.get("threshold") if isinstance(entry, dict) else None
    if value is None:
        return CC_THRESHOLD
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
    affs = open_volume(dataset, "affinities")
    threshold = default_threshold(affs.attrs, o.method) if o.threshold is None else o.threshold
    if len(affs.shape) != 4:
        raise DataError(f"affinities: got {len(affs.shape)}D array of shape {affs.shape}, "
                        "expected 4D (c, z, y, x)")
    if affs.shape[0] < 3:
        raise DataError(f"affinities: got {affs.shape[0]} channels, expected at least 3 "
                        "(-z, -y, -x)")
    native_threshold(threshold, affs.dtype)  # validates the dtype
    if o.method == "agglomerate":
        from .agglomerate import prepare_agglomerate

        return prepare_agglomerate(dataset, replace(o, threshold=threshold),
                                   overwrite=overwrite)
    cz, cy, cx = o.chunks if o.chunks is not None else affs.chunks[1:]  # of the outputs
    shape = affs.spatial_shape
    block = o.block if o.block is not None else default_block((cz, cy, cx))
    check_chunk_alignment(block, (cz, cy, cx), shape)
    group = open_dataset(dataset)
    existing = [n for n in ("fragments", "segmentation") if n in group]
    if existing and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     f"{existing}; expected none (or pass --overwrite)")
    return SegmentPlan(str(dataset), threshold, BlockGrid(shape, block), (cz, cy, cx),
                       str(affs.dtype), o.min_size, overwrite, o.keep_fragments,
                       uuid.uuid4().hex, array_key(dataset, "affinities"))


def _usable(group: Any, plan: SegmentPlan) -> bool:
    """Whether an interrupted run with this key left its partial outputs in place."""
    key = plan.state.key
    return all(name in group and group[name].attrs.get("run_key") == key
               for name in (*plan.outputs.values(), WORK))


def _create_outputs(plan: SegmentPlan, group: Any, affs: Volume) -> None:
    """The staged outputs and face arrays, stamped with the run key (the face arrays last)."""
    grid, key = plan.grid, plan.state.key
    common: dict[str, Any] = {"shape": grid.shape, "voxel_size": affs.voxel_size,
                              "offset": affs.offset, "chunks": plan.chunks,
                              "register": False, "attributes": {"run_key": key}}
    for name in plan.outputs.values():
        create_volume(group, name, dtype=np.uint64, overwrite=True, **common)
    work = group.require_group(WORK, overwrite=True)
    kinds: tuple[tuple[str, DTypeLike], ...] = (("labels", np.uint32), ("affs", plan.aff_dtype))
    for (kind, dtype), length in zip(kinds, face_row_lengths(grid.block_shape), strict=True):
        create_work_array(work, kind, shape=(grid.num_blocks, length), dtype=dtype,
                          chunks=(1, length))
    work.attrs["run_key"] = key  # last: the partial outputs are complete


def _discard(plan: SegmentPlan, group: Any) -> None:
    """Remove the partial outputs (a run stopped by bad input)."""
    for name in (*plan.outputs.values(), WORK, LOOKUP):
        delete_node(group, name)


def _fragments(plan: SegmentPlan, passes: Callable[..., list[Any]]) -> list[FragmentStats]:
    """1. Every block's fragments and face planes, written; its merge statistics."""
    clock = time.perf_counter()
    stats = passes("fragments", _FragmentBlock(plan), release=False)
    log.info("fragments: %d blocks in %.2f s", plan.grid.num_blocks,
             time.perf_counter() - clock)
    return stats


def _pairs(plan: SegmentPlan, passes: Callable[..., list[Any]]) -> list[NDArray[np.uint64]]:
    """2. Every block's fragment pairs joined across its lower faces."""
    clock = time.perf_counter()
    pairs = passes("pairs", _PairBlock(plan), release=False)
    log.info("pairs: %.2f s", time.perf_counter() - clock)
    return pairs


def _merge(plan: SegmentPlan, group: Any, key: str, stats: Sequence[FragmentStats],
           pairs: Sequence[NDArray[np.uint64]]) -> LookupTable:
    """3. One union-find over all pairs -> the lookup table, written under a staging name."""
    clock = time.perf_counter()
    table = merge_blocks(pairs, stats, plan.min_size)
    log.info("merge: %d fragments, %d face pairs -> %d segments in %.2f s",
             table.counts.sum(), sum(p.shape[1] for p in pairs), table.num_segments,
             time.perf_counter() - clock)
    write_table(group, LOOKUP, table, {"threshold": plan.threshold,
                                       "block": list(plan.grid.block_shape), "run_key": key},
                extra={"starts": block_starts(table)})
    return table


def _relabel(plan: SegmentPlan, passes: Callable[..., list[Any]], table: LookupTable) -> None:
    """4. Every block's fragments mapped through its slice of the table."""
    clock = time.perf_counter()
    passes("relabel", _RelabelBlock(plan, table.min_size), previous=False)
    log.info("relabel: %.2f s", time.perf_counter() - clock)


def _publish(plan: SegmentPlan, group: Any, state: StageState, table: LookupTable) -> None:
    """The table and the staged arrays moved into place; the stage marked complete."""
    move_node(group, LOOKUP, "lookup")
    if not plan.keep_fragments:
        delete_node(group, "fragments")  # a stale one would contradict the table
    for final, staged in plan.outputs.items():
        rename_volume(group, staged, final)
    state.finish({"blocks": plan.grid.num_blocks, "segments": int(table.num_segments)})
    delete_node(group, WORK)


def run_segment(plan: Any, *, client: Any | None = None,
                scheduler: LocalScheduler = "threads", progress: bool = True,
                counts: BlockCounts | None = None) -> Any:
    """Execute a validated plan; see :func:`segment`. Returns the lookup table (cc) or an
    :class:`~affinity_dist.stages.agglomerate.AgglomerateSummary`; both tell
    ``num_fragments`` and ``num_segments``.

    The steps of the module docstring, between creating the staged outputs and publishing
    them. Resumable: blocks recorded as done by an interrupted run with the same key (same
    affinities, threshold, block, ...) are not computed again; ``counts`` accumulates the
    block tasks computed, skipped and retried over the three passes.
    """
    if not isinstance(plan, SegmentPlan):
        from .agglomerate import run_agglomerate

        return run_agglomerate(plan, client=client, scheduler=scheduler, progress=progress,
                               counts=counts)
    group = open_dataset(plan.dataset, "r+")
    affs = open_volume(plan.dataset, "affinities")
    state = plan.state
    passes = functools.partial(run_recorded, state, blocks=list(plan.grid),
                               counts=counts if counts is not None else BlockCounts(),
                               client=client, scheduler=scheduler, progress=progress)
    if not state.begin(keep=_usable(group, plan)):
        _create_outputs(plan, group, affs)
    with recording(state, "segment", lambda: _discard(plan, group)):
        stats = _fragments(plan, passes)
        pairs = _pairs(plan, passes)
        table = _merge(plan, group, state.key, stats, pairs)
        _relabel(plan, passes, table)
    _publish(plan, group, state, table)
    return table


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
    client : ``distributed.Client``; ``None`` runs with Dask's local ``scheduler``.

    Returns
    -------
    The dataset path. Its ``lookup/`` group holds the fragment -> segment table.
    """
    o = SegmentOptions.of(options, **kwargs)
    if isinstance(data, str | os.PathLike):
        dataset: str | os.PathLike[str] = data
    else:
        shape = tuple(getattr(data, "shape", ()))
        if len(shape) != 4 or shape[0] < 3:
            raise DataError(f"affinities: got shape {shape}, expected (c >= 3, z, y, x)")
        native_threshold(o.threshold if o.threshold is not None else CC_THRESHOLD,
                         np.dtype(data.dtype))  # uint8 or float only
        dataset = dataset_from_array(out, "affinities", data, voxel_size=voxel_size,
                                     chunks=o.chunks or DEFAULT_CHUNKS, overwrite=overwrite)
    plan = prepare_segment(dataset, o, overwrite=overwrite)
    run_segment(plan, client=client, scheduler=scheduler, progress=progress)
    return Path(dataset)
