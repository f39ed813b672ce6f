"""Ingest benchmark: throughput and peak memory for two volume sizes 8x apart.

Sources: a synthetic dataset written by ``affinity-dist sample`` (Zarr), and an HDF5
file of real fib25 raw and labels mirror-tiled to the same size (CREMI layout, where
../shared/data is present). ``affinity-dist ingest`` runs on a LocalCluster of 2 worker
processes; the whole process tree is polled with psutil for its peak RSS. Memory must
stay flat from SIZE^3 to (2*SIZE)^3: one block per worker, whatever the volume. The peer,
measured in the same run, reads the whole HDF5 arrays and writes them with zarr.

    .venv/bin/python benchmarks/bench_ingest.py [--sizes 256 512] [--workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
from _common import CLI, fib25, peak_rss, tile_to

# The peer: what a script without affinity_dist does, whole arrays through memory.
NAIVE = """
import sys, h5py, numpy as np, zarr
src, dst = sys.argv[1], sys.argv[2]
with h5py.File(src, "r") as f:
    raw, labels = f["volumes/raw"][...], f["volumes/labels/neuron_ids"][...]
g = zarr.open_group(dst, mode="w")
g.create_array("raw", data=raw, chunks=(128, 128, 128))
g.create_array("labels", data=labels.astype(np.uint64), chunks=(128, 128, 128))
"""


def write_h5(path: Path, size: int) -> bool:
    raw, ids = fib25(), fib25("volumes/labels/neuron_ids")
    if raw is None or ids is None:
        return False
    with h5py.File(path, "w") as f:
        for key, data in (("volumes/raw", tile_to(raw, size)),
                          ("volumes/labels/neuron_ids", tile_to(ids, size))):
            ds = f.create_dataset(key, data=data, chunks=(64, 64, 64))
            ds.attrs["resolution"] = [10.0, 10.0, 10.0]
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ingest = ["--quiet", "ingest", "--workers", str(args.workers)]
    print(f"# ingest with {args.workers} worker processes; peak RSS in MB "
          "(main = client process, worker = largest worker, tree = all together)")
    print(f"{'source':<26} {'size':>6} {'s':>7} {'Mvox/s':>8} {'main':>7} {'worker':>7} "
          f"{'tree':>7}")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        for size in args.sizes:
            sources = {}
            zsrc = Path(tmp) / f"sample{size}.zarr"
            subprocess.run([*CLI, "--quiet", "sample", str(zsrc), "--shape", *[str(size)] * 3,
                            "--workers", str(args.workers)], check=True, capture_output=True)
            sources["sample (Zarr)"] = zsrc
            hsrc = Path(tmp) / f"fib25_tiled{size}.h5"
            if write_h5(hsrc, size):
                sources["fib25 tiled (HDF5)"] = hsrc
            for name, src in sources.items():
                dst = Path(tmp) / f"out{size}.zarr"
                sec, main_mb, worker_mb, tree_mb = peak_rss(
                    [*CLI, *ingest[:2], str(src), str(dst), *ingest[2:], "--overwrite"])
                print(f"{name:<26} {size:>5}^3 {sec:>7.1f} {size**3 / sec / 1e6:>8.1f} "
                      f"{main_mb:>7.0f} {worker_mb:>7.0f} {tree_mb:>7.0f}", flush=True)
                results.setdefault(name, []).append(worker_mb)
            if "fib25 tiled (HDF5)" in sources:
                name = "peer: whole array in RAM"
                sec, main_mb, _, _ = peak_rss([sys.executable, "-c", NAIVE, str(hsrc),
                                               str(Path(tmp) / f"naive{size}.zarr")])
                print(f"{name:<26} {size:>5}^3 {sec:>7.1f} {size**3 / sec / 1e6:>8.1f} "
                      f"{main_mb:>7.0f} {'-':>7} {main_mb:>7.0f}", flush=True)
                results.setdefault(name, []).append(main_mb)
    for name, peaks in results.items():
        if len(peaks) > 1:
            print(f"# {name}: peak RSS ratio {args.sizes[-1]}^3 / {args.sizes[0]}^3 = "
                  f"{peaks[-1] / peaks[0]:.2f} for {(args.sizes[-1] / args.sizes[0]) ** 3:.0f}x "
                  "the voxels")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
