"""Memory of the worker processes: glibc's malloc tuned for block buffers, handed back to
the OS at a stage's end, and peak resident memory for the reports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

__all__ = ["WORKER_ENVIRON", "keep_freed_memory", "main_arena", "peak_memory_mb",
           "release_freed_memory", "trim_heap", "worker_peak_mb"]

#: The environment of every worker process this package starts (a local cluster's nanny,
#: SLURM jobs): one malloc arena from the process's start. A thread with an arena of its
#: own (glibc gives one to each thread that allocates, and a Dask worker's task thread
#: gets it before any task runs) serves no request above 64 MiB from that arena: each
#: becomes a fresh mmap, unmapped when freed, even with mmap switched off
#: (:func:`keep_freed_memory`), so a 256^3 block's buffers (uint64 ids 134 MB, the flood's
#: 98 MB, the labels' 95 MB, ...) faulted their pages in again at every block. Measured
#: (segment --method agglomerate 512^3, 2 workers, 256^3 blocks): 0.8-1.5 s of faults in
#: every other block's id lookup alone, a 0.02 s pass once its buffer is reused; the whole
#: run, warm, clusters alternating: 10.5-12.9 s -> 7.3-7.6 s (with a training beside it:
#: 19-30 s -> 13-14 s). Only the process's start can choose the arena of threads that
#: already exist, hence an environment variable.
WORKER_ENVIRON = {"MALLOC_ARENA_MAX": "1"}

_MALLOC_TUNED: list[Any] = []  # glibc, once tuned in this process
_LIBC: list[Any] = []  # the C library (None where it is not glibc), once looked up


def _glibc() -> Any:
    """glibc (its ``mallopt`` and ``malloc_trim``), or None elsewhere."""
    if not _LIBC:
        libc = None
        if sys.platform.startswith("linux"):
            import ctypes
            import ctypes.util

            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                libc = None
            if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
                libc = None  # not glibc (musl has no malloc_trim)
        _LIBC.append(libc)
    return _LIBC[0]


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
    activations in again: the MALA-sized net lost ~7 %). That holds for a thread that
    allocates from the main arena only: workers need :data:`WORKER_ENVIRON` (a worker
    started without it says so once, in its log).

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
    libc = _glibc()
    if _MALLOC_TUNED or libc is None:
        return
    try:
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD: glibc's maximum, 32 MiB
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap, even for buffers above that threshold
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB freed (until the stage
        # ends: release_freed_memory)
        libc.mallopt(-8, 2)  # M_ARENA_MAX: freed memory is shared, not kept per thread
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return
    _MALLOC_TUNED.append(libc)
    if main_arena() is False and _in_worker():
        import logging

        logging.getLogger(__name__).warning(
            "this worker's task thread allocates from a malloc arena of its own: block "
            "buffers above 64 MiB are fresh mmaps at every block (segment ran 1.5x slower). "
            "Start workers with MALLOC_ARENA_MAX=1 in their environment")


def _in_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def main_arena() -> bool | None:
    """Does the calling thread allocate from glibc's main arena (the program's heap,
    below the break)? None off glibc. See :data:`WORKER_ENVIRON`."""
    libc = _glibc()
    if libc is None:
        return None
    import ctypes

    libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
    libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
    libc.sbrk.argtypes = [ctypes.c_ssize_t]
    chunk = libc.malloc(16384)  # above the per-thread cache (which also holds chunks of
    # other arenas, freed by this thread), below any mmap threshold
    try:
        return bool(chunk) and int(chunk) < int(libc.sbrk(0) or 0)
    finally:
        libc.free(chunk)


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``): at a stage's end."""
    if _MALLOC_TUNED:
        _MALLOC_TUNED[0].malloc_trim(0)


def trim_heap() -> None:
    """Return the heap's free pages to the OS now, in any process on glibc (the client
    too, which never tunes its malloc): called by the client after each batch of done
    records. Without it the client's RSS crept up with the blocks it had seen, a step at
    a time (freed message buffers of distributed stranded between live ones): +10 MB
    after the first window over 10^5 no-op blocks, +6 MB with it; with one-byte block
    masks besides, the client's whole peak RSS at 10^6 blocks went from 243 to 219 MB
    (``benchmarks/bench_scale.py``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


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
