"""The training loop behind :func:`affinity_dist.training.train.train` (imports torch)."""

from __future__ import annotations

import csv
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..nn.checkpoint import FORMAT, _save, initialise_from, save_model
from ..nn.config import build_model
from .data import CropSampler, raw_histogram_of
from .train import TrainConfig, _plot

log = logging.getLogger(__name__)
COLUMNS = ["iteration", "train_loss", "val_loss", "val_f1", "val_boundary_f1", "seconds"]


def affinity_loss(config: TrainConfig, logits: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor) -> torch.Tensor:
    """The weighted BCE (focal with ``focal_gamma``) or MSE of affinity channels."""
    if config.loss == "bce":
        raw = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, reduction="none")
        if config.focal_gamma:
            # p_t, the probability given to the target (0 or 1), is exp(-BCE)
            raw = raw * (1 - torch.exp(-raw)).pow(config.focal_gamma)
    else:
        raw = (torch.sigmoid(logits) - target) ** 2
    return (raw * weight).sum() / weight.sum().clamp(min=1.0)


def training_loss(config: TrainConfig, logits: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor) -> torch.Tensor:
    """The affinity loss of every offset's channel, plus ``lsd_weight`` x the masked MSE
    of the LSD channels when the model has them."""
    n = len(config.model.offsets)
    affinity = affinity_loss(config, logits[:, :n], target[:, :n], weight[:, :n])
    if not config.model.lsds:
        return affinity
    lsd_w = weight[:, n:]
    lsd = (((torch.sigmoid(logits[:, n:]) - target[:, n:]) ** 2) * lsd_w).sum() \
        / lsd_w.sum().clamp(min=1.0)
    return affinity + config.lsd_weight * lsd


