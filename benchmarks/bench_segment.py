"""Segment benchmark (``--method cc``): end-to-end blockwise connected components next to
its peers, one run (``bench_agglomerate.py`` measures the default method).

The volume: real fib25 neuron ids mirror-tiled to SIZE^3 (512^3; 1024^3 too with
--large), turned into uint8 affinities (230 inside a neuron, 20 across a boundary, +-20
of noise) in a Zarr dataset with 128^3 chunks. Measured in the same run:

* ``affinity_dist.stages.segment`` (Zarr uint8 affinities in -> Zarr uint64 fragments and
  segmentation out; and with ``keep_fragments=False``, segmentation only) on a running
  LocalCluster of 2 single-threaded worker processes: the first run on the fresh cluster
  (one-time imports and compiled-kernel loading in each worker) apart, then the median of
  --repeats runs, and the peak RSS of the largest worker (VmHWM);
* the storage traffic of the stage alone (read the affinities, write, read and write a
  uint64 volume, box-shaped) on the same cluster: Zarr I/O with no compute. segment writes
  chunk-shaped tiles, which skip a copy Zarr makes of box-shaped data, so it can beat this;
* the ``affinity-dist segment`` command, which starts its own cluster (start-up included;
  peak RSS by psutil polling of the process tree);
* the in-memory kernels on the whole volume: ``label_block`` (ours) and cc3d's
  ``connected_components(voxel_graph=...)`` on the same affinity graph;
* dask-image ``ndmeasure.label`` on the equivalent binary mask (a voxel is foreground
  when all three affinities are above threshold), chunked like ours, 2 threads, result
  stored to Zarr (skip with --no-dask-image: it is slow).

    .venv/bin/python benchmarks/bench_segment.py [--large] [--no-dask-image]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import CLI, fib25, local_cluster, peak_rss

from affinity_dist.geometry import Box
from affinity_dist.runtime.memory import worker_peak_mb
from affinity_dist.storage import create_volume, open_volume, staged_dataset

THRESHOLD = 0.5


def mirror(n_src: int, n: int) -> np.ndarray:
    i = np.arange(n) % (2 * n_src)
    return np.where(i < n_src, i, 2 * n_src - 1 - i)


def source_ids() -> np.ndarray:
    ids = fib25("volumes/labels/neuron_ids")
    if ids is None:
        print("# ../shared/data absent: synthetic labels instead of fib25")
        from affinity_dist.kernels.synthetic import SampleSpec, generate_region

        ids = generate_region(SampleSpec((128, 128, 128)), (0, 0, 0), (128, 128, 128))[1]
    return ids


def make_affinities(path: Path, size: int, ids: np.ndarray, slab: int = 128) -> None:
    """Write uint8 affinities of the mirror-tiled ids, slab by slab (bounded memory)."""
    iz, iy, ix = (mirror(n, size) for n in ids.shape)
    rng = np.random.default_rng(0)
    with staged_dataset(path, overwrite=True) as group:
        vol = create_volume(group, "affinities", shape=(size,) * 3, channels=3,
                            dtype=np.uint8, chunks=(128, 128, 128))
        for z0 in range(0, size, slab):
            z1 = min(z0 + slab, size)
            lab = ids[np.ix_(iz[max(z0 - 1, 0):z1], iy, ix)]
            same = np.ones((3, z1 - z0, size, size), bool)
            same[0] = lab[1:] == lab[:-1] if z0 else np.concatenate(
                [np.ones_like(lab[:1], bool), lab[1:] == lab[:-1]])
            lab = lab[1:] if z0 else lab
            same[1, :, 1:] = lab[:, 1:] == lab[:, :-1]
            same[2, :, :, 1:] = lab[:, :, 1:] == lab[:, :, :-1]
            noise = rng.integers(-20, 21, same.shape, dtype=np.int16)
            affs = np.clip(np.where(same, 230, 20) + noise, 0, 255).astype(np.uint8)
            vol.write(Box((z0, 0, 0), (z1, size, size)), affs)


def voxel_graph(affs: np.ndarray, t: int) -> np.ndarray:
    """cc3d's 6-connected voxel graph: bits +x 1, -x 2, +y 4, -y 8, +z 16, -z 32, where cc3d
    calls numpy axis 0 "x" (checked against label_block on random graphs)."""
    graph = np.zeros(affs.shape[1:], np.uint8)
    for c, (minus, plus) in enumerate(((2, 1), (8, 4), (32, 16))):
        edge = affs[c] > t
        graph[edge] |= minus
        up = [slice(None)] * 3
        up[c] = slice(0, -1)
        down = [slice(None)] * 3
        down[c] = slice(1, None)
        graph[tuple(up)][edge[tuple(down)]] |= plus
    return graph


def in_memory_peers(path: Path) -> None:
    import cc3d

    from affinity_dist.kernels.fragments import label_block

    affs = open_volume(path, "affinities").array[...]
    n = affs[0].size
    label_block(affs[:, :8, :8, :8], THRESHOLD)  # compile outside the timing
    t0 = time.perf_counter()
    ours, n_ours = label_block(affs, THRESHOLD)
    t_ours = time.perf_counter() - t0
    graph = voxel_graph(affs, int(255 * THRESHOLD))
    t0 = time.perf_counter()
    theirs, n_theirs = cc3d.color_connectivity_graph(graph, connectivity=6, return_N=True)
    t_cc3d = time.perf_counter() - t0
    agree = "same partition" if n_ours == n_theirs else f"DIFFERENT ({n_ours} vs {n_theirs})"
    print(f"{'label_block (ours), 1 core':<40} {n / t_ours / 1e6:>9.1f}   in memory, {agree}")
    print(f"{'cc3d voxel_graph, 1 core':<40} {n / t_cc3d / 1e6:>9.1f}   in memory")
    del ours, theirs, graph


def dask_image_peer(path: Path, out: Path) -> float:
    import dask
    import dask.array as da
    from dask_image import ndmeasure

    affs = da.from_zarr(open_volume(path, "affinities").array)
    mask = (affs > int(255 * THRESHOLD)).all(axis=0).rechunk((128, 128, 128))
    structure = np.zeros((3, 3, 3), bool)
    structure[1, 1, :] = structure[1, :, 1] = structure[:, 1, 1] = True
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        labels, _ = ndmeasure.label(mask, structure=structure)
        labels.to_zarr(str(out), overwrite=True)
    return time.perf_counter() - t0


class _IOFloor:
    """The segment stage's storage traffic with no computation: read the affinities, write
    a uint64 volume, read it back, write another (the fragments of a previous run stand
    in for realistic compressibility)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, block_id: int) -> int:
        from affinity_dist.geometry import BlockGrid

        affs = open_volume(self.path, "affinities")
        grid = BlockGrid(affs.spatial_shape, (256, 256, 256))
        box = grid.write_box(block_id)
        affs.read(box)
        fragments = open_volume(self.path, "fragments").read(box)
        open_volume(self.path, "_floor_a", "r+").write(box, fragments)
        again = open_volume(self.path, "_floor_a", "r+").read(box)
        open_volume(self.path, "_floor_b", "r+").write(box, again)
        return box.size


