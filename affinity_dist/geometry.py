"""Block geometry: pure integer arithmetic, no I/O.

A volume of ``shape`` voxels is cut into a grid of **write blocks** of ``block_shape``
(aligned to the output chunks by the caller, who picks a multiple of the chunk shape).
Blocks at the upper end of an axis are smaller when ``block_shape`` does not divide the
shape; they may be one voxel thick::

    axis:  0        b        2b       shape
           |--------|--------|---|
             block 0  block 1  edge block (shape - 2b voxels)

A block's **read region** is its write region grown by a per-axis ``halo`` (anisotropic
halos allowed) and clipped to the volume; the part of the halo that falls outside the
volume is reported as ``padding`` so that kernels can pad (mirror, zeros, ...) as they need.

Blocks are numbered in C order of their grid index (``np.ravel_multi_index``); the
**faces** between blocks are the pairs (lower, upper) that differ by one along one axis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError, bad_value

__all__ = ["DEFAULT_BLOCK", "NEAREST_OFFSETS", "BlockGrid", "Box", "ReductionTree", "as_shape",
           "as_vector", "default_block", "read_mirrored", "reflect_indices"]


def as_shape(value: Sequence[int], name: str, *, ndim: int | None = None,
             minimum: int = 1) -> tuple[int, ...]:
    """Validate a per-axis integer tuple (shape, block, halo).

    >>> as_shape([4, 5, 6], "--block")
    (4, 5, 6)
    """
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise bad_value(name, value, "a sequence of integers") from None
    if any(o != v for o, v in zip(out, value, strict=True)):
        raise bad_value(name, value, "whole numbers")
    if ndim is not None and len(out) != ndim:
        raise bad_value(name, value, f"{ndim} values (z y x)")
    if any(v < minimum for v in out):
        raise bad_value(name, value, f"every value >= {minimum}")
    return out


def as_vector(name: str, values: Sequence[float], *, positive: bool = True) -> list[float]:
    """Validate three finite physical numbers (voxel size or offset in nm, z y x).

    >>> as_vector("--voxel-size", [40, 4, 4])
    [40.0, 4.0, 4.0]
    """
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise bad_value(name, values, "three numbers (z y x)") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise bad_value(name, list(values), "three finite numbers (z y x)")
    if positive and any(v <= 0 for v in out):
        raise bad_value(name, out, "three positive numbers (nm, z y x)")
    return out


def reflect_indices(start: int, stop: int, n: int) -> NDArray[np.int64]:
    """Indices ``start .. stop-1`` of an axis of length ``n``, mirrored at its ends.

    Mirroring does not repeat the edge voxel (numpy's ``"reflect"`` mode) and folds again
    when the range reaches past a whole period, so any window of a mirror-padded volume is
    read exactly as if the padded volume existed:

    >>> reflect_indices(-3, 7, 5).tolist()
    [3, 2, 1, 0, 1, 2, 3, 4, 3, 2]
    """
    if n < 1:
        raise bad_value("axis length", n, "a positive integer")
    index = np.arange(start, stop, dtype=np.int64)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index < n, index, period - index)


@dataclass(frozen=True)
class Box:
    """A half-open box ``[start, stop)`` of voxel indices."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop) or any(
            a > b for a, b in zip(self.start, self.stop, strict=True)
        ):
            raise ConfigError(f"box: got start {self.start} stop {self.stop}, "
                              "expected equal lengths and start <= stop")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    def grow(self, before: Sequence[int], after: Sequence[int] | None = None) -> Box:
        """Grow by ``before`` below and ``after`` (default: ``before``) above, unclipped."""
        after = before if after is None else after
        return Box(tuple(s - h for s, h in zip(self.start, before, strict=True)),
                   tuple(s + h for s, h in zip(self.stop, after, strict=True)))

    def clip(self, shape: Sequence[int]) -> Box:
        """Intersect with the volume ``[0, shape)``."""
        start = tuple(min(max(s, 0), n) for s, n in zip(self.start, shape, strict=True))
        stop = tuple(max(min(s, n), a) for s, n, a in zip(self.stop, shape, start, strict=True))
        return Box(start, stop)

    def intersect(self, other: Box) -> Box:
        """The part of this box inside ``other`` (an empty overlap keeps start <= stop).

        >>> Box((0, 0), (4, 4)).intersect(Box((2, -1), (6, 3)))
        Box(start=(2, 0), stop=(4, 3))
        """
        start = tuple(max(a, b) for a, b in zip(self.start, other.start, strict=True))
        stop = tuple(max(min(a, b), c) for a, b, c in
                     zip(self.stop, other.stop, start, strict=True))
        return Box(start, stop)

    def contains(self, other: Box) -> bool:
        return all(a <= c and d <= b for a, b, c, d in
                   zip(self.start, self.stop, other.start, other.stop, strict=True))

    def relative_to(self, outer: Box) -> tuple[slice, ...]:
        """Slices that cut this box out of an array covering ``outer``."""
        return tuple(slice(a - o, b - o) for a, b, o in
                     zip(self.start, self.stop, outer.start, strict=True))


