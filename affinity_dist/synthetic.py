"""Synthetic EM-like neuropil with dense ground truth, generated region by region (pure kernel).

The volume is a function of its :class:`SampleSpec` alone. Neurites are smooth random
curves (random walks of direction, some branching; a branch keeps its parent's id) sampled
every ``neurite_spacing / 15`` nm in physical coordinates, relaxed so that different curves
keep ``min_separation`` apart, with a few spherical swellings (boutons) on them. Each voxel
takes the id of the nearest curve point (a dense partition into elongated objects); it is
membrane when the nearest point of another object is less than ``membrane_thickness``
farther than the nearest one. Raw = per-object grey level, dark membranes, dark organelle
spots, Gaussian blur (sigma in nm, per axis in voxels), a slow multiplicative drift and
Gaussian noise hashed from the global voxel index (splitmix64, no sequential RNG).

The curve set depends only on the spec (built once, cached, size proportional to the
number of curves); the blur runs on the region grown by :func:`region_halo` and clipped
to the volume. Hence any region equals, bit for bit, the same crop of the whole volume.
Objects are connected in practice but this is not guaranteed (a curve may leave and
re-enter the volume, and the voxel grid may pinch thin places).
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from .errors import bad_value

__all__ = ["SampleSpec", "generate_region", "region_halo"]

_TRUNCATE = 4.0  # Gaussian truncation in sigmas (scipy's default)
_MEMBRANE = 45.0  # grey level of membranes before blur/drift/noise
_POSITIVE = ("neurite_spacing", "persistence_length", "bouton_radius", "membrane_thickness",
             "organelle_radius", "drift_wavelength")
_INTERVALS = ("branch_interval", "bouton_interval", "organelle_interval")
_NONNEGATIVE = ("min_separation", "blur_sigma", "noise_sigma")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class SampleSpec:
    """Everything that defines a synthetic volume; lengths are in nm, z, y, x order.

    Parameters
    ----------
    shape : tuple of 3 int
        Voxels of the whole volume, each >= 1.
    seed : int
        Random seed; different seeds give different volumes.
    voxel_size : tuple of 3 float
        nm per voxel (may be anisotropic, e.g. ``(40, 4, 4)``), each > 0 and finite.
    neurite_spacing : float
        Square root of the mean cross-section area per neurite (~ its diameter).
    min_separation : float
        Minimum distance between the centrelines of different neurites (>= 0).
    persistence_length : float
        Length over which a neurite's direction decorrelates.
    branch_interval, bouton_interval, organelle_interval : float
        Mean path length between branch points, boutons, organelle spots (``inf``: none).
    bouton_radius : float
        Largest bouton radius (capped by the free space around it).
    membrane_thickness, organelle_radius : float
        Thickness of membranes and mean radius of the dark organelle spots.
    blur_sigma : float
        Point spread sigma in nm (>= 0), converted per axis with ``voxel_size``.
    noise_sigma : float
        Standard deviation of the additive Gaussian noise, in grey levels (>= 0).
    drift_amplitude, drift_wavelength : float
        Relative amplitude in [0, 1) and wavelength (nm) of the smooth intensity drift.
    """

    shape: tuple[int, int, int]
    seed: int = 0
    voxel_size: tuple[float, float, float] = (10.0, 10.0, 10.0)
    neurite_spacing: float = 300.0
    min_separation: float = 100.0
    persistence_length: float = 2000.0
    branch_interval: float = 5000.0
    bouton_interval: float = 3000.0
    bouton_radius: float = 250.0
    membrane_thickness: float = 25.0
    organelle_interval: float = 1500.0
    organelle_radius: float = 30.0
    blur_sigma: float = 10.0
    noise_sigma: float = 10.0
    drift_amplitude: float = 0.15
    drift_wavelength: float = 5000.0

    def __post_init__(self) -> None:
        try:
            shape = tuple(operator.index(v) for v in self.shape)
        except TypeError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise bad_value("SampleSpec.shape", self.shape, "3 integers >= 1")
        try:
            voxel = tuple(float(v) for v in self.voxel_size)
        except (TypeError, ValueError):
            voxel = ()
        if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
            raise bad_value("SampleSpec.voxel_size", self.voxel_size, "3 finite numbers > 0")
        try:
            seed = operator.index(self.seed)
        except TypeError:
            raise bad_value("SampleSpec.seed", self.seed, "an integer") from None
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "voxel_size", voxel)
        object.__setattr__(self, "seed", seed)
        for f in fields(self)[3:]:
            value = getattr(self, f.name)
            ok = isinstance(value, int | float) and not math.isnan(value)
            if f.name in _POSITIVE:
                ok, expected = ok and 0 < value < math.inf, "a finite number > 0"
            elif f.name in _INTERVALS:
                ok, expected = ok and value > 0, "a number > 0 (inf: none)"
            elif f.name in _NONNEGATIVE:
                ok, expected = ok and 0 <= value < math.inf, "a finite number >= 0"
            else:
                ok, expected = ok and 0 <= value < 1, "a number in [0, 1)"
            if not ok:
                raise bad_value(f"SampleSpec.{f.name}", value, expected)
            object.__setattr__(self, f.name, float(value))


@dataclass(frozen=True)
class _Model:
    points: NDArray[np.float64]  # (n, 3) curve and bouton-surface points, nm
    labels: NDArray[np.uint64]  # (n,) object id of each point, >= 1
    tree: Any  # cKDTree over ``points``
    means: NDArray[np.float64]  # (n_objects + 1,) interior grey level per id
    spots: NDArray[np.float64]  # (m, 4) organelle centre (nm) and radius
    waves: NDArray[np.float64]  # (k, 4) drift wave vector (rad/nm) and phase


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _grow(spec: SampleSpec, rng: np.random.Generator, lo: NDArray[np.float64],
          hi: NDArray[np.float64], step: float) -> tuple[NDArray[Any], ...]:
    """Random-walk curves until their total length fills ``[lo, hi]`` at the set density.

    Returns points (n, 3), parent index (n,) (-1 for roots) and curve index (n,).
    """
    target = float(np.prod(hi - lo)) / spec.neurite_spacing**2
    chord = 4 * float(np.prod(hi - lo)) / (2 * float(np.sum(np.prod(hi - lo) / (hi - lo))))
    sigma, max_steps = math.sqrt(step / spec.persistence_length), int(2 * np.linalg.norm(hi - lo) / step)
    pts, par, cid = [np.empty((0, 3))], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    n_pts, n_curves, total = 0, 0, 0.0
    while total < target:
        n = max(1, math.ceil((target - total) / chord))
        seeds, ids = rng.uniform(lo, hi, (n, 3)), n_curves + np.arange(n)
        pts.append(seeds)
        par.append(np.full(n, -1))
        cid.append(ids)
        d0 = _unit(rng.normal(size=(n, 3)))
        pos, dirs = np.concatenate([seeds, seeds]), np.concatenate([d0, -d0])
        prev, wid = np.tile(n_pts + np.arange(n), 2), np.tile(ids, 2)
        n_pts, n_curves = n_pts + n, n_curves + n
        for _ in range(max_steps):
            if not len(pos):
                break
            dirs = _unit(dirs + sigma * rng.normal(size=dirs.shape))
            pos = pos + step * dirs
            pts.append(pos)
            par.append(prev)
            cid.append(wid)
            prev, n_pts = n_pts + np.arange(len(pos)), n_pts + len(pos)
            keep = np.all((pos >= lo) & (pos <= hi), axis=1)
            fork = keep & (rng.random(len(pos)) < step / spec.branch_interval)
            side = _unit(np.cross(dirs[fork], rng.normal(size=(int(fork.sum()), 3))))
            turn = np.tan(rng.uniform(0.5, 1.2, (len(side), 1)))
            pos, prev = np.concatenate([pos[keep], pos[fork]]), np.concatenate([prev[keep], prev[fork]])
            dirs = np.concatenate([dirs[keep], _unit(dirs[fork] + turn * side)])
            wid = np.concatenate([wid[keep], wid[fork]])
        total = step * (n_pts - n_curves)
    points, parents, curves = np.concatenate(pts), np.concatenate(par), np.concatenate(cid)
    length = np.bincount(curves, minlength=n_curves) * step
    kept = (np.cumsum(length) - length < target)[curves]  # whole curves until the target
    new_index = np.cumsum(kept) - 1
    parents = np.where(parents >= 0, new_index[np.maximum(parents, 0)], -1)
    return points[kept], parents[kept], curves[kept]


def _relax(points: NDArray[np.float64], parents: NDArray[np.int64], curves: NDArray[np.int64],
           min_sep: float, iterations: int = 20) -> NDArray[np.float64]:
    """Push points of different curves apart to ``min_sep``, smoothing along the curves."""
    child = np.flatnonzero(parents >= 0)
    ends = np.concatenate([child, parents[child]])
    others = np.concatenate([parents[child], child])
    n = len(points)
    degree = np.bincount(ends, minlength=n)[:, None]
    inner = degree[:, 0] >= 2
    for _ in range(iterations if min_sep > 0 else 0):
        i, j = cKDTree(points).query_pairs(min_sep, output_type="ndarray").T
        i, j = i[curves[i] != curves[j]], j[curves[i] != curves[j]]
        if not len(i):
            break
        diff = points[i] - points[j]
        dist = np.maximum(np.linalg.norm(diff, axis=1), 1e-6)
        push = diff * ((min_sep - dist) / dist * 0.6)[:, None]
        both, count = np.concatenate([i, j]), np.bincount(np.concatenate([i, j]), minlength=n)
        shift = np.stack([np.bincount(both, np.concatenate([push[:, a], -push[:, a]]), n)
                          for a in range(3)], axis=1)
        points = points + shift / np.maximum(count, 1)[:, None]
        mean = np.stack([np.bincount(ends, points[others, a], n) for a in range(3)], axis=1)
        points[inner] += 0.5 * (mean[inner] / degree[inner] - points[inner])
    return points


@functools.lru_cache(maxsize=8)
def _build(spec: SampleSpec) -> _Model:
    rng = np.random.default_rng([spec.seed % 2**64, 0x5EED])
    step, margin = spec.neurite_spacing / 15, spec.neurite_spacing
    lo = np.full(3, -margin)
    hi = (np.array(spec.shape) - 1) * np.array(spec.voxel_size) + margin
    points, parents, curves = _grow(spec, rng, lo, hi, step)
    points = _relax(points, parents, curves, spec.min_separation)
    k = min(48, len(points))
    site = np.flatnonzero(rng.random(len(points)) < step / spec.bouton_interval)
    dist, near = cKDTree(points).query(points[site], k=k)
    dist, near = np.reshape(dist, (len(site), k)), np.reshape(near, (len(site), k))
    other = curves[near] != curves[site, None]
    free = np.where(other.any(axis=1), dist[np.arange(len(site)), other.argmax(axis=1)], dist[:, -1])
    radius = np.minimum(spec.bouton_radius * rng.uniform(0.6, 1.0, len(site)), 0.45 * free)
    surface, surface_ids = [points], [curves]
    for centre, r, c in zip(points[site], radius, curves[site], strict=True):
        m = max(12, math.ceil(4 * math.pi * (r / step) ** 2))
        z = 1 - (2 * np.arange(m) + 1) / m  # Fibonacci sphere
        phi = np.arange(m) * math.pi * (3 - math.sqrt(5))
        rho = np.sqrt(1 - z**2)
        surface.append(centre + r * np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1))
        surface_ids.append(np.full(m, c))
    all_points = np.concatenate(surface)
    spot = np.flatnonzero(rng.random(len(points)) < step / spec.organelle_interval)
    spots = np.column_stack([points[spot], spec.organelle_radius * rng.uniform(0.6, 1.3, len(spot))])
    wave = _unit(rng.normal(size=(4, 3))) * (2 * np.pi / spec.drift_wavelength)
    wave /= rng.uniform(0.7, 1.4, (4, 1))
    waves = np.column_stack([wave, rng.uniform(0, 2 * np.pi, 4)])
    means = rng.uniform(140.0, 200.0, int(curves.max()) + 2)
    return _Model(all_points, (np.concatenate(surface_ids) + 1).astype(np.uint64),
                  cKDTree(all_points), means, spots, waves)


def _model(spec: SampleSpec) -> _Model:
    with _LOCK:  # blocks generated in threads build the curve set once
        return _build(spec)


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def region_halo(spec: SampleSpec) -> tuple[int, int, int]:
    """Context in voxels per axis that the blur needs around a region.

    Parameters
    ----------
    spec : SampleSpec
        The volume.

    Returns
    -------
    tuple of 3 int
        ``ceil(4 * blur_sigma / voxel_size)`` per axis (z, y, x).
    """
    h = [math.ceil(_TRUNCATE * spec.blur_sigma / v) for v in spec.voxel_size]
    return h[0], h[1], h[2]


def _membrane(model: _Model, xyz: NDArray[np.float64], lab: NDArray[np.uint64],
              d1: NDArray[np.float64], thickness: float) -> NDArray[np.bool_]:
    """Voxels whose nearest point of another object is less than ``thickness`` farther."""
    out = np.zeros(len(lab), dtype=bool)
    reach = float(d1.max()) + thickness
    box = np.all((model.points >= xyz.min(0) - reach) & (model.points <= xyz.max(0) + reach), 1)
    points, labels = model.points[box], model.labels[box]
    order = np.argsort(lab, kind="stable")
    ids, first = np.unique(lab[order], return_index=True)
    for a, s, e in zip(ids, first, [*first[1:], len(order)], strict=True):
        sel = order[s:e]
        q, bound = xyz[sel], float(d1[sel].max()) + thickness
        box = np.all((points >= q.min(0) - bound) & (points <= q.max(0) + bound), 1)
        near = points[box & (labels != a)]
        if len(near):
            d2 = cKDTree(near).query(q, distance_upper_bound=bound)[0]
            out[sel] = d2 - d1[sel] < thickness
    return out


def generate_region(spec: SampleSpec, start: Sequence[int], stop: Sequence[int]
                    ) -> tuple[NDArray[np.uint8], NDArray[np.uint64]]:
    """Raw image and dense labels of the half-open box ``[start, stop)`` of the volume.

    Parameters
    ----------
    spec : SampleSpec
        The volume.
    start, stop : sequence of 3 int
        Corners of the box in voxels (z, y, x), ``0 <= start < stop <= spec.shape``.

    Returns
    -------
    raw : ndarray of uint8, shape ``stop - start``
        EM-like image: bright objects, dark membranes, blur, drift and noise.
    labels : ndarray of uint64, shape ``stop - start``
        Object id of every voxel (all > 0; membranes belong to an object).
    """
    try:
        lo, hi = tuple(operator.index(v) for v in start), tuple(operator.index(v) for v in stop)
    except TypeError:
        lo = hi = ()
    if len(lo) != 3 or len(hi) != 3 or not all(
            0 <= a < b <= n for a, b, n in zip(lo, hi, spec.shape, strict=True)):
        raise bad_value("start, stop", (tuple(start), tuple(stop)),
                        f"0 <= start < stop <= shape {spec.shape} per axis")
    model, vs = _model(spec), spec.voxel_size
    glo = [max(0, a - h) for a, h in zip(lo, region_halo(spec), strict=True)]
    ghi = [min(n, b + h) for b, h, n in zip(hi, region_halo(spec), spec.shape, strict=True)]
    grid = tuple(b - a for a, b in zip(glo, ghi, strict=True))
    axes = [np.arange(a, b, dtype=np.float64) * v for a, b, v in zip(glo, ghi, vs, strict=True)]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    d1, nearest = model.tree.query(xyz)
    lab = model.labels[nearest]
    img = model.means[lab].reshape(grid)
    for z, y, x, r in model.spots:  # dark organelle spots, cut off at 2 r
        box = tuple(slice(max(0, math.floor((c - 2 * r) / v) - g), max(0, math.floor((c + 2 * r) / v) + 1 - g))
                    for c, v, g in zip((z, y, x), vs, glo, strict=True))
        sub = np.ix_(*(ax[s] for ax, s in zip(axes, box, strict=True)))
        d = ((sub[0] - z) ** 2 + (sub[1] - y) ** 2 + (sub[2] - x) ** 2) / r**2
        img[box] *= np.where(d < 4, 1 - 0.55 * np.exp(-0.5 * d**2), 1)
    img.reshape(-1)[_membrane(model, xyz, lab, d1, spec.membrane_thickness)] = _MEMBRANE
    if spec.blur_sigma > 0:
        sigma = [spec.blur_sigma / v for v in vs]
        img = ndimage.gaussian_filter(img, sigma, mode="reflect", truncate=_TRUNCATE)
    crop = tuple(slice(a - g, b - g) for a, b, g in zip(lo, hi, glo, strict=True))
    gz, gy, gx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    phase = [w[0] * (gz * vs[0]) + w[1] * (gy * vs[1]) + w[2] * (gx * vs[2]) + w[3]
             for w in model.waves]
    drift = 1 + spec.drift_amplitude * (sum(np.sin(p) for p in phase) / len(phase))
    index = ((gz.astype(np.uint64) * np.uint64(spec.shape[1]) + gy.astype(np.uint64))
             * np.uint64(spec.shape[2]) + gx.astype(np.uint64))
    h1 = _splitmix64(index ^ _splitmix64(np.full(1, spec.seed % 2**64, np.uint64)))
    h2 = _splitmix64(h1)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 1) * 2.0**-53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * 2.0**-53
    noise = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)
    raw = img[crop] * drift + spec.noise_sigma * noise
    labels = np.ascontiguousarray(lab.reshape(grid)[crop])
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8), labels
