"""run_blocks: results in order, failures name the block, our own errors pass through."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from affinity_dist.errors import BlockFailedError, DataError
from affinity_dist.runtime.cluster import cluster, local_gpus
from affinity_dist.runtime.memory import WORKER_ENVIRON
from affinity_dist.runtime.scheduling import run_blocks


def _work(block: int) -> int:
    if block == 3:
        raise ValueError("boom")
    if block == 4:
        raise DataError("affinities: block 4 holds NaN")
    return block * 10


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_failures_name_the_block(scheduler: str) -> None:
    assert run_blocks(_work, [0, 1, 2], scheduler=scheduler, progress=False) == [0, 10, 20]
    with pytest.raises(BlockFailedError,
                       match=r"demo: block 3 failed after 3 attempts: ValueError: boom"):
        run_blocks(_work, [0, 3], stage="demo", scheduler=scheduler, progress=False)
    with pytest.raises(DataError, match="block 4 holds NaN"):  # exit 2, not 1
        run_blocks(_work, [4], scheduler=scheduler, progress=False)


def _codec_threads(block: int) -> object:
    import zarr

    return zarr.config.get("threading.max_workers", None)


def test_workers_give_zarr_as_many_codec_threads_as_task_threads() -> None:
    distributed = pytest.importorskip("distributed")
    with (distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                   host="127.0.0.1", dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        before = client.run(_codec_threads, 0)
        assert list(before.values()) == [None]  # Zarr's own default: cpu_count + 4
        assert run_blocks(_codec_threads, [0, 1, 2], client=client, progress=False) == [2] * 3


def test_in_process_schedulers_need_no_client_and_no_torch() -> None:
    """``gpus="auto"`` counts GPUs only for a local cluster: threads and synchronous runs
    yield no client and never import torch."""
    code = ("import sys\n"
            "from affinity_dist.runtime.cluster import cluster\n"
            "for name in ('threads', 'synchronous'):\n"
            "    with cluster(name, gpus='auto') as client:\n"
            "        assert client is None, client\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_local_gpus_counts_what_torch_sees() -> None:
    count = local_gpus()
    assert isinstance(count, int) and count >= 0


def _heap_buffer(block: int) -> tuple[bool, str | None]:
    """In a block task (after keep_freed_memory, as every task): does a 128 MiB buffer
    come from the program's heap, below the break (reused from block to block), rather
    than from a fresh mmap? And the worker's MALLOC_ARENA_MAX."""
    import ctypes

    import numpy as np

    from affinity_dist.runtime import memory

    libc = memory._glibc()
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
    buffer = np.empty(2**27, np.uint8)
    return buffer.ctypes.data < libc.sbrk(0), os.environ.get("MALLOC_ARENA_MAX")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_local_workers_reuse_block_buffers_from_the_heap() -> None:
    """A Dask worker's task thread has a malloc arena of its own, which serves no request
    above 64 MiB: every large block buffer was a fresh mmap, faulted in again at every
    block. Workers of ``cluster()`` start with one arena (WORKER_ENVIRON)."""
    distributed = pytest.importorskip("distributed")
    with cluster("local", n_workers=1) as client:
        assert run_blocks(_heap_buffer, [0, 1], client=client, progress=False) == \
            [(True, "1")] * 2
    # the peer: Dask's own worker environment (a nanny leaves its variables in this
    # process's environment, where the next cluster would inherit them)
    saved = {name: os.environ.pop(name) for name in WORKER_ENVIRON if name in os.environ}
    try:
        with (distributed.LocalCluster(n_workers=1, threads_per_worker=1,
                                       host="127.0.0.1", dashboard_address=None) as local,
              distributed.Client(local) as client):
            assert run_blocks(_heap_buffer, [0, 1], client=client, progress=False) == \
                [(False, None)] * 2
    finally:
        os.environ.update(saved)


def test_a_second_local_cluster_in_one_process() -> None:
    """cluster() in a fresh interpreter, twice: its Dask settings once replaced the whole
    "distributed" section, deleted on leaving (the second failed with KeyError: 'comm')."""
    code = ("from affinity_dist.runtime.cluster import cluster\n"
            "for _ in range(2):\n"
            "    with cluster('local', n_workers=1) as client:\n"
            "        assert client.submit(sum, [1, 2]).result() == 3\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
