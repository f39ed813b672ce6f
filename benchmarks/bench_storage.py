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

``--layouts`` compares instead how the arrays are laid out in files, with the default
codec: one file per chunk against Zarr v3 shards (sharding_indexed: one file per block of
chunks, an index of the chunks at its end), for 128^3 and 64^3 chunks. Figures: files
written; writing block by block (256^3 blocks, one write per block, as the stages do);
reading everything; reading halo'd windows (each 256^3 block grown by 32 voxels, as
predict reads raw: partial reads of up to 27 shards); removing the array (rm -rf, the cost
of many files to a file system).

    .venv/bin/python benchmarks/bench_storage.py [--size 512] [--repeats 3] [--layouts]
        [--dataset X.zarr [--no-derived]] [--codec-threads 1]

``--dataset``: the arrays a dataset holds (segment's fragments and segmentation of predicted
affinities compress very differently from ids derived from ground truth).
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


def dataset_arrays(dataset: Path, size: int) -> dict[str, np.ndarray]:
    """A SIZE^3 corner of a dataset's own arrays (those it holds of fragments,
    segmentation, affinities)."""
    from affinity_dist.geometry import Box
    from affinity_dist.storage import list_arrays, open_volume

    out = {}
    for name in ("fragments", "segmentation", "affinities"):
        if name in list_arrays(dataset):
            volume = open_volume(dataset, name)
            if any(n < size for n in volume.spatial_shape):
                raise SystemExit(f"--dataset: {name} of shape {volume.spatial_shape} is "
                                 f"smaller than --size {size}")
            data = volume.read(Box((0, 0, 0), (size,) * 3))
            out[f"{name} {data.dtype} ({dataset.name})"] = np.ascontiguousarray(data)
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _blocks(size: int, block: int) -> list[tuple[slice, ...]]:
    r = range(0, size, block)
    return [tuple(slice(a, min(a + block, size)) for a in corner)
            for corner in ((z, y, x) for z in r for y in r for x in r)]


def layouts(data: dict[str, np.ndarray], size: int, repeats: int, tmp: Path) -> None:
    """Files and MB/s of one file per chunk against shards (see the module doc)."""
    print(f"{'array':<28} {'layout':<24} {'files':>6} {'write MB/s':>10} {'read MB/s':>10} "
          f"{'halo MB/s':>10} {'rm ms':>7}")
    for kind, arr in data.items():
        for chunk, shard in ((128, None), (64, None), (128, 256), (64, 256)):
            name = (f"chunks {chunk}^3" if shard is None else f"shards {shard}^3 of {chunk}^3")
            files, *rates, t_rm = _layout(arr, chunk, shard, size, repeats=repeats, tmp=tmp)
            print(f"{kind:<28} {name:<24} {files:>6} "
                  + " ".join(f"{r:>10.0f}" for r in rates) + f" {t_rm * 1e3:>7.1f}",
                  flush=True)


def _layout(arr: np.ndarray, chunk: int, shard: int | None, size: int, *, repeats: int,
            tmp: Path) -> tuple[int, float, float, float, float]:
    """Files, write, read and halo'd-read MB/s, and seconds to remove, of one layout."""
    block, halo = 256, 32
    lead = arr.shape[:-3]
    path = tmp / "l.zarr"
    comp = codecs(arr.dtype)["zstd 1 + crc32c (default)"]
    whole = (slice(None),) * len(lead)

    def write() -> None:
        shutil.rmtree(path, ignore_errors=True)
        a = zarr.create_array(store=str(path), shape=arr.shape, dtype=arr.dtype,
                              chunks=(*lead, chunk, chunk, chunk),
                              shards=None if shard is None else (*lead, shard, shard, shard),
                              compressors=comp, fill_value=0,
                              config={"write_empty_chunks": True})
        for sel in _blocks(size, block):
            a[whole + sel] = arr[whole + sel]

    t_write = median_time(write, repeats)
    files = sum(1 for p in path.rglob("*") if p.is_file())
    opened = zarr.open_array(str(path), mode="r")
    t_read = median_time(lambda: opened[...], repeats)
    windows = [whole + tuple(slice(max(0, s.start - halo), min(size, s.stop + halo))
                             for s in sel) for sel in _blocks(size, block)]
    per_voxel = arr.nbytes / size ** 3
    window_mb = sum(np.prod([s.stop - s.start for s in w[len(lead):]]) for w in windows
                    ) * per_voxel / 1e6

    def halo_read() -> None:
        for w in windows:
            opened[w]

    t_halo = median_time(halo_read, repeats)
    copies = [tmp / f"rm{i}.zarr" for i in range(repeats)]
    for c in copies:
        shutil.copytree(path, c)
    t_rm = median_time(lambda: shutil.rmtree(copies.pop()), repeats)
    mb = arr.nbytes / 1e6
    return files, mb / t_write, mb / t_read, window_mb / t_halo, t_rm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", action="store_true",
                        help="files and speed of one file per chunk against shards")
    parser.add_argument("--dataset", type=Path, help="also a dataset's own fragments, "
                        "segmentation and affinities (a SIZE^3 corner), e.g. written by "
                        "segment from predicted affinities")
    parser.add_argument("--no-derived", action="store_true", help="skip the arrays derived "
                        "from fib25's ground truth")
    parser.add_argument("--codec-threads", type=int, help="Zarr's codec threads (a worker "
                        "of one task thread has 1; default: Zarr's, cpu_count + 4)")
    args = parser.parse_args()
    if args.codec_threads:
        zarr.config.set({"threading.max_workers": args.codec_threads})
    tmp = Path(tempfile.mkdtemp(prefix="bench_storage_"))
    if args.layouts:
        print(f"# zarr {zarr.__version__}, {args.size}^3, zstd 1 + crc32c, "
              f"median of {args.repeats}")
        try:
            layouts(arrays(args.size), args.size, args.repeats, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    print(f"# zarr {zarr.__version__}, {args.size}^3, chunks 128^3, median of {args.repeats}")
    print(f"{'array':<28} {'codec':<30} {'write MB/s':>10} {'read MB/s':>10} {'ratio':>7}")
    try:
        data_sets = {} if args.no_derived else arrays(args.size)
        data_sets.update(dataset_arrays(args.dataset, args.size) if args.dataset else {})
        for kind, data in data_sets.items():
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
