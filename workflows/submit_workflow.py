#!/usr/bin/env python
"""Run a workflow on SLURM: Dask workers as SLURM jobs, the scheduler in this process.

    python workflows/submit_workflow.py WORKFLOW.toml [--overwrite] [--dry-run] [-q]

The workflow's ``[cluster]`` must say ``scheduler = "slurm"``; ``[cluster.slurm]`` sizes
the jobs (see ``affinity_dist.workflow.slurm``). Run it where ``sbatch`` works (a login node, or
inside an allocation): it checks the request against the partition (``sinfo``,
``sbatch --test-only``), submits the jobs through ``dask_jobqueue.SLURMCluster``, waits up
to ``wait_timeout`` s for the first worker, prints the dashboard link, runs every stage
(progress on stderr) and writes the run report with a ``slurm`` entry (job ids, job name,
sizes). Every job it submitted is cancelled when it ends, fails, or gets Ctrl-C / SIGTERM;
workers whose scheduler vanished without that (SIGKILL) exit after dask's death timeout.
``--dry-run`` prints the job script and submits nothing.

Exit status: 0 done; 2 bad workflow or a request SLURM cannot satisfy (one line naming the
option); 1 a failure during the run, or no worker within ``wait_timeout`` (with squeue's
reason); 130 / 143 interrupted by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from affinity_dist.workflow.config import Workflow

PROG = "submit_workflow"
log = logging.getLogger(PROG)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _wait_for_workers(client: Any, job_ids: list[str], refusals: list[str],
                      options: dict[str, Any], expected: int) -> None:
    """Wait up to ``wait_timeout`` s for the first worker; sbatch refusing a job, or a job
    pending for a reason that means it never starts, is a ConfigError at once, the timeout
    a WorkersTimeoutError naming squeue's reasons."""
    from affinity_dist.workflow.slurm import (
        WorkersTimeoutError,
        check_pending,
        pending_reasons,
        refusal,
    )

    if expected == 0:  # adaptive from zero: jobs are submitted when work arrives
        return
    deadline = time.monotonic() + options["wait_timeout"]
    while True:
        if refusals:  # sbatch said no
            raise refusal(refusals[0], options)
        check_pending(job_ids, options)  # queued, but SLURM says it will never start
        try:
            client.wait_for_workers(1, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise WorkersTimeoutError(
                    f"cluster.slurm.wait_timeout: got {options['wait_timeout']}, expected a "
                    f"worker within it; the jobs are waiting: {pending_reasons(job_ids)}"
                ) from None


def submit(workflow: Workflow, *, overwrite: bool = False, dry_run: bool = False,
           progress: bool = True) -> dict[str, Any] | None:
    """Run ``workflow`` on SLURM workers; returns the run report (None for ``dry_run``)."""
    from affinity_dist.errors import ConfigError
    from affinity_dist.storage import write_json
    from affinity_dist.workflow.run import report_paths, run_workflow
    from affinity_dist.workflow.slurm import check_request, slurm_cluster

    if workflow.scheduler != "slurm":
        raise ConfigError(f"cluster.scheduler: got {workflow.scheduler!r}, expected 'slurm' "
                          "(run other workflows with affinity-dist run)")
    options = dict(workflow.cluster["slurm"])
    stem = str(report_paths(workflow)["report"]).removesuffix("-report.json")
    options.setdefault("log_directory", f"{stem}-slurm-logs")  # beside the report
    made_logs = not Path(options["log_directory"]).exists()
    job_name = f"affinity-dist-{uuid.uuid4().hex[:8]}"
    job_ids: list[str] = []
    refusals: list[str] = []
    cluster: Any = None
    client: Any = None
    try:
        cluster = slurm_cluster(options, job_name, job_ids, refusals)
        script = cluster.job_script()
        if dry_run:
            print(script)
            return None
        check_request(options, script)
        if "jobs" in options:
            cluster.scale(jobs=options["jobs"])
            expected = options["jobs"]
        else:
            cluster.adapt(minimum_jobs=options.get("adaptive_min", 0),
                          maximum_jobs=options["adaptive_max"])
            expected = options.get("adaptive_min", 0)
        client = cluster.get_client()
        print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
        print(f"slurm: submitting {expected or 'adaptive'} job(s) named {job_name}",
              file=sys.stderr, flush=True)
        _wait_for_workers(client, job_ids, refusals, options, expected)
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        print(f"slurm: jobs {', '.join(job_ids) or '-'}; {workers} worker(s) connected",
              file=sys.stderr, flush=True)
        slurm: dict[str, Any] = {
            "job_ids": job_ids, "job_name": job_name, "partition": options.get("partition"),
            "log_directory": options["log_directory"],
            **{k: options[k] for k in ("cores", "processes", "memory", "walltime", "gpus")},
            **{k: options[k] for k in ("jobs", "adaptive_min", "adaptive_max")
               if k in options}}
        report = run_workflow(workflow, client=client, overwrite=overwrite,
                              progress=progress, extra={"slurm": slurm})
        ids = sorted(job_ids, key=lambda j: (len(j), j))  # numeric order
        report["slurm"] = {**slurm, "job_ids": ids}  # adaptive scaling may have added jobs
        write_json(report_paths(workflow)["report"], report)
        return report
    finally:
        _cleanup(cluster, client, job_ids, job_name)
        with contextlib.suppress(OSError):  # the job script's log folder: no job, no folder
            if made_logs and not job_ids:
                Path(options["log_directory"]).rmdir()


def _cleanup(cluster: Any, client: Any, job_ids: list[str], job_name: str) -> None:
    """Cancel every job this run submitted, then close the client and the cluster; a
    second Ctrl-C or a SIGTERM cannot cut this short."""
    from affinity_dist.workflow.slurm import cancel_jobs

    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        cancel_jobs(job_ids, job_name)
        for closing in (client, cluster):
            if closing is not None:
                with contextlib.suppress(Exception):  # already gone: nothing left to close
                    closing.close()
        cancel_jobs(job_ids, job_name)  # any job whose sbatch returned during the close
        if job_ids:
            print(f"slurm: cancelled jobs {', '.join(job_ids)}", file=sys.stderr, flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("workflow", metavar="WORKFLOW", help="workflow file (TOML)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs a run did not make")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the SLURM job script and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="dask's log too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.quiet:  # a line every 10 % of a stage's blocks: SLURM runs are batch jobs
        logging.getLogger("affinity_dist").setLevel(logging.INFO)
    import dask

    if not args.verbose:  # keep distributed's chatter (scheduler, nannies) off the log
        dask.config.set({"logging.distributed": "error"})
    import dask_jobqueue  # noqa: F401  (sets SIGINT to sys.exit() when imported: ours after)

    if not args.verbose:  # after distributed configured its loggers (on import)
        for noisy in ("distributed", "dask_jobqueue", "bokeh", "tornado",
                      "tornado.application", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)

    from affinity_dist.errors import AffinityDistError
    from affinity_dist.workflow.config import load_workflow

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        workflow = load_workflow(args.workflow)
        report = submit(workflow, overwrite=args.overwrite, dry_run=args.dry_run,
                        progress=not args.quiet)
    except AffinityDistError as err:
        print(f"{PROG}: error: {err}".replace("\n", " "), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
        print(f"{PROG}: interrupted ({signal.Signals(signum).name})",
              file=sys.stderr)
        return 128 + signum
    if report is not None:
        print(f"{workflow.output}: {len(report['stages'])} stages in "
              f"{report['seconds']:.1f} s on SLURM jobs {', '.join(report['slurm']['job_ids'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
