"""Sample: write a synthetic EM-like dataset (``raw`` + ``labels``), block by block.

The volume is defined by its :class:`~affinity_dist.synthetic.SampleSpec` alone: every
block is generated independently (with the blur's halo) and equals the same region of the
volume generated in one piece, so the volume may exceed memory and the blocks run in
parallel on any Dask cluster.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import BlockGrid, default_block
from ..kernels.synthetic import SampleSpec, generate_region
from ..options import SampleOptions
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
from ..storage.location import as_path

__all__ = ["SamplePlan", "prepare_sample", "run_sample", "sample"]


@dataclass(frozen=True)
class _SampleBlock:
    spec: SampleSpec
    grid: BlockGrid
    dst: str

    def __call__(self, block_id: int) -> int:
        box = self.grid.write_box(block_id)
        raw, labels = generate_region(self.spec, box.start, box.stop)
        open_volume(self.dst, "raw", "r+").write(box, raw)
        open_volume(self.dst, "labels", "r+").write(box, labels)
        return box.size


@dataclass(frozen=True)
class SamplePlan:
    """A validated sample request."""

    spec: SampleSpec
    dst: str
    chunks: tuple[int, int, int]
    overwrite: bool
    shards: tuple[int, int, int] | None = None  # one per write block, or one file per chunk


def prepare_sample(dst: str | os.PathLike[str], options: SampleOptions | None = None, *,
                   overwrite: bool = False, **kwargs: Any) -> SamplePlan:
    """Validate a :func:`sample` request without writing anything."""
    o = SampleOptions.of(options, **kwargs)
    check_destination(dst, overwrite=overwrite)
    # raw uint8 noise stores ~1:1, the uint64 labels at >= 80x (bench_storage)
    require_space(dst, math.prod(o.shape) * 1.1, f"--shape {list(o.shape)}")
    spec = SampleSpec(shape=o.shape, seed=o.seed, voxel_size=o.voxel_size)
    shards = shard_shape(o.shards, o.shape, o.chunks, default_block(o.chunks, o.shape))
    return SamplePlan(spec, str(dst), o.chunks, overwrite, shards)


def run_sample(plan: SamplePlan, *, client: Any | None = None,
               scheduler: LocalScheduler = "threads", progress: bool = True) -> Path:
    """Execute a validated plan; see :func:`sample`."""
    spec = plan.spec
    grid = BlockGrid(spec.shape, plan.shards or tuple(
        min(c, n) for c, n in zip(plan.chunks, spec.shape, strict=True)))
    with staged_dataset(plan.dst, overwrite=plan.overwrite) as group:
        common: dict[str, Any] = {"shape": spec.shape, "voxel_size": spec.voxel_size,
                                  "chunks": plan.chunks, "shards": plan.shards}
        create_volume(group, "raw", dtype=np.uint8, **common)
        create_volume(group, "labels", dtype=np.uint64, **common)
        group.attrs["affinity_dist"] = {"sample": {"shape": list(spec.shape), "seed": spec.seed,
                                                   "voxel_size": list(spec.voxel_size)}}
        run_blocks(_SampleBlock(spec, grid, group_path(group)), grid.blocks, client=client,
                   stage="sample", scheduler=scheduler, progress=progress)
    return as_path(plan.dst)


def sample(dst: str | os.PathLike[str], options: SampleOptions | None = None, *,
           overwrite: bool = False, client: Any | None = None,
           scheduler: LocalScheduler = "threads", progress: bool = True,
           **kwargs: Any) -> Path:
    """Write a synthetic dataset with ``raw`` (uint8) and ground-truth ``labels`` (uint64).

    Options (:class:`~affinity_dist.options.SampleOptions`, or as keywords): ``shape``,
    ``seed``, ``voxel_size``, ``chunks``. Deterministic for (shape, seed, voxel_size),
    whatever the chunks or the cluster; the blocks are generated independently, so the
    volume may exceed memory. ``client``: a ``distributed.Client``; ``None`` runs with
    this process's ``scheduler`` (threads or synchronous).
    """
    plan = prepare_sample(dst, SampleOptions.of(options, **kwargs), overwrite=overwrite)
    return run_sample(plan, client=client, scheduler=scheduler, progress=progress)
