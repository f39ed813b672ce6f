"""Per-block kernels of the segment stage: pure numpy in, numpy out (no I/O, no Dask).

* :func:`label_block` — connected components of the affinity graph inside one block:
  voxel ``p`` and ``p + offset[c]`` are joined when ``aff[c, p] > threshold``, for the
  DESIGN.md offsets ``(-1,0,0), (0,-1,0), (0,0,-1)``; edges that leave the block are
  ignored. Compiled (numba) two-pass labelling: provisional labels + union-find.
* :func:`global_ids` — block id in the high 32 bits, local id in the low 32 bits: globally
  unique uint64 fragment ids with no serial pass over blocks.
* :func:`face_pairs` — the (lower id, upper id) pairs joined by an affinity edge that
  crosses the face between two blocks (the edge lives in the upper block's first slice).

Every voxel gets a label (a voxel with no edge above threshold is a component of its own);
0 never occurs in a block's labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import numpy as np
from numba import njit
from numpy.typing import NDArray

from ..errors import ConfigError, DataError

__all__ = ["LOCAL_BITS", "apply_mapping", "block_plane", "boundary_planes", "face_pairs",
           "face_row_lengths", "global_ids", "label_block", "label_provisional",
           "native_threshold", "pack_planes", "plane_shapes", "split_ids", "tile_grid",
           "unpack_planes", "untile"]

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
def _union(parent: Any, a: int, b: int) -> int:  # pragma: no cover - compiled
    """Join the sets of a and b; the smaller root wins. Returns the root."""
    ra, rb = _find(parent, a), _find(parent, b)
    if ra < rb:
        parent[rb] = ra
        return ra
    parent[ra] = rb
    return rb


@njit(cache=True, nogil=True)
def _label(affs: Any, t: Any, out: Any, size: Any) -> Any:  # pragma: no cover - compiled
    """Two-pass labelling with provisional labels (classic scan + union-find).

    Pass 1 gives each voxel the provisional label of an earlier neighbour it is joined to
    (-x, -y, -z, all already visited in raster order), merging labels when it is joined to
    several, or a new label. A component's first voxel in raster order always gets a new
    label, the smallest of its component, which is the root (smaller roots win), so pass 2
    numbers the roots 1..n in raster order of first voxels. A non-empty ``size`` (one
    entry per voxel and one) gets the voxels of each component at its root (provisional
    labels that are not roots: their own voxels, not to be used).
    """
    nz, ny, nx = out.shape
    parent = np.empty(nz * ny * nx + 1, np.uint32)
    count = size.size > 0
    n = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                label = 0
                if x > 0 and affs[2, z, y, x] > t:
                    label = out[z, y, x - 1]
                if y > 0 and affs[1, z, y, x] > t:
                    other = out[z, y - 1, x]
                    if label == 0:
                        label = other
                    elif other != label:
                        label = _union(parent, label, other)
                if z > 0 and affs[0, z, y, x] > t:
                    other = out[z - 1, y, x]
                    if label == 0:
                        label = other
                    elif other != label:
                        label = _union(parent, label, other)
                if label == 0:
                    n += 1
                    parent[n] = n
                    label = n
                    if count:
                        size[n] = 0
                if count:
                    size[label] += 1
                out[z, y, x] = label
    final = np.empty(n + 1, np.uint32)
    final[0] = 0
    k = 0
    for p in range(1, n + 1):
        r = _find(parent, p)
        if r == p:
            k += 1
            final[p] = k
        else:
            final[p] = final[r]  # r < p: numbered already
            if count:
                size[r] += size[p]
    return k, final


@njit(cache=True, nogil=True)
def _finalize(provisional: Any, final: Any, high: Any, out: Any) -> None:  # pragma: no cover
    """``out = high | final[provisional]`` (uint32, in place with high = 0)."""
    src, dst = provisional.reshape(-1), out.reshape(-1)
    for i in range(src.size):
        dst[i] = high | final[src[i]]


@overload
def label_block(affs: NDArray[Any], threshold: float, block_id: None = None,
                tile: Sequence[int] | None = None) -> tuple[NDArray[np.uint32], int]: ...
@overload
def label_block(affs: NDArray[Any], threshold: float, block_id: int,
                tile: Sequence[int] | None = None) -> tuple[NDArray[np.uint64], int]: ...
def label_block(affs: NDArray[Any], threshold: float, block_id: int | None = None,
                tile: Sequence[int] | None = None) -> tuple[NDArray[Any], int]:
    """Connected components of the affinity graph of one block.

    Parameters
    ----------
    affs : (C >= 3, Z, Y, X) uint8 (0-255 = 0-1) or float affinities; channels 0-2 are the
        -z, -y, -x nearest-neighbour affinities (longer-range channels are ignored).
    threshold : edges with affinity > threshold join their voxels.
    block_id : if given, return global fragment ids (:func:`global_ids`) directly, which
        saves a pass over the block.
    tile : with ``block_id``, return the ids tiled, (gz, gy, gx, *tile), when the tile
        divides the block (:func:`tile_grid`; :func:`untile` gives the block back): a Zarr
        chunk-shaped tile is written without a copy.

    Returns
    -------
    labels : (Z, Y, X) uint32 local labels 1..n, consecutive in raster order of each
        component's first voxel (deterministic); or uint64 global ids with ``block_id``.
    n : number of components.

    >>> a = np.zeros((3, 1, 1, 4), np.float32); a[2, 0, 0, 1] = a[2, 0, 0, 3] = 1
    >>> label_block(a, 0.5)[0].ravel().tolist()
    [1, 1, 2, 2]
    """
    t, provisional = _provisional(affs, threshold)
    if not provisional.size:
        return provisional if block_id is None else provisional.astype(np.uint64), 0
    n, final = _label(affs, t, provisional, np.empty(0, np.uint32))
    if block_id is None:
        _finalize(provisional, final, np.uint32(0), provisional)
        return provisional, int(n)
    out = _tiled_empty(provisional.shape, tile)
    _lookup(provisional, final.astype(np.uint64), np.uint32(0xFFFFFFFF), _high_bits(block_id),
            _as_tiles(out))
    return out, int(n)


def label_provisional(affs: NDArray[Any], threshold: float
                      ) -> tuple[NDArray[np.uint32], NDArray[np.uint32], NDArray[np.uint32], int]:
    """:func:`label_block`'s components before their last pass over the block:
    (provisional labels, ``final`` mapping them to components 1..n in raster order,
    ``size``: a component's voxels at its root, the first provisional label that
    ``final`` maps to it; n). ``final[provisional]`` is label_block's
    result; a caller that maps the components through a table anyway (watershed seeds)
    composes it with ``final`` and saves the pass."""
    t, provisional = _provisional(affs, threshold)
    size = np.empty(provisional.size + 1, np.uint32)
    if not provisional.size:
        return provisional, np.zeros(1, np.uint32), size, 0
    n, final = _label(affs, t, provisional, size)
    return provisional, final, size[:len(final)], int(n)


def _provisional(affs: NDArray[Any], threshold: float) -> tuple[Any, NDArray[np.uint32]]:
    """The checked threshold in the affinities' type and an empty provisional-label
    buffer of the block's shape."""
    if affs.ndim != 4 or affs.shape[0] < 3:
        raise DataError(f"affinities: got shape {affs.shape}, expected (3, z, y, x)")
    t = affs.dtype.type(native_threshold(threshold, affs.dtype))
    provisional = np.empty(affs.shape[1:], np.uint32)
    if provisional.size >= 2**32 - 1:
        raise DataError(f"block of shape {provisional.shape}: got {provisional.size} voxels, "
                        "expected fewer than 2**32 (use a smaller --block)")
    return t, provisional


