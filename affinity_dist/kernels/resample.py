"""Resampling between a dataset's voxel grid and a model's: pure numpy, window by window.

Two grids share their physical origin (the corner of voxel 0). Along an axis of ``n``
source voxels of size ``vs`` resampled to voxels of size ``vt``, the target has
``max(1, round(n * vs / vt))`` voxels, and target voxel ``j`` (centre ``(j + 0.5) * vt``)
sits at source coordinate ``(j + 0.5) * vt / vs - 0.5`` (clamped to the source). Every
value is computed from that coordinate alone, so any window of a resampled volume equals
the same window of the whole volume resampled, bit for bit: blockwise resampling is
seamless.

- :func:`resample_window`: raw (linear, separable; uint8 stays uint8, rounded) or labels
  (nearest) over any window of target indices, reading only the source box it needs.
- :func:`affinities_back`: affinities predicted on the model's grid mapped onto the data's
  grid. Along its own axis, a data edge spanning more than one model voxel (50 nm sections
  under a 10 nm model) takes the **minimum** of the model edges it crosses (a boundary on
  any of them separates its voxels); a data edge shorter than a model voxel takes the model
  affinity linearly interpolated at its midpoint. Across the other axes: linear.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import bad_value
from ..geometry import Box

__all__ = ["affinities_back", "model_box_of", "resampled_shape", "resample_window"]

Read = Callable[[Box], NDArray[Any]]


def resampled_shape(shape: Sequence[int], source: Sequence[float], target: Sequence[float]
                    ) -> tuple[int, ...]:
    """The grid of a volume of ``shape`` voxels of size ``source`` resampled to ``target``.

    >>> resampled_shape((30, 512, 512), (50, 4, 4), (10, 10, 10))
    (150, 205, 205)
    """
    for name, v in (("source voxel size", source), ("target voxel size", target)):
        if len(v) != len(shape) or not all(math.isfinite(x) and x > 0 for x in v):
            raise bad_value(name, tuple(v), f"{len(shape)} positive numbers")
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, source, target,
                                                             strict=True))


def _coords(indices: NDArray[np.int64], ratio: float, n: int) -> NDArray[np.float64]:
    """Source coordinates of target voxels ``indices`` (``ratio`` source voxels per target
    voxel), clamped to the source's ``n`` voxels."""
    return np.clip((indices + 0.5) * ratio - 0.5, 0, n - 1)


