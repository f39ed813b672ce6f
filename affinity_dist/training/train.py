"""Train the affinity U-Net on small ground truth, with checkpoints, resume and validation.

A run directory holds ``config.json`` (the resolved configuration), ``checkpoint.pt``
(latest: weights, optimizer, iteration, model configuration — loadable with
``torch.load(weights_only=True)``, no pickled code), ``model.pt`` (weights + model
configuration only, what ``predict`` loads), ``loss.csv`` and ``loss.png``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import AffinityDistError, ConfigError, bad_value
from ..kernels.augment import AugmentConfig, augment
from ..kernels.targets import BACKGROUNDS
from ..nn.config import UNetConfig
from .data import (
    CropSampler,
    Split,
    Targets,
    TrainingVolume,
    check_split,
    open_training_volume,
    resampled_volume,
)

__all__ = ["DEFAULT_HELD_OUT", "TrainConfig", "load_config", "train"]

#: The default validation part: this fraction at the end of every volume along z.
DEFAULT_HELD_OUT = 0.15

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (unknown keys rejected by from_dict)."""

    model: UNetConfig = field(default_factory=UNetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # held out: the last 15 % along z of every volume unless the config names a slab
    validation: Split = field(default_factory=lambda: Split(axis=0, fraction=DEFAULT_HELD_OUT))
    output_shape: tuple[int, int, int] = (8, 16, 16)
    batch_size: int = 1
    learning_rate: float = 5e-4
    # [start, stop] iterations: constant lr before start, a cosine decay to
    # lr x lr_final between them, lr x lr_final after (a cooldown); None: constant
    lr_decay: tuple[int, int] | None = None
    lr_final: float = 0.01
    # keep a copy of every checkpoint's model.pt as models/model_ITERATION.pt (for
    # checkpoint averaging: models/ship.py CKPT...)
    keep_models: bool = False
    loss: Literal["bce", "mse"] = "bce"
    # focal BCE (Lin et al. 2017): each edge's BCE x (1 - p_t)^gamma, p_t the probability
    # given to its target: edges already right weigh little, those still wrong (a thin
    # object predicted as boundary) most; 0: plain BCE
    focal_gamma: float = 0.0
    balance: bool = True
    checkpoint_every: int = 500
    validation_batches: int = 8
    seed: int = 0
    bf16: bool = False
    num_workers: int = 1
    # what label 0 means per volume, and which labels mask to use: {file name: {background:
    # "unknown" | "boundary", mask: key | ""}}; volumes not named here: "unknown", and the
    # mask found under the usual names (volumes/labels/mask), if any
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    negative_weight: float = 1.0  # scales "different neuron" edges after balancing
    grow_boundary: int = 0  # voxels of each neuron next to another taught as boundary
    lsd_sigma: float = 80.0  # the LSDs' Gaussian scale, nm (with model.lsds)
    lsd_downsample: int = 2
    lsd_weight: float = 1.0  # the LSD (MSE) loss beside the affinity (BCE) loss
    # train at this voxel size (nm, z y x): volumes at another are resampled on read (raw
    # linear, labels and masks nearest; `validation` is then in the resampled grid)
    voxel_size: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "checkpoint_every", "validation_batches"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad_value(name, v, "an integer >= 1")
        if not (isinstance(self.learning_rate, int | float) and 0 < self.learning_rate < 1):
            raise bad_value("learning_rate", self.learning_rate, "a number in (0, 1)")
        if self.lr_decay is not None and not (
                len(self.lr_decay) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in self.lr_decay)
                and 0 <= self.lr_decay[0] < self.lr_decay[1]):
            raise bad_value("lr_decay", self.lr_decay, "[start, stop] iterations, "
                            "0 <= start < stop")
        if isinstance(self.lr_final, bool) or not isinstance(self.lr_final, int | float) \
                or not 0 <= self.lr_final <= 1:
            raise bad_value("lr_final", self.lr_final, "a fraction of learning_rate in 0-1")
        if not isinstance(self.keep_models, bool):
            raise bad_value("keep_models", self.keep_models, "true or false")
        if self.loss not in ("bce", "mse"):
            raise bad_value("loss", self.loss, "'bce' or 'mse'")
        if isinstance(self.focal_gamma, bool) or not isinstance(self.focal_gamma, int | float) \
                or not 0 <= self.focal_gamma <= 10 or (self.focal_gamma and self.loss != "bce"):
            raise bad_value("focal_gamma", self.focal_gamma, "a number in 0-10 (with loss "
                            "'bce')")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) \
                or self.num_workers < 0:
            raise bad_value("num_workers", self.num_workers, "an integer >= 0")
        for name in ("negative_weight", "lsd_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e6:
                raise bad_value(name, v, "a number > 0")
        if isinstance(self.lsd_sigma, bool) or not isinstance(self.lsd_sigma, int | float) \
                or not self.lsd_sigma > 0:
            raise bad_value("lsd_sigma", self.lsd_sigma, "a number > 0 (nm)")
        if isinstance(self.lsd_downsample, bool) or not isinstance(self.lsd_downsample, int) \
                or self.lsd_downsample < 1:
            raise bad_value("lsd_downsample", self.lsd_downsample, "an integer >= 1")
        if isinstance(self.grow_boundary, bool) or not isinstance(self.grow_boundary, int) \
                or not 0 <= self.grow_boundary <= 16:
            raise bad_value("grow_boundary", self.grow_boundary, "an integer in 0-16")
        check_volumes(self.volumes)
        if self.voxel_size is not None and (
                len(self.voxel_size) != 3 or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1e6
                    for v in self.voxel_size)):
            raise bad_value("voxel_size", self.voxel_size, "three numbers > 0 (nm, z y x)")
        _ = self.input_shape  # validates that output_shape fits the model

    def learning_rate_at(self, iteration: int) -> float:
        """The learning rate of the step that makes ``iteration + 1``."""
        if self.lr_decay is None or iteration <= self.lr_decay[0]:
            return float(self.learning_rate)
        start, stop = self.lr_decay
        t = min(1.0, (iteration - start) / (stop - start))
        final = self.learning_rate * self.lr_final
        return float(final + (self.learning_rate - final) * 0.5 * (1 + math.cos(math.pi * t)))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        z, y, x = (o + c for o, c in zip(self.output_shape, self.model.context, strict=True))
        try:
            fits = self.model.output_shape((z, y, x)) == tuple(self.output_shape)
        except ConfigError:
            fits = False
        if not fits:
            example = list(self.model.valid_shapes(3)[2][1])
            raise bad_value("output_shape", list(self.output_shape),
                            f"a valid U-Net output shape, e.g. {example}")
        return z, y, x

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config: got unknown key {unknown[0]!r}, expected one of "
                              f"{sorted(known)}")
        values = dict(data)
        if "model" in values:
            values["model"] = UNetConfig.from_dict(values["model"])
        if "augment" in values:
            values["augment"] = AugmentConfig.from_dict(values["augment"])
        if "validation" in values:
            v = values["validation"]
            if not isinstance(v, dict) or set(v) - {"axis", "start", "stop", "fraction",
                                                    "at_least"}:
                raise bad_value("validation", v, "{axis, start, stop} or {axis, fraction}")
            values["validation"] = check_split(Split(**v))
        if "output_shape" in values:
            values["output_shape"] = tuple(values["output_shape"])
        if isinstance(values.get("lr_decay"), list):
            values["lr_decay"] = tuple(values["lr_decay"])
        if isinstance(values.get("voxel_size"), list):
            values["voxel_size"] = tuple(values["voxel_size"])
        try:
            return cls(**values)
        except TypeError as err:
            raise ConfigError(f"config: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        return out


VOLUME_KEYS = ("background", "mask", "raw", "labels", "sections")
SECTIONS = ("linked", "unlinked")
#: Draws of a sample with no annotated output voxel before one is kept (sparse labels).
REDRAW = 16


def check_volumes(volumes: Any) -> None:
    """Refuse a ``volumes`` table that is not {name: {background, mask, raw, labels}}."""
    if not isinstance(volumes, dict):
        raise bad_value("volumes", volumes, "a table {file name: {background, mask}}")
    for name, spec in volumes.items():
        if not isinstance(spec, dict) or set(spec) - set(VOLUME_KEYS) or not all(
                isinstance(v, str) for v in spec.values()):
            raise bad_value(f"volumes.{name}", spec, f"a table of strings with keys "
                            f"{list(VOLUME_KEYS)}")
        if spec.get("background", "unknown") not in BACKGROUNDS:
            raise bad_value(f"volumes.{name}.background", spec["background"],
                            "'unknown' or 'boundary'")
        if spec.get("sections", "linked") not in SECTIONS:
            raise bad_value(f"volumes.{name}.sections", spec["sections"],
                            "'linked' (ids are one neuron across z) or 'unlinked' (2D ids "
                            "per section: no target across sections)")


def volume_spec(config: TrainConfig, path: str) -> dict[str, str]:
    """The ``volumes`` entry of ``path``: by its full path, else by its file name."""
    for key in (str(path), Path(path).name):
        if key in config.volumes:
            return config.volumes[key]
    return {}


def targets_of(config: TrainConfig) -> Targets:
    return Targets(config.model.offsets, config.lsd_sigma if config.model.lsds else None,
                   config.lsd_downsample, config.balance, float(config.negative_weight),
                   config.grow_boundary)


@dataclass(frozen=True)
class _Augment:
    """Picklable augmentation callable for DataLoader workers."""

    config: AugmentConfig

    def __call__(self, raw: Any, labels: Any, voxel_size: Any, rng: Any) -> Any:
        return augment(raw, labels, voxel_size, self.config, rng)


def load_config(path: str | os.PathLike[str] | None) -> TrainConfig:
    """A TrainConfig from a TOML or JSON file (None: the defaults)."""
    if path is None:
        return TrainConfig()
    from ..errors import InputNotFoundError

    file = Path(path)
    if not file.is_file():
        raise InputNotFoundError(f"--config: got {str(path)!r}, expected an existing file")
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(file.read_text())
        else:
            data = json.loads(file.read_text())
    except ValueError as err:
        raise ConfigError(f"--config: got {str(path)!r}, expected valid TOML or JSON "
                          f"({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: got {str(path)!r}, expected a table of settings")
    return TrainConfig.from_dict(data)


def _plot(csv_path: Path, png: Path) -> None:
    """loss.png: training (grey) and validation (black) loss over iterations."""
    import math

    from PIL import Image, ImageDraw

    rows = list(csv.DictReader(csv_path.open()))
    series = {"train_loss": (150, 150, 150), "val_loss": (0, 0, 0)}
    points = {k: [(int(r["iteration"]), float(r[k])) for r in rows
                  if math.isfinite(float(r[k]))] for k in series}
    values = [v for pts in points.values() for _, v in pts]
    its = [i for pts in points.values() for i, _ in pts]
    if len(rows) < 2 or not values:
        return
    top, w, h, m = max(values) or 1.0, 640, 360, 40
    x0, x1 = min(its), max(*its, min(its) + 1)
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([m, m // 2, w - m // 2, h - m], outline=(0, 0, 0))
    for key, colour in series.items():
        xy = [(m + (w - 1.5 * m) * (i - x0) / (x1 - x0), h - m - (h - 1.5 * m) * v / top)
              for i, v in points[key]]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
    draw.text((m, h - m + 8), f"iterations {x0}-{x1}; loss 0-{top:.3f}; "
              "grey train, black validation", fill=(0, 0, 0))
    image.save(png)


def train(data: Sequence[str], out: str | os.PathLike[str], *, iterations: int = 2000,
          config: TrainConfig | None = None, progress: bool = True,
          init: str | os.PathLike[str] | None = None) -> Path:
    """Train (or resume training) into run directory ``out``; returns ``out/model.pt``.

    ``init``: a checkpoint to start from (fine-tuning; ignored when ``out`` holds a run to
    resume): its architecture must be the config's; shared outputs keep their weights."""
    config = config or TrainConfig()
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise bad_value("--iterations", iterations, "an integer >= 1")
    if not data:
        raise ConfigError("--data: got nothing, expected at least one volume with labels")
    if init is not None and not Path(init).is_file():
        from ..errors import InputNotFoundError

        raise InputNotFoundError(f"--init: got {str(init)!r}, expected a checkpoint file")
    names = {str(d) for d in data} | {Path(d).name for d in data}
    stray = sorted(set(config.volumes) - names)
    if stray:
        raise bad_value("volumes", stray[0], f"the path or file name of a --data volume "
                        f"({sorted(Path(d).name for d in data)})")
    volumes = []
    for d in data:
        spec = volume_spec(config, str(d))
        volumes.append(open_training_volume(
            str(d), spec.get("raw"), spec.get("labels"), mask_key=spec.get("mask"),
            background=spec.get("background", "unknown"),
            linked=spec.get("sections", "linked") == "linked"))
        if config.voxel_size is not None:
            volumes[-1] = resampled_volume(volumes[-1], config.voxel_size)
    targets = targets_of(config)
    config = _held_out(config, data, volumes)
    sampler = CropSampler(volumes, config.input_shape, config.output_shape, targets=targets,
                          split=config.validation, part="train",
                          augment=_Augment(config.augment), redraw=REDRAW)
    val = CropSampler(volumes, config.input_shape, config.output_shape, targets=targets,
                      split=config.validation, part="val", redraw=REDRAW)
    run = Path(out)
    fresh = not run.exists()
    try:
        return _train_into(run, data, config, (sampler, val), iterations=iterations,
                           init=init, progress=progress)
    except AffinityDistError as err:  # bad data in a crop: a new run directory goes again
        if fresh and err.exit_code == 2 and not (run / "checkpoint.pt").exists():
            shutil.rmtree(run, ignore_errors=True)
        raise


def _held_out(config: TrainConfig, data: Sequence[str], volumes: Sequence[TrainingVolume]
              ) -> TrainConfig:
    """A fraction slab holds out at least one output crop of every volume (and leaves one
    to training where the volume has two); says per volume what it holds out."""
    split = config.validation
    if split.fraction is None:
        return config
    split = replace(split, at_least=max(split.at_least, config.output_shape[split.axis]))
    for path, vol in zip(data, volumes, strict=True):
        log.warning("train: validation on %s: %s", Path(path).name,
                    split.describe(vol.raw.shape))
    return replace(config, validation=split)


def _train_into(run: Path, data: Sequence[str], config: TrainConfig,
                samplers: tuple[CropSampler, CropSampler], *, iterations: int,
                init: str | os.PathLike[str] | None, progress: bool) -> Path:
    import torch

    from .trainer import Trainer

    run.mkdir(parents=True, exist_ok=True)
    resolved = {"data": [str(Path(d).absolute()) for d in data], **config.to_dict(),
                "init": None if init is None else str(Path(init).absolute())}
    saved = run / "config.json"
    if (run / "checkpoint.pt").exists() and saved.exists():
        before = json.loads(saved.read_text())
        if before.get("model") != json.loads(json.dumps(resolved["model"])):
            raise ConfigError(f"--out: {str(run)!r} holds a run of another model "
                              "configuration; expected the same config to resume (or a new "
                              "--out)")
    saved.write_text(json.dumps(resolved, indent=2, default=list))
    trainer = Trainer(config, *samplers, run, device=torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"),
        init=None if init is None else str(init))
    start = time.perf_counter()
    trainer.run(iterations, progress=progress)
    log.info("trained to iteration %d in %.0f s", iterations, time.perf_counter() - start)
    from .card import write_card

    write_card(run, config, samplers[0].volumes, None if init is None else
               str(Path(init).absolute()))
    return run / "model.pt"
