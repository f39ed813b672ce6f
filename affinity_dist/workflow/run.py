"""``affinity-dist run``: every stage of a workflow file on one Dask cluster, with a report.

ingest (when the input is a source) -> predict -> segment -> evaluate (when the dataset
has ground-truth labels) -> previews. Each stage is the same plan/run pair the single
commands use; the run prints the dashboard link, a progress bar per stage, and writes a
report beside the output (``<output>-report.json``, plus a short summary on stdout):
per-stage seconds, voxels/s, block tasks computed / skipped / retried, predict's halo
overhead, and the peak memory of the workers.

Resumable (see :mod:`affinity_dist.state`): a stage whose output was finished under the
same key (inputs, model checksum, options, code version) is skipped; an interrupted stage
continues with the blocks it has not recorded; a changed option redoes that stage and
those after it (their inputs' keys change). Outputs a run did not make are not replaced
without ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, DestinationExistsError
from ..runtime.cluster import cluster
from ..runtime.memory import worker_peak_mb
from ..runtime.scheduling import BlockCounts, LocalScheduler
from ..runtime.state import StageState, array_key
from ..storage import list_arrays, open_volume, write_atomic, write_json
from ..storage.location import as_path, is_remote, mtime_ns
from .config import Workflow

__all__ = ["report_paths", "run_workflow"]

log = logging.getLogger(__name__)


def report_paths(workflow: Workflow) -> dict[str, Path]:
    """Where a run writes its report, scores and previews: beside the output dataset (on
    an object store too)."""
    out = as_path(workflow.output)
    stem = f"{out.parent / out.name.removesuffix('.zarr')}"
    return {"report": as_path(f"{stem}-report.json"), "summary": as_path(f"{stem}-report.txt"),
            "scores": as_path(f"{stem}-scores.json"),
            "preview": as_path(f"{stem}-preview")}


def _skip_or_check(dataset: str, names: tuple[str, ...], state: StageState,
                   overwrite: bool, expected: dict[str, str] | None = None) -> bool:
    """True when every output was finished under this key (the stage is skipped; an
    output named in ``expected`` under its own key there); else refuse to replace an output
    a run did not make, unless ``overwrite``."""
    arrays = set(list_arrays(dataset)) if as_path(dataset).exists() else set()
    keys = {n: open_volume(dataset, n).attrs.get("run_key") if n in arrays else None
            for n in names}
    want = {n: (expected or {}).get(n, state.key) for n in names}
    if not overwrite and state.complete and all(k == want[n] for n, k in keys.items()):
        return True
    foreign = [n for n in names if n in arrays and keys[n] is None]
    if foreign and not overwrite:
        raise DestinationExistsError(f"workflow: got output = {dataset!r} which holds "
                                     f"{foreign} not made by a run; expected none (or pass "
                                     "--overwrite)")
    return False


def _ingest(workflow: Workflow, overwrite: bool, run: dict[str, Any]) -> dict[str, Any]:
    from ..stages.ingest import prepare_ingest, run_ingest

    out, options = workflow.output, workflow.ingest
    source = as_path(str(workflow.source))
    remote = is_remote(source)
    state = StageState.of(out, "ingest", {
        "source": str(source if remote else source.resolve()),
        "size": 0 if remote else source.stat().st_size,
        "mtime": mtime_ns(source / "zarr.json" if remote else source), **options.as_dict()})
    exists = as_path(out).exists()
    made = exists and StageState.of(out, "ingest", {}).summary().get("key")
    if exists and state.complete and not overwrite:
        plan = prepare_ingest(source, out, options, overwrite=True)
        return {"voxels": math.prod(plan.grid.shape), "blocks": plan.grid.num_blocks,
                "skipped": plan.grid.num_blocks}
    plan = prepare_ingest(source, out, options, overwrite=overwrite or bool(made))
    run_ingest(plan, **run)
    state.begin(keep=False)
    state.finish({"blocks": plan.grid.num_blocks})
    return {"voxels": math.prod(plan.grid.shape), "blocks": plan.grid.num_blocks,
            "computed": plan.grid.num_blocks}


def _predict(workflow: Workflow, overwrite: bool, run: dict[str, Any]) -> dict[str, Any]:
    from ..stages.predict import prepare_predict, run_predict

    plan = prepare_predict(workflow.output, workflow.predict, overwrite=True,
                           local=run.pop("local"))
    entry: dict[str, Any] = {"voxels": math.prod(plan.grid.shape),
                             "blocks": plan.grid.num_blocks, "key": plan.state.key}
    if _skip_or_check(plan.dataset, ("affinities",), plan.state, overwrite):
        return {**entry, "skipped": plan.grid.num_blocks}
    stats = run_predict(plan, **run)
    return {**entry, **(stats.counts.as_dict() if stats.counts else {}),
            "halo_overhead": round(stats.halo_overhead, 3),
            "compute_overhead": round(stats.compute_overhead, 3),
            "model_share": round(stats.model_share, 3)}


def _segment(workflow: Workflow, overwrite: bool, run: dict[str, Any]) -> dict[str, Any]:
    from ..stages.segment import prepare_segment, run_segment

    plan = prepare_segment(workflow.output, workflow.segment, overwrite=True)
    entry: dict[str, Any] = {"voxels": math.prod(plan.grid.shape),
                             "blocks": plan.grid.num_blocks, "key": plan.state.key}
    if _skip_or_check(plan.dataset, tuple(plan.outputs), plan.state, overwrite,
                      plan.output_keys):
        return {**entry, "skipped": plan.grid.num_blocks,
                "segments": plan.state.summary().get("segments")}
    counts = BlockCounts()
    summary = run_segment(plan, counts=counts, **run)
    return {**entry, **counts.as_dict(), "fragments": int(summary.num_fragments),
            "segments": int(summary.num_segments),
            "levels": summary.levels}  # either method: the reduction's residual per level


def _evaluate(workflow: Workflow, overwrite: bool, run: dict[str, Any]) -> dict[str, Any]:
    from ..stages.evaluate import prepare_evaluate, run_evaluate, write_report

    options, preview = workflow.evaluate, workflow.preview
    plan = prepare_evaluate(workflow.output, options)
    paths = report_paths(workflow)
    state = StageState.of(plan.dataset, "evaluate", {
        **options.as_dict(), "segmentation": array_key(plan.dataset, plan.segmentation),
        "labels": array_key(plan.truth, plan.labels), "preview": preview,
        "scores": str(paths["scores"])})
    entry: dict[str, Any] = {"voxels": math.prod(plan.grid.shape),
                             "blocks": plan.grid.num_blocks, "scores": str(paths["scores"])}
    if state.complete and paths["scores"].is_file() and not overwrite:
        scores = json.loads(paths["scores"].read_text())
        return {**entry, "skipped": plan.grid.num_blocks,
                **{k: scores[k] for k in SCORE_KEYS}, **state.summary().get("entry", {})}
    state.begin(keep=False)
    result = run_evaluate(plan, **run)
    write_report(paths["scores"], plan, result)
    entry.update(computed=plan.grid.num_blocks,
                 **{k: getattr(result, k) for k in SCORE_KEYS})
    extra: dict[str, Any] = {}
    if preview:
        from ..viewers.preview import write_previews

        extra["previews"] = [str(p) for p in write_previews(
            workflow.output, paths["preview"], plan.segmentation, truth=plan.truth,
            labels=plan.labels, merged=[i for i, _ in result.worst_merges],
            split=[i for i, _ in result.worst_splits])]
    state.finish({"entry": extra})
    return {**entry, **extra}


def _write_summary(path: Path, report: dict[str, Any], lines: list[str]) -> None:
    """The short human summary beside the JSON report (complete runs only)."""
    head = [f"affinity-dist run {report['workflow']}", f"output {report['output']}",
            f"scheduler {report['scheduler']}  dashboard {report.get('dashboard')}"]
    scores = next((s for s in report["stages"] if s["stage"] == "evaluate"), None)
    if scores is not None:
        head.append("scores: " + "  ".join(f"{k} {scores[k]:.4f}" for k in SCORE_KEYS))
    write_atomic(path, "\n".join([*head, *lines]) + "\n")


def _preflight(workflow: Workflow, local: bool) -> None:
    """Check what can be checked against data that exists before any cluster starts (the
    options themselves were checked when the workflow was loaded): predict's model, block
    and tile against the input's raw when the dataset is there already."""
    if "predict" in workflow.stages and workflow.source is None:
        from ..stages.predict import prepare_predict

        prepare_predict(workflow.output, workflow.predict, overwrite=True, local=local)