def _high_bits(block_id: int) -> np.uint64:
    if not 0 <= block_id < 2**(64 - LOCAL_BITS):
        raise DataError(f"block {block_id}: id outside [0, 2**32), too many blocks "
                        "(use a larger --block)")
    return np.uint64(block_id) << np.uint64(LOCAL_BITS)


def global_ids(local: NDArray[np.integer[Any]], block_id: int) -> NDArray[np.uint64]:
    """Globally unique fragment ids: ``block_id << 32 | local`` (0 stays 0).

    >>> global_ids(np.array([0, 1, 7], np.uint32), 3).tolist()
    [0, 12884901889, 12884901895]
    """
    out: NDArray[np.uint64] = np.bitwise_or(local, _high_bits(block_id), dtype=np.uint64)
    if local.size and local.min() == 0:  # keep background: rare, costs one more pass
        out[local == 0] = 0
    return out


@njit(cache=True, nogil=True)
def _lookup(src: Any, table: Any, mask: Any, high: Any, out: Any) -> Any:  # pragma: no cover
    """``out = high | table[src & mask]`` with ``out`` tiled (gz, gy, gx, tz, ty, tx) over
    the block-shaped ``src``; returns the first index outside ``table``, or -1. Reads in
    the block's order and writes rows of tiles (reading tile by tile ran 4x slower)."""
    _, gy, gx, tz, ty, tx = out.shape
    nz, ny = src.shape[0], src.shape[1]
    flat, dst = src.reshape(-1), out.reshape(-1)
    n = np.uint64(table.size)
    i = 0
    for z in range(nz):
        for y in range(ny):
            row = ((z // tz * gy + y // ty) * gx * tz + z % tz) * ty + y % ty
            for c in range(gx):
                j = (row + c * tz * ty) * tx
                s, d = flat[i:i + tx], dst[j:j + tx]  # indices from range(): no
                for x in range(tx):  # negative-index checks (flat[i + x] ran 2x slower)
                    v = s[x] & mask
                    if v >= n:
                        return np.int64(v)
                    d[x] = high | table[v]
                i += tx
    return np.int64(-1)


def tile_grid(shape: Sequence[int], tile: Sequence[int] | None) -> tuple[int, ...] | None:
    """How many whole ``tile``s fit along each axis of a block of ``shape``; ``None`` when
    no tile is given or it does not divide the block (an edge block: partial chunks).

    >>> tile_grid((256, 256, 100), (128, 128, 50)), tile_grid((256, 256, 100), (128,) * 3)
    ((2, 2, 2), None)
    """
    if tile is None or any(n % t for n, t in zip(shape, tile, strict=True)):
        return None
    return tuple(n // t for n, t in zip(shape, tile, strict=True))


def _tiled_empty(shape: Sequence[int], tile: Sequence[int] | None) -> NDArray[np.uint64]:
    """A uint64 buffer for a block of ``shape``: tiled (grid + tile) when ``tile`` divides
    it, else block-shaped."""
    grid = tile_grid(shape, tile)
    if grid is None or tile is None:
        return np.empty(tuple(shape), np.uint64)
    return np.empty((*grid, *tile), np.uint64)


def _as_tiles(out: NDArray[Any]) -> NDArray[Any]:
    """A block-shaped array as a 1 x 1 x 1 grid of one tile (a view)."""
    return out if out.ndim == 6 else out.reshape(1, 1, 1, *out.shape)


def untile(data: NDArray[Any]) -> NDArray[Any]:
    """A tiled block (gz, gy, gx, tz, ty, tx) as one (Z, Y, X) array; others as they are.

    >>> untile(np.arange(8).reshape(1, 1, 2, 1, 2, 2)).tolist()
    [[[0, 1, 4, 5], [2, 3, 6, 7]]]
    """
    if data.ndim != 6:
        return data
    gz, gy, gx, tz, ty, tx = data.shape
    return data.transpose(0, 3, 1, 4, 2, 5).reshape(gz * tz, gy * ty, gx * tx)


def block_plane(data: NDArray[Any], axis: int, index: int) -> NDArray[Any]:
    """Plane ``index`` (0 or -1) normal to ``axis`` of a block, tiled or not (a copy)."""
    if data.ndim != 6:
        out: NDArray[Any] = np.take(data, index, axis=axis)
        return out
    where: list[Any] = [slice(None)] * 6
    where[axis] = where[axis + 3] = index  # views: np.take would copy a slab of tiles
    plane: NDArray[Any] = data[tuple(where)]
    ga, gb, ta, tb = plane.shape
    return plane.transpose(0, 2, 1, 3).reshape(ga * ta, gb * tb)


def boundary_planes(fragments: NDArray[np.uint64]) -> list[NDArray[np.uint32]]:
    """A block's six boundary planes (first and last normal to z, y, x: first0, last0,
    first1, ...) as local ids, the face arrays' dtype."""
    return [(block_plane(fragments, a, i) & LOCAL_MASK).astype(np.uint32)
            for a in range(3) for i in (0, -1)]


def apply_mapping(fragments: NDArray[np.uint64] | NDArray[np.uint32],
                  mapping: NDArray[np.uint64], *, tile: Sequence[int] | None = None,
                  in_place: bool = False) -> NDArray[np.uint64]:
    """``mapping[local id]`` for every fragment (global or local id) of one block, in one
    compiled pass. Tiled as :func:`label_block` when ``tile`` divides the block; else, with
    ``in_place``, into ``fragments`` itself (contiguous uint64: saves a block's buffer).

    >>> apply_mapping(global_ids(np.array([[[2, 1, 2]]], np.uint32), 5),
    ...               np.array([0, 7, 9], np.uint64)).tolist()
    [[[9, 7, 9]]]
    """
    src = np.ascontiguousarray(fragments)
    if src.ndim != 3:
        raise DataError(f"fragments: got shape {src.shape}, expected a (z, y, x) block")
    if tile_grid(src.shape, tile) is not None:
        out = _tiled_empty(src.shape, tile)
    elif in_place and src is fragments and src.dtype == np.uint64 and src.flags.writeable:
        out = src  # type: ignore[assignment]
    else:
        out = np.empty(src.shape, np.uint64)
    bad = _lookup(src, mapping, src.dtype.type(0xFFFFFFFF), np.uint64(0),
                  _as_tiles(out)) if src.size else -1
    if bad >= 0:
        raise DataError(f"fragments: got local id {int(bad)}, expected < {len(mapping)} "
                        "(fragments and lookup table disagree: rerun segment)")
    return out


def plane_shapes(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Shape of a block's boundary plane normal to each axis."""
    return [tuple(n for a, n in enumerate(shape) if a != axis) for axis in range(3)]


def face_row_lengths(block_shape: Sequence[int]) -> tuple[int, int]:
    """Lengths of a block's rows of face planes: the labels row (first and last plane
    along each axis) and the affinities row (first plane along each axis)."""
    sizes = [int(np.prod(p)) for p in plane_shapes(block_shape)]
    return 2 * sum(sizes), sum(sizes)


def pack_planes(planes: Sequence[NDArray[Any]], length: int) -> NDArray[Any]:
    """One block's planes, raveled one after the other into a (1, length) row (edge
    blocks are smaller: the rest is 0)."""
    flat = np.concatenate([p.ravel() for p in planes])
    row = np.zeros((1, length), flat.dtype)
    row[0, :flat.size] = flat
    return row


def unpack_planes(row: NDArray[Any], shapes: Sequence[tuple[int, ...]]) -> list[NDArray[Any]]:
    """The planes of :func:`pack_planes`, given their shapes."""
    ends = np.cumsum([int(np.prod(s)) for s in shapes])
    return [row[e - int(np.prod(s)):e].reshape(s) for e, s in zip(ends, shapes, strict=True)]


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