def _linear_taps(coords: NDArray[np.float64], n: int
                 ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    return low, high, (coords - low).astype(np.float32)


def _along(data: NDArray[Any], axis: int, index: NDArray[np.int64]) -> NDArray[Any]:
    return np.take(data, index, axis=axis)


def _shaped(weights: NDArray[np.float32], axis: int, ndim: int) -> NDArray[np.float32]:
    shape = [1] * ndim
    shape[axis] = weights.size
    return weights.reshape(shape)


def resample_window(read: Read, indices: Sequence[NDArray[np.int64]],
                    source_shape: Sequence[int], ratios: Sequence[float], *,
                    order: Literal["linear", "nearest"] = "linear") -> NDArray[Any]:
    """The resampled volume at the target voxels ``indices`` (one integer array per axis,
    any values inside the target grid: a mirrored window passes mirrored indices).

    ``read(box)`` returns the source over ``box`` (always inside the source);
    ``ratios``: source voxels per target voxel (``vt / vs``) per axis. ``linear``:
    separable linear interpolation in float32 (z, then y, then x), rounded back for
    integer sources; ``nearest``: the source voxel nearest each target centre (labels).
    """
    ndim = len(source_shape)
    if len(indices) != ndim or len(ratios) != ndim:
        raise bad_value("indices", len(indices), f"{ndim} index arrays and ratios")
    coords = [_coords(np.asarray(i, np.int64), r, n)
              for i, r, n in zip(indices, ratios, source_shape, strict=True)]
    if order == "nearest":
        nearest = [np.minimum(np.floor(c + 0.5).astype(np.int64), n - 1)
                   for c, n in zip(coords, source_shape, strict=True)]
        lo = [int(i.min()) for i in nearest]
        data = read(Box(tuple(lo), tuple(int(i.max()) + 1 for i in nearest)))
        for axis, (i, start) in enumerate(zip(nearest, lo, strict=True)):
            data = _along(data, axis, i - start)
        return data
    taps = [_linear_taps(c, n) for c, n in zip(coords, source_shape, strict=True)]
    lo = [int(low.min()) for low, _, _ in taps]
    source = read(Box(tuple(lo), tuple(int(high.max()) + 1 for _, high, _ in taps)))
    dtype = source.dtype
    data = source.astype(np.float32)
    for axis, ((low, high, w), start) in enumerate(zip(taps, lo, strict=True)):
        weight = _shaped(w, axis, ndim)
        a, b = _along(data, axis, low - start), _along(data, axis, high - start)
        data = a + (b - a) * weight
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(np.rint(data), info.min, info.max).astype(dtype)
    return data.astype(dtype, copy=False)


class _Own(NamedTuple):
    """Own-axis taps: ``kind`` "linear" (``low``, ``high``, weights ``extra``) or "min"
    (``low`` = ``high`` = a window of crossed model edges per data edge, valid ``extra``)."""

    kind: Literal["min", "linear"]
    low: NDArray[np.int64]
    high: NDArray[np.int64]
    extra: NDArray[Any]


def _own_taps(indices: NDArray[np.int64], span: float, m: int) -> _Own:
    """The model edges of the data edges ``indices`` along their own axis (``span`` model
    voxels per data voxel, ``m`` model voxels)."""
    centre = (indices + 0.5) * span - 0.5  # the data voxel, in model voxel coordinates
    if span > 1:  # model edge k lies at k - 0.5: the crossed ones, in (centre - span, centre]
        first = np.floor(centre - span + 0.5).astype(np.int64) + 1
        last = np.floor(centre + 0.5).astype(np.int64)
        window = first[:, None] + np.arange(math.ceil(span) + 1)[None, :]
        valid = window <= last[:, None]
        window = np.clip(window, 0, m - 1)
        return _Own("min", window, window, valid)
    return _Own("linear", *_linear_taps(np.clip(centre - span / 2 + 0.5, 0, m - 1), m))


def _axis_taps(box: Box, spans: Sequence[float], model_shape: Sequence[int]
               ) -> tuple[list[tuple[Any, ...]], list[_Own]]:
    """Per axis: linear taps at the data voxels' centres, and own-axis taps."""
    across, own = [], []
    for start, stop, span, m in zip(box.start, box.stop, spans, model_shape, strict=True):
        index = np.arange(start, stop, dtype=np.int64)
        across.append(_linear_taps(_coords(index, span, m), m))
        own.append(_own_taps(index, span, m))
    return across, own


def model_box_of(box: Box, spans: Sequence[float], model_shape: Sequence[int]) -> Box:
    """The model-grid box whose affinities :func:`affinities_back` needs for the data
    ``box`` (``spans``: model voxels per data voxel, ``vd / vm``)."""
    across, own = _axis_taps(box, spans, model_shape)
    lo = tuple(int(min(a[0].min(), o.low.min())) for a, o in zip(across, own, strict=True))
    hi = tuple(int(max(a[1].max(), o.high.max())) + 1 for a, o in zip(across, own,
                                                                       strict=True))
    return Box(lo, hi)


def affinities_back(affinities: NDArray[Any], model_box: Box, box: Box,
                    spans: Sequence[float], model_shape: Sequence[int]) -> NDArray[np.float32]:
    """Affinities ``(C, ...)`` predicted over ``model_box`` of the model grid, on the data
    voxels of ``box`` (float32): channel ``c`` is the edge along axis ``c`` (the nearest
    three offsets, -z, -y, -x)."""
    ndim = len(box.start)
    if affinities.shape[1:] != model_box.shape or affinities.shape[0] != ndim:
        raise bad_value("affinities", affinities.shape,
                        f"({ndim}, *{model_box.shape}) over the model box")
    across, own = _axis_taps(box, spans, model_shape)
    out = np.empty((ndim, *box.shape), np.float32)
    for c in range(ndim):
        data = affinities[c].astype(np.float32)
        for axis in range(ndim):
            start = model_box.start[axis]
            if axis == c and own[axis].kind == "min":
                window, valid = own[axis].low, own[axis].extra
                picked = np.moveaxis(_along(data, axis, (window - start).ravel()), axis, -1)
                picked = picked.reshape(*picked.shape[:-1], *window.shape)
                picked = np.where(valid, picked, np.float32(np.inf)).min(axis=-1)
                data = np.moveaxis(picked, -1, axis)
                continue
            low, high, w = own[axis][1:] if axis == c else across[axis]
            a, b = _along(data, axis, low - start), _along(data, axis, high - start)
            data = a + (b - a) * _shaped(w, axis, ndim)
        out[c] = data
    return out
