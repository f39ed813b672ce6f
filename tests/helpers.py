"""Shared test helpers and oracles: test modules import these from here, never from each
other (conftest.py holds only the fixtures, built on these helpers).

* paths and the CLI: :data:`REPO`, :func:`shared_file`, :func:`run_cli`;
* independent oracles: :func:`oracle_components` (scipy's csgraph), :func:`same_partition`;
* data with known errors or layouts: :func:`perturbations`, the hand-written N5 datasets
  (:data:`HAND_COMPRESSIONS`, :func:`_hand_dataset`, :func:`_write_attrs`,
  :func:`_write_block`);
* a tiny U-Net checkpoint: :data:`TINY`, :func:`tiny_model` (imports torch when called).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from affinity_dist.kernels.fragments import native_threshold
from affinity_dist.nn.config import UNetConfig
from affinity_dist.storage.n5 import N5Array

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AFFINITY_DIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """Path of a file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {path} not found: these tests need the shared data folder "
                    "../shared/data beside the checkout (or AFFINITY_DIST_SHARED_DATA)")
    return path


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m affinity_dist ARGS`` in a subprocess, capturing its output."""
    return subprocess.run([sys.executable, "-m", "affinity_dist", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=600, check=False)


# --------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------

def oracle_components(affs: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components of the affinity graph by scipy.sparse.csgraph (independent)."""
    shape = affs.shape[1:]
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    t = native_threshold(threshold, affs.dtype)
    heads, tails = [], []
    for c in range(3):
        inner = tuple(slice(1, None) if a == c else slice(None) for a in range(3))
        outer = tuple(slice(None, -1) if a == c else slice(None) for a in range(3))
        mask = affs[c][inner] > t
        heads.append(idx[inner][mask])
        tails.append(idx[outer][mask])
    a, b = np.concatenate(heads), np.concatenate(tails)
    graph = coo_matrix((np.ones(a.size), (a, b)), shape=(idx.size, idx.size))
    return connected_components(graph, directed=False)[1].reshape(shape)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to relabelling: the (a, b) label pairs are a bijection."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


