"""The watershed's inputs, per block: its boundary map and its seeds (pure numpy/numba).

1. The **boundary map** ``b = 255 * (1 - mean affinity of the voxel's six edges)`` (its
   three -z, -y, -x edges and the three its upper neighbours hold), uint8.
2. **Seeds**, one of
   * ``"cores"``: connected components of the affinity graph thresholded at
     ``seed_threshold`` (default 0.98) with at least ``min_seed_size`` voxels — the
     confident interiors of neurons;
   * ``"distance"`` (the lsd / waterz recipe): the voxels whose mean affinity is above
     ``seed_threshold`` (default 0.5) are inside; the local maxima (a ``min_seed_distance``
     window) of their Euclidean distance to the rest (:mod:`.distance`, with the voxel size
     as sampling) are labelled as seeds.

With ``per_section`` the seeds lie within each z section; ``planar`` leaves the z edges out
of the boundary map (:mod:`.watershed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numba import njit
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import ConfigError, DataError
from .distance import distance_transform
from .fragments import label_block, label_provisional

__all__ = ["SEED_THRESHOLDS", "Seeds", "boundary_map", "seeds"]

Seeds = Literal["cores", "distance"]
#: Default seed threshold of each seed method.
SEED_THRESHOLDS: dict[str, float] = {"cores": 0.98, "distance": 0.5}


@njit(cache=True, nogil=True)
def _boundary(affs: Any, t: float, scale: float, b: Any, inside: Any,
              planar: bool) -> None:  # pragma: no cover
    """b = round(255 (1 - mean of the six edges, or of the four in-plane ones with
    ``planar``)), inside = mean > t (native units)."""
    _, nz, ny, nx = affs.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if planar:
                    s = float(affs[1, z, y, x]) + float(affs[2, z, y, x])
                    n = 2.0
                else:  # the sums in their former order: float affinities round the same
                    s = float(affs[0, z, y, x]) + float(affs[1, z, y, x]) + \
                        float(affs[2, z, y, x])
                    n = 3.0
                if z + 1 < nz and not planar:
                    s += float(affs[0, z + 1, y, x])
                    n += 1.0
                if y + 1 < ny:
                    s += float(affs[1, z, y + 1, x])
                    n += 1.0
                if x + 1 < nx:
                    s += float(affs[2, z, y, x + 1])
                    n += 1.0
                mean = s / (n * scale)
                b[z, y, x] = np.uint8(min(255.0, max(0.0, np.rint(255.0 * (1.0 - mean)))))
                inside[z, y, x] = mean > t


def boundary_map(affs: NDArray[Any], seed_threshold: float = 0.5, *, planar: bool = False
                 ) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
    """(uint8 boundary map, mean affinity > ``seed_threshold``) of (C >= 3, Z, Y, X) uint8
    (0-255) or float (0-1) affinities; ``planar``: of the in-plane edges only."""
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise DataError(f"affinities: got shape {affs.shape}, expected (3, z, y, x)")
    if affs.dtype != np.uint8 and affs.dtype.kind != "f":
        raise DataError(f"affinities: got dtype {affs.dtype}, expected uint8 or float")
    scale = 255.0 if affs.dtype == np.uint8 else 1.0
    b = np.empty(affs.shape[1:], np.uint8)
    inside = np.empty(affs.shape[1:], np.bool_)
    _boundary(np.ascontiguousarray(affs[:3]), float(seed_threshold), scale, b, inside,
              bool(planar))
    return b, inside


def _structure(per_section: bool) -> NDArray[np.bool_]:
    structure: NDArray[np.bool_] = ndimage.generate_binary_structure(3, 1)
    if per_section:
        structure[0] = structure[2] = False
    return structure


def seeds(affs: NDArray[Any], method: Seeds = "cores", *, seed_threshold: float | None = None,
          min_seed_size: int = 1000, min_seed_distance: float = 10.0,
          sampling: Sequence[float] = (1, 1, 1), per_section: bool = False,
          inside: NDArray[np.bool_] | None = None) -> tuple[NDArray[np.uint32], int]:
    """Watershed seeds of a block's affinities (module docstring): (labels, count)."""
    labels, table, k = _seeds(affs, method, seed_threshold, min_seed_size, min_seed_distance,
                              sampling, per_section, inside)
    if table is not None:
        _apply(labels, table)
    return labels, k


