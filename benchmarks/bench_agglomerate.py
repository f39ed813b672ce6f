"""Agglomeration benchmark: accuracy and speed of ``segment --method agglomerate`` next to
``--method cc`` and waterz on the same affinities, one run.

**Accuracy** — the shipped model's affinities of fib25_sample2 (predicted here, or read
from ``--affinities DATASET``), each region segmented on its own: the threshold of every
method is chosen on the training region z < 186 (lowest VOI split + merge), and its
scores are reported on the validation region z >= 186:

* ``--method cc`` over thresholds x min sizes (small segments -> 0, as it does);
* the default, ``--method agglomerate`` (its merge tree built once per region, then only
  cut per threshold);
* waterz (``waterz.agglomerate``: its own fragments, mean-affinity scoring), one process.

**Speed** — the fib25 affinities mirror-tiled to SIZE^3 (512^3; 1024^3 too with --large)
in a Zarr dataset with 128^3 chunks: the whole ``segment --method agglomerate`` (fragments
+ graph + tree reduction + cut + relabel, Zarr in and out) on a running local cluster of
--workers single-threaded workers started as the CLI starts them (with ``--plain-peer``
also on a bare LocalCluster, Dask's worker environment), median of --repeats runs after a
first one; its peak worker RSS and the largest residual of each reduction level; waterz
on the same volume in memory, one process (its best fib25 threshold).

    .venv/bin/python benchmarks/bench_agglomerate.py [--affinities X.zarr] [--large]
        [--sizes N ...] [--no-accuracy] [--no-waterz] [--plain-peer]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, fib25, local_cluster, mirror_index, tile_to

import affinity_dist as ad
from affinity_dist.geometry import Box
from affinity_dist.kernels.metrics import Scores, contingency, scores
from affinity_dist.runtime.memory import worker_peak_mb
from affinity_dist.stages.segment import prepare_segment, run_segment
from affinity_dist.storage import create_volume, open_volume, staged_dataset

SPLIT = 186
AGGLOMERATE = [0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8]
CC = [(t, m) for t in (0.5, 0.7, 0.9, 0.95, 0.98) for m in (0, 1000)]
WATERZ = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # waterz thresholds: 1 - mean affinity


def write(path: Path, affs: np.ndarray, chunks: tuple[int, int, int] = (64, 128, 128)
          ) -> Path:
    with staged_dataset(path, overwrite=True) as group:
        create_volume(group, "affinities", shape=affs.shape[1:], channels=3, dtype=affs.dtype,
                      chunks=chunks, voxel_size=(10, 10, 10)).write(
            Box((0, 0, 0), affs.shape[1:]), affs)
    return path


def write_tiled(path: Path, affs: np.ndarray, size: int,
                chunks: tuple[int, int, int] = (128, 128, 128)) -> Path:
    """``affs`` mirror-tiled to ``size``^3 (as ``tile_to``), written one slab of chunks at
    a time: a large volume is never whole in memory (1536^3 is 10.9 GB)."""
    zi, yi, xi = (mirror_index(n, size) for n in affs.shape[1:])
    with staged_dataset(path, overwrite=True) as group:
        volume = create_volume(group, "affinities", shape=(size,) * 3, channels=3,
                               dtype=affs.dtype, chunks=chunks, voxel_size=(10, 10, 10))
        for z0 in range(0, size, chunks[0]):
            z1 = min(size, z0 + chunks[0])
            slab = affs[:, zi[z0:z1]][:, :, yi][:, :, :, xi]
            volume.write(Box((z0, 0, 0), (z1, size, size)), slab)
    return path


def segmentation(path: Path) -> np.ndarray:
    volume = open_volume(path, "segmentation")
    return volume.read(Box((0, 0, 0), volume.spatial_shape))


def line(name: str, choice: str, s: Scores) -> str:
    return (f"{name:<28}{choice:<22}{s.voi_split:>8.3f}{s.voi_merge:>8.3f}{s.voi_sum:>8.3f}"
            f"{s.adapted_rand_error:>8.3f}{s.segments:>9}")


def sweep(fn: Any, choices: list[Any], affs: np.ndarray, truth: np.ndarray, tmp: Path
          ) -> tuple[Any, Scores, float]:
    """The choice best on z < SPLIT, its scores on z >= SPLIT, seconds per run there."""
    best: tuple[float, Any] | None = None
    for choice in choices:
        s = scores(contingency(fn(affs[:, :SPLIT], choice, tmp / "train.zarr"), truth[:SPLIT]))
        if best is None or s.voi_sum < best[0]:
            best = (s.voi_sum, choice)
    assert best is not None
    t0 = time.perf_counter()
    seg = fn(affs[:, SPLIT:], best[1], tmp / "val.zarr")
    return best[1], scores(contingency(seg, truth[SPLIT:])), time.perf_counter() - t0


def by_cc(affs: np.ndarray, choice: tuple[float, int], path: Path) -> np.ndarray:
    t, m = choice
    ad.segment(write(path, affs), method="cc", threshold=t, min_size=m, overwrite=True,
               keep_fragments=False, progress=False)
    return segmentation(path)


_TREES: dict[str, tuple[int, ...]] = {}


def by_agglomerate(affs: np.ndarray, t: float, path: Path,
                   seed_threshold: float | None = None) -> np.ndarray:
    key = str(path)  # build each region's tree once, then only cut it
    if _TREES.get(key) != affs.shape:
        write(path, affs)
        _TREES[key] = affs.shape
    ad.segment(path, threshold=t, seed_threshold=seed_threshold, overwrite=True,
               progress=False)
    return segmentation(path)


def by_waterz(affs: np.ndarray, t: float, path: Path) -> np.ndarray:
    import os

    import waterz

    floats = np.ascontiguousarray(affs.astype(np.float32) / 255)
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # waterz reports every step on C++'s stdout
    try:
        seg = next(waterz.agglomerate(floats, [t]))
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)
    return np.asarray(seg, np.uint64)


def accuracy(affs: np.ndarray, truth: np.ndarray, tmp: Path) -> float | None:
    """The table; returns waterz's chosen threshold (None without waterz)."""
    print(f"\n# fib25_sample2, threshold chosen on z < {SPLIT}, scores on z >= {SPLIT}")
    print(f"{'method':<28}{'choice (train)':<22}{'split':>8}{'merge':>8}{'sum':>8}"
          f"{'ARand':>8}{'segments':>9}")
    rows = [("segment --method cc", by_cc, CC), ("segment (agglomerate)", by_agglomerate,
                                                  AGGLOMERATE), ("waterz", by_waterz, WATERZ)]
    chosen = None
    for name, fn, choices in rows:
        if fn is by_waterz:
            try:
                import waterz  # noqa: F401
            except ImportError:
                print(f"{name:<28}not installed")
                continue
        choice, s, _ = sweep(fn, choices, affs, truth, tmp)
        label = (f"t {choice[0]}, min {choice[1]}" if isinstance(choice, tuple)
                 else f"t {choice}")
        print(line(name, label, s), flush=True)
        chosen = choice if fn is by_waterz else chosen
    return chosen


