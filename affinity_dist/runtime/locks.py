"""Writer leases: one run at a time writes a stage's outputs in a dataset.

A run that writes (``predict``, ``segment``, ...) first creates the lease file
``<dataset>/_run_state/<stage>.lease`` with ``O_CREAT | O_EXCL`` (atomic on local and
NFS v3+ file systems, unlike ``flock`` across nodes). It holds the owner, host, pid,
start time and a random token, and a daemon thread of the run touches it every
:data:`HEARTBEAT` seconds. A second writer finds the file and exits 2 naming the holder,
unless the lease is **stale**: its holder was on this host and its pid is gone, or its
heartbeat is older than :data:`STALE` seconds (a killed run on another node). A stale
lease is taken over by renaming it away (one taker wins the rename) and creating a new
one. On an object store the lease is created by a conditional PUT (``If-None-Match: *``),
the heartbeat rewrites it, and a stale one is deleted (if it still holds the stale
holder's token) before the conditional create, which has one winner. Readers never take
a lease and are never blocked. The holder removes its lease at
the end, whatever the outcome; a SIGKILL leaves it behind, stale.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import DatasetBusyError
from ..storage import process_alive
from ..storage.location import as_path, create_exclusive, is_remote, make_dirs, remove_empty_dir

__all__ = ["HEARTBEAT", "STALE", "check_free", "lease_path", "leased", "writer_lease"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
HEARTBEAT = 10.0  # seconds between touches of a held lease
STALE = 120.0  # a lease untouched this long belongs to a dead run


def lease_path(dataset: str | os.PathLike[str], stage: str) -> Path:
    from .state import STATE_DIR

    return as_path(dataset) / STATE_DIR / f"{stage}.lease"


def _holder(path: Path) -> dict[str, Any] | None:
    """The lease's content and age (None when it vanished meanwhile)."""
    try:
        age = time.time() - path.stat().st_mtime
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written or foreign: judged by its age alone
        data = {}
    info = data if isinstance(data, dict) else {}
    return {**info, "age": age}


def _stale(info: dict[str, Any]) -> bool:
    if info["age"] > STALE:
        return True
    pid = info.get("pid")
    return (info.get("host") == socket.gethostname() and isinstance(pid, int)
            and not process_alive(pid))


def _describe(info: dict[str, Any]) -> str:
    return (f"{info.get('owner', '?')}@{info.get('host', '?')} pid {info.get('pid', '?')}, "
            f"started {info.get('started', '?')}, last heartbeat {info['age']:.0f} s ago")


def _create(path: Path, record: dict[str, Any]) -> bool:
    """Create the lease with its whole content at once, unless it exists
    (:func:`~affinity_dist.storage.location.create_exclusive`: a hard link of a written
    file, or a conditional PUT): a run stopped or killed mid-creation never leaves a
    half-written lease that another run could not attribute."""
    return create_exclusive(path, json.dumps(record).encode())


def _busy(path: Path, stage: str, info: dict[str, Any]) -> DatasetBusyError:
    return DatasetBusyError(
        f"{stage}: {path.parent.parent} is being written by another run ({_describe(info)}; "
        f"lease {path}); wait for it to finish, or remove the lease if that run is gone")


def check_free(dataset: str | os.PathLike[str], stage: str) -> None:
    """Refuse early (before a cluster starts) when a live run holds the lease; the lease
    itself is only taken by :func:`writer_lease`."""
    path = lease_path(dataset, stage)
    info = _holder(path) if path.exists() else None
    if info is not None and not _stale(info):
        raise _busy(path, stage, info)


def _acquire(path: Path, stage: str, record: dict[str, Any]) -> None:
    for _ in range(5):  # a few rounds of take-over races at most
        if _create(path, record):
            return
        info = _holder(path)
        if info is None:
            continue
        if not _stale(info):
            raise _busy(path, stage, info)
        if is_remote(path):
            _take_over_remote(path, stage, info)
            continue
        stale = path.with_name(f".{path.name}.stale-{record['token']}")
        with contextlib.suppress(FileNotFoundError):  # another taker may win the rename
            path.rename(stale)
            moved = _holder(stale) or {}
            if moved.get("token") != info.get("token"):  # a fresh lease of a faster taker
                with contextlib.suppress(FileExistsError):
                    os.link(stale, path)  # back in place, unless yet another run is there
            else:
                log.warning("%s: took over the stale writer lease of %s", stage,
                            _describe(info))
            stale.unlink()
    raise DatasetBusyError(f"{stage}: could not take the writer lease {path} (contended)")


def _take_over_remote(path: Path, stage: str, info: dict[str, Any]) -> None:
    """Remove a stale lease on an object store (no rename: deleted if it still holds the
    stale holder's token; the conditional create that follows has one winner)."""
    again = _holder(path)
    if again is not None and again.get("token") == info.get("token"):
        path.unlink(missing_ok=True)
        log.warning("%s: took over the stale writer lease of %s", stage, _describe(info))


def _touch(path: Path, record: dict[str, Any]) -> None:
    """The heartbeat: a new modification time (on an object store, the lease rewritten
    while it is still this run's)."""
    if not is_remote(path):
        os.utime(path)
    elif json.loads(path.read_text()).get("token") == record["token"]:
        path.write_text(json.dumps(record))


@contextlib.contextmanager
def writer_lease(dataset: str | os.PathLike[str], stage: str) -> Iterator[Path]:
    """Hold the writer lease of ``stage`` in ``dataset`` for the body (see the module)."""
    path = lease_path(dataset, stage)
    make_dirs(path.parent)
    record = {"owner": getpass.getuser(), "host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stage": stage,
              "token": secrets.token_hex(8)}
    _acquire(path, stage, record)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError, ValueError):
                _touch(path, record)

    thread = threading.Thread(target=beat, name=f"lease-{stage}", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("token") == record["token"]:
                path.unlink()
        remove_empty_dir(path.parent)  # the state folder, when the lease was all of it


def leased(stage: str) -> Callable[[F], F]:
    """Run ``fn(plan, ...)`` holding the writer lease of ``stage`` in ``plan.dataset``."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(plan: Any, *args: Any, **kwargs: Any) -> Any:
            with writer_lease(plan.dataset, stage):
                return fn(plan, *args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap
