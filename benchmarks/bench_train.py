"""Training benchmark: iterations/s and output voxels/s on this machine, fp32 vs bf16.

One optimizer step = forward + weighted BCE + backward + AdamW on a batch of random input
of the configuration's input shape (data loading excluded: it runs in DataLoader workers).
Median of --repeats timed steps after --warmup steps, for each candidate configuration and
for fp32 and bf16 autocast (CPU; CUDA when present) measured in the same run.

    .venv/bin/python benchmarks/bench_train.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from affinity_dist.nn.config import UNetConfig, build_model

CANDIDATES = {
    "small 4x2, (1,2,2)(2,2,2)": (UNetConfig(num_fmaps=4, fmap_inc_factor=2), (8, 32, 32)),
    "medium 8x3, (1,2,2)(2,2,2)": (UNetConfig(num_fmaps=8, fmap_inc_factor=3), (8, 32, 32)),
    "default 12x3, (1,2,2)(2,2,2)": (UNetConfig(), (8, 32, 32)),
    "3 downsamplings 8x2, (2,2,2)^3": (
        UNetConfig(num_fmaps=8, fmap_inc_factor=2,
                   downsample_factors=((2, 2, 2), (2, 2, 2), (2, 2, 2))), (8, 16, 16)),
}


def step_time(config: UNetConfig, output: tuple[int, int, int], *, bf16: bool, device: str,
              warmup: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_model(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inp = tuple(o + c for o, c in zip(output, config.context, strict=True))
    x = torch.rand(1, 1, *inp, device=device)
    target = (torch.rand(1, len(config.offsets), *output, device=device) > 0.5).float()
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# torch {torch.__version__}, {device}, {args.threads} threads, median of "
          f"{args.repeats} steps")
    print(f"{'configuration':<32} {'params':>8} {'input':>14} {'output':>12} {'dtype':>5} "
          f"{'it/s':>7} {'kvox/s':>8}")
    for name, (config, output) in CANDIDATES.items():
        params = sum(p.numel() for p in build_model(config).parameters())
        inp = tuple(o + c for o, c in zip(output, config.context, strict=True))
        for bf16 in (False, True):
            sec = step_time(config, output, bf16=bf16, device=device, warmup=args.warmup,
                            repeats=args.repeats)
            vox = output[0] * output[1] * output[2]
            print(f"{name:<32} {params:>8} {'x'.join(map(str, inp)):>14} "
                  f"{'x'.join(map(str, output)):>12} {'bf16' if bf16 else 'fp32':>5} "
                  f"{1 / sec:>7.2f} {vox / sec / 1e3:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
