"""Accuracy of a model's segmentation on real data: VOI and adapted Rand on held-out fib25.

Predicts affinities over the whole fib25_sample2 volume with ``predict`` (the shipped model
by default), then segments two regions with ``segment`` (connected components of the
thresholded affinity graph): the **training** region (z < 186), where the threshold is
chosen (lowest VOI split + merge over ``--thresholds`` x ``--min-sizes``), and the
**held-out** region
(z >= 186, never seen in training), where the chosen threshold is scored. Metrics from
:mod:`affinity_dist.kernels.metrics` (equal to skimage's), ground-truth label 0 ignored.

    .venv/bin/python benchmarks/eval_model.py [--model CKPT] [--thresholds 0.5 0.7 0.9]
        [--precision auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA

import affinity_dist as ad
from affinity_dist.geometry import Box
from affinity_dist.kernels.metrics import Scores, contingency, scores
from affinity_dist.storage import open_volume

SPLIT = 186  # the shipped model's validation slab starts here (models/fib25.toml)


def segment_region(affs: np.ndarray, truth: np.ndarray, threshold: float, min_size: int,
                   *, out: Path) -> Scores:
    out = ad.segment(affs, out=out, threshold=threshold, min_size=min_size,
                     chunks=(64, 128, 128), keep_fragments=False, overwrite=True,
                     progress=False)
    seg = open_volume(out, "segmentation").read(Box((0, 0, 0), truth.shape))
    return scores(contingency(seg, truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: shipped model)")
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="predict's precision (auto: bf16 where native, else fp32)")
    parser.add_argument("--min-sizes", type=int, nargs="+", default=[0, 100, 1000],
                        help="segments smaller than this become background 0")
    args = parser.parse_args()
    import h5py

    path = SHARED_DATA / "fib25_sample2.h5"
    if not path.is_file():
        raise SystemExit(f"{path} not found: this evaluation needs ../shared/data")
    with h5py.File(path) as f:
        raw = np.asarray(f["volumes/raw"])
        truth = np.asarray(f["volumes/labels/neuron_ids"]).astype(np.uint64)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = ad.predict(raw, model=args.model, out=work / "fib25.zarr", voxel_size=(10,) * 3,
                          chunks=(64, 128, 128), precision=args.precision, progress=False)
        volume = open_volume(data, "affinities")
        affs = volume.read(Box((0, 0, 0), volume.spatial_shape))
        print(f"model {volume.attrs['model']} (sha256 {volume.attrs['model_sha256'][:12]})")
        print(f"{'region':<10}{'threshold':>10}{'min size':>9}{'VOI split':>11}{'VOI merge':>11}"
              f"{'VOI sum':>9}{'ARand':>8}{'CREMI':>8}{'segments':>10}{'truth':>7}")

        def row(region: str, t: float, m: int, s: Scores) -> None:
            print(f"{region:<10}{t:>10.2f}{m:>9}{s.voi_split:>11.3f}{s.voi_merge:>11.3f}"
                  f"{s.voi_sum:>9.3f}{s.adapted_rand_error:>8.3f}{s.cremi_score:>8.3f}"
                  f"{s.segments:>10}{s.truth_objects:>7}")

        train = {}
        for t in args.thresholds:
            for m in args.min_sizes:
                train[t, m] = segment_region(affs[:, :SPLIT], truth[:SPLIT], t, m,
                                             out=work / "train.zarr")
                row("training", t, m, train[t, m])
        best = min(train, key=lambda k: train[k].voi_sum)
        held = segment_region(affs[:, SPLIT:], truth[SPLIT:], *best, out=work / "held.zarr")
        row("held-out", *best, held)
        print(f"threshold {best[0]}, min size {best[1]} chosen on the training region "
              f"(lowest VOI sum); held-out "
              f"z >= {SPLIT}: VOI split {held.voi_split:.3f}, merge {held.voi_merge:.3f}, "
              f"adapted Rand error {held.adapted_rand_error:.3f}, CREMI score "
              f"{held.cremi_score:.3f}")


if __name__ == "__main__":
    main()