def _seeds(affs: NDArray[Any], method: Seeds, seed_threshold: float | None,
           min_seed_size: int, min_seed_distance: float, sampling: Sequence[float],
           per_section: bool, inside: NDArray[np.bool_] | None
           ) -> tuple[NDArray[np.uint32], NDArray[np.uint32] | None, int]:
    """:func:`seeds` as (labels, table, count): cores' labels are the components'
    provisional labels (per section: the components) and ``table`` maps them to seeds
    1..count (0: too small), left to the flood to apply (passes over the block fewer);
    distance seeds need no table (None)."""
    t = SEED_THRESHOLDS[method] if seed_threshold is None else seed_threshold
    if method == "cores":
        if per_section:
            labels = np.zeros(affs.shape[1:], np.uint32)
            n = 0
            for z in range(affs.shape[1]):
                lab, k = label_block(affs[:3, z:z + 1], t)  # a one-section block
                labels[z] = lab[0] + np.uint32(n)
                n += k
            table, k = _large(labels, n, min_seed_size)
            return labels, table, k
        labels, final, size, _ = label_provisional(affs, t)
        table, k = _large_components(final, size, min_seed_size)
        return labels, table, k
    if method != "distance":
        raise ConfigError(f"--seeds: got {method!r}, expected 'cores' or 'distance'")
    if inside is None:
        inside = boundary_map(affs, t)[1]
    dist2 = distance_transform(inside, sampling, per_section)
    window = [max(1, round(min_seed_distance / float(s))) for s in sampling]
    if per_section:
        window[0] = 1
    peaks = (ndimage.maximum_filter(dist2, size=window, mode="nearest") == dist2) & (dist2 > 0)
    labels, n = ndimage.label(peaks, structure=_structure(per_section), output=np.uint32)
    return labels, None, int(n)


@njit(cache=True, nogil=True)
def _large(labels: Any, n: int, min_size: int) -> Any:  # pragma: no cover - compiled
    """The table numbering the labels with at least ``min_size`` voxels 1..k (in label
    order), 0 for the others; and k."""
    flat = labels.ravel()
    sizes = np.zeros(n + 1, np.int64)
    for i in range(flat.size):
        sizes[flat[i]] += 1
    table = np.zeros(n + 1, np.uint32)
    k = 0
    for label in range(1, n + 1):
        if sizes[label] >= min_size:
            k += 1
            table[label] = k
    return table, k


@njit(cache=True, nogil=True)
def _large_components(final: Any, size: Any, min_size: int
                      ) -> Any:  # pragma: no cover - compiled
    """:func:`_large` of label_block's components from its provisional labels (``final``:
    provisional -> component, ``size``: a component's voxels at its root, the first label
    mapped to it): the table maps provisional labels to seeds 1..k (components in label
    order), 0 for small ones; one pass over the labels, none over the block. Saves two
    passes over the block (label_block's last and the count)."""
    seed = np.zeros(final.size, np.uint32)  # per component (at most one per label)
    table = np.empty(final.size, np.uint32)
    table[0] = 0
    k = 0
    last = 0
    for p in range(1, final.size):
        c = final[p]
        if c > last:  # p is the root of component c
            last = c
            if size[p] >= min_size:
                k += 1
                seed[c] = k
        table[p] = seed[c]
    return table, k


@njit(cache=True, nogil=True)
def _apply(labels: Any, table: Any) -> None:  # pragma: no cover - compiled
    """labels = table[labels], in place."""
    flat = labels.ravel()
    for i in range(flat.size):
        flat[i] = table[flat[i]]
