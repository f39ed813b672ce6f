"""Multiscale pyramids: coarser copies of an array for viewers (OME-Zarr multiscales).

Level k of array ``name`` is ``pyramid/<name>/s<k>``, made from level k-1 block by block
(one Dask task per output block): intensities (uint8/float raw) by the **mean** over each
``factor`` cell, labels (integer arrays of ids) by **striding** (the first voxel of each
cell), which keeps ids exact. The factor is anisotropy-aware: an axis is halved only while
its voxel size is below twice the finest one, so 40x4x4 nm data goes (1,2,2) until x/y
catch up with z. Every level is registered in the dataset's OME-Zarr ``multiscales``
entry of the array, with its voxel size and the offset of its first voxel's centre, so
neuroglancer, napari and webKnossos pick the level that fits the zoom.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, DestinationExistsError
from ..geometry import BlockGrid, Box
from ..options import PyramidOptions
from ..runtime.locks import check_free, leased
from ..runtime.scheduling import LocalScheduler, run_blocks
from ..storage import (
    create_volume,
    delete_node,
    move_node,
    open_dataset,
    open_volume,
    register_levels,
    shard_shape,
)

__all__ = ["PyramidPlan", "downsample", "level_factors", "prepare_pyramid", "pyramid",
           "run_pyramid"]

log = logging.getLogger(__name__)
Vec = tuple[int, int, int]


def downsample(block: NDArray[Any], factor: Sequence[int], labels: bool) -> NDArray[Any]:
    """Downsample the trailing 3 axes by ``factor``: striding for labels, else the mean
    over each cell (a partial cell at the end averages what it has)."""
    fz, fy, fx = factor
    if labels:
        return block[..., ::fz, ::fy, ::fx]
    lead = block.shape[:-3]
    nz, ny, nx = block.shape[-3:]
    pad = [(0, 0)] * len(lead) + [(0, -n % f) for n, f in zip((nz, ny, nx), factor,
                                                               strict=True)]
    data = np.pad(block.astype(np.float64), pad, mode="constant")
    ones = np.pad(np.ones((nz, ny, nx)), pad[-3:], mode="constant")
    shape = (*lead, data.shape[-3] // fz, fz, data.shape[-2] // fy, fy, data.shape[-1] // fx, fx)
    axes = tuple(len(lead) + i for i in (1, 3, 5))
    sums = data.reshape(shape).sum(axis=axes)
    counts = ones.reshape(shape[len(lead):]).sum(axis=(1, 3, 5))
    mean = sums / counts
    out: NDArray[Any] = (np.rint(mean) if block.dtype.kind in "iu" else mean).astype(block.dtype)
    return out


def level_factors(voxel_size: Sequence[float], shape: Sequence[int], levels: int | None,
                  smallest: int = 32) -> list[Vec]:
    """Per level, the factor from the level above (anisotropy-aware), until ``levels``
    levels or until no axis is larger than ``smallest`` voxels."""
    voxel, size = list(voxel_size), list(shape)
    out: list[Vec] = []
    while (levels is None and max(size) > smallest) or (levels is not None
                                                        and len(out) < levels):
        finest = min(voxel)
        f = tuple(2 if v < 2 * finest and n > 1 else 1 for v, n in zip(voxel, size,
                                                                       strict=True))
        if f == (1, 1, 1):
            break
        out.append((f[0], f[1], f[2]))
        voxel = [v * k for v, k in zip(voxel, f, strict=True)]
        size = [-(-n // k) for n, k in zip(size, f, strict=True)]
    return out


@dataclass(frozen=True)
class _LevelBlock:
    dataset: str
    source: str
    target: str
    factor: Vec
    grid: BlockGrid
    labels: bool

    def __call__(self, block_id: int) -> int:
        box = self.grid.write_box(block_id)
        src = open_volume(self.dataset, self.source)
        cells = Box(tuple(a * f for a, f in zip(box.start, self.factor, strict=True)),
                    tuple(b * f for b, f in zip(box.stop, self.factor, strict=True)))
        data = downsample(src.read(cells.clip(src.spatial_shape)), self.factor, self.labels)
        open_volume(self.dataset, self.target, "r+").write(box, data)
        return box.size


STAGING = "_staging_pyramid"


@dataclass(frozen=True)
class PyramidPlan:
    """A validated pyramid run: which arrays, how many levels, which chunks."""

    dataset: str
    arrays: tuple[str, ...]
    levels: int | None
    block: Vec
    chunks: Vec | None
    shards: str = "auto"  # --shards: one shard per block of a level, or one file per chunk


def prepare_pyramid(dataset: str | os.PathLike[str], options: PyramidOptions | None = None,
                    *, overwrite: bool = False, **kwargs: Any) -> PyramidPlan:
    """Validate a pyramid run without writing anything: the arrays exist, and their levels
    do not (unless ``overwrite``)."""
    o = PyramidOptions.of(options, **kwargs)
    check_free(dataset, "pyramid")  # a live run holds the outputs: refuse before any work
    group = open_dataset(dataset)
    present = [n for n in ("raw", "labels", "segmentation", "fragments", "affinities")
               if n in group]
    names = o.arrays if o.arrays is not None else tuple(present)
    for name in names:
        if name not in group:
            raise DataError(f"--arrays: got {name!r}, expected arrays of the dataset "
                            f"(present: {present})")
    existing = [n for n in names if f"pyramid/{n}" in group]
    if existing and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     f"pyramid levels of {existing}; expected none (or pass "
                                     "--overwrite)")
    return PyramidPlan(str(dataset), tuple(names), o.levels, o.block, o.chunks, o.shards)


@leased("pyramid")
def run_pyramid(plan: PyramidPlan, *, client: Any | None = None,
                scheduler: LocalScheduler = "threads", progress: bool = True
                ) -> dict[str, list[str]]:
    """Execute a validated plan; returns array -> level paths. Every array's levels are
    written under a staging name and moved into ``pyramid/<name>`` (replacing the old
    levels) only when all are complete: a failed run leaves the old pyramid as it was."""
    group = open_dataset(plan.dataset, "r+")
    done: dict[str, list[str]] = {}
    for name in plan.arrays:
        staged = f"{STAGING}/{name}"
        delete_node(group, staged)  # a failed run's leftovers
        entries = _levels(plan, group, name, staged, client=client, scheduler=scheduler,
                          progress=progress)
        group.require_group("pyramid")
        move_node(group, staged, f"pyramid/{name}")
        final = [(f"pyramid/{name}/{path.rsplit('/', 1)[1]}", v, o) for path, v, o in entries]
        register_levels(group, name, final)
        done[name] = [e[0] for e in final]
        log.info("pyramid %s: %d levels", name, len(final))
    delete_node(group, STAGING)
    return done


def _levels(plan: PyramidPlan, group: Any, name: str, staged: str, **run: Any
            ) -> list[tuple[str, list[float], list[float]]]:
    """Write the levels of one array under ``staged``, each from the one above it."""
    base = open_volume(plan.dataset, name)
    labels = base.dtype.kind in "iu" and base.dtype != np.uint8
    voxel, offset = list(base.voxel_size), list(base.offset)
    shape: tuple[int, ...]
    source, shape = name, tuple(base.spatial_shape)
    entries: list[tuple[str, list[float], list[float]]] = []
    for k, factor in enumerate(level_factors(voxel, shape, plan.levels), start=1):
        if not labels:  # the mean's voxel centre moves by half a cell
            offset = [o + (f - 1) * v / 2 for o, f, v in zip(offset, factor, voxel,
                                                             strict=True)]
        voxel = [v * f for v, f in zip(voxel, factor, strict=True)]
        shape = tuple(-(-n // f) for n, f in zip(shape, factor, strict=True))
        target = f"{staged}/s{k}"
        chunks = tuple(min(c, n) for c, n in zip(plan.chunks or base.chunks[-3:], shape,
                                                 strict=True))
        channels = base.shape[0] if len(base.shape) == 4 else None
        grid = BlockGrid(shape, tuple(c * max(1, b // c)
                                      for b, c in zip(plan.block, chunks, strict=True)))
        create_volume(group, target, shape=shape, dtype=base.dtype, voxel_size=voxel,
                      offset=offset, chunks=chunks, channels=channels, register=False,
                      shards=shard_shape(plan.shards, shape, chunks, grid.block_shape))
        run_blocks(_LevelBlock(plan.dataset, source, target, factor, grid, labels),
                   grid.blocks, stage=f"pyramid {name} s{k}", **run)
        entries.append((target, list(voxel), list(offset)))
        source = target
    return entries


def pyramid(dataset: str | os.PathLike[str], options: PyramidOptions | None = None, *,
            overwrite: bool = False, client: Any | None = None,
            scheduler: LocalScheduler = "threads", progress: bool = True,
            **kwargs: Any) -> dict[str, list[str]]:
    """Write pyramid levels of a dataset's arrays (:class:`~affinity_dist.options.
    PyramidOptions`, or its fields as keywords: default every image/label array present
    among raw, labels, segmentation, fragments, affinities); returns array -> level paths.
    Existing levels are replaced only with ``overwrite``."""
    plan = prepare_pyramid(dataset, PyramidOptions.of(options, **kwargs), overwrite=overwrite)
    return run_pyramid(plan, client=client, scheduler=scheduler, progress=progress)