def io_floor(path: Path, client: object, repeats: int) -> float:
    """Median seconds of the storage traffic alone, one task per 256^3 block."""
    from affinity_dist.geometry import BlockGrid
    from affinity_dist.runtime.scheduling import run_blocks
    from affinity_dist.storage import open_dataset

    group = open_dataset(path, "r+")
    affs = open_volume(path, "affinities")
    for name in ("_floor_a", "_floor_b"):
        create_volume(group, name, shape=affs.spatial_shape, dtype=np.uint64,
                      chunks=affs.chunks[1:], register=False, overwrite=True)
    blocks = list(BlockGrid(affs.spatial_shape, (256, 256, 256)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_blocks(_IOFloor(path), blocks, client=client, progress=False)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def on_running_cluster(path: Path, workers: int, repeats: int, keep_fragments: bool
                       ) -> tuple[float, float, float]:
    """Seconds of the first ``segment`` on a fresh LocalCluster (workers import the package
    and load the compiled kernels), median seconds of the ``repeats`` runs after it, and
    the peak worker MB over all of them."""
    import affinity_dist as ad

    with local_cluster(workers) as client:
        times, peaks = [], []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            ad.segment(path, method="cc", overwrite=True, client=client, progress=False,
                       keep_fragments=keep_fragments)
            times.append(time.perf_counter() - t0)
            peaks.append(worker_peak_mb(client))
        print(f"# peak worker RSS after each run: {', '.join(f'{p:.0f}' for p in peaks)} MB; "
              f"seconds: {', '.join(f'{t:.2f}' for t in times)}")
        if keep_fragments:
            floor = io_floor(path, client, repeats)
            n = int(np.prod(open_volume(path, "affinities").spatial_shape))
            print(f"{'  storage traffic alone':<40} {n / floor / 1e6:>9.1f}   median "
                  f"{floor:.2f} s: read affs, write+read+write uint64 (box-shaped), no compute")
        return times[0], float(np.median(times[1:])), max(peaks)


def checksum_cost(ids: np.ndarray, workers: int, repeats: int) -> None:
    """The same segment run on arrays with and without a CRC-32C per chunk (the
    affinities read and every array written), twice each, alternating."""
    from affinity_dist.storage import codecs

    tmp = Path(tempfile.mkdtemp(prefix="bench_segment_crc_"))
    n, medians = 512**3, {True: [], False: []}
    try:
        for flag in (True, False, True, False):
            codecs.CHECKSUMS = flag
            path = tmp / f"affs{int(flag)}.zarr"
            if not path.exists():
                make_affinities(path, 512, ids)
            medians[flag].append(on_running_cluster(path, workers, repeats, False)[1])
    finally:
        codecs.CHECKSUMS = True
        shutil.rmtree(tmp, ignore_errors=True)
    with_crc, without = (float(np.median(medians[f])) for f in (True, False))
    print(f"{'segment 512^3, CRC-32C on every array':<40} {n / with_crc / 1e6:>9.1f}")
    print(f"{'segment 512^3, no checksums':<40} {n / without / 1e6:>9.1f}   cost of the "
          f"checksums: {100 * (with_crc / without - 1):+.1f} % of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also 1024^3")
    parser.add_argument("--no-dask-image", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checksum-cost", action="store_true",
                        help="only: segment 512^3 with and without CRC-32C on every array")
    args = parser.parse_args()
    if args.checksum_cost:
        checksum_cost(source_ids(), args.workers, args.repeats)
        return
    sizes = [512, 1024] if args.large else [512]
    ids = source_ids()
    print(f"# threshold {THRESHOLD}, 128^3 chunks, 256^3 blocks, {args.workers} workers")
    print(f"{'what':<40} {'Mvox/s':>9}   notes")
    tmp = Path(tempfile.mkdtemp(prefix="bench_segment_"))
    try:
        for size in sizes:
            path = tmp / f"affs{size}.zarr"
            make_affinities(path, size, ids)
            n = size**3
            for keep in (True, False):
                first, sec, worker_mb = on_running_cluster(path, args.workers, args.repeats,
                                                           keep)
                what = f"segment {size}^3" + ("" if keep else " --no-fragments")
                print(f"{what:<40} {n / sec / 1e6:>9.1f}   median {sec:.2f} s of the "
                      f"{args.repeats} runs after the first on a running cluster, peak worker "
                      f"RSS {worker_mb:.0f} MB", flush=True)
                print(f"{'  its first run on a fresh cluster':<40} {n / first / 1e6:>9.1f}   "
                      f"{first:.2f} s: workers import the package, load the compiled kernels",
                      flush=True)
            sec, _, worker_mb, _ = peak_rss([*CLI, "-q", "segment", "--method", "cc",
                                             "--input", str(path),
                                             "--workers", str(args.workers), "--overwrite"])
            print(f"{f'affinity-dist segment CLI, {size}^3':<40} {n / sec / 1e6:>9.1f}   "
                  f"{sec:.1f} s with cluster start-up, peak worker RSS {worker_mb:.0f} MB",
                  flush=True)
            if size == 512:
                in_memory_peers(path)
                if not args.no_dask_image:
                    sec = dask_image_peer(path, tmp / "dask_image.zarr")
                    print(f"{'dask-image ndmeasure.label, 2 threads':<40} {n / sec / 1e6:>9.1f}"
                          f"   {sec:.1f} s, binary mask, Zarr in and out", flush=True)
            shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
