"""Ingest: any source volume -> a dataset group with ``raw`` (uint8), ``labels`` (uint64) and
``labels_mask`` (uint8, 1 = annotated) when the source has them.

The driver reads as the algorithm:

1. describe the sources (shape, dtype, voxel size) and validate everything up front, so
   bad input fails before anything is written;
2. (``rescale`` only) one pass of per-block minima and maxima for the intensity range;
3. copy block by block, one Dask task per block; every block is a multiple of the output
   chunks, so no two tasks write one chunk; memory is one block per worker, whatever the
   volume size;
4. the staged dataset is moved into place only when every block is written.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ..geometry import BlockGrid, as_vector, default_block
from ..options import IngestOptions
from ..runtime.scheduling import LocalScheduler, run_blocks
from ..storage import (
    check_destination,
    create_volume,
    group_path,
    open_volume,
    require_space,
    shard_shape,
    staged_dataset,
)
from ..storage.location import as_path, is_remote
from ..storage.sources import Source, open_source

__all__ = ["IngestPlan", "ingest", "prepare_ingest", "rescale_to_uint8", "run_ingest"]

log = logging.getLogger(__name__)
#: Bytes of source data one ingest block may hold (per array): bounds worker memory.
BLOCK_BYTES = 64 * 2**20


def rescale_to_uint8(data: NDArray[Any], low: float, high: float) -> NDArray[np.uint8]:
    """Map ``[low, high]`` linearly onto ``[0, 255]`` (clipped, rounded).

    >>> rescale_to_uint8(np.array([0.0, 0.5, 1.0]), 0.0, 1.0).tolist()
    [0, 128, 255]
    """
    scale = 255.0 / (high - low) if high > low else 0.0
    out = np.rint((data.astype(np.float64) - low) * scale)
    return np.clip(out, 0, 255).astype(np.uint8)


def _ingest_block_shape(shape: Sequence[int], chunks: Sequence[int], slices: bool
                        ) -> tuple[int, ...]:
    """Largest block (a multiple of ``chunks``) within BLOCK_BYTES of uint64.

    Slice sources prefer whole sections (each file is decoded once per block it meets);
    chunked sources grow y and x up to 2 chunks.
    """
    voxels = BLOCK_BYTES // 8
    cz, cy, cx = chunks
    fy, fx = (math.ceil(shape[1] / cy), math.ceil(shape[2] / cx)) if slices else (2, 2)
    while cz * fy * cy * fx * cx > voxels and (fy > 1 or fx > 1):
        fy, fx = (max(1, fy // 2), fx) if fy >= fx else (fy, max(1, fx // 2))
    return cz, fy * cy, fx * cx


@dataclass(frozen=True)
class _MinMax:
    source: Source
    grid: BlockGrid

    def __call__(self, block_id: int) -> tuple[float, float]:
        data = self.source.read(self.grid.write_box(block_id))
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise DataError(f"raw: block {block_id} holds NaN or infinite values, "
                            "expected finite intensities")
        return float(data.min()), float(data.max())


@dataclass(frozen=True)
class _CopyBlock:
    raw: Source
    labels: Source | None
    grid: BlockGrid
    dst: str
    value_range: tuple[float, float] | None
    mask: Source | None = None

    def __call__(self, block_id: int) -> int:
        box = self.grid.write_box(block_id)
        data = self.raw.read(box)
        if self.value_range is not None:
            data = rescale_to_uint8(data, *self.value_range)
        open_volume(self.dst, "raw", "r+").write(box, data)
        if self.labels is not None:
            labels = self.labels.read(box)
            if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
                raise DataError(f"labels: block {block_id} holds negative ids, "
                                "expected non-negative integers")
            open_volume(self.dst, "labels", "r+").write(box, labels.astype(np.uint64))
        if self.mask is not None:  # 1 = annotated (DESIGN.md: labels_mask)
            annotated = (self.mask.read(box) != 0).astype(np.uint8)
            open_volume(self.dst, "labels_mask", "r+").write(box, annotated)
        return box.size


def _validate(raw: Source, labels: Source | None, rescale: bool) -> None:
    if len(raw.shape) != 3:
        raise DataError(f"raw: got {len(raw.shape)}D data of shape {raw.shape} from "
                        f"{raw.path!r}, expected a 3D volume (z y x)")
    if raw.dtype != np.uint8 and not rescale:
        raise DataError(f"raw: got dtype {raw.dtype}, expected uint8 "
                        "(pass --rescale to map the intensity range onto 0-255)")
    if raw.dtype.kind not in "uif":
        raise DataError(f"raw: got dtype {raw.dtype}, expected integer or float intensities")
    if labels is None:
        return
    if labels.dtype.kind not in "ui":
        raise DataError(f"labels: got dtype {labels.dtype}, expected integer neuron ids")
    if labels.shape != raw.shape:
        raise DataError(f"labels: got shape {labels.shape}, expected the raw shape {raw.shape}")


@dataclass(frozen=True)
class IngestPlan:
    """A validated ingest: what to read, where to write, with which metadata."""

    raw: Source
    labels: Source | None
    dst: str
    voxel_size: tuple[float, float, float]
    offset: tuple[float, float, float]
    chunks: tuple[int, int, int]
    rescale: bool
    overwrite: bool
    mask: Source | None = None  # the labels mask, with labels only
    shards_mode: str = "none"  # --shards

    @property
    def grid(self) -> BlockGrid:
        """Sharded: the later stages' default block (one raw shard per block, as their
        arrays'); else blocks of at most BLOCK_BYTES of uint64."""
        block: tuple[int, ...] = default_block(self.chunks, self.raw.shape)
        if shard_shape(self.shards_mode, self.raw.shape, self.chunks, block) is None:
            block = _ingest_block_shape(self.raw.shape, self.chunks,
                                        self.raw.format == "slices")
        return BlockGrid(self.raw.shape, block)

    @property
    def shards(self) -> tuple[int, int, int] | None:
        """One shard per ingest block, or one file per chunk."""
        return shard_shape(self.shards_mode, self.raw.shape, self.chunks, self.grid.block_shape)