SCORE_KEYS = ("voi_split", "voi_merge", "adapted_rand_error", "cremi_score")
_STAGES = {"ingest": _ingest, "predict": _predict, "segment": _segment, "evaluate": _evaluate}


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
    if target == "slurm":
        raise ConfigError("cluster.scheduler: got 'slurm', expected 'local', an address, "
                          "'threads' or 'synchronous' for affinity-dist run; run SLURM "
                          "workflows with python workflows/submit_workflow.py WORKFLOW")
    paths = report_paths(workflow)
    if not paths["report"].parent.is_dir():
        raise ConfigError(f"workflow: got output = {workflow.output!r}, expected a path in "
                          "an existing directory")
    local: LocalScheduler = "synchronous" if target == "synchronous" else "threads"
    on_this_machine = target in ("local", "threads", "synchronous")
    _preflight(workflow, on_this_machine)
    report: dict[str, Any] = {"workflow": workflow.file, "output": workflow.output,
                              "scheduler": target, **(extra or {}), "stages": []}
    start = time.perf_counter()
    lines: list[str] = []
    given = contextlib.nullcontext(client) if client is not None else None
    gpus: int | Literal["auto"] = (
        "auto" if "predict" in workflow.stages and workflow.predict.device != "cpu" else 0)
    with given or cluster(target, n_workers=workers or workflow.cluster.get("workers"),
                          gpus=gpus) as dask:
        report["dashboard"] = getattr(dask, "dashboard_link", None)
        run = {"client": dask, "scheduler": local, "progress": progress}
        for stage in workflow.stages:
            missing = ({"labels", "segmentation"} - set(list_arrays(workflow.output))
                       if stage == "evaluate" else set())
            if missing:
                log.info("evaluate: skipped, %s has no %s", workflow.output, sorted(missing))
                continue
            clock = time.perf_counter()
            stage_run = {**run, "local": on_this_machine} if stage == "predict" else dict(run)
            entry = {"stage": stage, "computed": 0, "skipped": 0, "retried": 0,
                     **_STAGES[stage](workflow, overwrite, stage_run)}
            entry["seconds"] = round(time.perf_counter() - clock, 3)
            if entry["computed"]:
                entry["voxels_per_second"] = round(entry["voxels"] / max(entry["seconds"], 1e-9))
                rate = f"{entry['voxels_per_second'] / 1e6:.2f} Mvox/s"
            else:
                rate = "done earlier: nothing to compute"
            report["stages"].append(entry)
            lines.append(f"{stage}: {entry['blocks']} blocks ({entry['computed']} block tasks "
                         f"computed, {entry['skipped']} skipped, {entry['retried']} retried), "
                         f"{entry['seconds']:.1f} s, {rate}")
            print(lines[-1], flush=True)
        report["peak_worker_mb"] = worker_peak_mb(dask) if dask is not None else None
    report["seconds"] = round(time.perf_counter() - start, 3)
    lines.append(f"peak worker memory {report['peak_worker_mb'] or 0:.0f} MB; "
                 f"{report['seconds']:.1f} s in all")
    write_json(paths["report"], report)
    _write_summary(paths["summary"], report, lines)
    return report
