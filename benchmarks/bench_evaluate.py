"""Evaluation benchmark: blockwise ``evaluate`` on Zarr vs skimage in memory, one run.

The volume: real fib25 neuron ids mirror-tiled to SIZE^3 as the truth, and as the
segmentation the same ids shifted by one voxel along x with two large objects merged (a
realistic error mix), both uint64 Zarr arrays with 128^3 chunks. Measured side by side:

* ``affinity_dist.stages.evaluate`` on a running LocalCluster of 2 single-threaded workers
  (median of --repeats), Mvox/s and the peak RSS of the largest worker (VmHWM);
* ``skimage.metrics.variation_of_information`` + ``adapted_rand_error`` on the same
  arrays held in memory (one thread), Mvox/s and this process's peak RSS growth.

The scores of both are printed and must agree to 1e-9.

    .venv/bin/python benchmarks/bench_evaluate.py [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import fib25, local_cluster, tile_to

from affinity_dist.geometry import Box
from affinity_dist.runtime.memory import worker_peak_mb
from affinity_dist.stages.evaluate import evaluate
from affinity_dist.storage import create_volume, staged_dataset


def volumes(size: int) -> tuple[np.ndarray, np.ndarray]:
    ids = fib25("volumes/labels/neuron_ids")
    if ids is None:
        print("# ../shared/data absent: synthetic labels instead of fib25")
        from affinity_dist.kernels.synthetic import SampleSpec, generate_region

        ids = generate_region(SampleSpec((128, 128, 128)), (0, 0, 0), (128, 128, 128))[1]
    truth = tile_to(ids.astype(np.uint64), size)
    values, counts = np.unique(truth[truth > 0], return_counts=True)
    big = values[np.argsort(counts)[::-1][:2]]
    seg = np.roll(truth, 1, axis=2)
    seg[seg == big[1]] = big[0]
    return truth, seg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    truth, seg = volumes(args.size)
    n = truth.size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eval.zarr"
        with staged_dataset(path) as group:
            box = Box((0, 0, 0), truth.shape)
            for name, data in (("labels", truth), ("segmentation", seg)):
                create_volume(group, name, shape=truth.shape, dtype=np.uint64).write(box, data)
        with local_cluster(2) as client:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ours = evaluate(path, client=client, progress=False)
                times.append(time.perf_counter() - start)
            peak = worker_peak_mb(client)
    from skimage.metrics import adapted_rand_error, variation_of_information

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    split, merge = variation_of_information(truth, seg, ignore_labels=(0,))
    are, _, _ = adapted_rand_error(truth, seg, ignore_labels=(0,))
    sk_time = time.perf_counter() - start
    sk_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    ours_time = statistics.median(times)
    print(f"# {args.size}^3 fib25 ids, 128^3 chunks, 256^3 blocks; ours on 2 workers")
    print(f"{'what':<40}{'Mvox/s':>8}   notes")
    print(f"{'evaluate (ours), Zarr, 2 workers':<40}{n / ours_time / 1e6:8.1f}   median "
          f"{ours_time:.2f} s of {args.repeats}, peak worker RSS {peak:.0f} MB")
    print(f"{'skimage VOI + ARand, in memory':<40}{n / sk_time / 1e6:8.1f}   {sk_time:.2f} s, "
          f"peak RSS growth {sk_peak:.0f} MB (inputs {2 * truth.nbytes / 1e6:.0f} MB "
          "held besides)")
    print(f"scores: ours VOI split {ours.voi_split:.9f} merge {ours.voi_merge:.9f} ARand "
          f"{ours.adapted_rand_error:.9f}; skimage {split:.9f} {merge:.9f} {are:.9f}")
    assert abs(ours.voi_split - split) < 1e-9 and abs(ours.voi_merge - merge) < 1e-9
    assert abs(ours.adapted_rand_error - are) < 1e-9


if __name__ == "__main__":
    main()