class _Stream(IterableDataset[tuple[Any, Any, Any]]):
    """Endless samples; each DataLoader worker draws from its own seeded stream."""

    def __init__(self, sampler: CropSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self) -> Iterator[tuple[Any, Any, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        for raw, target, weight in self.sampler.stream(self.seed * 1009 + worker):
            yield torch.from_numpy(raw), torch.from_numpy(target), torch.from_numpy(weight)


class Trainer:
    def __init__(self, config: TrainConfig, sampler: CropSampler, val: CropSampler,
                 run: Path, *, device: torch.device, init: str | None = None) -> None:
        self.config, self.sampler, self.val, self.run_dir, self.device = (
            config, sampler, val, run, device)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate)
        self.iteration = 0
        self.raw_histogram = raw_histogram_of(sampler.volumes, sampler.split)
        sizes = {tuple(v.voxel_size) for v in sampler.volumes}
        self.voxel_size = list(sizes.pop()) if len(sizes) == 1 else None  # nm, z y x
        checkpoint = run / "checkpoint.pt"
        if checkpoint.exists():
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            self.model.load_state_dict(state["model_state"])
            self.optimizer.load_state_dict(state["optimizer_state"])
            self.iteration = int(state["iteration"])
            log.info("resuming %s at iteration %d", run, self.iteration)
        elif init is not None:
            copied = initialise_from(self.model, config.model, init)
            log.info("starting from the weights of %s (%d of %d head channels)", init,
                     copied, config.model.out_channels)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
              ) -> torch.Tensor:
        return training_loss(self.config, logits, target, weight)

    def _autocast(self) -> Any:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16)

    def validate(self) -> tuple[float, float, float]:
        """Mean loss and affinity F1 of the "same neuron" edges and of the boundary edges
        (threshold 0.5, masked edges excluded) on fixed validation crops — of the nearest
        three affinities only, so that models with other auxiliary targets compare."""
        self.model.eval()
        losses, tp, fp, fn, tn = [], 0, 0, 0, 0
        rng = np.random.default_rng(12345)
        with torch.inference_mode():
            for _ in range(self.config.validation_batches):
                raw, target, weight = (torch.from_numpy(a)[None].to(self.device)
                                       for a in self.val.sample(rng))
                with self._autocast():
                    logits = self.model(raw)
                logits, target, weight = logits.float()[:, :3], target[:, :3], weight[:, :3]
                losses.append(float(affinity_loss(self.config, logits, target, weight)))
                pred, known, truth = logits > 0, weight > 0, target > 0.5
                tp += int((pred & truth & known).sum())
                fp += int((pred & ~truth & known).sum())
                fn += int((~pred & truth & known).sum())
                tn += int((~pred & ~truth & known).sum())
        self.model.train()
        # boundary F1: the negative class, where a merge error would start
        return (float(np.mean(losses)), 2 * tp / max(2 * tp + fp + fn, 1),
                2 * tn / max(2 * tn + fn + fp, 1))

    def checkpoint(self, train_loss: float, seconds: float) -> None:
        val_loss, f1, boundary_f1 = self.validate()
        model_config = self.config.model.to_dict()
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        _save(self.run_dir / "checkpoint.pt", {
            "format": FORMAT, "iteration": self.iteration, "model_config": model_config,
            "model_state": weights, "optimizer_state": self.optimizer.state_dict(),
            "normalization": "uint8/255"})
        save_model(self.run_dir / "model.pt", self.model, self.config.model,
                   iteration=self.iteration, val_f1=f1, val_boundary_f1=boundary_f1,
                   **({} if self.raw_histogram is None else
                      {"raw_histogram": self.raw_histogram}),
                   **({} if self.voxel_size is None else {"voxel_size": self.voxel_size}))
        if self.config.keep_models:
            kept = self.run_dir / "models"
            kept.mkdir(exist_ok=True)
            shutil.copyfile(self.run_dir / "model.pt", kept / f"model_{self.iteration:07d}.pt")
        path = self.run_dir / "loss.csv"
        header = next(csv.reader(path.open()), COLUMNS) if path.exists() else None
        with path.open("a", newline="") as f:  # an older run keeps its own columns
            writer = csv.DictWriter(f, fieldnames=header or COLUMNS, extrasaction="ignore")
            if header is None:
                writer.writeheader()
            writer.writerow({"iteration": self.iteration, "train_loss": f"{train_loss:.6f}",
                             "val_loss": f"{val_loss:.6f}", "val_f1": f"{f1:.4f}",
                             "val_boundary_f1": f"{boundary_f1:.4f}",
                             "seconds": f"{seconds:.1f}"})
        _plot(path, self.run_dir / "loss.png")
        log.info("iteration %d: train loss %.4f, val loss %.4f, val affinity F1 %.3f "
                 "(boundary edges %.3f)", self.iteration, train_loss, val_loss, f1, boundary_f1)

    def run(self, iterations: int, *, progress: bool = True) -> None:
        if self.iteration >= iterations:
            log.info("%s is already at iteration %d", self.run_dir, self.iteration)
            return
        from tqdm import tqdm

        if self.iteration == 0 and not (self.run_dir / "loss.csv").exists():
            self.checkpoint(float("nan"), 0.0)  # the untrained baseline: row 0
        loader = DataLoader(_Stream(self.sampler, self.config.seed + self.iteration),
                            batch_size=self.config.batch_size,
                            num_workers=self.config.num_workers,
                            persistent_workers=self.config.num_workers > 0)
        bar = tqdm(total=iterations, initial=self.iteration, unit="it", file=sys.stderr,
                   disable=not (progress and sys.stderr.isatty()), dynamic_ncols=True)
        self.model.train()
        start, recent = time.perf_counter(), list[float]()
        first, last_log = self.iteration, start
        for batch in loader:
            raw, target, weight = (t.to(self.device) for t in batch)
            with self._autocast():
                logits = self.model(raw)
            loss = self._loss(logits.float(), target, weight)
            self.optimizer.zero_grad(set_to_none=True)
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.learning_rate_at(self.iteration)
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            self.iteration += 1
            recent = [*recent[-49:], float(loss.detach())]
            bar.set_postfix(loss=f"{np.mean(recent):.4f}")
            bar.update(1)
            now = time.perf_counter()
            if bar.disable and now - last_log >= 60:  # batch logs: a line a minute
                log.info("iteration %d/%d, loss %.4f, %.2f it/s, lr %.3g", self.iteration,
                         iterations, np.mean(recent), (self.iteration - first) / (now - start),
                         self.config.learning_rate_at(self.iteration))
                last_log = now
            done = self.iteration >= iterations
            if done or self.iteration % self.config.checkpoint_every == 0:
                self.checkpoint(float(np.mean(recent)), time.perf_counter() - start)
            if done:
                break
        bar.close()
