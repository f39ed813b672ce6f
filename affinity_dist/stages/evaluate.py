"""Evaluate: a segmentation against ground truth, block by block, out of core.

Every Dask task reads one block of ``segmentation`` and of the truth ``labels`` and returns
its contingency table (the overlapping id pairs with their voxel counts); the client sums
the tables and computes VOI split/merge, adapted Rand error and the CREMI score
(:mod:`affinity_dist.metrics`). Memory grows with the number of overlapping id pairs,
never with the number of voxels. Truth label 0 is ignored; truth objects smaller than
``min_truth_size`` voxels can be left out (exactly: their rows are dropped from the
summed table, so sizes count the voxels left after the boundary tolerance).

With ``boundary_tolerance`` (nm, CREMI's ``border_threshold``), truth voxels within that
in-plane distance of a truth boundary (:func:`~affinity_dist.metrics.border_mask`) are
ignored too; 0 is off, as in CREMI's ``NeuronIds``. Each task then reads its truth with a
halo in y and x wide enough that the mask of its block equals the mask of the whole
volume: the scores do not depend on the block shape.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, DestinationExistsError
from ..geometry import BlockGrid, default_block
from ..kernels.metrics import (
    Contingency,
    Scores,
    border_mask,
    contingency,
    merge_contingency,
    scores,
)
from ..kernels.values import require_labels
from ..options import EvaluateOptions
from ..runtime.scheduling import LocalScheduler, run_blocks
from ..storage import check_chunk_alignment, open_volume, write_json
from ..storage.location import as_path, is_remote

__all__ = ["EvaluatePlan", "check_report_path", "evaluate", "prepare_evaluate", "run_evaluate",
           "write_report"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluatePlan:
    """A validated evaluation."""

    dataset: str
    segmentation: str
    truth: str
    labels: str
    grid: BlockGrid
    min_truth_size: int = 0
    top: int = 5
    boundary_tolerance: float = 0.0
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def truth_halo(self) -> tuple[int, int, int]:
        """Halo of the truth read per block (0 without tolerance).

        A voxel is masked when a boundary voxel lies within the tolerance, at most
        ``floor(t / v)`` voxels away along y (x); whether that voxel is a boundary depends on
        its neighbour one further. ``ceil(t / v) + 1`` covers both (and rounding).
        """
        t = self.boundary_tolerance
        if not t:
            return 0, 0, 0
        _, vy, vx = self.voxel_size
        return 0, math.ceil(t / vy) + 1, math.ceil(t / vx) + 1


def prepare_evaluate(dataset: str | os.PathLike[str], options: EvaluateOptions | None = None,
                     **kwargs: Any) -> EvaluatePlan:
    """Validate an evaluation without reading any voxel. The truth is ``options.truth``'s
    ``labels`` (default: ``dataset`` itself); ``boundary_tolerance`` in nm, measured with
    the truth's voxel size."""
    o = EvaluateOptions.of(options, **kwargs)
    truth = o.truth if o.truth is not None else str(dataset)
    seg = open_volume(dataset, o.segmentation)
    gt = open_volume(truth, o.labels)
    for volume, name in ((seg, "--input"), (gt, "--truth")):
        if len(volume.shape) != 3 or volume.dtype.kind not in "iu":
            raise DataError(f"{name}: got {volume.name!r} of shape {volume.shape} and dtype "
                            f"{volume.dtype}, expected a 3D integer label volume")
    if seg.shape != gt.shape:
        raise DataError(f"--truth: got labels of shape {gt.shape}, expected the "
                        f"segmentation's shape {seg.shape}")
    block = o.block if o.block is not None else default_block(seg.chunks, seg.shape)
    check_chunk_alignment(block, seg.chunks, seg.shape)
    return EvaluatePlan(str(dataset), o.segmentation, truth, o.labels,
                        BlockGrid(seg.shape, block), o.min_truth_size, o.top,
                        o.boundary_tolerance, gt.voxel_size)


