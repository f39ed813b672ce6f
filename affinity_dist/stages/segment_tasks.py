"""The block tasks of ``segment --method cc`` (:mod:`.segment` drives them): label a
block's connected components and save its faces, pair fragments across faces, relabel a
block through its slice of the lookup table. Each reads its inputs from the dataset and
writes its outputs there; results are small."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..geometry import Box
from ..kernels.fragments import (
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
from ..kernels.merge import FragmentStats, block_map, fragment_sizes, fragment_stats
from ..kernels.values import require_unit_range
from ..runtime.markers import register_result
from ..storage import Volume, create_work_array, open_volume, read_table_slice

if TYPE_CHECKING:
    from .segment import SegmentPlan

WORK = "_segment_work"
LOOKUP = "_staging_lookup"
STAGED = {"fragments": "_staging_fragments", "segmentation": "_staging_segmentation"}


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


register_result(FragmentStats)  # a fragments task's result, recorded in its done marker


@dataclass(frozen=True)
class FragmentBlock:
    plan: SegmentPlan

    def __call__(self, block_id: int) -> FragmentStats:
        plan = self.plan
        box, affs, fragments, n = _label(plan, block_id)
        if plan.keep_fragments:
            _open(plan, STAGED["fragments"]).write(box, fragments)
        planes = write_faces(plan, block_id, fragments, affs)
        return fragment_stats(fragments, n, block_id, planes, plan.min_size)

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        box = self.plan.grid.write_box(block_id)
        kept = [(STAGED["fragments"], box.slices)] if self.plan.keep_fragments else []
        return kept + face_outputs(block_id)


@dataclass(frozen=True)
class PairBlock:
    plan: SegmentPlan

    def __call__(self, block_id: int) -> NDArray[np.uint64]:
        plan, grid = self.plan, self.plan.grid
        index = grid.block_index(block_id)
        pairs = [np.zeros((2, 0), np.uint64)]
        if not any(index):
            return pairs[0]
        labels, affs = read_faces(plan, block_id), read_faces(plan, block_id, True)
        for axis in range(3):
            if index[axis] == 0:
                continue
            below = grid.block_id(tuple(i - (a == axis) for a, i in enumerate(index)))
            p = face_pairs(read_faces(plan, below)[2 * axis + 1], labels[2 * axis],
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
class RelabelBlock:
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

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        return [(STAGED["segmentation"], self.plan.grid.write_box(block_id).slices)]
