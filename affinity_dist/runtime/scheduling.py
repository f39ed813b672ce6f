"""Running one task per block on Dask, with a progress bar and blocks named on failure.

Every stage turns its work into a list of small, picklable block descriptions and one
function; :func:`run_blocks` runs ``fn(item)`` for each, either on a
``distributed.Client`` (a LocalCluster by default from the CLI, an existing scheduler, or
SLURM workers) or in this process with Dask's local threaded or synchronous scheduler
(the debugging path). The graph is one task per block: O(number of blocks), no large
payloads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from dask.base import compute
from dask.callbacks import Callback
from dask.delayed import delayed
from tqdm import tqdm

from ..errors import AffinityDistError, BlockFailedError, ConfigError

__all__ = ["BlockCounts", "Scheduler", "cluster", "keep_freed_memory", "peak_memory_mb",
           "release_freed_memory", "run_blocks", "worker_peak_mb"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
LocalScheduler = Literal["threads", "synchronous"]
#: What the CLI's ``--scheduler`` accepts: a local scheduler name, ``local`` (a
#: LocalCluster of worker processes, the default) or a scheduler address.
Scheduler = str


_MALLOC_TUNED: list[Any] = []  # glibc, once tuned in this process


def keep_freed_memory() -> None:
    """Let glibc reuse freed block buffers instead of returning them to the OS (once per
    process; a no-op off glibc).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins
    glibc's mmap threshold at 128 KiB: every block buffer and activation tensor is then a
    fresh mmap whose pages fault in again. Measured on this machine: segment's storage
    traffic per 256^3 block 0.22 s in a plain process, 0.41 s under that setting, 0.27 s
    with these two mallopt calls; the shipped U-Net 1.26 Mvox/s under it, 2.23 with them.
    Buffers are reused from block to block; :func:`release_freed_memory` hands them back
    to the OS when a stage ends (trimming after every block made each block fault its
    activations in again: the MALA-sized net lost ~7 %).

    At most 2 malloc arenas: glibc gives every thread that allocates (Zarr's codec and
    I/O threads) its own arena, each keeping up to the trim threshold of freed memory,
    so a worker's resident memory crept up with the number of blocks it had processed.
    Measured (segment, 2 workers, 256^3 blocks): peak worker RSS 834 MB at 512^3 and
    921 MB at 1024^3 without the cap, 774 and 776 MB with it, at the same speed.

    No mmap at all, and up to 1 GiB of freed heap kept: block buffers above glibc's 32 MiB
    mmap ceiling (a 256^3 uint64 block is 134 MB) were still fresh mmaps, faulted in and
    zeroed by the kernel at every block. From the heap they are reused. Measured (segment,
    2 workers, medians of 3 on one cluster, alternating): 512^3 72 / 66 -> 84 / 81 Mvox/s,
    1024^3 86 / 82 -> 97 / 95 Mvox/s, peak worker RSS unchanged (~790 MB).
    """
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: glibc's maximum, 32 MiB
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap, even for buffers above that threshold
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB freed (until the stage
        # ends: release_freed_memory)
        libc.mallopt(-8, 2)  # M_ARENA_MAX: freed memory is shared, not kept per thread
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return
    _MALLOC_TUNED.append(libc)


_CODEC_THREADS_SET: list[bool] = []  # once per process
_CODEC_LOCK = threading.Lock()


def match_codec_threads() -> None:
    """In a Dask worker, give Zarr as many codec threads as the worker has task threads
    (once per process; a no-op outside a worker or when Zarr's ``threading.max_workers``
    is already set, e.g. by ``ZARR_THREADING__MAX_WORKERS``).

    Zarr otherwise compresses and decompresses in a pool of cpu_count + 4 threads per
    process, so every worker of a cluster competes for all the cores of the machine.
    Measured (segment 512^3, 2 single-threaded workers on 2 cores, 4 rounds alternating
    fresh clusters, 12 runs each): 94.3 -> 96.8 Mvox/s median.
    """
    with _CODEC_LOCK:  # a worker's task threads all wait until it is set
        if _CODEC_THREADS_SET:
            return
        _CODEC_THREADS_SET.append(True)
        try:
            from distributed import get_worker

            threads = int(get_worker().state.nthreads)
        except (ImportError, ValueError, AttributeError):
            return
        import zarr

        if zarr.config.get("threading.max_workers", None) is None:
            zarr.config.set({"threading.max_workers": max(1, threads)})


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``): at a stage's end."""
    if _MALLOC_TUNED:
        _MALLOC_TUNED[0].malloc_trim(0)


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MB (Linux VmHWM, which unlike ru_maxrss
    is not inherited over fork); NaN where /proc is absent."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return float("nan")
    return next((int(line.split()[1]) / 1e3 for line in lines
                 if line.startswith("VmHWM:")), float("nan"))