def prepare_ingest(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                   options: IngestOptions | None = None, *,
                   overwrite: bool = False, **kwargs: Any) -> IngestPlan:
    """Validate every input of :func:`ingest` without writing anything."""
    o = IngestOptions.of(options, **kwargs)
    raw = open_source(src, o.raw_key, role="raw", option="--raw-key")
    if raw is None:  # pragma: no cover - open_source raises for a missing raw
        raise DataError(f"SRC: got {str(src)!r}, expected a raw volume")
    labels = open_source(src, o.labels_key, role="labels", option="--labels-key")
    _validate(raw, labels, o.rescale)
    mask = None
    if labels is not None:
        mask = open_source(src, o.mask_key, role="mask", option="--mask-key")
        if mask is not None and (mask.shape != raw.shape or mask.dtype.kind not in "uib"):
            raise DataError(f"--mask-key: got a labels mask {mask.shape} {mask.dtype}, "
                            f"expected integers of the raw shape {raw.shape}")
    if o.voxel_size is not None:
        vz, vy, vx = o.voxel_size
    elif raw.voxel_size is not None:
        vz, vy, vx = as_vector(f"voxel size stored in {str(src)!r} (override with --voxel-size)",
                               raw.voxel_size)
    else:
        vz, vy, vx = 1.0, 1.0, 1.0
    oz, oy, ox = (raw.offset if raw.offset is not None and len(raw.offset) == 3
                  else (0.0, 0.0, 0.0))
    check_destination(dst, overwrite=overwrite)
    per_voxel = (1 if o.rescale else raw.dtype.itemsize) + (0.1 if labels is not None else 0)
    require_space(dst, math.prod(raw.shape) * per_voxel, f"SRC {str(src)!r}")
    if o.voxel_size is None and raw.voxel_size is None:
        log.warning("no voxel size in %s and none given: assuming 1 nm (pass --voxel-size)", src)
    return IngestPlan(raw, labels, str(dst), (vz, vy, vx), (oz, oy, ox), o.chunks,
                      o.rescale, overwrite, mask, o.shards)


def run_ingest(plan: IngestPlan, *, client: Any | None = None,
               scheduler: LocalScheduler = "threads", progress: bool = True) -> Path:
    """Execute a validated plan; see :func:`ingest`."""
    raw, labels, grid = plan.raw, plan.labels, plan.grid
    with staged_dataset(plan.dst, overwrite=plan.overwrite) as group:
        value_range = None
        if plan.rescale and raw.dtype != np.uint8:
            ranges = run_blocks(_MinMax(raw, grid), grid.blocks, client=client,
                                stage="ingest-range", scheduler=scheduler, progress=progress)
            value_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
            log.info("rescaling raw from [%g, %g] to [0, 255]", *value_range)
        common: dict[str, Any] = {"shape": raw.shape, "voxel_size": plan.voxel_size,
                                  "offset": plan.offset, "chunks": plan.chunks,
                                  "shards": plan.shards}
        create_volume(group, "raw", dtype=np.uint8, **common)
        if labels is not None:
            create_volume(group, "labels", dtype=np.uint64, **common)
        if plan.mask is not None:
            create_volume(group, "labels_mask", dtype=np.uint8, **common)
        source = raw.path if is_remote(raw.path) else Path(raw.path).absolute()
        group.attrs["affinity_dist"] = {"ingested_from": str(source),
                                        "raw_key": raw.key,
                                        "labels_key": labels.key if labels else None,
                                        "mask_key": plan.mask.key if plan.mask else None}
        run_blocks(_CopyBlock(raw, labels, grid, group_path(group), value_range, plan.mask),
                   grid.blocks,
                   client=client, stage="ingest", scheduler=scheduler, progress=progress)
    return as_path(plan.dst)


def ingest(src: str | os.PathLike[str], dst: str | os.PathLike[str],
           options: IngestOptions | None = None, *, overwrite: bool = False,
           client: Any | None = None, scheduler: LocalScheduler = "threads",
           progress: bool = True, **kwargs: Any) -> Path:
    """Copy a source volume into a new dataset at ``dst``, chunk-aligned block by block.

    Parameters
    ----------
    src : HDF5 file (CREMI layout), multi-page TIFF, folder of TIFF/PNG slices, Zarr or N5.
    options : :class:`~affinity_dist.options.IngestOptions` (keys, voxel size, rescale,
        chunks), or its fields as keyword arguments.
    client : ``distributed.Client``; ``None`` runs in this process (``scheduler``:
        threads or synchronous).

    Returns
    -------
    The path of the new dataset. Nothing is written when validation fails, and ``dst`` is
    untouched unless the whole ingest succeeds.
    """
    plan = prepare_ingest(src, dst, IngestOptions.of(options, **kwargs), overwrite=overwrite)
    return run_ingest(plan, client=client, scheduler=scheduler, progress=progress)
