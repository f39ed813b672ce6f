"""Running one task per block on Dask, with a progress bar and blocks named on failure.

Every stage turns its work into a list of small, picklable block descriptions and one
function; :func:`run_blocks` runs ``fn(item)`` for each, either on a
``distributed.Client`` (a LocalCluster by default from the CLI, an existing scheduler, or
SLURM workers), keeping a bounded window of tasks on the cluster, or in this process on a
pool of threads or synchronously (the debugging path). Each task is one block: no
large payloads, and neither the scheduler nor the client holds a task per block. The
client itself comes from :mod:`.cluster`; the workers' memory tuning from
:mod:`.memory`.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from tqdm import tqdm

from ..errors import AffinityDistError, BlockFailedError
from .interrupt import check as check_interrupt
from .memory import keep_freed_memory, release_freed_memory

__all__ = ["BlockCounts", "LocalScheduler", "Scheduler", "run_blocks"]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
LocalScheduler = Literal["threads", "synchronous"]
#: What the CLI's ``--scheduler`` accepts: a local scheduler name, ``local`` (a
#: LocalCluster of worker processes, the default) or a scheduler address.
Scheduler = str

#: Attempts of a block after an unexpected error (I/O hiccup, ...) before the run stops.
RETRIES = 2
#: Tasks submitted to a cluster at most at a time (and per ``client.map`` call): the
#: scheduler and the client hold O(WINDOW) tasks and futures, not one per block.
WINDOW, SUBMIT = 8192, 1024


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


DRAIN_TIMEOUT = 600.0  # seconds a failed stage waits for its running tasks to stop


class _Failed(NamedTuple):
    """A block's error, returned by a worker instead of raised (see :class:`_Guarded`)."""

    error: AffinityDistError


class _Guarded:
    """Call ``fn(item)``, retrying unexpected errors up to ``retries`` times; then turn
    the error into a BlockFailedError naming the block. Errors of affinity_dist's own
    (bad data: NaN, ...) are deterministic and not retried. Returns (retries used, result).
    """

    def __init__(self, fn: Callable[[Any], Any], stage: str, retries: int = RETRIES,
                 capture: bool = False) -> None:
        self.fn, self.stage, self.retries, self.capture = fn, stage, retries, capture

    def __call__(self, index: int, item: Any) -> tuple[int, Any]:
        """With ``capture`` (on a cluster) the block's own error is returned as a
        :class:`_Failed` result, for the client to raise: a worker would otherwise log it
        with its traceback ("Compute Failed"), many lines per failed block."""
        if not self.capture:
            return self._call(index, item)
        try:
            return self._call(index, item)
        except AffinityDistError as err:
            return 0, _Failed(err)

    def _call(self, index: int, item: Any) -> tuple[int, Any]:
        from ..storage import match_codec_threads
        from ..storage.integrity import CorruptChunkError

        keep_freed_memory()
        match_codec_threads()
        for attempt in range(self.retries + 1):
            try:
                return attempt, self.fn(item)
            except CorruptChunkError as err:  # damage: retrying cannot help; name the block
                raise BlockFailedError(f"{self.stage}: {_where(item, index)}: {err}") from None
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


def _same(value: Any) -> Any:
    return value


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
    collect: Callable[[R], Any] = _same,
    keep: bool = True,
) -> list[Any]:
    """Run ``fn(item)`` for every item, one Dask task each; results in item order.

    Parameters
    ----------
    fn : picklable function of one block description (runs on workers).
    items : small picklable block descriptions.
    client : a ``distributed.Client``; ``None`` runs in this process with ``scheduler``.
        At most :data:`WINDOW` tasks are on the cluster at a time.
    stage : name used for task keys, the progress bar and error messages.
    resources : worker resources every task claims (e.g. ``{"GPU": 1}``), distributed only.
    counts : accumulates the blocks computed and retried.
    retries : attempts after an unexpected error, per block (a lost worker is handled by
        distributed itself: its tasks go to other workers).
    release : hand the workers' freed memory back to the OS at the end (a stage of several
        passes releases after its last: the next pass would fault the buffers in again).
    collect : called on the client with each block's result as it arrives (in completion
        order); what it returns is kept for the returned list.
    keep : False: nothing is kept and ``[]`` returned (``collect`` sees every result): the
        client's memory then does not grow with the number of blocks.

    Raises
    ------
    BlockFailedError : naming the first block that failed (the others are cancelled).
    """
    counts = counts if counts is not None else BlockCounts()
    if not items:
        return []
    token = uuid.uuid4().hex[:8]
    with _Progress(len(items), stage, progress) as bar:
        kept = _Kept(len(items) if keep else 0, collect, counts, bar)
        if client is None:
            threads = 1 if scheduler == "synchronous" else os.cpu_count() or 1
            _run_local(_Guarded(fn, stage, retries), items, threads, kept)
            if release:
                release_freed_memory()
        else:
            _run_windowed(client, _Guarded(fn, stage, retries, capture=True), items,
                          f"{stage}-{token}-", kept, resources=resources)
            if release:
                client.run(release_freed_memory)  # a stage's buffers go back to the OS
    counts.computed += len(items)
    return kept.results


