"""Local shape descriptors (LSDs) of a label crop: an auxiliary training target.

After Sheridan et al. 2022 (Nature Methods): for every voxel of a segment, the statistics
of *its own segment* within a Gaussian ball of scale ``sigma`` around it — 10 channels:

* 0-2: mean offset (z, y, x) of the segment's mass from the voxel, ``0.5 + d / (2 sigma)``;
* 3-5: variance (z, y, x) of the segment's mass, ``var / sigma**2``;
* 6-8: Pearson correlations (zy, zx, yx), ``0.5 + r / 2``;
* 9: size — the fraction of the Gaussian ball's weight that the segment fills.

Every channel lies in [0, 1] (clipped); coordinates are physical (``voxel_size``), so one
``sigma`` in nm suits anisotropic data. Label 0 has no shape: its voxels get 0 and the
returned mask leaves them out. Pure numpy + scipy; each segment is filtered only within its
bounding box (grown by the filter radius), and only ``region`` is returned, so a training
crop pays for the output region and its margin, not for the whole input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import bad_value

__all__ = ["LSD_CHANNELS", "local_shape_descriptors"]

LSD_CHANNELS = 10
TRUNCATE = 3.0  # the Gaussian is cut at 3 sigma


def local_shape_descriptors(labels: NDArray[np.integer[Any]], sigma: float,
                            voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *,
                            region: tuple[slice, slice, slice] | None = None,
                            downsample: int = 1,
                            ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The LSDs of ``labels`` over ``region`` (default: everything), and their mask.

    Parameters
    ----------
    labels : (Z, Y, X) integer ids; 0 = no segment.
    sigma : the Gaussian's scale, in the units of ``voxel_size``.
    voxel_size : (z, y, x) size of a voxel.
    region : the part of ``labels`` to describe; the context around it is used.
    downsample : compute on every ``downsample``-th voxel per axis and repeat the result
        (the descriptors are smooth at scale sigma; 2 is ~16x cheaper).

    Returns
    -------
    lsds : (10, *region shape) float32 in [0, 1].
    mask : (10, *region shape) float32, 1 where the voxel belongs to a segment.
    """
    if not (isinstance(sigma, int | float) and sigma > 0):
        raise bad_value("lsd_sigma", sigma, "a number > 0")
    region = region or tuple(slice(0, n) for n in labels.shape)  # type: ignore[assignment]
    assert region is not None
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise bad_value("lsd_downsample", downsample, "an integer >= 1")
    if downsample > 1:
        return _downsampled(labels, sigma, voxel_size, region, downsample)
    lo = np.array([s.start for s in region])
    hi = np.array([s.stop for s in region])
    out_shape = tuple(int(v) for v in hi - lo)
    sig = np.array([sigma / float(v) for v in voxel_size])  # in voxels, per axis
    radius = np.ceil(TRUNCATE * sig).astype(int)
    lsds = np.zeros((LSD_CHANNELS, *out_shape), np.float32)
    # context: the region grown by the radius, inside the crop
    c_lo = np.maximum(lo - radius, 0)
    c_hi = np.minimum(hi + radius, labels.shape)
    context = labels[tuple(slice(a, b) for a, b in zip(c_lo, c_hi, strict=True))]
    inner = tuple(slice(int(a - c), int(b - c)) for a, b, c in zip(lo, hi, c_lo, strict=True))
    ids = np.unique(context[inner])
    ids = ids[ids != 0]
    if ids.size:
        _describe_segments(context, inner, ids, sig=sig, voxel_size=voxel_size, lsds=lsds,
                           shift=lo - c_lo)
    mask = np.broadcast_to((labels[region] != 0)[None], lsds.shape).astype(np.float32)
    return lsds, mask


