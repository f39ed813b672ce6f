"""Is the held-out error in the affinities or in the segmentation? An oracle for one object.

Predicts fib25_sample2 with ``--model`` (the shipped one by default) as
``eval_model.py`` does, then rewrites the held-out region's (z >= 186) nearest affinities of
one ground-truth object (``--object``, default the thin glial sheet that costs the shipped
model most, see its model card): its inner edges (both voxels in the object) set to
``--inner`` and its contacts with other labelled objects to ``--contacts`` (each 0-1, or
``keep``), as a model that saw that object perfectly would predict them. The default
segmentation of the rewritten region is scored at every ``--thresholds`` value; the one
chosen on the training region z < 186 (unchanged affinities) is marked.

    .venv/bin/python benchmarks/eval_oracle.py [--model CKPT] [--object ID]
        [--inner 1.0|keep] [--contacts 0.0|keep] [--thresholds 0.3 0.5 ...]

Session 22 (shipped fib25_aux, object 135478, threshold 0.3 chosen on z < 186; shipped
1.427): ``--inner 1 --contacts keep`` 1.935, ``--inner keep --contacts 0`` 1.325,
``--inner 1 --contacts 0`` 1.328 (see models/fib25_aux/README.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fib25_with_truth
from bench_agglomerate import AGGLOMERATE, SPLIT, by_agglomerate, sweep
from eval_model import object_edges, predicted

from affinity_dist.kernels.metrics import contingency, scores

SHEET = 135478  # fib25_sample2's thin glial sheet: 45 % of the shipped model's held-out VOI


def value(text: str) -> float | None:
    if text == "keep":
        return None
    v = float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected a number in 0-1 or 'keep'")
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--object", type=int, default=SHEET)
    parser.add_argument("--inner", type=value, default=1.0)
    parser.add_argument("--contacts", type=value, default=0.0)
    parser.add_argument("--thresholds", type=float, nargs="+", default=AGGLOMERATE)
    args, raw, truth = fib25_with_truth(parser)
    held = truth[SPLIT:]
    if not (held == args.object).any():
        raise SystemExit(f"--object: got {args.object}, expected a ground-truth id of the "
                         f"held-out region z >= {SPLIT}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        affs = predicted(raw, args.model, args.precision, work)
        chosen, base, _ = sweep(by_agglomerate, list(args.thresholds), affs, truth, work)
        val = np.ascontiguousarray(affs[:3, SPLIT:])
        inner, contacts = object_edges(held, args.object)
        for mask, v in ((inner, args.inner), (contacts, args.contacts)):
            if v is not None:
                val[mask] = np.uint8(round(v * 255)) if val.dtype == np.uint8 else v
        print(f"# fib25_sample2 z >= {SPLIT}, object {args.object}: {int(inner.sum()):,} inner "
              f"edges -> {args.inner if args.inner is not None else 'kept'}, "
              f"{int(contacts.sum()):,} contacts -> "
              f"{args.contacts if args.contacts is not None else 'kept'}")
        print(f"unchanged, t {chosen} (chosen on z < {SPLIT}): {base.voi_split:.3f} + "
              f"{base.voi_merge:.3f} = {base.voi_sum:.3f}, adapted Rand "
              f"{base.adapted_rand_error:.3f}, {base.segments} segments")
        for t in args.thresholds:
            s = scores(contingency(by_agglomerate(val, t, work / "oracle.zarr"), held))
            mark = "  <- chosen on z < 186" if t == chosen else ""
            print(f"oracle, t {t}: {s.voi_split:.3f} + {s.voi_merge:.3f} = {s.voi_sum:.3f}, "
                  f"adapted Rand {s.adapted_rand_error:.3f}, {s.segments} segments{mark}",
                  flush=True)


if __name__ == "__main__":
    main()
