"""Training-time augmentations of one sample: a raw crop and its label crop (pure numpy/scipy).

A sample is ``raw`` (float32, z, y, x, values in [0, 1]) and ``labels`` (uint64, same shape,
0 = unknown), with a known ``voxel_size`` (nm, z, y, x). :func:`augment` draws every random
choice from the :class:`numpy.random.Generator` it is given and applies, in this order:

1. geometric, to raw and labels together: flips, transposes, elastic deformation,
   misaligned sections;
2. intensity, to raw only: blur, missing sections, darkening, scale and shift, Gaussian
   noise; then clips raw to [0, 1].

Lengths are in nm and converted per axis with the voxel size. An axis whose voxel size is at
least ``2`` times the smallest is a *section* axis: the elastic deformation does not displace
along it, and sections are misaligned only where z is one. Transposes swap only axes of equal
voxel size and equal length, so the voxel size and the shape never change. The building
blocks are public; they are deterministic given their arguments, and the random ones take an
explicit generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import interpolate, ndimage

from ..errors import DataError, bad_value

__all__ = ["AugmentConfig", "add_noise", "augment", "blur", "darken", "drop_sections",
           "elastic_field", "flip", "random_transpose_order", "scale_shift", "shift_sections",
           "transpose", "warp"]

Raw = NDArray[np.float32]
Labels = NDArray[np.uint64]
_SECTION_RATIO = 2.0  # voxel size / smallest voxel size from which an axis counts as sections
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "blur_sigma": (lambda v: v >= 0, ">= 0"), "darken_gamma": (lambda v: v >= 1, ">= 1"),
    "darken_scale": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "intensity_scale": (lambda v: v > 0, "> 0"), "intensity_shift": (lambda v: True, "finite"),
    "noise_sigma": (lambda v: v >= 0, ">= 0")}
_SCALARS: dict[str, tuple[Callable[[float], bool], str]] = {
    "elastic_amplitude": (lambda v: v >= 0, "a finite number >= 0"),
    "elastic_spacing": (lambda v: v > 0, "a finite number > 0"),
    "misalign_max_shift": (lambda v: v >= 0, "a finite number >= 0")}


def _finite(v: Any) -> bool:
    return (isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            and math.isfinite(v))


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and parameters of every augmentation; lengths in nm.

    Every ``*_prob`` is the probability, in [0, 1], that :func:`augment` applies the
    augmentation to a sample (0 switches it off); ``flip_prob`` applies per axis. A pair
    ``(lo, hi)`` is a range, ``lo <= hi``, that a value is drawn from uniformly.

    Parameters
    ----------
    flip_prob : float
        Flip each axis.
    transpose_prob : float
        Permute randomly the axes of equal voxel size and equal length.
    elastic_prob, elastic_amplitude, elastic_spacing : float
        Elastic deformation: standard deviation of the displacement of its control points
        (>= 0; 0: identity) and their spacing (> 0), both in nm.
    misalign_prob, misalign_slip_prob, misalign_max_shift : float
        Misaligned sections (z axis of sections only): the probability that just one section
        slips (else every section from a random one on shifts) and the largest shift in nm
        per in-plane axis (>= 0).
    blur_prob : float
    blur_sigma : (float, float)
        Gaussian blur with a sigma in nm (>= 0), the same for every axis in nm.
    missing_prob : float
    missing_max_sections : int
        Missing sections: 1 to this many (>= 1) z-sections, never all, become constant.
    missing_fill : {"zero", "mean"}
        The constant: 0 or the mean of the crop.
    darken_prob : float
    darken_gamma, darken_scale : (float, float)
        Darkening ``raw ** gamma * scale``, gamma >= 1 and scale in (0, 1].
    intensity_prob : float
    intensity_scale, intensity_shift : (float, float)
        ``raw * a + b``, a > 0.
    noise_prob : float
    noise_sigma : (float, float)
        Additive Gaussian noise of this standard deviation (>= 0).
    """

    flip_prob: float = 0.5
    transpose_prob: float = 0.5
    elastic_prob: float = 0.5
    elastic_amplitude: float = 20.0
    elastic_spacing: float = 200.0
    misalign_prob: float = 0.1
    misalign_slip_prob: float = 0.5
    misalign_max_shift: float = 40.0
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (4.0, 12.0)
    missing_prob: float = 0.05
    missing_max_sections: int = 2
    missing_fill: Literal["zero", "mean"] = "zero"
    darken_prob: float = 0.2
    darken_gamma: tuple[float, float] = (1.0, 2.0)
    darken_scale: tuple[float, float] = (0.6, 1.0)
    intensity_prob: float = 0.5
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (0.0, 0.05)

    def __post_init__(self) -> None:
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            where = f"AugmentConfig.{name}"
            if name.endswith("_prob"):
                if not (_finite(value) and 0 <= value <= 1):
                    raise bad_value(where, value, "a number in [0, 1]")
                object.__setattr__(self, name, float(value))
            elif name in _SCALARS:
                ok, expected = _SCALARS[name]
                if not (_finite(value) and ok(float(value))):
                    raise bad_value(where, value, expected)
                object.__setattr__(self, name, float(value))
            elif name in _RANGES:
                ok, text = _RANGES[name]
                pair = tuple(value) if isinstance(value, list | tuple) else ()
                if (len(pair) != 2 or not all(_finite(v) and ok(float(v)) for v in pair)
                        or pair[0] > pair[1]):
                    raise bad_value(where, value, f"2 finite numbers lo <= hi, each {text}")
                object.__setattr__(self, name, (float(pair[0]), float(pair[1])))
        n = self.missing_max_sections
        if not (isinstance(n, int | np.integer) and not isinstance(n, bool) and n >= 1):
            raise bad_value("AugmentConfig.missing_max_sections", n, "an integer >= 1")
        object.__setattr__(self, "missing_max_sections", int(n))
        if self.missing_fill not in ("zero", "mean"):
            raise bad_value("AugmentConfig.missing_fill", self.missing_fill, "'zero' or 'mean'")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        """Build from a mapping of field names (e.g. a training config file's section).

        Lists are accepted for the ranges. Raises :class:`ConfigError` on an unknown key or
        an invalid value; missing keys keep their defaults.
        """
        if not isinstance(d, Mapping):
            raise bad_value("AugmentConfig", d, "a mapping of field names to values")
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise bad_value("AugmentConfig key", key, f"one of {', '.join(names)}")
        return cls(**d)


