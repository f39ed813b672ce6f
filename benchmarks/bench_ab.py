"""A/B of ``segment`` (``--method cc`` or ``agglomerate``) between two checkouts, in one
run, alternating.

Each checkout runs in its own process (PYTHONPATH = the checkout) on bench_segment's
volume (fib25 ids mirror-tiled to SIZE^3, uint8 affinities), on a local cluster of 2
single-threaded workers started as that checkout's CLI starts them: 3 runs, the first
(imports, kernel loading) dropped; the alternation repeats ``--rounds`` times and the
medians are printed side by side.

    git worktree add /tmp/old HEAD~3
    .venv/bin/python benchmarks/bench_ab.py --old /tmp/old --new . [--size 512]
        [--method agglomerate [--affinities FIB25.zarr]]

``--affinities``: a dataset of fib25_sample2's predicted affinities (``affinity-dist
predict``), mirror-tiled to SIZE^3 instead of affinities made from its ground truth (on
which the agglomeration merges everything into one segment). ``--codecs OLD NEW``: each
side reads its own copy of the volume, written with that compressor (``--old . --new .``
then measures the codec alone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import fib25
from bench_segment import make_affinities

RUN = r'''
import shutil, sys, time
from pathlib import Path
from affinity_dist.runtime.cluster import cluster
from affinity_dist.stages.segment import prepare_segment, run_segment
with cluster("local", n_workers=2) as client:  # as each checkout's CLI starts its workers
    times = []
    for _ in range(3):
        for p in Path(sys.argv[1]).iterdir():  # every run from scratch: the agglomeration
            if p.is_dir() and p.name != "affinities":  # would only cut a tree in place
                shutil.rmtree(p)
        plan = prepare_segment(sys.argv[1], method=sys.argv[2], threshold=0.5,
                               block=(256, 256, 256), overwrite=True)
        t = time.perf_counter()
        s = run_segment(plan, client=client, progress=False)
        times.append(time.perf_counter() - t)
    print(times[1], times[2], s.num_segments)
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, type=Path)
    parser.add_argument("--new", required=True, type=Path)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", choices=("cc", "agglomerate"), default="cc")
    parser.add_argument("--affinities", type=Path, help="dataset of fib25 affinities")
    parser.add_argument("--codecs", nargs=2, metavar=("OLD", "NEW"),
                        help="the affinities' compressor on each side (storage.Codec names)")
    args = parser.parse_args()
    ids = fib25("volumes/labels/neuron_ids")
    if ids is None:
        sys.exit("bench_ab: ../shared/data/fib25_sample2.h5 is absent; skipped")
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "ab.zarr"
        if args.affinities:
            from _common import tile_to
            from bench_agglomerate import write

            from affinity_dist.geometry import Box
            from affinity_dist.storage import open_volume

            src = open_volume(args.affinities, "affinities")
            affs = src.read(Box((0, 0, 0), src.spatial_shape))[:3]
            write(volume, np.stack([tile_to(a, args.size) for a in affs]), (128, 128, 128))
        else:
            make_affinities(volume, args.size, ids)
        volumes = {"old": volume, "new": volume}
        if args.codecs:
            volumes = {name: recompressed(volume, codec, Path(tmp) / f"{name}.zarr")
                       for name, codec in zip(("old", "new"), args.codecs, strict=True)}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for name in times:
                root = str(getattr(args, name).resolve())
                out = subprocess.run([sys.executable, "-c", RUN, str(volumes[name]),
                                      args.method],
                                     cwd=root, env={**os.environ, "PYTHONPATH": root},
                                     capture_output=True, text=True, check=True)
                a, b, segments = out.stdout.split()[-3:]
                times[name] += [float(a), float(b)]
                print(f"{name}: {float(a):.2f} s, {float(b):.2f} s, {segments} segments",
                      flush=True)
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"{name}: median {t:.2f} s = {args.size ** 3 / t / 1e6:.1f} Mvox/s")


def recompressed(volume: Path, codec: str, out: Path) -> Path:
    """A copy of ``volume``'s affinities written with compressor ``codec``."""
    from affinity_dist.geometry import Box
    from affinity_dist.storage import create_volume, open_volume, staged_dataset

    src = open_volume(volume, "affinities")
    affs = src.read(Box((0, 0, 0), src.spatial_shape))
    with staged_dataset(out, overwrite=True) as group:
        create_volume(group, "affinities", shape=affs.shape[1:], channels=affs.shape[0],
                      dtype=affs.dtype, chunks=src.chunks[1:], voxel_size=(10, 10, 10),
                      codec=codec).write(Box((0, 0, 0), affs.shape[1:]), affs)  # type: ignore[arg-type]
    return out


if __name__ == "__main__":
    main()
