"""The model card a training run writes beside its ``model.pt`` (``README.md``).

What a lab needs to trust or reuse a model, from what the run itself recorded: the
architecture and its shapes, the voxel size it was trained at, the data (each volume's label
semantics, labels mask and voxel size), the held-out slab, the targets, where it started
(the ``--init`` checkpoint and its checksum) and the last validation figures of
``loss.csv``. Written again at the end of every ``train`` call, so a resumed run's card
describes its latest model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..nn.checkpoint import file_sha256

if TYPE_CHECKING:
    from .data import TrainingVolume
    from .train import TrainConfig

__all__ = ["write_card"]


def _nm(values: Sequence[float]) -> str:
    return "x".join(f"{float(v):g}" for v in values) + " nm"


def _volume_row(volume: TrainingVolume) -> str:
    raw: Any = volume.raw
    source = getattr(raw, "source", raw)  # a resampled view names what it reads
    native = getattr(raw, "source_voxel_size", volume.voxel_size)
    mask = "none" if volume.mask is None else f"`{getattr(volume.mask, 'source', volume.mask).key}`"
    resampled = "" if native == volume.voxel_size else f", resampled to {_nm(volume.voxel_size)}"
    return (f"| `{source.path}` | `{source.key}` | {_nm(native)}{resampled} | "
            f"{volume.background} | {'linked' if volume.linked else 'unlinked (2D ids)'} | "
            f"{mask} |")


def _held_out(split: Any) -> str:
    if split.fraction is not None:
        return (f"the last {split.fraction:.0%} of every volume along axis {split.axis} "
                f"(at least {split.at_least} planes)")
    stop = "end" if split.stop is None else split.stop
    return f"axis {split.axis}, {split.start} to {stop}"


def write_card(run: Path, config: TrainConfig, volumes: Sequence[TrainingVolume],
               init: str | None) -> Path:
    """``run/README.md`` for the run's current ``model.pt``; returns its path."""
    model = run / "model.pt"
    rows = list(csv.DictReader((run / "loss.csv").open())) if (run / "loss.csv").exists() \
        else []
    last = rows[-1] if rows else {}
    m = config.model
    sizes = {tuple(v.voxel_size) for v in volumes}
    voxel = _nm(next(iter(sizes))) if len(sizes) == 1 else "mixed (see the data)"
    split = config.validation
    start = ("random initialisation" if init is None else
             f"the weights of `{init}` (sha256 `{file_sha256(Path(init))[:12]}…`)")
    targets = ", ".join(str(tuple(o)) for o in m.offsets) + (" + 10 LSDs" if m.lsds else "")
    lines = [
        f"# Model card: {run.name}", "",
        f"Written by `affinity-dist train` for `model.pt` at iteration "
        f"{last.get('iteration', '?')} (sha256 `{file_sha256(model)[:12]}…`). Every setting is "
        "in `config.json`; the losses in `loss.csv` and `loss.png`.", "",
        "| | |", "|---|---|",
        f"| Architecture | `{m.to_dict()}` |",
        f"| Shapes | input {list(config.input_shape)} → output {list(config.output_shape)}; "
        f"context {list(m.context)}; output unit {list(m.step)} |",
        f"| Voxel size | {voxel} (recorded in `model.pt`: `predict --resample` brings other "
        "data to it) |",
        f"| Targets | affinities {targets}; balanced {config.balance}, negative weight "
        f"{config.negative_weight}, grown boundary {config.grow_boundary} |",
        f"| Start | {start} |",
        f"| Optimisation | lr {config.learning_rate}{_decay(config)}, batch {config.batch_size}, "
        f"{config.loss}{f' (focal, gamma {config.focal_gamma})' if config.focal_gamma else ''}, "
        f"{'bf16' if config.bf16 else 'fp32'}, seed {config.seed} |",
        f"| Held out | {_held_out(split)} (in the trained grid) |",
        "", "## Data", "",
        "| file | raw | voxel size | label 0 | ids across z | labels mask |",
        "|---|---|---|---|---|---|", *(_volume_row(v) for v in volumes), "",
        "## Last validation", "",
        f"Iteration {last.get('iteration', '?')}: train loss {last.get('train_loss', '?')}, "
        f"validation loss {last.get('val_loss', '?')}, validation affinity F1 "
        f"{last.get('val_f1', '?')} (boundary edges {last.get('val_boundary_f1', '?')}). "
        "A model is judged by its segmentation, not its loss: score it on held-out labels "
        "(`affinity-dist evaluate`, `benchmarks/eval_isbi.py` for 2D sections).", "",
        "## Use", "",
        "```", f"affinity-dist predict --input X.zarr --model {model}"
        + (" --resample" if len(sizes) == 1 else ""), "```", ""]
    card = run / "README.md"
    card.write_text("\n".join(lines))
    return card


def _decay(config: TrainConfig) -> str:
    if config.lr_decay is None:
        return ""
    start, stop = config.lr_decay
    return (f" (cosine decay to {config.learning_rate * config.lr_final:.3g} over iterations "
            f"{start}-{stop})")
