"""Training data: random crops streamed from Zarr / HDF5 / N5 volumes, never whole volumes.

A :class:`CropSampler` draws a crop of the network's *input* shape from one of several
volumes (raw + labels), restricted to the training region or to the held-out validation
region (a slab along one axis). Augmentations run on the input-sized crop; targets are
computed there too and then centre-cropped to the network's *output* shape, so every
output edge has its true neighbour. Raw is normalised as at inference: uint8 / 255.

Each volume says what its label 0 means (``background``: "unknown" or "boundary", see
:mod:`affinity_dist.kernels.targets`) and may carry a labels mask (1 = annotated). Through
the augmentations the crop travels as one encoded label array, 0 = unknown (unannotated,
or uncovered by a misaligned section) — for "boundary" volumes the ids are shifted by one,
so membrane (1) stays apart from unknown — and is decoded before the targets are made:
unannotated voxels never contribute.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, DataError, bad_value
from ..geometry import Box, read_mirrored
from ..kernels.lsd import local_shape_descriptors
from ..kernels.targets import BACKGROUNDS, affinity_targets, balance_weights, grow_boundary
from ..kernels.values import require_finite, require_labels
from ..storage.sources import Source, open_source

__all__ = ["CropSampler", "ResampledSource", "Split", "Targets", "check_split",
           "normalize_raw", "open_training_volume", "resampled_volume"]

log = logging.getLogger(__name__)


def normalize_raw(raw: NDArray[Any]) -> NDArray[np.float32]:
    """Intensities as the network sees them, in training and inference: uint8 / 255."""
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255)
    return raw.astype(np.float32)


@dataclass(frozen=True)
class Split:
    """Held-out validation slab along ``axis``: ``start <= index < stop`` (stop None: the
    end), or, with ``fraction``, the last ``fraction`` of each volume, at least
    ``at_least`` planes and leaving at least that many to training where the volume has
    them (the default of a training config: any volume keeps a validation part)."""

    axis: int = 0
    start: int = 0
    stop: int | None = None
    fraction: float | None = None
    at_least: int = 1

    def bounds(self, shape: Sequence[int], part: Literal["train", "val"]
               ) -> list[tuple[int, int]]:
        """Intervals along ``axis`` available to ``part`` (training may be two pieces)."""
        n = shape[self.axis]
        if self.fraction is not None:
            held = max(math.ceil(self.fraction * n), self.at_least)
            held = min(held, max(n - self.at_least, math.ceil(n / 2)))
            lo, hi = n - held, n
        else:
            lo = min(self.start, n)  # a slab beyond the volume leaves it all to training
            hi = n if self.stop is None else min(self.stop, n)
        if part == "val":
            return [(lo, hi)] if hi > lo else []
        return [(a, b) for a, b in ((0, lo), (hi, n)) if b > a]

    def describe(self, shape: Sequence[int]) -> str:
        """The slab of a volume of ``shape``, in words (what a run tells its user)."""
        ((lo, hi),) = self.bounds(shape, "val") or [(0, 0)]
        rule = (f"the last {self.fraction:.0%}, at least {self.at_least}"
                if self.fraction is not None else "the configured slab")
        return f"{'zyx'[self.axis]} {lo}-{hi} of {shape[self.axis]} ({rule})"


@dataclass(frozen=True)
class TrainingVolume:
    raw: Source
    labels: Source
    voxel_size: tuple[float, float, float]
    background: str = "unknown"  # what label 0 means: "unknown" or "boundary"
    mask: Source | None = None  # labels mask, nonzero = annotated
    linked: bool = True  # False: 2D ids per section (ISBI), nothing is known across z


@dataclass(frozen=True)
class ResampledSource:
    """A source seen at another voxel size (``voxel_size``, nm), resampled on every read
    (:func:`affinity_dist.kernels.resample.resample_window`: raw linear, labels and masks
    nearest), as ``predict --resample`` sees raw."""

    source: Source
    source_voxel_size: tuple[float, float, float]
    voxel_size: tuple[float, float, float]
    order: Literal["linear", "nearest"]

    @property
    def shape(self) -> tuple[int, ...]:
        from ..kernels.resample import resampled_shape

        return resampled_shape(self.source.shape, self.source_voxel_size, self.voxel_size)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.source.dtype

    @property
    def path(self) -> str:
        return self.source.path

    def read(self, box: Box) -> NDArray[Any]:
        from ..kernels.resample import resample_window

        ratios = [t / s for s, t in zip(self.source_voxel_size, self.voxel_size, strict=True)]
        return resample_window(self.source.read, [np.arange(a, b) for a, b in
                                                  zip(box.start, box.stop, strict=True)],
                               self.source.shape, ratios, order=self.order)


def resampled_volume(volume: TrainingVolume, voxel_size: Sequence[float]) -> TrainingVolume:
    """``volume`` at ``voxel_size`` (nm, z y x): itself where it is there already."""
    target = tuple(float(v) for v in voxel_size)
    if all(abs(s / t - 1) < 1e-6 for s, t in zip(volume.voxel_size, target, strict=True)):
        return volume
    log.info("%s: %s nm resampled to %s nm for training", volume.raw.path,
             "x".join(f"{v:g}" for v in volume.voxel_size), "x".join(f"{v:g}" for v in target))

    def view(source: Any, order: Literal["linear", "nearest"]) -> Any:
        return ResampledSource(source, volume.voxel_size, target, order)  # type: ignore[arg-type]

    return replace(volume, raw=view(volume.raw, "linear"),
                   labels=view(volume.labels, "nearest"),
                   mask=None if volume.mask is None else view(volume.mask, "nearest"),
                   voxel_size=target)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Targets:
    """What a sample's target holds: affinities of ``offsets`` (BCE), then, with
    ``lsd_sigma``, the 10 local shape descriptors (MSE)."""

    offsets: tuple[tuple[int, int, int], ...]
    lsd_sigma: float | None = None
    lsd_downsample: int = 2
    balance: bool = True
    negative_weight: float = 1.0
    grow_boundary: int = 0  # thicken neuron interfaces into taught boundary (voxels)


def open_training_volume(path: str, raw_key: str | None = None,
                         labels_key: str | None = None, *, mask_key: str | None = None,
                         background: str = "unknown", linked: bool = True
                         ) -> TrainingVolume:
    """Raw, labels and (when present or named) the labels mask of a training source; all
    must exist and match in shape. ``mask_key`` "" means: no mask even if one is present."""
    raw = open_source(path, raw_key, role="raw", option="--data")
    labels = open_source(path, labels_key, role="labels", option="--data")
    if raw is None or labels is None:
        raise DataError(f"--data: got {path!r}, expected raw and labels (ground truth)")
    if len(raw.shape) != 3 or raw.shape != labels.shape:
        raise DataError(f"--data: got raw {raw.shape} and labels {labels.shape} in {path!r}, "
                        "expected two 3D volumes of one shape")
    if labels.dtype.kind not in "ui":
        raise DataError(f"--data: got labels of dtype {labels.dtype}, expected integers")
    if raw.dtype != np.uint8 and raw.dtype.kind != "f":
        raise DataError(f"--data: got raw of dtype {raw.dtype} in {path!r}, expected uint8 "
                        "(trained as /255, like predict) or float (ingest with --rescale "
                        "maps other types onto 0-255)")
    if background not in BACKGROUNDS:
        raise bad_value(f"volumes.{path}.background", background, "'unknown' or 'boundary'",
                        ConfigError)
    mask = None if mask_key == "" else open_source(path, mask_key, role="mask",
                                                   option="--data")
    if mask is not None and (mask.shape != labels.shape or mask.dtype.kind not in "uib"):
        raise DataError(f"--data: got a labels mask {mask.shape} {mask.dtype} in {path!r}, "
                        f"expected integers of the labels' shape {labels.shape}")
    voxel = raw.voxel_size if raw.voxel_size and len(raw.voxel_size) == 3 else (1, 1, 1)
    vz, vy, vx = (float(v) for v in voxel)
    return TrainingVolume(raw, labels, (vz, vy, vx), background, mask, linked)


def raw_histogram_of(volumes: Sequence[TrainingVolume], split: Split) -> list[int] | None:
    """The 256-level histogram of the uint8 raw a model trains on (the training part of
    every volume; None if one holds float raw): ``predict --normalize`` maps new data onto
    it."""
    from ..kernels.intensity import histogram

    total = np.zeros(256, np.int64)
    for vol in volumes:
        if vol.raw.dtype != np.uint8:
            return None
        shape = vol.raw.shape
        for lo, hi in split.bounds(shape, "train"):
            stop = list(shape)
            start = [0, 0, 0]
            start[split.axis], stop[split.axis] = lo, hi
            total += histogram(np.asarray(vol.raw.read(Box(tuple(start), tuple(stop)))))
    return [int(c) for c in total]


def encode_labels(volume: TrainingVolume, labels: NDArray[Any], mask: NDArray[Any] | None
                  ) -> NDArray[np.uint64]:
    """One label array for the augmentations: 0 = unknown; for "boundary" volumes ids + 1
    (so membrane, 0, becomes 1)."""
    out = labels.astype(np.uint64)
    if volume.background == "boundary":
        if out.size and int(out.max()) == np.iinfo(np.uint64).max:
            raise DataError(f"--data: {volume.labels.path!r} holds id 2**64-1, expected "
                            "ids below it in a volume whose label 0 is boundary")
        out += np.uint64(1)
    if mask is not None:
        out[mask == 0] = 0
    return out


def decode_labels(volume: TrainingVolume, encoded: NDArray[np.uint64]
                  ) -> tuple[NDArray[np.uint64], NDArray[np.bool_] | None]:
    """The labels and the annotated mask (None: all annotated) of an encoded crop."""
    if volume.background != "boundary":
        return encoded, None
    known = encoded != 0
    return np.where(known, encoded - np.uint64(1), np.uint64(0)), known


class CropSampler:
    """Random training (or validation) samples of fixed shape from several volumes.

    Parameters
    ----------
    volumes : training volumes.
    input_shape, output_shape : the network's shapes (z, y, x).
    targets : what to compute (affinity offsets, LSDs, weighting).
    split : the held-out validation slab.
    part : "train" or "val".
    augment : callable ``(raw, labels, voxel_size, rng) -> (raw, labels)`` or None.
    redraw : a sample whose output crop holds no known edge (all of it unannotated, as most
        of a volume labelled on a few sections) is drawn again, up to this many times.
    """

    def __init__(self, volumes: Sequence[TrainingVolume], input_shape: Sequence[int],
                 output_shape: Sequence[int], *, targets: Targets,
                 split: Split, part: Literal["train", "val"] = "train",
                 augment: Any = None, redraw: int = 0) -> None:
        self.volumes, self.split, self.part = list(volumes), split, part
        self.redraw = int(redraw)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output_shape = tuple(int(s) for s in output_shape)
        self.targets, self.augment = targets, augment
        # a volume (or region) smaller than the input crop still trains: its output crop
        # lies inside, the context beyond is mirrored raw with unknown labels
        self.choices = [(v, iv) for v, vol in enumerate(self.volumes)
                        for iv in split.bounds(vol.raw.shape, part)
                        if iv[1] - iv[0] >= self.output_shape[split.axis]
                        and all(n >= s for n, s in zip(vol.raw.shape, self.output_shape,
                                                       strict=True))]
        if not self.choices:
            raise ConfigError(f"output shape: got {list(self.output_shape)}, expected a crop "
                              f"that fits the {part} region of at least one volume "
                              f"({[v.raw.shape for v in self.volumes]}, split {split})")
        used = {v for v, _ in self.choices}
        for v, vol in enumerate(self.volumes):
            if v not in used and any(b > a for a, b in split.bounds(vol.raw.shape, part)):
                log.warning("%s: %s region %s smaller than the output crop %s: not sampled",
                            vol.raw.path, part, vol.raw.shape, list(self.output_shape))

    def box(self, rng: np.random.Generator) -> tuple[int, Box]:
        """A random input-sized box inside the region of this part."""
        v, (lo, hi) = self.choices[int(rng.integers(len(self.choices)))]
        shape = self.volumes[v].raw.shape
        start = []
        for axis, (n, s, o) in enumerate(zip(shape, self.input_shape, self.output_shape,
                                              strict=True)):
            a, b = (lo, hi) if axis == self.split.axis else (0, n)
            if b - a >= s:  # the whole input crop inside the region
                start.append(int(rng.integers(a, b - s + 1)))
            else:  # only the output crop inside; the context overhangs
                start.append(int(rng.integers(a, b - o + 1)) - (s - o) // 2)
        return v, Box(tuple(start), tuple(a + s for a, s in zip(start, self.input_shape,
                                                                 strict=True)))

    def sample(self, rng: np.random.Generator
               ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """One sample: raw (1, *input), target (C, *output), weight (C, *output); drawn
        again (``redraw``) while its output knows nothing."""
        for _ in range(self.redraw):
            raw, target, weight = self._draw(rng)
            if weight.any():
                return raw, target, weight
        return self._draw(rng)

    def _draw(self, rng: np.random.Generator
              ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        v, box = self.box(rng)
        vol = self.volumes[v]
        shape = vol.raw.shape
        inside = box.clip(shape)
        intensities = read_mirrored(vol.raw.read, box, shape)[0]
        require_finite(f"--data {vol.raw.path}", intensities, "crop", box.start)
        raw = normalize_raw(intensities)
        mask = None if vol.mask is None else vol.mask.read(inside)
        labels = vol.labels.read(inside)
        require_labels(f"--data {vol.labels.path}", labels, "crop", inside.start)
        labels = encode_labels(vol, labels, mask)
        if inside != box:  # beyond the volume: unknown (encoded 0)
            padded = np.zeros(box.shape, labels.dtype)
            padded[inside.relative_to(box)] = labels
            labels = padded
        if self.augment is not None:
            raw, labels = self.augment(raw, labels, vol.voxel_size, rng)
        labels, known = decode_labels(vol, labels)
        t = self.targets
        background, edges = vol.background, np.asarray(labels)
        if t.grow_boundary:  # the band becomes boundary; an unknown 0 stays unknown
            if background == "unknown":
                known = labels != 0 if known is None else known & (labels != 0)
            edges, background = np.asarray(grow_boundary(labels, t.grow_boundary)), "boundary"
        target, weight = affinity_targets(edges, t.offsets, background=background,  # type: ignore[arg-type]
                                          mask=known)
        if not vol.linked:  # 2D ids: an edge across sections is neither same nor different
            weight[[o[0] != 0 for o in t.offsets]] = 0
        crop = tuple(slice((i - o) // 2, (i - o) // 2 + o) for i, o in
                     zip(self.input_shape, self.output_shape, strict=True))
        target, weight = target[(slice(None), *crop)], weight[(slice(None), *crop)]
        if t.balance:
            weight = balance_weights(target, weight, negative=t.negative_weight)
        elif t.negative_weight != 1:
            weight = weight * np.where(target > 0.5, 1, t.negative_weight).astype(np.float32)
        if t.lsd_sigma is not None:
            if known is not None:
                labels = np.where(known, labels, 0)  # unknown voxels have no shape
            lsds, lsd_mask = local_shape_descriptors(labels, t.lsd_sigma, vol.voxel_size,
                                                     region=crop,  # type: ignore[arg-type]
                                                     downsample=t.lsd_downsample)
            if not vol.linked:  # a shape over unlinked sections is no neuron's shape
                lsd_mask = np.zeros_like(lsd_mask)
            target = np.concatenate([target, lsds])
            weight = np.concatenate([weight, lsd_mask])
        return raw[None].astype(np.float32), target, weight

    def stream(self, seed: int) -> Iterator[tuple[NDArray[np.float32], NDArray[np.float32],
                                                   NDArray[np.float32]]]:
        rng = np.random.default_rng(seed)
        while True:
            yield self.sample(rng)


def check_split(split: Split) -> Split:
    """Refuse a validation slab that is not an axis 0-2 and 0 <= start < stop, or a
    fraction outside (0, 1) (a fraction takes no start or stop)."""
    ints = all(isinstance(v, int) and not isinstance(v, bool)
               for v in (split.axis, split.start, split.stop or 1, split.at_least))
    if not ints or split.axis not in (0, 1, 2) or split.start < 0 or split.at_least < 1 or (
            split.stop is not None and split.stop <= split.start):
        raise bad_value("validation", asdict(split), "axis in 0-2 and 0 <= start < stop")
    if split.fraction is not None and (
            isinstance(split.fraction, bool) or not isinstance(split.fraction, int | float)
            or not 0 < split.fraction < 1 or split.start or split.stop is not None):
        raise bad_value("validation", asdict(split), "a fraction in (0, 1) without start "
                        "or stop")
    return split