def worker_peak_mb(client: Any) -> float:
    """The largest peak resident memory over the cluster's worker processes, in MB."""
    return float(max(client.run(peak_memory_mb).values()))


#: Attempts of a block after an unexpected error (I/O hiccup, ...) before the run stops.
RETRIES = 2


@dataclass
class BlockCounts:
    """Block tasks of a stage: computed, skipped (recorded as done earlier), and retried
    (computed again after an error)."""

    computed: int = 0
    skipped: int = 0
    retried: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"computed": self.computed, "skipped": self.skipped, "retried": self.retried}


def _where(item: Any, index: int) -> str:
    """How errors name a task: its block id, or its index and description."""
    return f"block {item!r}" if isinstance(item, int) else f"task {index} ({item!r})"


class _Guarded:
    """Call ``fn(item)``, retrying unexpected errors up to ``retries`` times; then turn
    the error into a BlockFailedError naming the block. Errors of affinity_dist's own
    (bad data: NaN, ...) are deterministic and not retried. Returns (retries used, result).
    """

    def __init__(self, fn: Callable[[Any], Any], stage: str, retries: int = RETRIES) -> None:
        self.fn, self.stage, self.retries = fn, stage, retries

    def __call__(self, index: int, item: Any) -> tuple[int, Any]:
        keep_freed_memory()
        match_codec_threads()
        for attempt in range(self.retries + 1):
            try:
                return attempt, self.fn(item)
            except AffinityDistError:
                raise
            except Exception as err:
                where = _where(item, index)
                if attempt == self.retries:
                    raise BlockFailedError(
                        f"{self.stage}: {where} failed after {attempt + 1} attempts: "
                        f"{type(err).__name__}: {err}") from err
                log.warning("%s: %s failed (%s: %s), retrying", self.stage, where,
                            type(err).__name__, err)
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")


class _TqdmCallback(Callback):
    def __init__(self, bar: _Progress) -> None:
        super().__init__()
        self.bar = bar

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, tuple) and key and str(key[0]).startswith("block-"):
            self.bar.update(1)