def perturbations(truth: np.ndarray) -> dict[str, np.ndarray]:
    """Segmentations with known errors: two ids merged, one id split, a one-voxel shift."""
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    big = ids[np.argsort(sizes)[::-1]]
    merged = truth.copy()
    merged[merged == big[1]] = big[0]
    split = truth.copy()
    half = np.zeros(truth.shape, bool)
    half[:, :, truth.shape[2] // 2:] = True
    split[(truth == big[0]) & half] = truth.max() + 1
    shifted = np.roll(truth, 1, axis=2)
    return {"identity": truth, "merged": merged, "split": split, "shifted": shifted,
            "with background": np.where(np.roll(truth, 3, 0) == big[2], 0, truth)}


# --------------------------------------------------------------------------
# Hand-written N5 datasets (bytes per the N5 spec; no optional dependency)
# --------------------------------------------------------------------------

Compressor = Callable[[bytes], bytes]


def _identity(b: bytes) -> bytes:
    return b


def _write_attrs(path: Path, attrs: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "attributes.json").write_text(json.dumps(attrs))


def _write_block(
    ds: Path,
    grid_np: tuple[int, ...],
    block_np: np.ndarray,
    compress: Compressor = _identity,
    mode: int = 0,
) -> None:
    """Write one block by hand: big-endian header + compressed big-endian data."""
    nd = block_np.ndim
    dims_n5 = block_np.shape[::-1]
    header = struct.pack(f">HH{nd}I", mode, nd, *dims_n5)
    if mode == 1:
        header += struct.pack(">I", block_np.size)
    # C order over (z, y, x) == N5 order (x fastest).
    payload = block_np.astype(block_np.dtype.newbyteorder(">")).tobytes()
    f = ds.joinpath(*(str(g) for g in grid_np[::-1]))
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(header + compress(payload))


HAND_COMPRESSIONS: list[tuple[dict[str, Any], Compressor]] = [
    ({"type": "raw"}, _identity),
    ({"type": "gzip", "level": -1}, gzip.compress),
    ({"type": "gzip", "useZlib": True}, zlib.compress),
    ({"type": "bzip2", "blockSize": 9}, bz2.compress),
    ({"type": "xz", "preset": 6}, lzma.compress),
]


def _hand_dataset(
    ds: Path, compression: dict[str, Any], compress: Compressor
) -> tuple[np.ndarray, N5Array]:
    """(3, 4, 5) uint16 volume, blocks (z, y, x) = (2, 2, 3), truncated edges.

    Block (0, 1, 1) is missing (reads as zeros) and block (1, 0, 0) uses the
    varlength header (mode 1).
    """
    full = (np.arange(60, dtype=np.uint16) * 1000 + 7).reshape(3, 4, 5)
    chunks = (2, 2, 3)
    _write_attrs(
        ds,
        {
            "dimensions": [5, 4, 3],
            "blockSize": list(chunks[::-1]),
            "dataType": "uint16",
            "compression": compression,
            "resolution": [4.0, 4.0, 40.0],
        },
    )
    expected = full.copy()
    for gz in range(2):
        for gy in range(2):
            for gx in range(2):
                sl = tuple(
                    slice(g * c, (g + 1) * c) for g, c in zip((gz, gy, gx), chunks, strict=True)
                )
                if (gz, gy, gx) == (0, 1, 1):
                    expected[sl] = 0
                    continue
                mode = 1 if (gz, gy, gx) == (1, 0, 0) else 0
                _write_block(ds, (gz, gy, gx), full[sl], compress, mode)
    return expected, N5Array(ds)


# --------------------------------------------------------------------------
# A tiny U-Net checkpoint
# --------------------------------------------------------------------------

#: anisotropic: step (2, 4, 4), context (12, 20, 20)
TINY = UNetConfig(downsample_factors=((1, 2, 2), (2, 2, 2)), num_fmaps=3, fmap_inc_factor=2)


def tiny_model(path: Path, config: UNetConfig = TINY, seed: int = 0) -> Path:
    import torch

    from affinity_dist.nn.checkpoint import save_model
    from affinity_dist.nn.config import build_model

    torch.manual_seed(seed)
    model = build_model(config)
    for p in model.parameters():  # larger weights than the default init: a non-trivial map
        p.data.mul_(3.0)
    return save_model(path, model, config)


# ---- agglomeration oracles -----------------------------------------------------------

def volume_contacts(fragments: np.ndarray, affs: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every contact of a whole volume's fragments, with plain numpy: ``(u, v)`` with
    ``u < v``, the integer sum of ``affs`` (native units) over its edges and their count."""
    us, vs, values = [], [], []
    for c, off in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
        here = tuple(slice(o, None) for o in off)
        there = tuple(slice(0, n - o) for o, n in zip(off, fragments.shape, strict=True))
        p, q, a = fragments[here], fragments[there], affs[c][here]
        m = p != q
        us.append(np.minimum(p, q)[m])
        vs.append(np.maximum(p, q)[m])
        values.append(a[m].astype(np.int64))
    pairs, inverse = np.unique(np.stack([np.concatenate(us), np.concatenate(vs)]), axis=1,
                               return_inverse=True)
    sums = np.zeros(pairs.shape[1], np.int64)
    np.add.at(sums, inverse.ravel(), np.concatenate(values))
    return pairs[0], pairs[1], sums, np.bincount(inverse.ravel(), minlength=pairs.shape[1])


def greedy_reference(u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                     scale: float, threshold: float, *, sizes: dict[int, int] | None = None,
                     min_size: int = 0, size_threshold: float = float("inf")
                     ) -> tuple[dict[int, int], list[tuple[int, int, float]]]:
    """Whole-volume greedy mean-affinity agglomeration with one global priority queue (in
    plain Python): merge the contact with the highest mean ``sum / (count * scale)`` (ties:
    the smallest original fragment pair) while it is above ``threshold``, summing the
    statistics of merged contacts; with ``min_size``, a contact scoring at or below
    ``size_threshold`` merges only if one of its regions has fewer than ``min_size``
    voxels (``sizes``: voxels per fragment). Returns fragment -> smallest fragment of its
    region (fragments that merged), and the merges (a, b, score)."""
    import heapq

    edges: dict[tuple[int, int], tuple[int, int, tuple[int, int]]] = {}
    near: dict[int, set[int]] = {}
    heap = []
    for a, b, s, c in zip(u.tolist(), v.tolist(), sums.tolist(), counts.tolist(), strict=True):
        edges[(a, b)] = (s, c, (a, b))
        near.setdefault(a, set()).add(b)
        near.setdefault(b, set()).add(a)
        heap.append((-(s / (c * scale)), (a, b), a, b))
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    size = dict(sizes or {})
    merges = []
    while heap:
        neg, tb, a, b = heapq.heappop(heap)
        if edges.get((a, b), (0, 0, None))[2] != tb or \
                -neg != edges[(a, b)][0] / (edges[(a, b)][1] * scale):
            continue  # stale
        if -neg <= threshold:
            break
        if min_size and -neg <= size_threshold and min(size.get(a, 0), size.get(b, 0)) >= \
                min_size:
            continue  # two large regions below the size threshold: never
        merges.append((a, b, -neg))
        r, o = min(a, b), max(a, b)
        del edges[(a, b)]
        near[r].discard(o)
        near[o].discard(r)
        for c in near.pop(o):
            so, co, tbo = edges.pop((min(o, c), max(o, c)))
            near[c].discard(o)
            key = (min(r, c), max(r, c))
            if key in edges:
                sr, cr, tbr = edges[key]
                so, co, tbo = sr + so, cr + co, min(tbr, tbo)
            edges[key] = (so, co, tbo)
            near[r].add(c)
            near[c].add(r)
            heapq.heappush(heap, (-(so / (co * scale)), tbo, *key))
        parent[o] = r
        size[r] = size.get(r, 0) + size.pop(o, 0)
    labels = {}
    for f in parent:
        r = f
        while r in parent:
            r = parent[r]
        labels[f] = r
    return labels, merges