def read_mirrored(read: Callable[[Box], NDArray[Any]], window: Box, shape: Sequence[int],
                  lead: int = 0) -> tuple[NDArray[Any], Box]:
    """``window`` of a volume of spatial ``shape`` (it may leave the volume), mirrored at
    the border (:func:`reflect_indices`), through ``read(box)`` of one in-volume box; and
    that box. ``lead``: axes before the spatial ones (channels) in what ``read`` returns."""
    index = [reflect_indices(a, b, n) for a, b, n in
             zip(window.start, window.stop, shape, strict=True)]
    inside = Box(tuple(int(i.min()) for i in index), tuple(int(i.max()) + 1 for i in index))
    data = read(inside)
    for axis, (i, o, a, b, n) in enumerate(zip(index, inside.start, window.start,
                                                window.stop, shape, strict=True)):
        if a < 0 or b > n:  # an axis at a time: 3x faster than ix_
            data = np.take(data, i - o, axis=lead + axis)
    return data, inside


@dataclass(frozen=True)
class BlockGrid:
    """The grid of write blocks over a volume.

    Parameters
    ----------
    shape : volume shape in voxels (any ndim, usually z, y, x).
    block_shape : write block shape; edge blocks are clipped to the volume.
    """

    shape: tuple[int, ...]
    block_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", as_shape(self.shape, "shape", minimum=0))
        object.__setattr__(self, "block_shape",
                           as_shape(self.block_shape, "block", ndim=len(self.shape)))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of blocks along every axis."""
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block_shape, strict=True))

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid_shape)

    def block_id(self, index: Sequence[int]) -> int:
        """Linear (C-order) id of the block at grid ``index``."""
        if len(index) != self.ndim or any(
            not 0 <= i < g for i, g in zip(index, self.grid_shape, strict=True)
        ):
            raise bad_value("block index", tuple(index), f"an index into grid {self.grid_shape}")
        return int(np.ravel_multi_index(tuple(index), self.grid_shape))

    def block_index(self, block_id: int) -> tuple[int, ...]:
        """Grid index of the block with linear id ``block_id``."""
        if not 0 <= block_id < self.num_blocks:
            raise bad_value("block id", block_id, f"an integer in [0, {self.num_blocks})")
        return tuple(int(i) for i in np.unravel_index(block_id, self.grid_shape))

    def write_box(self, block_id: int) -> Box:
        """The region a block writes: its cell of the grid, clipped to the volume."""
        index = self.block_index(block_id)
        start = tuple(i * b for i, b in zip(index, self.block_shape, strict=True))
        stop = tuple(min(s + b, n) for s, b, n in
                     zip(start, self.block_shape, self.shape, strict=True))
        return Box(start, stop)

    def read_box(self, block_id: int, halo: Sequence[int]
                 ) -> tuple[Box, tuple[tuple[int, int], ...]]:
        """Read region (write region + ``halo``, clipped) and the padding still missing.

        Returns
        -------
        box : the clipped read region.
        padding : per axis ``(before, after)`` voxels of halo that lie outside the volume.
        """
        halo = as_shape(halo, "halo", ndim=self.ndim, minimum=0)
        wanted = self.write_box(block_id).grow(halo)
        box = wanted.clip(self.shape)
        padding = tuple((b0 - w0, w1 - b1) for w0, w1, b0, b1 in
                        zip(wanted.start, wanted.stop, box.start, box.stop, strict=True))
        return box, padding

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.num_blocks))

    @property
    def blocks(self) -> range:
        """Every block id, as a range (8 bytes per block would be 36 at 10^6 in a list)."""
        return range(self.num_blocks)

    def neighbors(self, block_id: int) -> tuple[int, ...]:
        """The blocks across a block's faces (below and above along z, then y, x), -1 at
        the volume's faces.

        >>> BlockGrid((4, 4, 4), (2, 2, 4)).neighbors(1)
        (-1, 3, 0, -1, -1, -1)
        """
        index = self.block_index(block_id)
        out = []
        for axis, n in enumerate(self.grid_shape):
            for step in (-1, 1):
                i = index[axis] + step
                out.append(self.block_id(tuple(i if a == axis else j for a, j in
                                               enumerate(index))) if 0 <= i < n else -1)
        return tuple(out)

    def faces(self) -> NDArray[np.int64]:
        """All faces between neighbouring blocks, vectorised.

        Returns
        -------
        (F, 3) int64 array of rows ``(lower_id, upper_id, axis)``: block ``upper_id`` is the
        neighbour of ``lower_id`` one step up along ``axis``. The face itself is the plane
        ``z = write_box(upper_id).start[axis]`` (for ``axis`` = z; likewise for y and x).
        """
        grid = self.grid_shape
        ids = np.arange(self.num_blocks, dtype=np.int64).reshape(grid)
        rows = []
        for axis in range(self.ndim):
            lower = np.take(ids, range(grid[axis] - 1), axis=axis).ravel()
            upper = np.take(ids, range(1, grid[axis]), axis=axis).ravel()
            rows.append(np.stack([lower, upper, np.full_like(lower, axis)], axis=1))
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 3), np.int64)


#: The nearest-neighbour affinity offsets (DESIGN.md): channel c of the affinities is the
#: affinity between voxel p and p + NEAREST_OFFSETS[c], i.e. its -z, -y, -x neighbours.
NEAREST_OFFSETS: tuple[tuple[int, int, int], ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))

#: Default write block of the block-wise stages (rounded up to whole chunks).
DEFAULT_BLOCK: tuple[int, int, int] = (256, 256, 256)
#: The default block of a large volume: one with more than :data:`LARGE_VOLUME_BLOCKS`
#: blocks of :data:`DEFAULT_BLOCK` (2^14: 2.7 x 10^11 voxels, about 6,500^3). There a
#: 256^3 block gives more than 10^5 files per TB stored (one shard per block and array)
#: and 1.6 ms of scheduling per task adds up to hours; a 512^3 block divides both by 8
#: at 8x a worker's memory (README, *Scale*: measured by ``bench_scale.py --block``).
LARGE_BLOCK: tuple[int, int, int] = (512, 512, 512)
LARGE_VOLUME_BLOCKS = 2**14


def default_block(chunks: Sequence[int], shape: Sequence[int] | None = None
                  ) -> tuple[int, int, int]:
    """:data:`DEFAULT_BLOCK` (:data:`LARGE_BLOCK` for a large volume of ``shape``)
    rounded up to whole ``chunks``.

    >>> default_block((100, 128, 96))
    (300, 256, 288)
    >>> default_block((128, 128, 128), (8192, 8192, 8192))
    (512, 512, 512)
    """
    block = DEFAULT_BLOCK
    if shape is not None and math.prod(-(-n // b) for n, b in zip(
            shape, DEFAULT_BLOCK, strict=True)) > LARGE_VOLUME_BLOCKS:
        block = LARGE_BLOCK
    z, y, x = (-(-b // c) * c for b, c in zip(block, chunks, strict=True))
    return z, y, x


@dataclass(frozen=True)
class ReductionTree:
    """A tree over a block grid: level 0 has one task per block (task id = block id);
    each task of level k + 1 covers up to ``fanout`` tasks of level k per axis; the last
    level has one task, whose extent is the whole grid.

    >>> t = ReductionTree((3, 1, 2), (2, 2, 2))
    >>> t.num_levels, [t.num_tasks(k) for k in range(t.num_levels)], t.extent(1, 1)
    (3, [6, 2, 1], ((2, 0, 0), (3, 1, 2)))
    >>> t.children(1, 0), t.parent(0, 3)
    ([0, 1, 2, 3], (0, 3))
    """

    grid_shape: tuple[int, ...]
    fanout: tuple[int, ...] = (2, 2, 2)

    def __post_init__(self) -> None:
        if any(f < 2 for f in self.fanout) or len(self.fanout) != len(self.grid_shape):
            raise ConfigError(f"--fanout: got {tuple(self.fanout)}, expected "
                              f"{len(self.grid_shape)} integers >= 2")

    def span(self, level: int) -> tuple[int, ...]:
        """Blocks per axis covered by one task of ``level``."""
        return tuple(f ** level for f in self.fanout)

    def task_grid(self, level: int) -> tuple[int, ...]:
        return tuple(-(-g // s) for g, s in zip(self.grid_shape, self.span(level), strict=True))

    @property
    def num_levels(self) -> int:
        level = 0
        while math.prod(self.task_grid(level)) > 1:
            level += 1
        return level + 1

    def num_tasks(self, level: int) -> int:
        return math.prod(self.task_grid(level))

    def extent(self, level: int, task: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The block-index box ``[lo, hi)`` of a task."""
        index = np.unravel_index(task, self.task_grid(level))
        span = self.span(level)
        lo = tuple(int(i) * s for i, s in zip(index, span, strict=True))
        hi = tuple(min(a + s, g) for a, s, g in zip(lo, span, self.grid_shape, strict=True))
        return lo, hi

    def parent_extent(self, level: int, task: int
                      ) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The :meth:`extent` of the task above a task of ``level``; None at the root."""
        if level >= self.num_levels - 1:
            return None
        return self.extent(level + 1, self.parent(level, task)[0])

    def children(self, level: int, task: int) -> list[int]:
        """The tasks of ``level - 1`` inside a task of ``level`` (C order)."""
        index = np.unravel_index(task, self.task_grid(level))
        below = self.task_grid(level - 1)
        ranges = [range(int(i) * f, min((int(i) + 1) * f, n))
                  for i, f, n in zip(index, self.fanout, below, strict=True)]
        return [int(np.ravel_multi_index(c, below)) for c in itertools.product(*ranges)]

    @property
    def num_leaf_groups(self) -> int:
        """Leaf groups: one per task of level 1 (one, the root block, for a one-block
        tree)."""
        return self.num_tasks(1) if self.num_levels > 1 else 1

    def leaf_group(self, group: int) -> list[int]:
        """The blocks whose leaves one task computes and records together: the children
        of task ``group`` of level 1 (one record per group, not one per block)."""
        return self.children(1, group) if self.num_levels > 1 else [0]

    def parent(self, level: int, task: int) -> tuple[int, int]:
        """The task of ``level + 1`` holding a task of ``level``, and the task's position
        among that parent's :meth:`children`."""
        index = np.unravel_index(task, self.task_grid(level))
        up = tuple(int(i) // f for i, f in zip(index, self.fanout, strict=True))
        parent = int(np.ravel_multi_index(up, self.task_grid(level + 1)))
        return parent, self.children(level + 1, parent).index(task)