class _Progress:
    """A tqdm bar on a terminal; elsewhere (batch logs) an INFO line every 10 % or 60 s."""

    def __init__(self, total: int, desc: str, progress: bool) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.bar: tqdm[Any] | None = None
        if progress and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit="block", file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        self.start = self.last = time.monotonic()
        self.next_fraction = 0.1

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.done / max(self.total, 1) >= self.next_fraction or now - self.last >= 60:
            log.info("%s: %d/%d blocks, %.0f s", self.desc, self.done, self.total,
                     now - self.start)
            self.last = now
            self.next_fraction = self.done / max(self.total, 1) + 0.1

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def run_blocks(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    client: Any | None = None,
    stage: str = "blocks",
    scheduler: LocalScheduler = "threads",
    progress: bool = True,
    resources: dict[str, float] | None = None,
    counts: BlockCounts | None = None,
    retries: int = RETRIES,
    release: bool = True,
) -> list[R]:
    """Run ``fn(item)`` for every item, one Dask task each; results in item order.

    Parameters
    ----------
    fn : picklable function of one block description (runs on workers).
    items : small picklable block descriptions.
    client : a ``distributed.Client``; ``None`` runs in this process with ``scheduler``.
    stage : name used for task keys, the progress bar and error messages.
    resources : worker resources every task claims (e.g. ``{"GPU": 1}``), distributed only.
    counts : accumulates the blocks computed and retried.
    retries : attempts after an unexpected error, per block (a lost worker is handled by
        distributed itself: its tasks go to other workers).
    release : hand the workers' freed memory back to the OS at the end (a stage of several
        passes releases after its last: the next pass would fault the buffers in again).

    Raises
    ------
    BlockFailedError : naming the first block that failed (the others are cancelled).
    """
    guarded = _Guarded(fn, stage, retries)
    token = uuid.uuid4().hex[:8]
    counts = counts if counts is not None else BlockCounts()
    if not items:
        return []
    with _Progress(len(items), stage, progress) as bar:
        if client is None:
            tasks = [delayed(guarded, pure=False)(i, item,
                                                       dask_key_name=(f"block-{stage}-{token}", i))
                     for i, item in enumerate(items)]
            with _TqdmCallback(bar):
                done = list(compute(*tasks, scheduler=scheduler))
            if release:
                release_freed_memory()
            return _unpack(done, counts)
        from distributed import as_completed

        keys = [f"{stage}-{token}-{i}" for i in range(len(items))]
        futures: list[Any] = client.map(guarded, range(len(items)), items, key=keys,
                                        pure=False, resources=resources)
        index = {key: i for i, key in enumerate(keys)}
        pairs: list[Any] = [None] * len(items)
        try:
            for future in as_completed(futures):
                i = index[future.key]
                if future.status == "error":
                    _raise_for(future, stage, items[i], i)
                # fetch now and drop the future: the worker frees the result at once
                # instead of holding every block's result until the stage ends
                pairs[i] = future.result()
                futures[i] = None
                del future
                bar.update(1)
            if release:
                client.run(release_freed_memory)  # a stage's buffers go back to the OS
            return _unpack(pairs, counts)
        finally:
            client.cancel([f for f in futures if f is not None and not f.done()])


def _unpack(pairs: list[tuple[int, R]], counts: BlockCounts) -> list[R]:
    counts.computed += len(pairs)
    counts.retried += sum(1 for attempts, _ in pairs if attempts)
    return [result for _, result in pairs]


def _raise_for(future: Any, stage: str, item: Any, index: int) -> None:
    """Raise a failed future's error in the client; errors raised by the scheduler rather
    than the task (a block whose workers kept dying: KilledWorker) name the block too."""
    try:
        future.result()
    except AffinityDistError:
        raise
    except Exception as err:
        raise BlockFailedError(f"{stage}: {_where(item, index)} failed: "
                               f"{type(err).__name__}: {err}") from err


@contextlib.contextmanager
def cluster(scheduler: Scheduler | None = None, *, n_workers: int | None = None,
            threads_per_worker: int = 1, memory_limit: str = "auto",
            gpus: int = 0) -> Iterator[Any | None]:
    """A Dask client for the CLI's ``--scheduler`` value.

    ``None`` or ``"local"``: a LocalCluster of worker processes on 127.0.0.1 (dashboard
    link printed); ``"threads"`` / ``"synchronous"``: no client, run in this process;
    anything else: the address of a running scheduler (``tcp://host:8786``).
    ``gpus``: a local cluster gets one worker per GPU, each declaring ``{"GPU": 1}`` (the
    resource inference tasks claim).
    """
    if scheduler in ("threads", "synchronous"):
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler in (None, "local"):
        workers = n_workers or gpus or max(1, min(os.cpu_count() or 1, 8))
        with (LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                           processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                           memory_limit=memory_limit,
                           resources={"GPU": 1} if gpus else None) as local,
              Client(local) as client):
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
