"""Models compared by their segmentation: VOI and adapted Rand on held-out fib25, one table.

For each ``--model`` (the shipped one by default, and every candidate named): ``predict``
over the whole fib25_sample2 volume, then ``segment`` (the default, watershed fragments
agglomerated by mean affinity; ``--method cc`` for connected components) on each region
on its own: the threshold is chosen on the **training** region z < 186 (lowest VOI split +
merge over ``--thresholds``; with cc also over min sizes) and scored on the **held-out**
region z >= 186, never trained on. Metrics from :mod:`affinity_dist.kernels.metrics`
(equal to skimage's), ground-truth label 0 ignored. Beside them, the validation affinity
figures the checkpoint records (F1 of same-neuron and of boundary edges, threshold 0.5).

    .venv/bin/python benchmarks/eval_model.py [--model CKPT ...] [--method cc]
        [--thresholds 0.3 0.4 ...] [--seed-thresholds 0.8 0.9 ...]
        [--precision auto|bf16|fp32] [--curve] [--objects N]

``--seed-thresholds`` chooses the cores' seed threshold (``segment --seed-threshold``)
on z < 186 beside the agglomeration threshold: for a model whose affinities are
calibrated otherwise (a focal loss leaves no edge above the default 0.98).

``--objects N`` says where the held-out error is: the N ground-truth objects whose
removal (their voxels ignored, as label 0) lowers the held-out VOI most, each with its
share of the labelled voxels, its thickness (median distance of its voxels to its
surface), the mean affinity of the edges inside it, and the segments it is spread over.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fib25_with_truth
from bench_agglomerate import AGGLOMERATE, CC, SPLIT, by_agglomerate, by_cc, sweep

import affinity_dist as ad
from affinity_dist.geometry import Box
from affinity_dist.kernels.metrics import contingency, scores
from affinity_dist.storage import open_volume


def recorded(model: str | None) -> str:
    """Iteration and validation affinity F1s the checkpoint records."""
    import torch

    from affinity_dist.stages.predict import default_model

    state = torch.load(model or default_model(), map_location="cpu", weights_only=True)
    f1, boundary = state.get("val_f1"), state.get("val_boundary_f1")
    return (f"{state.get('iteration', '?'):>7}" + (f"{f1:>7.3f}" if f1 is not None else
                                                   f"{'-':>7}")
            + (f"{boundary:>7.3f}" if boundary is not None else f"{'-':>7}"))


def object_edges(truth: np.ndarray, obj: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner, contacts): (3, z, y, x) masks of the nearest edges (channel c links a voxel
    with its neighbour at -1 on axis c, DESIGN.md) with both voxels in ``obj``, and with
    one voxel in it and the other in another labelled object (label 0 left alone)."""
    inside = truth == obj
    inner = np.zeros((3, *truth.shape), bool)
    contacts = np.zeros((3, *truth.shape), bool)
    for c in range(3):
        here = [slice(None)] * 3
        back = [slice(None)] * 3
        here[c], back[c] = slice(1, None), slice(None, -1)
        a, b = inside[tuple(here)], inside[tuple(back)]
        labelled = (truth[tuple(here)] > 0) & (truth[tuple(back)] > 0)
        inner[c][tuple(here)] = a & b
        contacts[c][tuple(here)] = (a != b) & labelled
    return inner, contacts


def predicted(raw: np.ndarray, model: str | None, precision: str, work: Path) -> np.ndarray:
    """The model's affinities of the whole fib25 volume (predicted into ``work``)."""
    data = ad.predict(raw, model=model, out=work / "fib25.zarr", voxel_size=(10,) * 3,
                      chunks=(64, 128, 128), precision=precision, progress=False)
    volume = open_volume(data, "affinities")
    return volume.read(Box((0, 0, 0), volume.spatial_shape))


def by_seeded(affs: np.ndarray, choice: tuple[float, float], path: Path) -> np.ndarray:
    """The default segmentation with the cores' seed threshold ``choice[0]`` and the
    agglomeration threshold ``choice[1]``."""
    return by_agglomerate(affs, choice[1], path, seed_threshold=choice[0])