def speed(affs: np.ndarray, size: int, workers: int, repeats: int, tmp: Path, *,
          waterz_threshold: float | None, plain_peer: bool = False) -> None:
    path = write_tiled(tmp / f"speed{size}.zarr", affs, size)
    n = size**3
    print(f"\n# {size}^3 mirror-tiled fib25 affinities, 128^3 chunks, 256^3 blocks, "
          f"{workers} workers")
    kinds = [("segment (agglomerate)", False)]
    kinds += [("  on Dask's default workers", True)] if plain_peer else []
    for label, plain in kinds:
        with local_cluster(workers, plain=plain) as client:
            times, peaks = [], []
            for _ in range(repeats + 1):
                for name in ("fragments", "segmentation", "merge_tree", "region_graph"):
                    shutil.rmtree(path / name, ignore_errors=True)
                shutil.rmtree(path / "_run_state", ignore_errors=True)
                t0 = time.perf_counter()
                plan = prepare_segment(path, overwrite=True)
                summary = run_segment(plan, client=client, progress=False)
                times.append(time.perf_counter() - t0)
                peaks.append(worker_peak_mb(client))
        sec = float(np.median(times[1:]))
        print(f"{label:<28}{n / sec / 1e6:>8.2f} Mvox/s  median {sec:.1f} s "
              f"({', '.join(f'{t:.1f}' for t in times)}), peak worker RSS {max(peaks):.0f} MB, "
              f"{summary.num_fragments} fragments -> {summary.num_segments} segments")
        if not plain:
            for level, s in enumerate(summary.levels):
                print(f"  level {level}: {s['tasks']:>5} tasks, largest residual "
                      f"{s['regions']:>7} regions / {s['edges']:>8} edges, "
                      f"{s['merges']:>8} merges")
            sec_ours = sec
    if waterz_threshold is not None:
        try:
            big = np.stack([tile_to(affs[c], size) for c in range(3)])  # in memory
            t0 = time.perf_counter()
            by_waterz(big, waterz_threshold, path)
            sec_w = time.perf_counter() - t0
            print(f"{'waterz, 1 process':<28}{n / sec_w / 1e6:>8.2f} Mvox/s  {sec_w:.1f} s in "
                  f"memory; ratio {sec_w / sec_ours:.1f}x")
        except ImportError:
            print("waterz not installed")
    shutil.rmtree(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--affinities", type=Path, help="dataset holding fib25 affinities "
                        "(default: predict them with the shipped model)")
    parser.add_argument("--large", action="store_true", help="also 1024^3")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--no-waterz", action="store_true", help="skip waterz at 512^3 (it "
                        "takes ~15 min there)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="speed volumes (default 512, and 1024 with --large)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain-peer", action="store_true", help="also time the same run "
                        "on a bare LocalCluster (Dask's worker environment)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    raw, labels = fib25("volumes/raw"), fib25("volumes/labels/neuron_ids")
    if raw is None or labels is None:
        raise SystemExit(f"{SHARED_DATA} not found: this benchmark needs ../shared/data")
    truth = labels.astype(np.uint64)
    tmp = Path(tempfile.mkdtemp(prefix="bench_agglomerate_"))
    try:
        data = args.affinities or ad.predict(raw, out=tmp / "fib25.zarr", voxel_size=(10,) * 3,
                                             chunks=(64, 128, 128), progress=False)
        volume = open_volume(data, "affinities")
        affs = volume.read(Box((0, 0, 0), volume.spatial_shape))[:3]
        print(f"# model {volume.attrs.get('model')} (sha256 "
              f"{str(volume.attrs.get('model_sha256'))[:12]})")
        waterz_t = 0.5 if args.no_accuracy else accuracy(affs, truth, tmp)
        for size in args.sizes or ([512, 1024] if args.large else [512]):
            speed(affs, size, args.workers, args.repeats, tmp,
                  waterz_threshold=None if args.no_waterz or size > 512 else waterz_t,
                  plain_peer=args.plain_peer)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