# -- geometric: raw and labels together -----------------------------------------------------


def flip(raw: Raw, labels: Labels, axes: Sequence[int]) -> tuple[Raw, Labels]:
    """Reverse raw and labels (3-d, same shape) along ``axes`` (views, no copy)."""
    return np.flip(raw, axis=tuple(axes)), np.flip(labels, axis=tuple(axes))


def transpose(raw: Raw, labels: Labels, order: Sequence[int]) -> tuple[Raw, Labels]:
    """Permute the axes of raw and labels: axis ``i`` of the result is axis ``order[i]``."""
    return raw.transpose(tuple(order)), labels.transpose(tuple(order))


def random_transpose_order(shape: Sequence[int], voxel_size: Sequence[float],
                           rng: np.random.Generator) -> tuple[int, int, int]:
    """A random permutation of (0, 1, 2) that moves axes only among axes of equal voxel size
    and equal length (e.g. y <-> x for ``(40, 4, 4)``; any for an isotropic cube)."""
    keys = [(round(float(v), 6), int(n)) for v, n in zip(voxel_size, shape, strict=True)]
    order = np.arange(3)
    for key in dict.fromkeys(keys):
        group = [a for a in range(3) if keys[a] == key]
        order[group] = rng.permutation(group)
    return int(order[0]), int(order[1]), int(order[2])


def _weights(n: int, size: int) -> NDArray[np.float64]:
    """(size, n) spline weights of ``n >= 2`` control points spread evenly over ``size``."""
    t = np.linspace(0.0, n - 1.0, size) if size > 1 else np.zeros(1)
    w: NDArray[np.float64] = interpolate.make_interp_spline(
        np.arange(n), np.eye(n), k=min(3, n - 1))(t)
    return w


