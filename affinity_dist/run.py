"""``affinity-dist run``: every stage of a workflow file on one Dask cluster, with a report.

ingest (when the input is a source) -> predict -> segment -> evaluate (when the dataset
has ground-truth labels) -> previews. Each stage is the same plan/run pair the single
commands use; the run prints the dashboard link, a progress bar per stage, and writes a
report beside the output (``<output>-report.json``, plus a short summary on stdout):
per-stage seconds, voxels/s, blocks, predict's halo overhead, and the peak memory of the
workers. Not yet resumable: a rerun needs ``overwrite`` (see issue 6).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .scheduling import LocalScheduler, cluster, worker_peak_mb
from .storage import list_arrays, write_json
from .workflow import Workflow

__all__ = ["report_paths", "run_workflow"]

log = logging.getLogger(__name__)


def report_paths(workflow: Workflow) -> dict[str, Path]:
    """Where a run writes its report, scores and previews: beside the output dataset."""
    out = Path(workflow.output)
    stem = out.parent / out.name.removesuffix(".zarr")
    return {"report": Path(f"{stem}-report.json"), "scores": Path(f"{stem}-scores.json"),
            "preview": Path(f"{stem}-preview")}


def _stage(workflow: Workflow, stage: str, overwrite: bool, run: dict[str, Any]
           ) -> dict[str, Any]:
    """Run one stage; returns its report entry."""
    out, options = workflow.output, dict(getattr(workflow, stage, {}))
    local = run.pop("local")
    entry: dict[str, Any] = {}
    if stage == "ingest":
        from .ingest import prepare_ingest, run_ingest

        inp = dict(workflow.input)
        plan = prepare_ingest(inp.pop("source"), out, overwrite=overwrite, **inp)
        run_ingest(plan, **run)
        entry.update(voxels=math.prod(plan.grid.shape), blocks=plan.grid.num_blocks)
    elif stage == "predict":
        from .predict import prepare_predict, run_predict

        pplan = prepare_predict(out, overwrite=overwrite, local=local, **options)
        stats = run_predict(pplan, **run)
        entry.update(voxels=stats.voxels, blocks=stats.blocks,
                     halo_overhead=round(stats.halo_overhead, 3),
                     compute_overhead=round(stats.compute_overhead, 3),
                     model_share=round(stats.model_share, 3))
    elif stage == "segment":
        from .segment import prepare_segment, run_segment

        splan = prepare_segment(out, overwrite=overwrite, **options)
        table = run_segment(splan, **run)
        z, y, x = splan.grid.shape
        entry.update(voxels=z * y * x, blocks=splan.grid.num_blocks,
                     fragments=int(table.counts.sum()), segments=int(table.num_segments))
    else:
        from .evaluate import prepare_evaluate, run_evaluate, write_report

        preview = options.pop("preview", True)
        eplan = prepare_evaluate(out, **options)
        scores = run_evaluate(eplan, **run)
        paths = report_paths(workflow)
        write_report(paths["scores"], eplan, scores)
        z, y, x = eplan.grid.shape
        entry.update(voxels=z * y * x, blocks=eplan.grid.num_blocks,
                     voi_split=scores.voi_split, voi_merge=scores.voi_merge,
                     adapted_rand_error=scores.adapted_rand_error,
                     cremi_score=scores.cremi_score, scores=str(paths["scores"]))
        if preview:
            from .preview import write_previews

            entry["previews"] = [str(p) for p in write_previews(out, paths["preview"])]
    return entry


def run_workflow(workflow: Workflow, *, scheduler: str | None = None,
                 workers: int | None = None, overwrite: bool = False,
                 progress: bool = True, client: Any | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every stage of ``workflow``; returns (and writes) the run report.

    ``client``: a connected ``distributed.Client`` to run on (e.g. SLURM workers started
    by ``workflows/submit_workflow.py``) instead of the workflow's ``cluster.scheduler``;
    ``extra``: entries added to the report (e.g. the SLURM job ids).
    """
    target = "client" if client is not None else scheduler or workflow.scheduler
    paths = report_paths(workflow)
    if not paths["report"].parent.is_dir():
        raise ConfigError(f"workflow: got output = {workflow.output!r}, expected a path in "
                          "an existing directory")
    local: LocalScheduler = "synchronous" if target == "synchronous" else "threads"
    report: dict[str, Any] = {"workflow": workflow.file, "output": workflow.output,
                              "scheduler": target, **(extra or {}), "stages": []}
    start = time.perf_counter()
    given = contextlib.nullcontext(client) if client is not None else None
    with given or cluster(target, n_workers=workers or workflow.cluster.get("workers")) as client:
        report["dashboard"] = getattr(client, "dashboard_link", None)
        run = {"client": client, "scheduler": local, "progress": progress}
        on_this_machine = target in ("local", "threads", "synchronous")
        for stage in workflow.stages:
            missing = ({"labels", "segmentation"} - set(list_arrays(workflow.output))
                       if stage == "evaluate" else set())
            if missing:
                log.info("evaluate: skipped, %s has no %s", workflow.output, sorted(missing))
                continue
            clock = time.perf_counter()
            entry = {"stage": stage, **_stage(workflow, stage, overwrite,
                                              {**run, "local": on_this_machine})}
            entry["seconds"] = round(time.perf_counter() - clock, 3)
            entry["voxels_per_second"] = round(entry["voxels"] / max(entry["seconds"], 1e-9))
            report["stages"].append(entry)
            print(f"{stage}: {entry['blocks']} blocks, {entry['seconds']:.1f} s, "
                  f"{entry['voxels_per_second'] / 1e6:.2f} Mvox/s", flush=True)
        report["peak_worker_mb"] = worker_peak_mb(client) if client is not None else None
    report["seconds"] = round(time.perf_counter() - start, 3)
    write_json(paths["report"], report)
    return report