def print_curve(fn: Any, choices: list[Any], affs: Any, truth: Any, work: Path) -> None:
    """Each candidate's VOI split + merge (and adapted Rand) on the training and the
    held-out region: a diagnostic of the choice, never a way to choose."""
    for choice in choices:
        row = []
        for part, name in ((slice(None, SPLIT), "train.zarr"), (slice(SPLIT, None), "val.zarr")):
            s = scores(contingency(fn(affs[:, part], choice, work / name), truth[part]))
            row.append(f"{s.voi_split:.3f} + {s.voi_merge:.3f} = {s.voi_sum:.3f} "
                       f"(ARand {s.adapted_rand_error:.3f})")
        print(f"    {choice!s:>12}  z < {SPLIT}: {row[0]}   z >= {SPLIT}: {row[1]}",
              flush=True)


def print_objects(seg: np.ndarray, truth: np.ndarray, affs: np.ndarray, n: int) -> None:
    """The ``n`` truth objects whose removal lowers the VOI most (module docstring)."""
    from scipy import ndimage

    whole = scores(contingency(seg, truth)).voi_sum
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    rows = []
    for obj in ids[np.argsort(-sizes)][:max(4 * n, 20)]:  # the largest objects only
        ignored = np.where(truth == obj, 0, truth)
        rows.append((whole - scores(contingency(seg, ignored)).voi_sum, int(obj)))
    print(f"    held-out VOI {whole:.3f}; objects by the VOI their removal saves:")
    for saved, obj in sorted(rows, reverse=True)[:n]:
        inside = truth == obj
        affinity = affs[:3][object_edges(truth, obj)[0]].mean() / 255
        depth = ndimage.distance_transform_edt(inside)[inside]
        print(f"    {obj:>12}: -{saved:.3f} VOI, {inside.sum() / (truth > 0).sum():6.1%} of "
              f"the voxels, thickness {np.median(depth):.1f} voxels, inner affinity "
              f"{affinity:.2f}, in {len(np.unique(seg[inside]))} segments",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None,
                        help="checkpoint (repeat; default: the shipped model)")
    parser.add_argument("--method", choices=("agglomerate", "cc"), default="agglomerate")
    parser.add_argument("--thresholds", type=float, nargs="+", default=None,
                        help="candidates (default: bench_agglomerate's for the method)")
    parser.add_argument("--seed-thresholds", type=float, nargs="+", default=None,
                        help="agglomerate: choose the cores' seed threshold too, among these "
                        "(affinities calibrated otherwise, as a focal loss makes them)")
    parser.add_argument("--curve", action="store_true", help="also print every candidate's "
                        "VOI on both regions (how much the choice on z < 186 decides)")
    parser.add_argument("--objects", type=int, default=0, metavar="N",
                        help="also print the N truth objects that cost most held-out VOI")
    args, raw, truth = fib25_with_truth(parser)
    if args.method == "cc":
        fn, choices = by_cc, ([(t, m) for t in args.thresholds for m in (0, 1000)]
                              if args.thresholds else CC)
    elif args.seed_thresholds:
        fn = by_seeded
        choices = [(s, t) for s in args.seed_thresholds for t in args.thresholds or AGGLOMERATE]
    else:
        fn, choices = by_agglomerate, args.thresholds or AGGLOMERATE
    print(f"# fib25_sample2, segment --method {args.method}: threshold chosen on z < {SPLIT},"
          f" scores on z >= {SPLIT}")
    print(f"{'model':<36}{'iter':>7}{'F1':>7}{'bF1':>7}{'choice':>16}{'split':>8}{'merge':>8}"
          f"{'sum':>8}{'ARand':>8}{'segs':>6}")
    for model in args.model or [None]:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            affs = predicted(raw, model, args.precision, work)
            choice, s, _ = sweep(fn, list(choices), affs, truth, work)
            name = "shipped" if model is None else str(Path(model).resolve().parent.name
                                                       + "/" + Path(model).name)
            label = (f"t {choice}" if not isinstance(choice, tuple) else
                     f"s {choice[0]}, t {choice[1]}" if fn is by_seeded else
                     f"t {choice[0]}, min {choice[1]}")
            print(f"{name[-36:]:<36}{recorded(model)}{label:>16}{s.voi_split:>8.3f}"
                  f"{s.voi_merge:>8.3f}{s.voi_sum:>8.3f}{s.adapted_rand_error:>8.3f}"
                  f"{s.segments:>6}", flush=True)
            if args.curve:
                print_curve(fn, list(choices), affs, truth, work)
            if args.objects:
                print_objects(fn(affs[:, SPLIT:], choice, work / "val.zarr"),
                              truth[SPLIT:], affs[:3, SPLIT:], args.objects)


if __name__ == "__main__":
    main()