class _Kept:
    """The results as they arrive: ``collect(value)`` kept in item order (none kept for
    ``n`` 0), retries counted, progress shown."""

    def __init__(self, n: int, collect: Callable[[Any], Any], counts: BlockCounts,
                 bar: _Progress) -> None:
        self.results: list[Any] = [None] * n
        self.collect, self.counts, self.bar = collect, counts, bar

    def arrive(self, i: int, attempts: int, value: Any) -> None:
        kept = self.collect(value)
        if self.results:
            self.results[i] = kept
        self.counts.retried += attempts > 0
        self.bar.update(1)


def _run_local(guarded: _Guarded, items: Sequence[Any], threads: int, kept: _Kept
               ) -> None:
    """In this process: in order on one thread, or on a pool of ``threads`` with a few
    tasks per thread queued (a graph of 10^5 tasks is never built)."""
    if threads == 1:
        for i, item in enumerate(items):
            kept.arrive(i, *guarded(i, item))
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix=guarded.stage)
    live: dict[Future[Any], int] = {}
    queued = iter(enumerate(items))
    try:
        while True:
            for i, item in itertools.islice(queued, max(0, 4 * threads - len(live))):
                live[pool.submit(guarded, i, item)] = i
            if not live:
                break
            finished, _ = wait(live, return_when=FIRST_COMPLETED)
            check_interrupt()
            for future in finished:
                i = live.pop(future)
                kept.arrive(i, *future.result())  # a block's error is raised here
    except BaseException as err:
        for future in live:
            future.cancel()
        # bad input: its partial outputs are removed next, once nothing writes them
        pool.shutdown(wait=isinstance(err, AffinityDistError) and err.exit_code == 2)
        raise
    pool.shutdown()


def _run_windowed(client: Any, guarded: _Guarded, items: Sequence[Any], prefix: str,
                  kept: _Kept, *, resources: dict[str, float] | None) -> None:
    """Submit the tasks in order, keeping at most WINDOW on the cluster; fetch the results
    as they complete, those that completed together in one gather, and drop their futures
    (the workers free the results at once)."""
    from distributed import as_completed

    stage, done = guarded.stage, as_completed()
    live: dict[int, Any] = {}
    submitted = 0

    def submit() -> None:
        nonlocal submitted
        while submitted < len(items) and len(live) <= WINDOW - SUBMIT:
            part = range(submitted, min(submitted + SUBMIT, len(items)))
            futures = client.map(guarded, part, [items[i] for i in part],
                                 key=[f"{prefix}{i}" for i in part], pure=False,
                                 resources=resources)
            live.update(zip(part, futures, strict=True))
            done.update(futures)
            submitted = part.stop

    try:
        submit()
        for batch in done.batches():  # what finished meanwhile: one gather for them all
            for future in batch:
                if future.status == "error":
                    i = int(future.key[len(prefix):])
                    _raise_for(future, stage, items[i], i)
            for future, (attempts, value) in zip(batch, client.gather(batch), strict=True):
                if isinstance(value, _Failed):
                    raise value.error
                i = int(future.key[len(prefix):])
                del live[i]
                kept.arrive(i, attempts, value)
            del batch, future
            check_interrupt()  # a Ctrl-C during a future's release is dropped there
            submit()
    except BaseException as err:
        client.cancel([f for f in live.values() if not f.done()])
        live.clear()  # the error's traceback holds this frame: no futures with it
        done.clear()
        if isinstance(err, AffinityDistError) and err.exit_code == 2:
            _drain(client, prefix)  # its partial outputs are removed next
        raise


def _running(prefix: str, dask_worker: Any) -> int:
    """Tasks of a stage still executing in a worker (cancelled ones run to their end)."""
    return sum(1 for ts in dask_worker.state.executing if str(ts.key).startswith(prefix))


def _drain(client: Any, prefix: str, timeout: float = DRAIN_TIMEOUT) -> None:
    """After a failure, wait until no task of the stage still runs: its partial outputs
    are only removed once nothing writes them any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            busy = sum(client.run(_running, prefix).values())
        except Exception:  # workers gone (the cluster is shutting down): nothing runs
            return
        if not busy:
            return
        log.info("waiting for %d running tasks to stop", busy)
        time.sleep(0.1)
    log.warning("%d tasks of %s still running after %.0f s", busy, prefix, timeout)


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