def elastic_field(shape: Sequence[int], voxel_size: Sequence[float], amplitude: float,
                  spacing: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """Smooth random displacement field in voxels, shape ``(3, *shape)``, float32.

    Control points about ``spacing`` nm apart (at least 2 per axis, spanning the crop) get
    independent normal displacements of standard deviation ``amplitude`` nm, interpolated by
    cubic splines. Section axes (voxel size >= 2 x the smallest) are not displaced.
    """
    vs = [float(v) for v in voxel_size]
    n = [max(2, math.ceil((s - 1) * v / spacing) + 1) for s, v in zip(shape, vs, strict=True)]
    w = [_weights(k, s) for k, s in zip(n, shape, strict=True)]
    field = np.zeros((3, *shape), dtype=np.float32)
    for a in range(3):
        if amplitude > 0 and vs[a] < _SECTION_RATIO * min(vs):
            d = rng.normal(0.0, amplitude / vs[a], size=n)
            field[a] = np.einsum("ia,jb,kc,abc->ijk", *w, d, optimize=True)
    return field


def _reflect(i: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    m = np.mod(i, 2 * n)
    out: NDArray[np.int64] = np.where(m >= n, 2 * n - 1 - m, m)
    return out


def warp(raw: Raw, labels: Labels, field: NDArray[np.floating[Any]]) -> tuple[Raw, Labels]:
    """Sample raw and labels at ``index + field`` (boundary: half-sample reflection).

    Raw is interpolated linearly (float32); labels take the nearest voxel's id, exactly, so
    they stay a subset of the input ids. ``field`` has shape ``(3, *raw.shape)``, in voxels.
    """
    if field.shape != (3, *raw.shape):
        raise bad_value("warp field shape", field.shape, f"(3, *{raw.shape})", DataError)
    coords = np.indices(raw.shape, dtype=np.float32) + field.astype(np.float32, copy=False)
    out: Raw = ndimage.map_coordinates(raw, coords, order=1, mode="reflect",
                                       output=np.float32)
    idx = tuple(_reflect(np.floor(c + 0.5).astype(np.int64), s)
                for c, s in zip(coords, raw.shape, strict=True))
    return out, labels[idx]


def _shift(a: NDArray[Any], offset: tuple[int, int], fill: float | None) -> NDArray[Any]:
    """``out[:, y, x] = a[:, y - dy, x - dx]``; uncovered: reflection, or ``fill``."""
    (dy, dx), ny, nx = offset, a.shape[1], a.shape[2]
    pad = ((0, 0), (max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0)))
    padded = (np.pad(a, pad, mode="symmetric") if fill is None
              else np.pad(a, pad, mode="constant", constant_values=fill))
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[:, y0:y0 + ny, x0:x0 + nx]


def shift_sections(raw: Raw, labels: Labels, start: int, stop: int, offset: tuple[int, int]
                   ) -> tuple[Raw, Labels]:
    """Shift z-sections ``[start, stop)`` of raw and labels in-plane by ``offset = (dy, dx)``.

    ``out[z, y, x] = in[z, y - dy, x - dx]`` there; the uncovered border is reflected for raw
    and 0 (unknown) for labels. Returns new arrays; the inputs are not modified.
    """
    off = (int(offset[0]), int(offset[1]))
    raw_out, lab_out = raw.copy(), labels.copy()
    raw_out[start:stop] = _shift(raw[start:stop], off, None)
    lab_out[start:stop] = _shift(labels[start:stop], off, 0)
    return raw_out, lab_out


# -- intensity: raw only ---------------------------------------------------------------------


def drop_sections(raw: Raw, sections: Sequence[int] | NDArray[np.integer[Any]], value: float
                  ) -> Raw:
    """Copy of raw with the z-sections ``sections`` set to the constant ``value``."""
    out = raw.copy()
    out[np.asarray(sections, dtype=np.intp)] = value
    return out


def blur(raw: Raw, sigma: float, voxel_size: Sequence[float]) -> Raw:
    """Gaussian blur of sigma ``sigma`` nm (>= 0), i.e. ``sigma / voxel_size`` voxels per axis."""
    sigmas = [sigma / float(v) for v in voxel_size]
    return np.asarray(ndimage.gaussian_filter(raw, sigmas, mode="reflect"), dtype=np.float32)


def darken(raw: Raw, gamma: float, scale: float) -> Raw:
    """``clip(raw, 0, 1) ** gamma * scale``: darker for gamma >= 1 and scale in (0, 1]."""
    return np.asarray(np.clip(raw, 0, 1) ** gamma * scale, dtype=np.float32)


def scale_shift(raw: Raw, scale: float, shift: float) -> Raw:
    """``raw * scale + shift`` (float32)."""
    return np.asarray(raw * scale + shift, dtype=np.float32)


def add_noise(raw: Raw, sigma: float, rng: np.random.Generator) -> Raw:
    """Raw plus independent Gaussian noise of standard deviation ``sigma`` (float32)."""
    noise = rng.standard_normal(raw.shape, dtype=np.float32)
    return np.asarray(raw + np.float32(sigma) * noise, dtype=np.float32)


# -- the pipeline ----------------------------------------------------------------------------


def _check(raw: NDArray[Any], labels: NDArray[Any], voxel_size: Sequence[float]
           ) -> tuple[Raw, Labels, tuple[float, float, float]]:
    raw, labels = np.asarray(raw), np.asarray(labels)
    if raw.ndim != 3 or raw.shape != labels.shape or raw.size == 0:
        raise bad_value("raw, labels shapes", (raw.shape, labels.shape),
                        "two equal non-empty 3-d shapes", DataError)
    if raw.dtype.kind != "f":
        raise bad_value("raw dtype", raw.dtype, "floating point, values in [0, 1]", DataError)
    if labels.dtype.kind not in "ui":
        raise bad_value("labels dtype", labels.dtype, "an integer dtype (uint64)", DataError)
    try:
        vs = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        vs = ()
    if len(vs) != 3 or not all(0 < v < math.inf for v in vs):
        raise bad_value("voxel_size", voxel_size, "3 finite numbers > 0 (nm, z, y, x)")
    return raw.astype(np.float32), labels.astype(np.uint64), (vs[0], vs[1], vs[2])


def augment(raw: NDArray[Any], labels: NDArray[Any], voxel_size: Sequence[float],
            config: AugmentConfig, rng: np.random.Generator) -> tuple[Raw, Labels]:
    """Randomly augment one training sample; the inputs are not modified.

    Parameters
    ----------
    raw : ndarray of float, shape (z, y, x)
        Image, values in [0, 1].
    labels : ndarray of int (uint64), shape (z, y, x)
        Object ids, 0 = unknown.
    voxel_size : sequence of 3 float
        nm per voxel, z, y, x.
    config : AugmentConfig
        Probabilities and parameters.
    rng : numpy.random.Generator
        Source of every random choice: the same state gives the same result.

    Returns
    -------
    raw : ndarray of float32, shape (z, y, x)
        Augmented image, clipped to [0, 1].
    labels : ndarray of uint64, shape (z, y, x)
        Labels moved with raw by the geometric augmentations; ids are a subset of the input
        ids plus 0 where misaligned sections uncover the border.
    """
    img, lab, vs = _check(raw, labels, voxel_size)
    c, nz = config, img.shape[0]
    img, lab = flip(img, lab, [a for a in range(3) if rng.random() < c.flip_prob])
    if rng.random() < c.transpose_prob:
        img, lab = transpose(img, lab, random_transpose_order(img.shape, vs, rng))
    if rng.random() < c.elastic_prob and c.elastic_amplitude > 0:
        field = elastic_field(img.shape, vs, c.elastic_amplitude, c.elastic_spacing, rng)
        img, lab = warp(img, lab, field)
    if rng.random() < c.misalign_prob and nz > 1 and vs[0] >= _SECTION_RATIO * min(vs[1:]):
        slip = rng.random() < c.misalign_slip_prob
        start = int(rng.integers(0 if slip else 1, nz))
        m = [int(c.misalign_max_shift // v) for v in vs[1:]]
        offset = (int(rng.integers(-m[0], m[0] + 1)), int(rng.integers(-m[1], m[1] + 1)))
        img, lab = shift_sections(img, lab, start, start + 1 if slip else nz, offset)
    if rng.random() < c.blur_prob:
        img = blur(img, float(rng.uniform(*c.blur_sigma)), vs)
    if rng.random() < c.missing_prob and nz > 1:
        k = int(rng.integers(1, min(c.missing_max_sections, nz - 1) + 1))
        value = 0.0 if c.missing_fill == "zero" else float(img.mean())
        img = drop_sections(img, rng.choice(nz, k, replace=False), value)
    if rng.random() < c.darken_prob:
        img = darken(img, float(rng.uniform(*c.darken_gamma)), float(rng.uniform(*c.darken_scale)))
    if rng.random() < c.intensity_prob:
        img = scale_shift(img, float(rng.uniform(*c.intensity_scale)),
                          float(rng.uniform(*c.intensity_shift)))
    if rng.random() < c.noise_prob:
        img = add_noise(img, float(rng.uniform(*c.noise_sigma)), rng)
    return np.clip(img, 0, 1).astype(np.float32, copy=False), np.ascontiguousarray(lab)