@dataclass(frozen=True)
class _ContingencyBlock:
    plan: EvaluatePlan

    def __call__(self, block_id: int) -> Contingency:
        plan = self.plan
        box = plan.grid.write_box(block_id)
        seg = open_volume(plan.dataset, plan.segmentation).read(box)
        require_labels(plan.segmentation, seg, f"block {block_id}", box.start)
        read = plan.grid.read_box(block_id, plan.truth_halo)[0] if plan.boundary_tolerance \
            else box
        gt = open_volume(plan.truth, plan.labels).read(read)
        require_labels(plan.labels, gt, f"block {block_id}", read.start)
        if not plan.boundary_tolerance:
            return contingency(seg, gt)
        inner = box.relative_to(read)
        masked = border_mask(gt, plan.boundary_tolerance, plan.voxel_size)[inner]
        gt = gt[inner].copy()
        gt[masked] = 0
        return contingency(seg, gt)


def _drop_small_truth(table: Contingency, min_size: int) -> Contingency:
    if not min_size or not len(table.truth):
        return table
    _, inverse = np.unique(table.truth, return_inverse=True)
    sizes = np.bincount(inverse, weights=table.counts)
    keep = sizes[inverse] >= min_size
    return Contingency(table.seg[keep], table.truth[keep], table.counts[keep])


def run_evaluate(plan: EvaluatePlan, *, client: Any | None = None,
                 scheduler: LocalScheduler = "threads", progress: bool = True) -> Scores:
    """Execute a validated plan; see :func:`evaluate`."""
    tables = run_blocks(_ContingencyBlock(plan), plan.grid.blocks, stage="evaluate",
                        client=client, scheduler=scheduler, progress=progress)
    table = _drop_small_truth(merge_contingency(tables), plan.min_truth_size)
    log.info("evaluate: %d blocks, %d overlapping id pairs", plan.grid.num_blocks,
             len(table.counts))
    return scores(table, top=plan.top)


def evaluate(dataset: str | os.PathLike[str], options: EvaluateOptions | None = None, *,
             json_path: str | os.PathLike[str] | None = None, overwrite: bool = False,
             client: Any | None = None, scheduler: LocalScheduler = "threads",
             progress: bool = True, **kwargs: Any) -> Scores:
    """Score ``segmentation`` of ``dataset`` against ground-truth ``labels``.

    Parameters
    ----------
    options : :class:`~affinity_dist.options.EvaluateOptions` (truth dataset, array names,
        block, minimum truth size, worst objects listed, CREMI boundary tolerance), or its
        fields as keyword arguments.
    json_path : also write the scores as JSON there (an existing file only with
        ``overwrite``).
    client : ``distributed.Client``; ``None`` runs in this process (``scheduler``:
        threads or synchronous).

    Returns
    -------
    :class:`~affinity_dist.metrics.Scores`: VOI split/merge (bits), adapted Rand error with
    precision and recall, CREMI score, counts and the worst objects.
    """
    plan = prepare_evaluate(dataset, EvaluateOptions.of(options, **kwargs))
    if json_path is not None:
        check_report_path(json_path, overwrite=overwrite)
    result = run_evaluate(plan, client=client, scheduler=scheduler, progress=progress)
    if json_path is not None:
        write_report(json_path, plan, result)
    return result


def check_report_path(path: str | os.PathLike[str], argument: str = "--json", *,
                      overwrite: bool = True) -> Path:
    """Refuse an output path whose directory does not exist, or (without ``overwrite``)
    an existing file, before any work is done."""
    target = as_path(path)
    if not is_remote(target) and not target.parent.is_dir():
        raise ConfigError(f"{argument}: got {str(path)!r}, expected a path in an existing "
                          "directory")
    if not overwrite and target.exists():
        raise DestinationExistsError(f"{argument}: got {str(path)!r} which exists already; "
                                     "expected a new file (or pass --overwrite)")
    return target


def write_report(path: str | os.PathLike[str], plan: EvaluatePlan, result: Scores) -> None:
    """The scores as JSON (written to a temporary name, then renamed: never half a file)."""
    target = check_report_path(path)
    report = {"dataset": plan.dataset, "segmentation": plan.segmentation,
              "truth": plan.truth, "labels": plan.labels,
              "min_truth_size": plan.min_truth_size,
              "boundary_tolerance": plan.boundary_tolerance,
              "truth_voxel_size": list(plan.voxel_size), **asdict(result),
              "voi_sum": result.voi_sum, "cremi_score": result.cremi_score}
    write_json(target, report)
