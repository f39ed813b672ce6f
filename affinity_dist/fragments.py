"""Per-block kernels of the segment stage: pure numpy in, numpy out (no I/O, no Dask).

* :func:`label_block` — connected components of the affinity graph inside one block:
  voxel ``p`` and ``p + offset[c]`` are joined when ``aff[c, p] > threshold``, for the
  DESIGN.md offsets ``(-1,0,0), (0,-1,0), (0,0,-1)``; edges that leave the block are
  ignored. A compiled union-find (numba): one pass over the edges, one over the voxels.
* :func:`global_ids` — block id in the high 32 bits, local id in the low 32 bits: globally
  unique uint64 fragment ids with no serial pass over blocks.
* :func:`face_pairs` — the (lower id, upper id) pairs joined by an affinity edge that
  crosses the face between two blocks (the edge lives in the upper block's first slice).

Every voxel gets a label (a voxel with no edge above threshold is a component of its own);
0 never occurs in a block's labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit
from numpy.typing import NDArray

from .errors import ConfigError, DataError

__all__ = ["LOCAL_BITS", "face_pairs", "global_ids", "label_block", "native_threshold",
           "split_ids"]

#: Fragment id = block id << LOCAL_BITS | local id (local ids start at 1).
LOCAL_BITS = 32
LOCAL_MASK = np.uint64((1 << LOCAL_BITS) - 1)


def native_threshold(threshold: float, dtype: np.dtype[Any]) -> float | int:
    """The threshold in the affinities' own units: ``aff > native`` iff ``aff/scale > t``.

    uint8 affinities hold 0-255 for 0-1; for integers ``a / 255 > t`` is ``a > floor(255 t)``.

    >>> native_threshold(0.5, np.dtype(np.uint8))
    127
    """
    if not 0.0 <= threshold <= 1.0:  # also catches NaN
        raise ConfigError(f"--threshold: got {threshold!r}, expected a number in [0, 1]")
    if dtype == np.uint8:
        return int(np.floor(255 * threshold))
    if dtype.kind == "f":
        return float(threshold)
    raise DataError(f"affinities: got dtype {dtype}, expected uint8 (0-255) or float")


@njit(cache=True, nogil=True, inline="always")
def _find(parent: Any, i: int) -> int:  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@njit(cache=True, nogil=True, inline="always")
def _union(parent: Any, a: int, b: int) -> None:  # pragma: no cover - compiled
    ra, rb = _find(parent, a), _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True, nogil=True)
def _label(affs: Any, t: Any, out: Any) -> int:  # pragma: no cover - compiled
    nz, ny, nx = out.shape
    plane = ny * nx
    parent = np.empty(nz * plane, np.int64)
    for i in range(nz * plane):
        parent[i] = i
    for z in range(nz):
        for y in range(ny):
            row = z * plane + y * nx
            for x in range(nx):
                i = row + x
                if z > 0 and affs[0, z, y, x] > t:
                    _union(parent, i, i - plane)
                if y > 0 and affs[1, z, y, x] > t:
                    _union(parent, i, i - nx)
                if x > 0 and affs[2, z, y, x] > t:
                    _union(parent, i, i - 1)
    # Roots are the smallest index of their component, so a raster scan meets every root
    # before any other member: consecutive labels in raster order of first voxels.
    flat = out.reshape(-1)
    n = 0
    for i in range(nz * plane):
        r = _find(parent, i)
        if r == i:
            n += 1
            flat[i] = n
        else:
            flat[i] = flat[r]
    return n


def label_block(affs: NDArray[Any], threshold: float) -> tuple[NDArray[np.uint32], int]:
    """Connected components of the affinity graph of one block.

    Parameters
    ----------
    affs : (C >= 3, Z, Y, X) uint8 (0-255 = 0-1) or float affinities; channels 0-2 are the
        -z, -y, -x nearest-neighbour affinities (longer-range channels are ignored).
    threshold : edges with affinity > threshold join their voxels.

    Returns
    -------
    labels : (Z, Y, X) uint32, consecutive 1..n in raster order of each component's first
        voxel (deterministic).
    n : number of components.

    >>> a = np.zeros((3, 1, 1, 4), np.float32); a[2, 0, 0, 1] = a[2, 0, 0, 3] = 1
    >>> label_block(a, 0.5)[0].ravel().tolist()
    [1, 1, 2, 2]
    """
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise DataError(f"affinities: got shape {affs.shape}, expected (3, z, y, x)")
    t = native_threshold(threshold, affs.dtype)
    out = np.empty(affs.shape[1:], np.uint32)
    if out.size >= 2**32:
        raise DataError(f"block of shape {out.shape}: got {out.size} voxels, "
                        "expected fewer than 2**32 (use a smaller --block)")
    n = _label(affs, affs.dtype.type(t), out) if out.size else 0
    return out, int(n)


def global_ids(local: NDArray[np.integer[Any]], block_id: int) -> NDArray[np.uint64]:
    """Globally unique fragment ids: ``block_id << 32 | local`` (0 stays 0).

    >>> global_ids(np.array([0, 1, 7], np.uint32), 3).tolist()
    [0, 12884901889, 12884901895]
    """
    if not 0 <= block_id < 2**(64 - LOCAL_BITS):
        raise DataError(f"block {block_id}: id outside [0, 2**32), too many blocks "
                        "(use a larger --block)")
    out = local.astype(np.uint64)
    out[out > 0] |= np.uint64(block_id) << np.uint64(LOCAL_BITS)
    return out


def split_ids(ids: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """(block id, local id) of global fragment ids."""
    return ids >> np.uint64(LOCAL_BITS), ids & LOCAL_MASK


def face_pairs(lower: NDArray[np.integer[Any]], upper: NDArray[np.integer[Any]],
               affs: NDArray[Any], threshold: float) -> NDArray[np.uint64]:
    """Label pairs joined across one face.

    Parameters
    ----------
    lower : (A, B) labels of the lower block's last plane along the face axis.
    upper : (A, B) labels of the upper block's first plane.
    affs : (A, B) affinity of the face axis' channel in the upper block's first plane
        (the edge from each upper voxel to the lower voxel facing it).

    Returns
    -------
    (2, M) uint64 unique pairs ``(lower_label, upper_label)``, sorted.

    >>> face_pairs(np.array([[1, 2]]), np.array([[5, 5]]), np.array([[0.9, 0.1]]), 0.5)
    array([[1],
           [5]], dtype=uint64)
    """
    mask = affs > native_threshold(threshold, affs.dtype)
    lo = lower[mask].astype(np.uint64)
    up = upper[mask].astype(np.uint64)
    if lo.size and (lo.max() > LOCAL_MASK or up.max() > LOCAL_MASK):
        pairs = np.unique(np.stack([lo, up]), axis=1)  # general ids: slower row-unique
        return pairs.astype(np.uint64)
    keys = np.unique((lo << np.uint64(LOCAL_BITS)) | up)
    return np.stack([keys >> np.uint64(LOCAL_BITS), keys & LOCAL_MASK])
