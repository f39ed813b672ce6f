"""Storage benchmark: write/read MB/s and compression ratio per codec and array kind.

Arrays are real where ../shared/data is present: fib25 raw (uint8), fib25 neuron ids
(uint64) and affinities derived from those ids, smoothed and quantised to uint8 like a
network's output; all mirror-tiled to SIZE^3 (default 256, --size 512 as in DESIGN.md).
Writes and reads go through zarr-python 3 with 128^3 chunks and every chunk written, as
the storage layer does. "fragments" are the labels renumbered per 256^3 block with the
block id in the high 32 bits, as the segment stage writes them. Each figure is the median
of --repeats runs.

"zstd 1 + crc32c" is the default of every array the project writes (a CRC-32C of each
compressed chunk, checked on read); "zstd 1" beside it gives the checksum's cost.

    .venv/bin/python benchmarks/bench_storage.py [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
from _common import fib25, median_time, tile_to
from scipy import ndimage

SHUF = zarr.codecs.BloscShuffle


def codecs(dtype: np.dtype[Any]) -> dict[str, list[Any]]:
    shuffle = SHUF.bitshuffle if dtype.itemsize == 1 else SHUF.shuffle
    t = dtype.itemsize

    def blosc(cname: str, level: int, shuf: Any = shuffle) -> list[Any]:
        return [zarr.codecs.BloscCodec(cname=cname, clevel=level, shuffle=shuf, typesize=t)]

    return {
        "none": [],
        "blosc-lz4": blosc("lz4", 5),
        "blosc-lz4 noshuffle": blosc("lz4", 5, SHUF.noshuffle),
        "blosc-zstd 1": blosc("zstd", 1),
        "blosc-zstd 3": blosc("zstd", 3),
        "blosc-zstd 5": blosc("zstd", 5),
        "zstd 1": [zarr.codecs.ZstdCodec(level=1)],
        "zstd 1 + crc32c (default)": [zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()],
        "zstd 3": [zarr.codecs.ZstdCodec(level=3)],
        "gzip 5": [zarr.codecs.GzipCodec(level=5)],
    }


def arrays(size: int) -> dict[str, np.ndarray]:
    raw, ids = fib25(), fib25("volumes/labels/neuron_ids")
    if raw is None or ids is None:
        print("# ../shared/data absent: using synthetic arrays (figures less representative)")
        from affinity_dist.kernels.synthetic import SampleSpec, generate_region

        raw, ids = generate_region(SampleSpec((128, 128, 128), seed=0), (0, 0, 0), (128,) * 3)
    raw, ids = tile_to(raw, size), tile_to(ids.astype(np.uint64), size)
    affs = np.ones((3, *ids.shape), np.float32)  # edge to the -z, -y, -x neighbour
    affs[0, 1:] = ids[1:] == ids[:-1]
    affs[1, :, 1:] = ids[:, 1:] == ids[:, :-1]
    affs[2, :, :, 1:] = ids[:, :, 1:] == ids[:, :, :-1]
    soft = ndimage.gaussian_filter(affs, sigma=(0, 1, 1, 1))
    aff8 = np.rint(soft * 255).astype(np.uint8)
    # fragments as segment writes them: block id << 32 | local id, per 256^3 block
    frag = np.zeros_like(ids)
    for z in range(0, size, 256):
        for y in range(0, size, 256):
            for x in range(0, size, 256):
                block = ids[z:z + 256, y:y + 256, x:x + 256]
                _, local = np.unique(block, return_inverse=True)
                high = np.uint64((z // 256 * 64 + y // 256) * 64 + x // 256) << np.uint64(32)
                frag[z:z + 256, y:y + 256, x:x + 256] = (
                    local.reshape(block.shape).astype(np.uint64) + np.uint64(1)) | high
    return {"raw uint8": raw, "affinities uint8 (3,z,y,x)": aff8, "labels uint64": ids,
            "fragments uint64": frag}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_storage_"))
    print(f"# zarr {zarr.__version__}, {args.size}^3, chunks 128^3, median of {args.repeats}")
    print(f"{'array':<28} {'codec':<30} {'write MB/s':>10} {'read MB/s':>10} {'ratio':>7}")
    try:
        for kind, data in arrays(args.size).items():
            chunks = (128,) * 3 if data.ndim == 3 else (3, 128, 128, 128)
            mb = data.nbytes / 1e6
            for name, comp in codecs(data.dtype).items():
                path = tmp / "a.zarr"

                def write(data: np.ndarray = data, comp: list[Any] = comp,
                          path: Path = path, chunks: tuple[int, ...] = chunks) -> None:
                    shutil.rmtree(path, ignore_errors=True)
                    a = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype,
                                          chunks=chunks, compressors=comp, fill_value=0,
                                          config={"write_empty_chunks": True})
                    a[...] = data

                t_write = median_time(write, args.repeats)
                t_read = median_time(lambda path=path: zarr.open_array(str(path), mode="r")[...],
                                     args.repeats)
                ratio = data.nbytes / du(path)
                print(f"{kind:<28} {name:<30} {mb / t_write:>10.0f} {mb / t_read:>10.0f} "
                      f"{ratio:>7.2f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
