"""Prediction benchmark: the whole ``predict`` stage on Zarr vs the bare model, and FLOP/s.

One run, one LocalCluster (``--workers`` processes x 1 thread), measured side by side:

* **peak** — bf16 matmul (4096^2) on every worker at once: the machine's bf16 peak;
* **bare model** — every worker runs the model on in-memory random tiles of the same shape
  and precision as predict (loaded the same way): voxels/s with no I/O at all;
* **predict** — ``run_predict`` on a Zarr dataset of real fib25 raw (mirror-tiled to the
  volume size; random data where ../shared is absent): voxels/s end to end, 8 blocks, so
  both workers get the same share.

Printed: both throughputs and their ratio (target >= 0.95), the model's achieved GFLOP/s
(convolution FLOPs counted per output voxel at the tile shape) as a share of the peak
(target >= 60 %), and the halo and compute overheads. For the shipped model and for a
MALA-sized network (12 feature maps x5, downsampling (1,3,3)(1,3,3)(3,3,3), random
weights). ``--sweep`` times the shipped model per tile size, fp32 vs bf16 and with or
without channels-last (one thread) — the figures behind predict's default tile.

``--model CKPT`` (repeatable) measures more checkpoints the same way as the shipped one
(e.g. a candidate for it). ``--channels`` times single bf16 convolutions of 1, 8, 16 and
32 channels on one thread: why the shipped model's 8-feature-map layers run at half the
FLOP rate of wider ones (8 output channels fill half of an AVX-512 vector).

    .venv/bin/python benchmarks/bench_predict.py [--size 256] [--no-mala] [--sweep]
        [--channels] [--model CKPT]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fib25, local_cluster, tile_to

from affinity_dist.geometry import Box
from affinity_dist.nn.checkpoint import load_checkpoint, save_model
from affinity_dist.nn.config import UNetConfig, build_model
from affinity_dist.stages.predict import default_model, prepare_predict, run_predict
from affinity_dist.storage import create_volume, staged_dataset

MALA = UNetConfig(downsample_factors=((1, 3, 3), (1, 3, 3), (3, 3, 3)), num_fmaps=12,
                  fmap_inc_factor=5)


def matmul_peak(seconds: float = 3.0, n: int = 4096) -> float:
    """bf16 GFLOP/s of a large matmul in this process (its torch threads)."""
    a = torch.rand(n, n, dtype=torch.bfloat16)
    b = torch.rand(n, n, dtype=torch.bfloat16)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def bare_model(path: str, tile_input: tuple[int, ...], tiles: int, precision: str) -> float:
    """Output voxels/s of the model on in-memory tiles, loaded and run as predict does."""
    from affinity_dist.nn.inference import cached_model, forward

    device = torch.device("cpu")
    model = cached_model(path, device, precision)  # type: ignore[arg-type]
    x = np.random.default_rng(0).integers(0, 256, (1, 1, *tile_input), dtype=np.uint8)
    out = forward(model, x, device, precision)  # type: ignore[arg-type]  # warm-up
    start = time.perf_counter()
    for _ in range(tiles):
        out = forward(model, x, device, precision)  # type: ignore[arg-type]
    return math.prod(out.shape[2:]) * tiles / (time.perf_counter() - start)


def on_every_worker(client: Any, fn: Any, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` once on every worker at the same time."""
    workers = list(client.scheduler_info()["workers"])
    futures = [client.submit(fn, *args, workers=[w], allow_other_workers=False, pure=False)
               for w in workers]
    return list(client.gather(futures))


def flops_per_voxel(config: UNetConfig, tile_input: tuple[int, ...]) -> float:
    """Convolution FLOPs (multiply + add) per output voxel at this input shape."""
    model = build_model(config).eval()
    total = [0]

    def hook(module: Any, inputs: Any, output: Any) -> None:
        if isinstance(module, torch.nn.Conv3d):
            total[0] += (2 * module.in_channels * math.prod(module.kernel_size)
                         * output.numel())
        elif isinstance(module, torch.nn.ConvTranspose3d):
            total[0] += (2 * module.out_channels * math.prod(module.kernel_size)
                         * inputs[0].numel())

    for m in model.modules():
        m.register_forward_hook(hook)
    with torch.inference_mode():
        out = model(torch.zeros(1, 1, *tile_input))
    return total[0] / math.prod(out.shape[2:])


