"""Training benchmark: iterations/s of the candidate configurations, fp32 vs bf16, and the
cost of their training samples (augmentations + targets), measured in the same run.

One optimizer step = forward + the trainer's loss (weighted BCE on every affinity channel,
masked MSE on the LSDs) + backward + AdamW on one sample of the configuration's input
shape; median of --repeats timed steps after --warmup steps, fp32 and bf16 autocast (CPU;
CUDA when present). The sample time is the median of drawing one augmented fib25 crop and
computing its targets (what a DataLoader worker does per step), when ../shared is present.
The auxiliary heads must not slow a step by more than ~20 % against the shipped recipe.

    .venv/bin/python benchmarks/bench_train.py [--repeats 10] [--threads 2] [--no-bf16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA

from affinity_dist.training.train import TrainConfig, _Augment, targets_of
from affinity_dist.training.trainer import training_loss

SHIPPED = {"num_fmaps": 8, "fmap_inc_factor": 3, "downsample_factors": [[2, 2, 2], [2, 2, 2]]}
LONG = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3],
        [-9, 0, 0], [0, -9, 0], [0, 0, -9]]
CANDIDATES = {
    "shipped 8x3 (2,2,2)^2": SHIPPED,
    "+ long-range (3, 9)": {**SHIPPED, "offsets": LONG},
    "+ LSDs": {**SHIPPED, "lsds": True},
    "+ long-range + LSDs": {**SHIPPED, "offsets": LONG, "lsds": True},
    "wider 16x3": {**SHIPPED, "num_fmaps": 16},
}


def step_time(config: TrainConfig, *, bf16: bool, device: str, warmup: int, repeats: int
              ) -> float:
    torch.manual_seed(0)
    from affinity_dist.nn.config import build_model

    model = build_model(config.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(1, 1, *config.input_shape, device=device)
    shape = (1, config.model.out_channels, *config.output_shape)
    target = torch.rand(*shape, device=device).round()
    weight = torch.ones(*shape, device=device)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = training_loss(config, logits.float(), target, weight)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample_time(config: TrainConfig, repeats: int) -> float | None:
    """Median seconds of one augmented fib25 training sample with its targets."""
    from affinity_dist.training.data import CropSampler, open_training_volume

    path = SHARED_DATA / "fib25_sample2.h5"
    if not path.is_file():
        return None
    sampler = CropSampler([open_training_volume(str(path))], config.input_shape,
                          config.output_shape, targets=targets_of(config),
                          split=config.validation, augment=_Augment(config.augment))
    rng = np.random.default_rng(0)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        sampler.sample(rng)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"# torch {torch.__version__}, {device}, {args.threads} threads, median of "
          f"{args.repeats} steps; input 64^3 -> output 24^3")
    print(f"{'configuration':<26}{'params':>9}{'channels':>9}{'dtype':>6}{'it/s':>7}"
          f"{'vs shipped':>11}{'sample ms':>10}")
    base: dict[bool, float] = {}
    for name, model in CANDIDATES.items():
        config = TrainConfig.from_dict({"model": model, "output_shape": [24, 24, 24]})
        from affinity_dist.nn.config import build_model

        params = sum(p.numel() for p in build_model(config.model).parameters())
        sample = sample_time(config, args.repeats)
        for bf16 in (False,) if args.no_bf16 else (False, True):
            rate = 1 / step_time(config, bf16=bf16, device=device, warmup=args.warmup,
                                 repeats=args.repeats)
            base.setdefault(bf16, rate)
            ms = "-" if sample is None else f"{sample * 1e3:.0f}"
            print(f"{name:<26}{params:>9}{config.model.out_channels:>9}"
                  f"{'bf16' if bf16 else 'fp32':>6}{rate:>7.2f}{rate / base[bf16]:>10.2f}x"
                  f"{ms:>10}", flush=True)


if __name__ == "__main__":
    main()
