"""Compression of a dataset's arrays: the codec names, their Zarr pipelines, and Zarr's
codec threads in a Dask worker.

Beside :mod:`.metadata` at the bottom of the storage layer: it imports neither
:mod:`.arrays` nor :mod:`.datasets`.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs
from numpy.typing import DTypeLike

from ..errors import bad_value

__all__ = ["Codec", "compressors", "default_codec", "match_codec_threads"]

Codec = Literal["zstd1", "zstd3", "blosc-lz4", "blosc-zstd", "none"]


def default_codec(dtype: DTypeLike) -> Codec:
    """Default compressor: plain zstd level 1 for every array kind.

    Chosen by ``benchmarks/bench_storage.py`` at 512^3 (fib25, zarr 3.1, 128^3 chunks,
    every chunk written; MB/s write / read, ratio): raw uint8 1190 / 1530, 1.21x (zstd-3:
    735 / 1700, 1.19x; blosc-lz4 1.07x); affinities uint8 980 / 1390, 3.1x (zstd-3 3.2x at
    half the write speed; blosc-lz4 1.75x); uint64 labels 3230 / 2780, 77x and segment's
    fragments 3490 / 3670, 96x (blosc-lz4 with shuffle: as fast, 20-34x).

    Those affinities were made from ground truth (binary). The shipped model's *predicted*
    fib25 affinities compress far less (session 17, numcodecs on 8 chunks of 3x128^3, one
    thread; ratio, write / read MB/s): zstd-1 1.40x, 358 / 710; zstd-3 1.42x, 195 / 881;
    blosc-lz4 no shuffle 1.18x, 818 / 2370. Their zstd-1 decompression is the whole read
    of a segment block (~0.24 s a 256^3 block with its halo).
    """
    np.dtype(dtype)  # validates
    return "zstd1"


#: Checksums on the arrays this process creates (benchmarks turn it off to measure the
#: cost; arrays keep what they were created with).
CHECKSUMS = True


def compressors(name: Codec, dtype: np.dtype[Any], checksum: bool | None = None) -> list[Any]:
    """The Zarr v3 bytes-to-bytes codecs of compressor ``name`` for arrays of ``dtype``,
    followed (with ``checksum``, default :data:`CHECKSUMS`) by a CRC-32C of the compressed
    chunk: damage to a chunk file is then an error when it is read, never silently
    different data."""
    crc = [zarr.codecs.Crc32cCodec()] if (CHECKSUMS if checksum is None else checksum) else []
    return _compressor(name, dtype) + crc


def _compressor(name: Codec, dtype: np.dtype[Any]) -> list[Any]:
    shuffle = (zarr.codecs.BloscShuffle.bitshuffle if dtype.itemsize == 1
               else zarr.codecs.BloscShuffle.shuffle)
    if name == "blosc-lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle=shuffle,
                                       typesize=dtype.itemsize)]
    if name == "blosc-zstd":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle=shuffle,
                                       typesize=dtype.itemsize)]
    if name in ("zstd1", "zstd3"):
        return [zarr.codecs.ZstdCodec(level=int(name[-1]))]
    if name == "none":
        return []
    raise bad_value("codec", name, "one of zstd1, zstd3, blosc-lz4, blosc-zstd, none")


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
        if zarr.config.get("threading.max_workers", None) is None:
            zarr.config.set({"threading.max_workers": max(1, threads)})
