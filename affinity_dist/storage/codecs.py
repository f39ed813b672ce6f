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

Codec = Literal["zstd1", "zstd3", "blosc-lz4", "blosc-zstd", "lz4", "none"]


def default_codec(dtype: DTypeLike, channels: int | None = None) -> Codec:
    """Default compressor: blosc-lz4 with byte shuffle for integers of 2 bytes and more
    (ids: fragments, segmentation, labels); unshuffled blosc-lz4 (``lz4``) for uint8 with a
    channel axis (affinities and other predicted maps); plain zstd level 1 for the others
    (raw, masks, floats).

    Measured with ``benchmarks/bench_storage.py --size 256 --dataset X --codec-threads 1``
    (zarr 3.1, 128^3 chunks, one codec thread as in a worker; write / read MB/s, ratio) on
    segment's own fragments of the shipped model's fib25 affinities (512^3 tiled): zstd-1
    + CRC-32C 374 / 326, 13.5x; blosc-lz4 with shuffle 1460 / 2161, 43.6x; zstd-3 1301 /
    680, 121x; blosc-zstd-3 824 / 1594, 150x. Shuffled, the high bytes of uint64 ids
    (the block id, mostly zeros) are long runs that lz4 skips. The ids of ground truth
    (long runs already) compress 77x with zstd-1 and 20-34x with blosc-lz4, at about the
    same speed (session 5's figures, 512^3, cpu_count + 4 codec threads): 2-4x the disk
    for a volume written once, against 4x the write and 6x the read speed of every
    fragments and segmentation block.

    uint8 (session 5, same benchmark at 512^3 on fib25): raw zstd-1 1190 / 1530 MB/s,
    1.21x (zstd-3: 735 / 1700, 1.19x; blosc-lz4 1.07x). The shipped model's *predicted*
    fib25 affinities (256^3, one codec thread): zstd-1 316 / 722 MB/s, 1.46x; blosc-lz4
    493 / 1043, 1.08x; none 1114 / 2526. Their zstd-1 decompression is most of a segment
    block's read (~0.24 s a 256^3 block with its halo).

    Affinities became ``lz4`` in session 20: a segment block reads its halo from the
    neighbours' chunks, which it decompresses whole (a 288^3 read of 128^3 chunks decodes
    27-64 chunks for 8 chunks' worth of block), so their decompression is most of the
    read. One 3 x 128^3 chunk of the shipped model's fib25 affinities, one thread
    (numcodecs): zstd-1 1.47x, decode 548 MB/s; blosc-lz4 unshuffled 1.22x, 1761 MB/s;
    bitshuffled (``blosc-lz4`` on uint8) 1.09x, 1614 MB/s. On 512^3 tiled affinities the
    array is 258 MB with zstd-1 and 317 MB with ``lz4`` (+23 % disk); the 8 fragment
    blocks of ``segment`` (256^3 + 16-voxel halo, one process) read their affinities in
    1.95 s instead of 3.0 s; the whole ``segment`` (``benchmarks/bench_ab.py --old . --new .
    --method agglomerate --affinities FIB25_AFFS --codecs zstd1 lz4 --rounds 3``, 2
    workers, the machine slow that hour): 9.96 -> 8.94 s median (13.5 -> 15.0 Mvox/s).
    """
    dt = np.dtype(dtype)  # validates
    if dt.kind in "iu" and dt.itemsize > 1:
        return "blosc-lz4"
    return "lz4" if channels is not None and dt == np.uint8 else "zstd1"


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
    if name == "lz4":  # unshuffled: noisy uint8 maps compress better without bitshuffle
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5,
                                       shuffle=zarr.codecs.BloscShuffle.noshuffle,
                                       typesize=dtype.itemsize)]
    if name == "blosc-zstd":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle=shuffle,
                                       typesize=dtype.itemsize)]
    if name in ("zstd1", "zstd3"):
        return [zarr.codecs.ZstdCodec(level=int(name[-1]))]
    if name == "none":
        return []
    raise bad_value("codec", name, "one of zstd1, zstd3, blosc-lz4, blosc-zstd, lz4, none")


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
