"""Test-time augmentation: does averaging over flips (and the y<->x transpose) of the raw
improve the shipped model's segmentation of held-out fib25?

Each transform T (flips of any of z, y, x, then optionally y<->x; the identity first) is
applied to the whole fib25_sample2 raw, ``predict`` runs on T(raw) (float32 affinities),
and the affinities are mapped back to the original frame. Channel c pairs p with p - e_c,
so a flip along axis a turns channel a's edge (p', p' - e_a) into (q, q + e_a): original
channel a at q + 1; its first slice along a (an edge leaving the volume) is taken from the
identity pass. The transpose swaps the -y and -x channels. The mapping is checked at start
against the exact affinities of ground-truth labels for all 16 transforms.

The mean of the first N passes (``none`` 1, ``flips`` 8, ``flips+yx`` 16), rounded to
uint8 as ``predict`` writes it, is segmented as in ``eval_model.py``: the agglomeration
threshold chosen on z < 186 over bench_agglomerate's candidates, scored on z >= 186.
The passes are shared: ``--transforms none flips`` predicts 8 volumes, not 9.

Measured (session 9, the shipped fib25_ft model, one core): TTA does **not** pay here.

    transforms   n     t   split   merge     sum   ARand  segs
    none         1   0.5   0.744   0.915   1.658   0.224    69
    flips        8   0.5   0.733   0.981   1.714   0.251    65
    flips+yx    16  0.65   0.834   0.913   1.747   0.249    82

The flipped passes, mapped back, differ from the identity pass by 8.5-12.4 / 255 on
average (22-23 without the one-voxel shift, so the mapping is the aligned one); their
mean is worse at every threshold on both regions (best held-out sum 1.650 plain, 1.711
with flips): averaging softens the boundaries and adds merges.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_tta.py
        [--transforms none|flips|flips+yx ...] [--model CKPT] [--precision auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fib25_with_truth
from bench_agglomerate import AGGLOMERATE, SPLIT, by_agglomerate, sweep

import affinity_dist as ad
from affinity_dist.geometry import Box
from affinity_dist.kernels.targets import affinity_targets
from affinity_dist.stages.predict import to_uint8
from affinity_dist.storage import open_volume


class Transform(NamedTuple):
    flips: tuple[int, ...]  # spatial axes flipped (0 z, 1 y, 2 x)
    yx: bool  # then y and x transposed

    def __str__(self) -> str:
        name = "".join("zyx"[a] for a in self.flips) or "-"
        return f"flip {name}" + (", y<->x" if self.yx else "")

    def apply(self, volume: np.ndarray) -> np.ndarray:
        """T(volume) of a (Z, Y, X) array, a contiguous copy."""
        out = np.flip(volume, self.flips)
        return np.ascontiguousarray(out.swapaxes(1, 2) if self.yx else out)

    def left(self, shape: tuple[int, ...]) -> np.ndarray:
        """(3, Z, Y, X) mask of the edges ``undo`` takes from the identity pass."""
        mask = np.zeros((3, *shape), bool)
        for a in self.flips:
            mask[(a,) + (slice(None),) * a + (0,)] = True
        return mask

    def undo(self, affs: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Affinities (3, ...) of T(raw) in the original frame; ``base``: identity pass."""
        if self.yx:
            affs = affs[[0, 2, 1]].swapaxes(2, 3)
        out = base.copy()
        for c in range(3):
            flipped = np.flip(affs[c], self.flips)
            if c in self.flips:  # flipped edge (p', p' - e_c) is original (q + e_c, q)
                lead = (slice(None),) * c
                out[c][(*lead, slice(1, None))] = flipped[(*lead, slice(None, -1))]
            else:
                out[c] = flipped
        return out


FLIPS = [Transform(f, False) for n in range(4) for f in itertools.combinations(range(3), n)]
TRANSFORMS = FLIPS + [t._replace(yx=True) for t in FLIPS]  # identity first
SETTINGS = {"none": 1, "flips": len(FLIPS), "flips+yx": len(TRANSFORMS)}


def verify(labels: np.ndarray) -> int:
    """Assert every ``undo`` maps exact label affinities back exactly; their number."""
    truth = affinity_targets(labels)[0]
    assert 0 < truth.mean() < 1, "labels crop without boundaries or without neurons"
    sentinel = np.full_like(truth, -1)
    for t in TRANSFORMS:
        got, left = t.undo(affinity_targets(t.apply(labels))[0], sentinel), t.left(labels.shape)
        assert np.array_equal(got[~left], truth[~left]), f"undo wrong for {t}"
        assert (got[left] == -1).all(), f"undo of {t} overwrote the identity's edges"
    return len(TRANSFORMS)


def predict(raw: np.ndarray, path: Path, model: str | None, precision: str) -> np.ndarray:
    """float32 affinities (3, Z, Y, X) in [0, 1] of ``raw``, the shipped model by default."""
    data = ad.predict(raw, model=model, out=path, voxel_size=(10,) * 3, chunks=(64, 128, 128),
                      precision=precision, dtype="float32", overwrite=True, progress=False)
    volume = open_volume(data, "affinities")
    affs = volume.read(Box((0, 0, 0), volume.spatial_shape))
    assert affs.dtype == np.float32 and affs.shape[0] == 3 and 0 <= affs.min() <= affs.max() <= 1
    return affs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transforms", choices=SETTINGS, nargs="+", default=["flips"],
                        help="settings to score: none (the plain model), flips (8), "
                        "flips+yx (16); default flips")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped one)")
    args, raw, truth = fib25_with_truth(parser)
    # distinct sizes so that a confusion of axes cannot pass
    print(f"untransform verified on {verify(truth[100:148, 90:146, 80:144])} transforms")
    wanted = sorted({SETTINGS[s] for s in args.transforms})
    names = {n: s for s, n in SETTINGS.items()}
    print(f"# fib25_sample2 {raw.shape}, segment (agglomerate): threshold chosen on z < {SPLIT},"
          f" scores on z >= {SPLIT}; |diff|: mean |pass - identity pass| x 255")
    rows = [f"{'transforms':<10}{'n':>4}{'t':>6}{'split':>8}{'merge':>8}{'sum':>8}{'ARand':>8}"
            f"{'segs':>6}{'elapsed':>9}"]
    with tempfile.TemporaryDirectory() as tmp:
        work, total, base, clock = Path(tmp), None, None, time.perf_counter()
        for i, t in enumerate(TRANSFORMS[:wanted[-1]]):
            t0 = time.perf_counter()
            affs = predict(t.apply(raw), work / "pass.zarr", args.model, args.precision)
            affs = affs if base is None else t.undo(affs, base)
            base = affs if base is None else base
            total = affs.astype(np.float64) if total is None else total + affs
            print(f"  pass {i + 1:>2} {t!s:<16} {time.perf_counter() - t0:6.1f} s  |diff| "
                  f"{np.abs(affs - base).mean() * 255:.3f}", flush=True)
            if i + 1 in wanted:
                mean = to_uint8((total / (i + 1)).astype(np.float32))
                setting = work / names[i + 1]  # own folder: by_agglomerate caches per path
                setting.mkdir()
                choice, s, _ = sweep(by_agglomerate, list(AGGLOMERATE), mean, truth, setting)
                rows.append(f"{names[i + 1]:<10}{i + 1:>4}{choice:>6}{s.voi_split:>8.3f}"
                            f"{s.voi_merge:>8.3f}{s.voi_sum:>8.3f}{s.adapted_rand_error:>8.3f}"
                            f"{s.segments:>6}{time.perf_counter() - clock:>9.0f}")
                print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
