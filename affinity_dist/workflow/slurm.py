"""SLURM: the ``[cluster.slurm]`` options of a workflow, and Dask workers as SLURM jobs.

``workflows/submit_workflow.py`` runs a workflow whose ``cluster.scheduler`` is ``"slurm"``:
it starts a Dask scheduler in its own process, submits ``jobs`` SLURM jobs (or scales
adaptively between ``adaptive_min`` and ``adaptive_max``) of ``processes`` Dask workers
each through ``dask_jobqueue.SLURMCluster``, runs every stage on them and cancels every job
it submitted when it ends, fails or is interrupted. Before submitting anything it checks
the request against what the partition's nodes have (``sinfo``) and lets
``sbatch --test-only`` judge the job script, so that an impossible request is refused with
one line naming the option (:class:`~affinity_dist.errors.ConfigError`, exit 2).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import AffinityDistError, ConfigError
from ..runtime.memory import WORKER_ENVIRON

__all__ = ["SLURM_OPTIONS", "WorkersTimeoutError", "check_options", "check_request",
           "cluster_kwargs", "slurm_cluster", "check_pending", "pending_reasons", "cancel_jobs"]

#: ``[cluster.slurm]`` keys and the TOML types each accepts.
SLURM_OPTIONS: dict[str, tuple[type, ...]] = {
    "partition": (str,), "account": (str,), "walltime": (str,), "cores": (int,),
    "processes": (int,), "memory": (str,), "gpus": (int,), "job_extra_directives": (list,),
    "jobs": (int,), "adaptive_min": (int,), "adaptive_max": (int,), "interface": (str,),
    "host": (str,), "python": (str,), "log_directory": (str,), "local_directory": (str,),
    "wait_timeout": (int, float),
}
DEFAULTS: dict[str, Any] = {"cores": 1, "processes": 1, "memory": "4GB",
                            "walltime": "01:00:00", "gpus": 0, "wait_timeout": 300}
_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):([0-5]\d):([0-5]\d)$")
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*[kKMGTP]i?[bB]?\s*$")


class WorkersTimeoutError(AffinityDistError, TimeoutError):
    """No Dask worker connected within ``wait_timeout``; the message says why (squeue)."""

    exit_code = 1


def _bad(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"workflow: got cluster.slurm.{key} = {value!r}, expected {expected}")


def _seconds(text: str) -> float | None:
    """SLURM time ``[D-]HH:MM:SS``, ``MM:SS`` or ``MM`` in seconds; None for no limit."""
    if text.strip().lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    h, m, s = ([0, *parts] if len(parts) == 2 else [0, parts[0], 0] if len(parts) == 1
               else parts)
    return (int(days or 0) * 24 + h) * 3600 + m * 60 + s


def check_options(values: Any, base: Path) -> dict[str, Any]:
    """Validate a ``[cluster.slurm]`` table; returns it with defaults filled in and
    ``log_directory`` made absolute (relative to the workflow file's folder)."""
    if not isinstance(values, dict):
        raise ConfigError(f"workflow: got cluster.slurm = {values!r}, expected a table "
                          "[cluster.slurm]")
    out = dict(DEFAULTS)
    for key, value in values.items():
        if key not in SLURM_OPTIONS:
            raise ConfigError(f"workflow: got unknown key cluster.slurm.{key}, expected one "
                              f"of {sorted(SLURM_OPTIONS)}")
        types = SLURM_OPTIONS[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise _bad(key, value, " or ".join(t.__name__ for t in types))
        out[key] = value
    for key in ("cores", "processes", "jobs", "adaptive_max"):
        if key in out and out[key] < 1:
            raise _bad(key, out[key], "an integer >= 1")
    for key in ("gpus", "adaptive_min"):
        if key in out and out[key] < 0:
            raise _bad(key, out[key], "an integer >= 0")
    if out["processes"] > out["cores"]:
        raise _bad("processes", out["processes"], f"at most cores = {out['cores']} (every "
                   "worker process needs a core)")
    if not _WALLTIME.match(out["walltime"]):
        raise _bad("walltime", out["walltime"], "'HH:MM:SS' (or 'D-HH:MM:SS')")
    if not _MEMORY.match(out["memory"]) or _memory_mb(out["memory"]) < 1:
        raise _bad("memory", out["memory"], "a size with a unit such as '8GB'")
    if not all(isinstance(d, str) for d in out.get("job_extra_directives", [])):
        raise _bad("job_extra_directives", out["job_extra_directives"], "a list of strings")
    if out["wait_timeout"] <= 0:
        raise _bad("wait_timeout", out["wait_timeout"], "seconds > 0")
    adaptive = {"adaptive_min", "adaptive_max"} & set(out)
    if adaptive and "jobs" in out:
        raise _bad("jobs", out["jobs"], f"either jobs or {sorted(adaptive)}, not both")
    if adaptive and "adaptive_max" not in out:
        raise _bad("adaptive_min", out["adaptive_min"], "with cluster.slurm.adaptive_max")
    if adaptive and out.get("adaptive_min", 0) > out["adaptive_max"]:
        raise _bad("adaptive_min", out["adaptive_min"],
                   f"at most adaptive_max = {out['adaptive_max']}")
    if not adaptive:
        out.setdefault("jobs", 1)
    if "log_directory" in out and not Path(out["log_directory"]).is_absolute():
        out["log_directory"] = str(base / out["log_directory"])
    return out


def _memory_mb(memory: str) -> int:
    """The ``--mem`` dask-jobqueue writes for ``memory``, in MiB (SLURM's "MB"): whole
    GiB, rounded up, from 1 GiB on."""
    from dask.utils import parse_bytes

    size = parse_bytes(memory)
    return math.ceil(size / 2**30) * 1024 if size >= 2**30 else math.ceil(size / 2**20)


def cluster_kwargs(options: Mapping[str, Any], job_name: str) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for validated options.

    The scheduler binds to ``host`` (default 127.0.0.1, where the workers run on this
    machine) unless ``interface`` is given; its dashboard gets a free port. ``gpus`` asks
    for ``--gres=gpu:N`` and makes every worker declare the resource ``GPU=1``. Every job
    exports :data:`~affinity_dist.runtime.memory.WORKER_ENVIRON` before its workers start.
    """
    directives = list(options.get("job_extra_directives", []))
    worker_args: list[str] = []
    if options["gpus"]:
        directives.append(f"--gres=gpu:{options['gpus']}")
        worker_args += ["--resources", "GPU=1"]
    interface = options.get("interface")
    host = options.get("host", None if interface else "127.0.0.1")
    scheduler: dict[str, Any] = {"dashboard_address": f"{host or ''}:0"}
    scheduler.update({"host": host} if host else {"interface": interface})
    return {"queue": options.get("partition"), "account": options.get("account"),
            "walltime": options["walltime"], "cores": options["cores"],
            "processes": options["processes"], "memory": options["memory"],
            "job_extra_directives": directives, "worker_extra_args": worker_args,
            "job_script_prologue": [f"export {name}={value}"
                                    for name, value in WORKER_ENVIRON.items()],
            "interface": interface, "python": options.get("python", sys.executable),
            "log_directory": options.get("log_directory"),
            "local_directory": options.get("local_directory"), "job_name": job_name,
            "scheduler_options": scheduler}


def slurm_cluster(options: Mapping[str, Any], job_name: str, job_ids: list[str],
                  refusals: list[str]) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` (scheduler started, no job submitted yet) whose
    jobs append every id they get to ``job_ids`` and every refusal of ``sbatch`` to
    ``refusals`` (both filled on the cluster's event loop, read by the caller)."""
    from dask_jobqueue import slurm as jobqueue

    base: Any = jobqueue.SLURMJob

    class RecordedJob(base):  # type: ignore[misc]
        async def _submit_job(self, script_filename: str) -> str:
            try:
                return str(await super()._submit_job(script_filename))
            except RuntimeError as err:
                refusals.append(_sbatch_error(str(err)))
                raise

        def _job_id_from_submit_output(self, out: str) -> str:
            job_id = str(super()._job_id_from_submit_output(out))
            job_ids.append(job_id)
            return job_id

    cluster: Any = jobqueue.SLURMCluster
    return cluster(job_cls=RecordedJob, **cluster_kwargs(options, job_name))


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def _sbatch_error(text: str) -> str:
    """The lines of sbatch's output that say why it refused, joined into one."""
    lines = [ln.strip() for ln in text.splitlines()
             if re.match(r"\s*(sbatch: error|allocation failure|error)", ln, re.IGNORECASE)]
    return "; ".join(lines) or " ".join(text.split())[-300:]


def _gpus(gres: str) -> int:
    """GPUs a node offers, from sinfo's %G (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``(null)``)."""
    return sum(int(n) for n in re.findall(r"gpu(?::[\w.-]+)?:(\d+)", gres))


def check_request(options: Mapping[str, Any], script: str) -> None:
    """Refuse (ConfigError naming the option) a request no node of the partition can hold,
    a partition that does not exist, or a job script ``sbatch --test-only`` rejects."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ConfigError("cluster.scheduler: got 'slurm', expected the SLURM commands "
                          "(sbatch, sinfo) on PATH on this machine")
    listing = _run("sinfo", "-h", "-o", "%P|%l")
    if listing.returncode:
        raise ConfigError(f"cluster.scheduler: got 'slurm', expected a SLURM controller that "
                          f"answers (sinfo: {_sbatch_error(listing.stderr + listing.stdout)})")
    limits = {p.rstrip("*"): (p.endswith("*"), t) for p, t in
              (line.split("|") for line in listing.stdout.split())}
    partition = options.get("partition") or next(
        (p for p, (default, _) in limits.items() if default), None)
    if partition not in limits:
        raise _bad("partition", partition, f"one of {sorted(limits)} (sinfo)")
    nodes = [line.split("|") for line in _run("sinfo", "-h", "-N", "-p", partition, "-o",
                                              "%N|%c|%m|%G").stdout.split()]
    have = [(int(c.rstrip("+")), int(m.rstrip("+")), _gpus(g)) for _, c, m, g in nodes]
    need = (options["cores"], _memory_mb(options["memory"]), options["gpus"])
    where = f"per node of partition {partition!r} (sinfo)"
    for i, (key, unit) in enumerate((("cores", "cores"), ("memory", "MB"), ("gpus", "GPUs"))):
        most = max((h[i] for h in have), default=0)
        if need[i] > most:
            raise _bad(key, options[key], f"at most {most} {unit} {where}")
    if not any(all(n <= h for n, h in zip(need, node, strict=True)) for node in have):
        raise _bad("cores", options["cores"], f"cores, memory and GPUs that fit together "
                   f"on one node of partition {partition!r} (sinfo)")
    longest = _seconds(limits[partition][1])
    walltime = _seconds(options["walltime"])
    if longest is not None and walltime is not None and walltime > longest:
        raise _bad("walltime", options["walltime"], f"at most the partition's time limit "
                   f"{limits[partition][1]}")
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(script)
        f.flush()
        test = _run("sbatch", "--test-only", f.name)
    if test.returncode:
        raise refusal(_sbatch_error(test.stderr + test.stdout), options)


def refusal(message: str, options: Mapping[str, Any], key: str | None = None
            ) -> ConfigError:
    """The one-line error for SLURM refusing the job, naming ``key`` or else the option
    its message points at."""
    text = message.lower()
    key = key or next((k for words, k in (
        ("partition", "partition"), ("gres", "gpus"), ("time limit", "walltime"),
        ("account", "account"), ("memory", "memory"), ("node configuration", "cores"),
        ("feature", "job_extra_directives")) if words in text), None)
    if key is None or key not in options:
        return ConfigError(f"workflow: got cluster.slurm options that sbatch refused, "
                           f"expected a job SLURM accepts ({message})")
    return _bad(key, options[key], f"a request SLURM accepts ({message})")


#: squeue reasons of a job that will not start as requested, and the option likely to blame
_HOPELESS = {"PartitionConfig": "cores", "PartitionNodeLimit": "cores",
             "PartitionTimeLimit": "walltime", "BadConstraints": "job_extra_directives",
             "InvalidAccount": "account", "InvalidQOS": "job_extra_directives"}


def check_pending(job_ids: list[str], options: Mapping[str, Any]) -> None:
    """Refuse (ConfigError) when squeue says a job will not start as requested (a cluster
    without ``EnforcePartLimits`` queues a job beyond the partition's limits)."""
    if not job_ids:
        return
    out = _run("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%r").stdout
    for job, reason in (line.split("|", 1) for line in out.split()):
        if reason in _HOPELESS:
            raise refusal(f"job {job} is pending with reason {reason}: it exceeds the "
                          f"partition's limits or asks for what it lacks", options,
                          _HOPELESS[reason])


def pending_reasons(job_ids: list[str]) -> str:
    """Why the jobs are not running, as squeue says ("123 PENDING (Resources)")."""
    if not job_ids:
        return "no job was submitted"
    out = _run("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i %T (%r)")
    return "; ".join(out.stdout.strip().splitlines()) or "the jobs are no longer queued"


def cancel_jobs(job_ids: list[str], job_name: str) -> None:
    """scancel the jobs, and any other job of this user that carries the run's name."""
    if shutil.which("scancel") is None:
        return
    if job_ids:
        _run("scancel", *job_ids)
    _run("scancel", "--name", job_name, "--user", _user())


def _user() -> str:
    import getpass

    return getpass.getuser()