def _downsampled(labels: NDArray[Any], sigma: float, voxel_size: Sequence[float],
                 region: tuple[slice, slice, slice], d: int
                 ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    coarse = labels[::d, ::d, ::d]
    box = tuple(slice(s.start // d, -(-s.stop // d)) for s in region)
    lsds, _ = local_shape_descriptors(coarse, sigma, [float(v) * d for v in voxel_size],
                                      region=box)  # type: ignore[arg-type]
    for axis in range(3):
        lsds = np.repeat(lsds, d, axis=axis + 1)
    crop = tuple(slice(s.start - b.start * d, s.stop - b.start * d)
                 for s, b in zip(region, box, strict=True))
    lsds = np.ascontiguousarray(lsds[(slice(None), *crop)])
    segment = (labels[region] != 0)[None]
    lsds *= segment
    return lsds, np.broadcast_to(segment, lsds.shape).astype(np.float32)


def _describe_segments(context: NDArray[Any], inner: tuple[slice, ...], ids: NDArray[Any],
                       *, sig: NDArray[np.float64], voxel_size: Sequence[float],
                       lsds: NDArray[np.float32], shift: NDArray[np.int64]) -> None:
    """Fill ``lsds`` segment by segment (each within its bounding box grown by the radius)."""
    from scipy.ndimage import find_objects

    step = np.array([float(v) for v in voxel_size])
    radius = np.ceil(TRUNCATE * sig).astype(int)
    inside = np.zeros(context.shape, bool)
    inside[inner] = True
    # one bounding box per segment id, found in one pass over a compact relabelling
    compact = np.searchsorted(ids, context)
    compact = np.where((compact < ids.size) & (ids[np.minimum(compact, ids.size - 1)]
                                               == context), compact + 1, 0)
    for index, box in enumerate(find_objects(compact)):
        if box is None:
            continue
        grown = tuple(slice(max(int(b.start - r), 0), min(int(b.stop + r), n))
                      for b, r, n in zip(box, radius, context.shape, strict=True))
        here = compact[grown] == index + 1
        where = here & inside[grown]
        if not where.any():
            continue
        values = _segment_statistics(here, where, sig, step)
        local = np.nonzero(where)
        target = tuple(loc + g.start - s for loc, g, s in zip(local, grown, shift,
                                                              strict=True))
        lsds[(slice(None), *target)] = np.clip(values, 0.0, 1.0)


def _segment_statistics(here: NDArray[np.bool_], where: NDArray[np.bool_],
                        sig: NDArray[np.float64], step: NDArray[np.float64]
                        ) -> NDArray[np.float64]:
    """The 10 descriptors (unclipped) at the voxels ``where`` of the segment ``here``."""
    from scipy.ndimage import gaussian_filter

    coords = [np.asarray(np.arange(n) * s, np.float32).reshape(
        [-1 if a == axis else 1 for a in range(3)])
        for axis, (n, s) in enumerate(zip(here.shape, step, strict=True))]
    m = here.astype(np.float32)

    def smooth(values: NDArray[Any]) -> NDArray[np.float64]:
        out = np.asarray(gaussian_filter(values, sig, mode="constant", truncate=TRUNCATE))
        return out[where].astype(np.float64)

    mass = np.maximum(smooth(m), 1e-12)  # the filter is normalised: the filled fraction
    mean = [smooth(m * c) / mass for c in coords]
    pos = [np.broadcast_to(c, here.shape)[where] for c in coords]
    second = {(i, j): smooth(m * coords[i] * coords[j]) / mass - mean[i] * mean[j]
              for i in range(3) for j in range(i, 3)}
    sigma_phys = sig * step
    values = np.empty((LSD_CHANNELS, int(where.sum())), np.float64)
    for axis in range(3):
        values[axis] = 0.5 + (mean[axis] - pos[axis]) / (2 * sigma_phys[axis])
        values[3 + axis] = second[axis, axis] / sigma_phys[axis] ** 2
    for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
        denom = np.sqrt(np.maximum(second[i, i] * second[j, j], 1e-12))
        values[6 + k] = 0.5 + 0.5 * second[i, j] / denom
    values[9] = mass
    return values
