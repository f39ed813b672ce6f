"""The Dask client a command runs its blocks on, for the CLI's ``--scheduler`` value, and
the worker layout of a local cluster (one worker per GPU for inference)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, Literal

from ..errors import ConfigError
from .memory import WORKER_ENVIRON
from .scheduling import Scheduler

__all__ = ["BOUNDED", "WORKER_SETTINGS", "cluster", "local_gpus"]

log = logging.getLogger(__name__)

#: What a worker logs, with a traceback, when the scheduler closes before its last
#: heartbeat: the normal end of every local run on a loaded machine, not an error.
HEARTBEAT_NOISE = "Failed to communicate with scheduler during heartbeat."


#: Dask settings of every client (and a local cluster's scheduler): distributed keeps the
#: last ``low-level-log-length`` message batches of each stream "for developers"; at its
#: default, 1000, a client that releases 10^5 keys holds them all (12 MB of release
#: messages and a cancelled-future error per key at 10^5 blocks): the client's memory
#: grew with the blocks (benchmarks/bench_scale.py).
BOUNDED = {"distributed.admin.low-level-log-length": 10}

#: Dask settings under which a local cluster's nannies start their workers: with
#: :data:`~affinity_dist.runtime.memory.WORKER_ENVIRON` besides Dask's own variables.
WORKER_SETTINGS = {f"distributed.nanny.pre-spawn-environ.{name}": value
                   for name, value in WORKER_ENVIRON.items()}


class _HeartbeatNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != HEARTBEAT_NOISE


def _quiet_workers() -> Any:
    """A worker plugin that keeps :data:`HEARTBEAT_NOISE` off the terminal (re-applied to
    restarted workers); only where the command keeps distributed's chatter quiet."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietHeartbeat(WorkerPlugin):
        name = "affinity-dist-quiet-heartbeat"

        def setup(self, worker: Any) -> None:
            logging.getLogger("distributed.worker").addFilter(_HeartbeatNoise())

    return QuietHeartbeat()


def local_gpus() -> int:
    """The number of CUDA devices of this machine as torch sees them (0 without CUDA or
    without torch).

    torch is imported here, only when asked: a command that runs on threads or on a
    running scheduler never loads it.
    """
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (inherited; Python then installs no
    KeyboardInterrupt handler): Ctrl-C reaches the whole process group, and only the
    client should stop (one line), closing its workers, instead of every worker printing
    a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def cluster(scheduler: Scheduler | None = None, *, n_workers: int | None = None,
            threads_per_worker: int = 1, memory_limit: str = "auto",
            gpus: int | Literal["auto"] = 0) -> Iterator[Any | None]:
    """A Dask client for the CLI's ``--scheduler`` value.

    ``None`` or ``"local"``: a LocalCluster of worker processes on 127.0.0.1 (dashboard
    link printed); ``"threads"`` / ``"synchronous"``: no client, run in this process;
    anything else: the address of a running scheduler (``tcp://host:8786``).
    ``gpus``: a local cluster gets one worker per GPU, each declaring ``{"GPU": 1}`` (the
    resource inference tasks claim); ``"auto"``: as many as :func:`local_gpus` finds. For
    the other schedulers ``gpus`` is ignored (and torch not imported): their workers
    declare their own resources.
    """
    if scheduler in ("threads", "synchronous"):
        yield None
        return
    import dask
    import distributed  # noqa: F401  # its defaults first: set() on a missing "distributed"
    # section would create it and, on leaving, delete all of it (a second cluster in the
    # same process then failed with KeyError: 'comm')

    with dask.config.set(BOUNDED):
        yield from _clients(scheduler, n_workers, threads_per_worker, memory_limit, gpus)


def _clients(scheduler: Scheduler | None, n_workers: int | None, threads_per_worker: int,
             memory_limit: str, gpus: int | Literal["auto"]) -> Iterator[Any]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler in (None, "local"):
        count = local_gpus() if gpus == "auto" else gpus
        cores = os.cpu_count() or 1
        workers = n_workers or count or max(1, min(cores, 8))
        if workers > max(cores, count):  # each worker is a process of its own
            log.warning("--workers %d is above the %d cores of this machine: using %d",
                        workers, cores, max(cores, count))
            workers = max(cores, count)
        with _workers_ignore_sigint(), dask.config.set(WORKER_SETTINGS):
            local = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                 processes=True, host="127.0.0.1",
                                 dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
                                 resources={"GPU": 1} if count else None)
        with local, Client(local) as client:
            if logging.getLogger("distributed").getEffectiveLevel() >= logging.ERROR:
                client.register_plugin(_quiet_workers())
            print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
            yield client
        return
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigError(f"--scheduler: got {scheduler!r}, expected the address of a running "
                          f"Dask scheduler, 'local', 'threads' or 'synchronous' ({err})") from None
    with client:
        print(f"dask dashboard: {client.dashboard_link}", file=sys.stderr)
        yield client