def raw_volume(workdir: Path, shape: tuple[int, int, int], chunks: tuple[int, int, int]
               ) -> Path:
    """A dataset of real fib25 raw of this shape and chunks in ``workdir``, written once and
    shared by every model measured on it (predict overwrites only its affinities)."""
    path = workdir / ("raw-" + "x".join(map(str, shape)) + "-" + "x".join(map(str, chunks))
                      + ".zarr")
    if path.exists():
        return path
    data = fib25()
    if data is None:
        print("(../shared/data absent: random raw instead of fib25)")
        data = np.random.default_rng(0).integers(0, 256, (64, 64, 64), dtype=np.uint8)
    raw = tile_to(data, max(shape))[:shape[0], :shape[1], :shape[2]]
    with staged_dataset(path, overwrite=True) as group:
        create_volume(group, "raw", shape=shape, dtype=np.uint8, chunks=chunks,
                      voxel_size=(10, 10, 10)).write(Box((0, 0, 0), shape), raw)  # fib25's
    return path


def compare(client: Any, name: str, model: Path, *, shape: tuple[int, int, int],
            tile: tuple[int, int, int], block: tuple[int, int, int], peak: float,
            workdir: Path, repeats: int) -> None:
    """Bare model vs predict stage on ``shape`` in blocks of ``block`` (= chunks): every
    worker gets the same number of blocks, and the bare model the same number of tiles."""
    data = raw_volume(workdir, shape, block)
    _, config, _ = load_checkpoint(model)
    plan = prepare_predict(data, model=model, block=block, tile=tile, device="cpu",
                           overwrite=True, local=False)
    inp = tuple(o + c for o, c in zip(plan.net_output, config.context, strict=True))
    workers = len(client.scheduler_info()["workers"])
    tiles = math.prod(-(-n // t) for n, t in zip(shape, tile, strict=True)) // workers
    bare_runs, runs = [], []
    for _ in range(repeats):  # alternate, so both see the same machine
        bare = sum(on_every_worker(client, bare_model, str(model), inp, tiles, "bf16"))
        bare_runs.append(bare * math.prod(tile) / math.prod(plan.net_output))
        plan = prepare_predict(data, model=model, block=block, tile=tile, device="cpu",
                               overwrite=True, local=False)
        runs.append(run_predict(plan, client=client, progress=False))
    bare = statistics.median(bare_runs)
    stats = sorted(runs, key=lambda r: r.voxels_per_second)[len(runs) // 2]
    flops = flops_per_voxel(config, inp) * math.prod(plan.net_output) / math.prod(tile)
    print(f"\n{name}: context {config.context}, tile {tile} (network {inp} -> "
          f"{plan.net_output}), {plan.grid.num_blocks} blocks of {block}, volume {shape}, "
          f"bf16, median of {repeats}")
    for label, rate in (("bare model, in memory", bare),
                        ("predict stage, Zarr", stats.voxels_per_second)):
        print(f"  {label:<24}{rate / 1e6:8.3f} Mvox/s {rate * flops / 1e9:7.1f} GFLOP/s "
              f"= {100 * rate * flops / 1e9 / peak:5.1f} % of the bf16 peak")
    print(f"  ratio predict / bare {stats.voxels_per_second / bare:.3f} (target >= 0.95); "
          f"halo overhead {stats.halo_overhead:.2f} raw voxels read per voxel written; "
          f"compute overhead {stats.compute_overhead:.2f} network input voxels per output "
          f"voxel; {flops / 1e3:.1f} kFLOP per output voxel; "
          f"{100 * stats.model_share:.1f} % of predict's task time in the model")
    print("  per run: ratio to its bare run, and the workers' busy share of the stage's wall "
          "time (task seconds / (workers x wall); below 1: idle workers, e.g. unequal "
          "blocks per worker): " + ", ".join(
              f"{r.voxels_per_second / b:.3f} / {r.task_seconds / workers / r.seconds:.3f}"
              for r, b in zip(runs, bare_runs, strict=True)))


def sweep(tiles: list[int]) -> None:
    """Shipped model, one thread: Mvox/s per output tile, precision and memory format."""
    torch.set_num_threads(1)
    model, config, _ = load_checkpoint(default_model())
    model.eval()
    print("\nsweep (1 thread, shipped model): output tile -> Mvox/s")
    print(f"  {'tile':>6} {'fp32':>8} {'fp32 CL':>8} {'bf16':>8} {'bf16 CL':>8}")
    for t in tiles:
        n = t + config.context[0]
        row = []
        for bf16 in (False, True):
            for channels_last in (False, True):
                fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
                net = model.to(memory_format=fmt)
                x = torch.rand(1, 1, n, n, n).contiguous(memory_format=fmt)
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                                enabled=bf16):
                        net(x)
                    times.append(time.perf_counter() - start)
                row.append(t**3 / sorted(times)[1] / 1e6)
        print(f"  {t:>6} " + " ".join(f"{v:8.3f}" for v in row))


def channels(size: int = 96, repeats: int = 5) -> None:
    """One thread, bf16, channels-last: a 3^3 convolution per channel width, GFLOP/s."""
    torch.set_num_threads(1)
    peak = matmul_peak(2.0)
    cl = torch.channels_last_3d
    print(f"\nconvolutions (1 thread, bf16, channels-last, {size}^3 input); bf16 matmul "
          f"peak of this thread {peak:.0f} GFLOP/s")
    for c_in, c_out in ((1, 8), (8, 8), (16, 16), (32, 32)):
        conv = torch.nn.Conv3d(c_in, c_out, 3).to(torch.bfloat16).to(memory_format=cl).eval()
        x = torch.rand(1, c_in, size, size, size).to(torch.bfloat16).contiguous(
            memory_format=cl)
        times = []
        with torch.inference_mode():
            conv(x)
            for _ in range(repeats):
                start = time.perf_counter()
                conv(x)
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        flops = 2 * c_in * c_out * 27 * (size - 2) ** 3
        print(f"  {c_in:>2} -> {c_out:<2} {1e3 * seconds:7.1f} ms {flops / seconds / 1e9:7.1f} "
              f"GFLOP/s = {100 * flops / seconds / 1e9 / peak:5.1f} % of the peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256,
                        help="shipped-model volume edge (8 blocks of half of it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain-workers", action="store_true", help="workers started with "
                        "Dask's own environment, not as the CLI starts them (the peer)")
    parser.add_argument("--no-mala", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--channels", action="store_true",
                        help="time single convolutions per channel width first")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="another checkpoint to measure like the shipped one")
    args = parser.parse_args()
    if args.sweep:
        sweep([32, 48, 64, 96, 128])
    if args.channels:
        channels()
    with (local_cluster(args.workers, plain=args.plain_workers) as client,
          tempfile.TemporaryDirectory() as tmp):
        peaks = on_every_worker(client, matmul_peak)
        peak = sum(peaks)
        print(f"bf16 matmul peak: {peak:.0f} GFLOP/s ({args.workers} workers x 1 thread: "
              + ", ".join(f"{p:.0f}" for p in peaks) + ")")
        compare(client, "shipped model (fib25)", default_model(), shape=(args.size,) * 3,
                tile=(64, 64, 64), block=(args.size // 2,) * 3, peak=peak,
                workdir=Path(tmp), repeats=args.repeats)
        for extra in args.model:
            compare(client, str(extra), extra, shape=(args.size,) * 3, tile=(64, 64, 64),
                    block=(args.size // 2,) * 3, peak=peak, workdir=Path(tmp),
                    repeats=args.repeats)
        if not args.no_mala:
            torch.manual_seed(0)
            mala = save_model(Path(tmp) / "mala.pt", build_model(MALA), MALA)
            compare(client, "MALA-sized", mala, shape=(48, 216, 216), tile=(24, 108, 108),
                    block=(24, 108, 108), peak=peak, workdir=Path(tmp),
                    repeats=args.repeats)


if __name__ == "__main__":
    main()
