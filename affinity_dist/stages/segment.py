"""Segment: affinities -> fragments -> global merge -> consecutive segmentation.

The driver reads as the algorithm (one Dask task per block in every pass, small payloads):

1. **fragments** — every block labels the connected components of its own affinity graph
   (:func:`~affinity_dist.fragments.label_block`), writes them with globally unique ids
   (block id in the high bits), and saves its six boundary planes and the affinities of
   its first planes to small face arrays;
2. **pairs** — every block pairs its first plane along each axis with the last plane of
   the block below: the ``(2, M)`` fragment pairs joined across that face;
3. **merge** — one union-find over all pairs gives the lookup table, written beside the
   arrays (``lookup/``);
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import ConfigError, DataError, DestinationExistsError
from ..geometry import BlockGrid, Box, as_shape
from ..kernels.fragments import (
    LOCAL_MASK,
    apply_mapping,
    block_plane,
    face_pairs,
    face_row_lengths,
    global_ids,
    label_block,
    native_threshold,
    pack_planes,
    plane_shapes,
    unpack_planes,
)
from ..kernels.merge import LookupTable, block_map, block_starts, build_table
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

__all__ = ["DEFAULT_BLOCK", "SegmentPlan", "prepare_segment", "run_segment", "segment"]

log = logging.getLogger(__name__)
#: Default write block: 256^3 voxels (rounded up to whole chunks).
DEFAULT_BLOCK: tuple[int, int, int] = (256, 256, 256)
WORK = "_segment_work"
LOOKUP = "_staging_lookup"
STAGED = {"fragments": "_staging_fragments", "segmentation": "_staging_segmentation"}
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


def _local_plane(fragments: NDArray[np.uint64], axis: int, index: int) -> NDArray[np.uint32]:
    """A boundary plane of a block's fragments as local ids (the face arrays' dtype)."""
    plane: NDArray[np.uint64] = block_plane(fragments, axis, index)
    return (plane & LOCAL_MASK).astype(np.uint32)


def _write_faces(plan: SegmentPlan, block_id: int, fragments: NDArray[np.uint64],
                 affs: NDArray[Any]) -> list[NDArray[np.uint32]]:
    """Save a block's six boundary planes (local ids) and the affinities of its first
    planes, one row per block in two small arrays: two writes per block, not nine.
    Returns the boundary planes."""
    planes = [_local_plane(fragments, a, i) for a in range(3) for i in (0, -1)]
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

    def __call__(self, block_id: int) -> tuple[int, int, NDArray[np.uint64], NDArray[np.int64]]:
        plan = self.plan
        box, affs, fragments, n = _label(plan, block_id)
        if plan.keep_fragments:
            _open(plan, STAGED["fragments"]).write(box, fragments)
        planes = _write_faces(plan, block_id, fragments, affs)
        if not plan.min_size:
            return n, 0, np.zeros(0, np.uint64), np.zeros(0, np.int64)
        sizes = np.bincount((fragments & LOCAL_MASK).ravel().astype(np.int64), minlength=n + 1)
        boundary = np.unique(np.concatenate([p.ravel() for p in planes]))
        small = int((sizes[1:] < plan.min_size).sum())
        return n, small, global_ids(boundary, block_id), sizes[boundary].astype(np.int64)


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
        sizes = None
        if self.min_size:
            sizes = np.bincount((fragments & LOCAL_MASK).ravel().astype(np.int64))
        mapping = _block_mapping(plan, block_id, self.min_size, sizes)
        _open(plan, STAGED["segmentation"]).write(
            box, apply_mapping(fragments, mapping, tile=plan.chunks, in_place=True))
        return box.size


def prepare_segment(dataset: str | os.PathLike[str], *, threshold: float = 0.5,
                    block: Sequence[int] | None = None, min_size: int = 0,
                    keep_fragments: bool = True, overwrite: bool = False) -> SegmentPlan:
    """Validate a segment run without writing anything."""
    affs = open_volume(dataset, "affinities")
    if len(affs.shape) != 4:
        raise DataError(f"affinities: got {len(affs.shape)}D array of shape {affs.shape}, "
                        "expected 4D (c, z, y, x)")
    if affs.shape[0] < 3:
        raise DataError(f"affinities: got {affs.shape[0]} channels, expected at least 3 "
                        "(-z, -y, -x)")
    native_threshold(threshold, affs.dtype)  # validates threshold and dtype
    if isinstance(min_size, bool) or not isinstance(min_size, int | np.integer) or min_size < 0:
        raise ConfigError(f"--min-size: got {min_size!r}, expected an integer >= 0")
    cz, cy, cx = affs.chunks[1:]
    shape = affs.spatial_shape
    if block is None:
        block = tuple(-(-b // c) * c for b, c in zip(DEFAULT_BLOCK, (cz, cy, cx), strict=True))
    block = as_shape(block, "--block", ndim=3)
    check_chunk_alignment(block, (cz, cy, cx), shape)
    group = open_dataset(dataset)
    existing = [n for n in ("fragments", "segmentation") if n in group]
    if existing and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     f"{existing}; expected none (or pass --overwrite)")
    return SegmentPlan(str(dataset), float(threshold), BlockGrid(shape, block), (cz, cy, cx),
                       str(affs.dtype), int(min_size), overwrite, keep_fragments,
                       uuid.uuid4().hex, array_key(dataset, "affinities"))


def _usable(group: Any, plan: SegmentPlan) -> bool:
    """Whether an interrupted run with this key left its partial outputs in place."""
    key = plan.state.key
    return all(name in group and group[name].attrs.get("run_key") == key
               for name in (*plan.outputs.values(), WORK))


def run_segment(plan: SegmentPlan, *, client: Any | None = None,
                scheduler: LocalScheduler = "threads", progress: bool = True,
                counts: BlockCounts | None = None) -> LookupTable:
    """Execute a validated plan; see :func:`segment`. Returns the lookup table.

    Resumable: blocks recorded as done by an interrupted run with the same key (same
    affinities, threshold, block, ...) are not computed again; ``counts`` accumulates the
    block tasks computed, skipped and retried over the three passes.
    """
    group = open_dataset(plan.dataset, "r+")
    affs = open_volume(plan.dataset, "affinities")
    grid, blocks, state = plan.grid, list(plan.grid), plan.state
    counts = counts if counts is not None else BlockCounts()
    if not state.begin(keep=_usable(group, plan)):
        common: dict[str, Any] = {"shape": grid.shape, "voxel_size": affs.voxel_size,
                                  "offset": affs.offset, "chunks": plan.chunks,
                                  "register": False, "attributes": {"run_key": state.key}}
        for name in plan.outputs.values():
            create_volume(group, name, dtype=np.uint64, overwrite=True, **common)
        work = group.require_group(WORK, overwrite=True)
        kinds: tuple[tuple[str, DTypeLike], ...] = (("labels", np.uint32),
                                                    ("affs", plan.aff_dtype))
        for (kind, dtype), length in zip(kinds, face_row_lengths(grid.block_shape), strict=True):
            create_work_array(work, kind, shape=(grid.num_blocks, length), dtype=dtype,
                              chunks=(1, length))
        work.attrs["run_key"] = state.key  # last: the partial outputs are complete
    run: dict[str, Any] = {"client": client, "scheduler": scheduler, "progress": progress}
    def partial() -> None:
        for name in (*plan.outputs.values(), WORK, LOOKUP):
            delete_node(group, name)

    with recording(state, "segment", partial):
        clock = time.perf_counter()
        stats = run_recorded(state, "fragments", _FragmentBlock(plan), blocks, counts,
                             release=False, **run)
        log.info("fragments: %d blocks in %.2f s", len(blocks), time.perf_counter() - clock)
        clock = time.perf_counter()
        pairs = run_recorded(state, "pairs", _PairBlock(plan), blocks, counts,
                             release=False, **run)
        log.info("pairs: %.2f s", time.perf_counter() - clock)
        clock = time.perf_counter()
        fragment_counts = np.array([s[0] for s in stats], np.int64)
        sizes = None
        if plan.min_size:
            ids = np.concatenate([s[2] for s in stats])
            order = np.argsort(ids)
            sizes = (ids[order], np.concatenate([s[3] for s in stats])[order])
        table = build_table(np.concatenate(pairs, axis=1), fragment_counts, sizes,
                            np.array([s[1] for s in stats], np.int64), plan.min_size)
        log.info("merge: %d fragments, %d face pairs -> %d segments in %.2f s",
                 fragment_counts.sum(), sum(p.shape[1] for p in pairs), table.num_segments,
                 time.perf_counter() - clock)
        write_table(group, LOOKUP, table, {"threshold": plan.threshold,
                                           "block": list(grid.block_shape),
                                           "run_key": state.key},
                    extra={"starts": block_starts(table)})
        clock = time.perf_counter()
        run_recorded(state, "relabel", _RelabelBlock(plan, table.min_size), blocks, counts,
                     previous=False, **run)
        log.info("relabel: %.2f s", time.perf_counter() - clock)
    move_node(group, LOOKUP, "lookup")
    if not plan.keep_fragments:
        delete_node(group, "fragments")  # a stale one would contradict the table
    for final, staged in plan.outputs.items():
        rename_volume(group, staged, final)
    state.finish({"blocks": grid.num_blocks, "segments": int(table.num_segments)})
    delete_node(group, WORK)
    return table


def segment(data: str | os.PathLike[str] | Any, *, threshold: float = 0.5,
            block: Sequence[int] | None = None, min_size: int = 0,
            keep_fragments: bool = True, out: str | os.PathLike[str] | None = None,
            voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
            chunks: Sequence[int] = DEFAULT_CHUNKS, overwrite: bool = False,
            client: Any | None = None, scheduler: LocalScheduler = "threads",
            progress: bool = True) -> Path:
    """Segment affinities into ``fragments`` and ``segmentation``.

    Parameters
    ----------
    data : a dataset path holding ``affinities`` (c, z, y, x) — the outputs are added to it —
        or a dask/numpy array of affinities, which is first stored as the ``affinities`` of a
        new dataset at ``out`` (with ``voxel_size`` and ``chunks``). uint8 (0-255 = 0-1) or
        float; channels 0-2 are the -z, -y, -x affinities.
    threshold : voxels joined by an affinity > threshold belong to one segment.
    block : write block shape (z, y, x), a multiple of the chunk shape; default 256^3.
    min_size : segments with fewer voxels become background 0 (default 0: keep all).
    keep_fragments : write the ``fragments`` array (default). Without it the relabel pass
        labels each block again instead of reading 8 bytes per voxel back.
    client : ``distributed.Client``; ``None`` runs with Dask's local ``scheduler``.

    Returns
    -------
    The dataset path. Its ``lookup/`` group holds the fragment -> segment table.
    """
    if isinstance(data, str | os.PathLike):
        dataset: str | os.PathLike[str] = data
    else:
        shape = tuple(getattr(data, "shape", ()))
        if len(shape) != 4 or shape[0] < 3:
            raise DataError(f"affinities: got shape {shape}, expected (c >= 3, z, y, x)")
        native_threshold(threshold, np.dtype(data.dtype))  # uint8 or float only
        dataset = dataset_from_array(out, "affinities", data, voxel_size=voxel_size,
                                     chunks=chunks, overwrite=overwrite)
    plan = prepare_segment(dataset, threshold=threshold, block=block, min_size=min_size,
                           keep_fragments=keep_fragments, overwrite=overwrite)
    run_segment(plan, client=client, scheduler=scheduler, progress=progress)
    return Path(dataset)
