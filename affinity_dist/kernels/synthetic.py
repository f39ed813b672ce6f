"""Synthetic EM-like neuropil with dense ground truth, generated region by region (pure kernel).

Neurites are smooth random curves (random walks of direction; branches keep the parent's id)
sampled every ``neurite_spacing / 12`` nm, relaxed to keep ``min_separation`` between
different curves, with spherical boutons. A voxel takes the id of the nearest curve point
(a dense partition into elongated objects) and is membrane within ``membrane_thickness / 2``
of the bisector plane between that point and the nearest point of another object. Raw:
per-object grey level, dark membranes and organelle spots, Gaussian blur (sigma in nm), a
slow multiplicative drift, Gaussian noise hashed from the global voxel index (splitmix64).
All geometry is in physical nm. The curves depend on the spec alone (built once, cached) and
the blur runs on the region grown by :func:`region_halo`, clipped to the volume, so a region
equals the same crop of the whole volume bit for bit. Objects are connected in practice, not
by guarantee (a curve may leave and re-enter the volume; the grid may pinch thin places).
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import bad_value

__all__ = ["SampleSpec", "generate_region", "region_halo"]

_TRUNCATE = 4.0  # Gaussian truncation in sigmas (scipy's default)
_MEMBRANE = 45.0  # grey level of membranes before blur, drift and noise
_NONNEGATIVE = (lambda v: 0 <= v < math.inf, "a finite number >= 0")
_INTERVAL = (lambda v: v > 0, "a number > 0 (inf: none)")
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "min_separation": _NONNEGATIVE, "blur_sigma": _NONNEGATIVE, "noise_sigma": _NONNEGATIVE,
    "branch_interval": _INTERVAL, "bouton_interval": _INTERVAL, "organelle_interval": _INTERVAL,
    "drift_amplitude": (lambda v: 0 <= v < 1, "a number in [0, 1)")}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class SampleSpec:
    """Everything that defines a synthetic volume; lengths in nm, axes in z, y, x order.

    Parameters
    ----------
    shape : tuple of 3 int
        Voxels of the whole volume, each >= 1.
    seed : int
        Random seed; different seeds give different volumes.
    voxel_size : tuple of 3 float
        nm per voxel, each > 0 and finite; may be anisotropic, e.g. ``(40, 4, 4)``.
    neurite_spacing : float
        Square root of the mean cross-section area per neurite (about its diameter).
    min_separation : float
        Least distance between the centrelines of different neurites (>= 0).
    persistence_length : float
        Path length over which a neurite's direction decorrelates.
    branch_interval, bouton_interval, organelle_interval : float
        Mean path length between branch points, boutons, organelle spots (``inf``: none).
    bouton_radius : float
        Largest bouton radius (boutons also keep clear of the neighbouring neurites).
    membrane_thickness, organelle_radius : float
        Membrane thickness and mean radius of the dark organelle spots.
    blur_sigma : float
        Point spread sigma (>= 0), divided by ``voxel_size`` per axis.
    noise_sigma : float
        Standard deviation of the additive Gaussian noise in grey levels (>= 0).
    drift_amplitude, drift_wavelength : float
        Relative amplitude in [0, 1) and wavelength of the smooth multiplicative drift.
    """

    shape: tuple[int, int, int]
    seed: int = 0
    voxel_size: tuple[float, float, float] = (10.0, 10.0, 10.0)
    neurite_spacing: float = 250.0
    min_separation: float = 80.0
    persistence_length: float = 2000.0
    branch_interval: float = 5000.0
    bouton_interval: float = 3000.0
    bouton_radius: float = 200.0
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
        if len(voxel) != 3 or not all(0 < v < math.inf for v in voxel):
            raise bad_value("SampleSpec.voxel_size", self.voxel_size, "3 finite numbers > 0")
        try:
            object.__setattr__(self, "seed", operator.index(self.seed))
        except TypeError:
            raise bad_value("SampleSpec.seed", self.seed, "an integer") from None
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "voxel_size", voxel)
        for f in fields(self)[3:]:
            value = getattr(self, f.name)
            ok, expected = _RULES.get(f.name, (lambda v: 0 < v < math.inf, "a finite number > 0"))
            if not isinstance(value, int | float) or math.isnan(value) or not ok(value):
                raise bad_value(f"SampleSpec.{f.name}", value, expected)
            object.__setattr__(self, f.name, float(value))


@dataclass(frozen=True)
class _Model:
    points: NDArray[np.float64]  # (n, 3) centreline and bouton-surface points, nm
    labels: NDArray[np.uint64]  # (n,) object id of each point, >= 1
    tree: Any  # cKDTree over points
    means: NDArray[np.float64]  # (n_objects + 1,) interior grey level per id
    spots: NDArray[np.float64]  # (m, 4) organelle centre (nm) and radius
    waves: NDArray[np.float64]  # (4, 4) drift wave vector (rad/nm) and phase


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = v / np.linalg.norm(v, axis=-1, keepdims=True)
    return out


def _grow(spec: SampleSpec, rng: np.random.Generator, lo: NDArray[np.float64],
          hi: NDArray[np.float64], step: float) -> tuple[NDArray[Any], ...]:
    """Walk curves (all at once, step by step) until they fill the box ``[lo, hi]``.

    Returns points (n, 3) float64, parent index (n,) (-1 at seeds), curve index (n,).
    """
    size = hi - lo
    target = float(np.prod(size)) / spec.neurite_spacing**2  # total length wanted
    chord = 2 * float(np.prod(size)) / float(size @ np.roll(size, 1))  # mean chord 4V/S
    sigma = math.sqrt(step / spec.persistence_length)  # turning per step
    max_steps = int(2 * np.linalg.norm(size) / step)
    pts, par, cid = [np.empty((0, 3))], [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    n_pts = n_curves = 0
    while step * (n_pts - n_curves) < target:
        n = math.ceil((target - step * (n_pts - n_curves)) / chord)
        seeds, ids = rng.uniform(lo, hi, (n, 3)), n_curves + np.arange(n)
        d0 = _unit(rng.normal(size=(n, 3)))
        pts.append(seeds)
        par.append(np.full(n, -1))
        cid.append(ids)
        pos, dirs = np.concatenate([seeds, seeds]), np.concatenate([d0, -d0])
        prev, wid = np.tile(n_pts + np.arange(n), 2), np.tile(ids, 2)
        n_pts, n_curves = n_pts + n, n_curves + n
        for _ in range(max_steps):
            dirs = _unit(dirs + sigma * rng.normal(size=dirs.shape))
            pos = pos + step * dirs
            pts.append(pos)
            par.append(prev)
            cid.append(wid)
            prev, n_pts = n_pts + np.arange(len(pos)), n_pts + len(pos)
            keep = np.all((pos >= lo) & (pos <= hi), axis=1)
            fork = keep & (rng.random(len(pos)) < step / spec.branch_interval)
            side = _unit(np.cross(dirs[fork], rng.normal(size=(int(fork.sum()), 3))))
            turned = _unit(dirs[fork] + np.tan(rng.uniform(0.5, 1.2, (len(side), 1))) * side)
            pos, dirs = np.concatenate([pos[keep], pos[fork]]), np.concatenate([dirs[keep], turned])
            prev = np.concatenate([prev[keep], prev[fork]])
            wid = np.concatenate([wid[keep], wid[fork]])
            if not len(pos):
                break
    points, parents, curves = np.concatenate(pts), np.concatenate(par), np.concatenate(cid)
    length = np.bincount(curves) * step
    kept = (np.cumsum(length) - length < target)[curves]  # whole curves up to the target
    renumber = np.cumsum(kept) - 1
    parents = np.where(parents >= 0, renumber[np.maximum(parents, 0)], -1)
    return points[kept], parents[kept], curves[kept]


def _relax(points: NDArray[np.float64], parents: NDArray[np.int64], curves: NDArray[np.int64],
           min_sep: float, iterations: int = 20) -> NDArray[np.float64]:
    """Push points of different curves apart to ``min_sep``, smoothing along the curves."""
    child = np.flatnonzero(parents >= 0)
    ends, others = np.concatenate([child, parents[child]]), np.concatenate([parents[child], child])
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
        push = diff * ((min_sep - dist) / dist)[:, None]  # averaged per point below
        both = np.concatenate([i, j])
        shift = np.stack([np.bincount(both, np.concatenate([push[:, a], -push[:, a]]), n)
                          for a in range(3)], axis=1)
        points = points + shift / np.maximum(np.bincount(both, minlength=n), 1)[:, None]
        mean = np.stack([np.bincount(ends, points[others, a], n) for a in range(3)], axis=1)
        points[inner] += 0.5 * (mean[inner] / degree[inner] - points[inner])
    return points


@functools.lru_cache(maxsize=8)
def _build(spec: SampleSpec) -> _Model:
    rng = np.random.default_rng([spec.seed % 2**64, 0x5EED])
    step, margin = spec.neurite_spacing / 12, spec.neurite_spacing
    hi = (np.array(spec.shape) - 1) * np.array(spec.voxel_size) + margin
    points, parents, curves = _grow(spec, rng, np.full(3, -margin), hi, step)
    points = _relax(points, parents, curves, spec.min_separation)
    site = np.flatnonzero(rng.random(len(points)) < step / spec.bouton_interval)
    k = min(48, len(points))
    dist, near = (np.reshape(a, (len(site), k)) for a in cKDTree(points).query(points[site], k))
    other = curves[near] != curves[site, None]
    first_other = dist[np.arange(len(site)), other.argmax(axis=1)]
    free = np.where(other.any(axis=1), first_other, dist[:, -1])  # else a lower bound
    radius = np.minimum(spec.bouton_radius * rng.uniform(0.6, 1.0, len(site)), 0.45 * free)
    all_points, ids = [points], [curves]
    for centre, r, c in zip(points[site], radius, curves[site], strict=True):
        m = max(12, math.ceil(math.pi * (r / step) ** 2))  # Fibonacci sphere, spacing ~ 2 step
        z, phi = 1 - (2 * np.arange(m) + 1) / m, np.arange(m) * math.pi * (3 - math.sqrt(5))
        rho = np.sqrt(1 - z**2)
        all_points.append(centre + r * np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1))
        ids.append(np.full(m, c))
    spot = np.flatnonzero(rng.random(len(points)) < step / spec.organelle_interval)
    radii = spec.organelle_radius * rng.uniform(0.6, 1.3, len(spot))
    spots = np.column_stack([points[spot], radii])
    wave = _unit(rng.normal(size=(4, 3))) * (2 * np.pi / spec.drift_wavelength)
    waves = np.column_stack([wave / rng.uniform(0.7, 1.4, (4, 1)), rng.uniform(0, 2 * np.pi, 4)])
    means = rng.uniform(140.0, 200.0, int(curves.max()) + 2)
    pts = np.concatenate(all_points)
    labels = (np.concatenate(ids) + 1).astype(np.uint64)
    return _Model(pts, labels, cKDTree(pts, leafsize=32), means, spots, waves)


def _model(spec: SampleSpec) -> _Model:
    with _LOCK:  # regions generated in threads build the curve set once
        return _build(spec)


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def region_halo(spec: SampleSpec) -> tuple[int, int, int]:
    """Context in voxels (z, y, x) that the blur needs around a region.

    Returns
    -------
    tuple of 3 int
        ``ceil(4 * spec.blur_sigma / spec.voxel_size)`` per axis.
    """
    h = [math.ceil(_TRUNCATE * spec.blur_sigma / v) for v in spec.voxel_size]
    return h[0], h[1], h[2]


def _other(model: _Model, xyz: NDArray[np.float64], lab: NDArray[np.uint64],
           d1: NDArray[np.float64], extra: float) -> tuple[NDArray[np.float64], NDArray[Any]]:
    """Distance (n,) to and position (n, 3) of the nearest point of another object.

    Searched up to ``d1 + extra`` (per object, the largest); ``inf`` and 0 beyond.
    """
    d2, where = np.full(len(lab), np.inf), np.zeros((len(lab), 3))
    if not len(lab):
        return d2, where
    reach = float(d1.max()) + extra
    box = np.all((model.points >= xyz.min(0) - reach) & (model.points <= xyz.max(0) + reach), 1)
    points, labels = model.points[box], model.labels[box]
    order = np.argsort(lab, kind="stable")
    ids, first = np.unique(lab[order], return_index=True)
    for a, s, e in zip(ids, first, [*first[1:], len(order)], strict=True):
        sel = order[s:e]
        q, bound = xyz[sel], float(d1[sel].max()) + extra
        box = np.all((points >= q.min(0) - bound) & (points <= q.max(0) + bound), 1)
        near = points[box & (labels != a)]
        if len(near):
            d2[sel], i = cKDTree(near, leafsize=32).query(q, distance_upper_bound=bound)
            hit = np.isfinite(d2[sel])
            where[sel[hit]] = near[i[hit]]
    return d2, where


def _partition(spec: SampleSpec, model: _Model, glo: list[int], ghi: list[int],
               axes: list[NDArray[np.float64]]) -> tuple[NDArray[np.uint64], tuple[Any, ...]]:
    """Labels (flat, C order) of the box ``[glo, ghi)`` and the indices of its membrane voxels.

    Nodes within ``r`` voxels per axis of every voxel are queried first: ``d_other - d_same``
    is 2-Lipschitz, so where it exceeds ``th + 2 h`` at a voxel's node (``h`` away) the voxel
    has the node's label and no membrane, exactly. Only voxels near boundaries are queried.
    """
    th, node_of, node_axes, off2 = spec.membrane_thickness, [], [], []
    reach = max(12.0, min(spec.voxel_size))  # nm from a voxel to its node, per axis
    for a, b, v in zip(glo, ghi, spec.voxel_size, strict=True):
        r = int(reach // v)
        k = np.arange(b - a) // (2 * r + 1)
        pos = np.minimum(a + r + (2 * r + 1) * np.arange(k[-1] + 1), b - 1)
        node_of.append(k)
        node_axes.append(pos * v)
        off2.append(((np.arange(a, b) - pos[k]) * v) ** 2)
    nodes = np.stack(np.meshgrid(*node_axes, indexing="ij"), axis=-1).reshape(-1, 3)
    n_d1, n_idx = model.tree.query(nodes)
    n_lab = model.labels[n_idx]
    h = np.sqrt(off2[0][:, None, None] + off2[1][None, :, None] + off2[2][None, None, :])
    n_gap = _other(model, nodes, n_lab, n_d1, th + 2 * float(h.max()) + 1e-6)[0] - n_d1
    node_shape, sub = [len(p) for p in node_axes], np.ix_(*node_of)
    zyx = np.nonzero(n_gap.reshape(node_shape)[sub] <= th + 2 * h + 1e-6)
    lab = n_lab.reshape(node_shape)[sub].reshape(-1)
    xyz = np.stack([ax[i] for ax, i in zip(axes, zyx, strict=True)], axis=-1)
    d1, nearest = model.tree.query(xyz)
    lab[np.ravel_multi_index(zyx, h.shape)] = model.labels[nearest]
    d2, other = _other(model, xyz, model.labels[nearest], d1, th)
    dist = (d2**2 - d1**2) / (2 * np.linalg.norm(model.points[nearest] - other, axis=1))
    return lab, tuple(i[dist < th / 2] for i in zyx)


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
        Object id of every voxel, all > 0 (membranes belong to an object).
    """
    try:
        lo, hi = [operator.index(v) for v in start], [operator.index(v) for v in stop]
    except TypeError:
        lo = hi = []
    if len(lo) != 3 or len(hi) != 3 or not all(
            0 <= a < b <= n for a, b, n in zip(lo, hi, spec.shape, strict=True)):
        raise bad_value("start, stop", (start, stop),
                        f"0 <= start < stop <= shape {spec.shape} per axis")
    model, vs, halo = _model(spec), spec.voxel_size, region_halo(spec)
    glo = [max(0, a - h) for a, h in zip(lo, halo, strict=True)]
    ghi = [min(n, b + h) for b, h, n in zip(hi, halo, spec.shape, strict=True)]
    axes = [np.arange(a, b, dtype=np.float64) * v for a, b, v in zip(glo, ghi, vs, strict=True)]
    lab, membrane = _partition(spec, model, glo, ghi, axes)
    img = model.means[lab].reshape([b - a for a, b in zip(glo, ghi, strict=True)])
    c, r = model.spots[:, :3], model.spots[:, 3:]
    near = np.all((c + 2 * r > np.array(glo) * vs) & (c - 2 * r < (np.array(ghi) - 1) * vs), 1)
    for z, y, x, s in model.spots[near]:  # dark organelle spots, cut off at 2 s
        box = tuple(slice(max(0, math.floor((p - 2 * s) / v) - g),
                          math.floor((p + 2 * s) / v) + 1 - g)
                    for p, v, g in zip((z, y, x), vs, glo, strict=True))
        sz, sy, sx = np.ix_(*(ax[b] for ax, b in zip(axes, box, strict=True)))
        d = ((sz - z) ** 2 + (sy - y) ** 2 + (sx - x) ** 2) / s**2
        img[box] *= np.where(d < 4, 1 - 0.55 * np.exp(-0.5 * d**2), 1)
    img[membrane] = _MEMBRANE
    if spec.blur_sigma > 0:
        img = ndimage.gaussian_filter(img, [spec.blur_sigma / v for v in vs], mode="reflect",
                                      truncate=_TRUNCATE)
    crop = tuple(slice(a - g, b - g) for a, b, g in zip(lo, hi, glo, strict=True))
    gz, gy, gx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    drift = sum(np.sin(w[0] * (gz * vs[0]) + w[1] * (gy * vs[1]) + w[2] * (gx * vs[2]) + w[3])
                for w in model.waves)
    index = ((gz.astype(np.uint64) * np.uint64(spec.shape[1]) + gy.astype(np.uint64))
             * np.uint64(spec.shape[2]) + gx.astype(np.uint64))
    h1 = _splitmix64(index ^ _splitmix64(np.full(1, spec.seed % 2**64, np.uint64)))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 1) * 2.0**-53  # (0, 1]
    u2 = (_splitmix64(h1) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    noise = np.sqrt(-2 * np.log(u1)) * np.cos(2 * np.pi * u2)  # Box-Muller
    raw = img[crop] * (1 + spec.drift_amplitude / 4 * drift) + spec.noise_sigma * noise
    labels = np.ascontiguousarray(lab.reshape(img.shape)[crop])
    return np.clip(np.rint(raw), 0, 255).astype(np.uint8), labels
