"""segment --method agglomerate: blockwise on Dask equals whole-volume agglomeration of the
same fragments, for block shapes that do not divide the volume; a new threshold only cuts
the stored merge tree; bad affinities refused with nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affinity_dist import segment
from affinity_dist.errors import DataError
from affinity_dist.geometry import Box
from affinity_dist.kernels.graph import native_affinities
from affinity_dist.stages.segment import prepare_segment
from affinity_dist.storage import create_volume, list_arrays, open_volume, staged_dataset

from .helpers import greedy_reference, volume_contacts


def smooth_affinities(shape: tuple[int, int, int], seed: int, dtype: type = np.uint8
                      ) -> np.ndarray:
    """Affinities of a few blobby objects: high inside, low across, with noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 1.5)
    objects = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75]))
    affs = np.zeros((3, *shape))
    for c, off in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
        here = tuple(slice(o, None) for o in off)
        there = tuple(slice(0, n - o) for o, n in zip(off, shape, strict=True))
        affs[c][here] = np.where(objects[here] == objects[there], 0.9, 0.15)
    affs = np.clip(affs + rng.normal(0, 0.12, affs.shape), 0, 1)
    return (np.rint(affs * 255).astype(np.uint8) if dtype == np.uint8
            else affs.astype(np.float32))


def write_affinities(path: Path, affs: np.ndarray, chunks: tuple[int, int, int],
                     voxel_size: tuple[float, ...] = (10, 10, 10)) -> Path:
    with staged_dataset(path, overwrite=True) as group:
        create_volume(group, "affinities", shape=affs.shape[1:], channels=3, dtype=affs.dtype,
                      chunks=chunks, voxel_size=voxel_size).write(
            Box((0, 0, 0), affs.shape[1:]), affs)
    return path


def read(path: Path, name: str) -> np.ndarray:
    volume = open_volume(path, name)
    return volume.read(Box((0, 0, 0), volume.spatial_shape))


def reference(fragments: np.ndarray, affs: np.ndarray, threshold: float) -> np.ndarray:
    """Whole-volume greedy agglomeration of the stored fragments (one global queue)."""
    scale = 255 if affs.dtype == np.uint8 else 2**24
    u, v, sums, counts = volume_contacts(fragments, native_affinities(affs))
    labels, _ = greedy_reference(u, v, sums, counts, scale, threshold)
    flat = fragments.ravel()
    return np.array([labels.get(int(f), int(f)) for f in flat], np.uint64).reshape(
        fragments.shape)


SHAPE = (17, 21, 19)  # 17 = 2*8 + 1 ...: one-voxel edge blocks for block 8 and 4


@pytest.mark.parametrize(("block", "fanout", "dtype"), [
    ((8, 8, 8), (2, 2, 2), np.uint8), ((4, 12, 8), (3, 2, 2), np.uint8),
    ((16, 20, 4), (2, 2, 2), np.float32)])
def test_blockwise_equals_whole_volume_agglomeration(tmp_path: Path, block: tuple[int, ...],
                                                     fanout: tuple[int, ...],
                                                     dtype: type) -> None:
    affs = smooth_affinities(SHAPE, seed=1, dtype=dtype)
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    for t in (0.3, 0.5, 0.7):
        segment(path, threshold=t, block=block, fanout=fanout, min_seed_size=4,
                halo=(3, 3, 3), overwrite=True, progress=False)
        fragments, seg = read(path, "fragments"), read(path, "segmentation")
        assert (seg > 0).all()  # every voxel assigned
        np.testing.assert_array_equal(seg, reference(fragments, affs, t))
    assert len(np.unique(fragments)) > 10 and len(np.unique(seg)) < len(np.unique(fragments))


def test_new_threshold_only_cuts_the_tree(tmp_path: Path) -> None:
    affs = smooth_affinities(SHAPE, seed=2)
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    segment(path, threshold=0.5, block=(8, 8, 8), min_seed_size=4, progress=False)
    fragments = path / "fragments" / "zarr.json"
    stamp = fragments.stat().st_mtime_ns
    plan = prepare_segment(path, threshold=0.7, block=(8, 8, 8), min_seed_size=4,
                           overwrite=True)
    from affinity_dist.stages.segment import run_segment

    summary = run_segment(plan, progress=False)
    assert fragments.stat().st_mtime_ns == stamp  # fragments and tree kept
    assert summary.num_segments == len(np.unique(read(path, "segmentation")))
    assert not [n for n in list_arrays(path) if n.startswith("_")]
    assert not [p.name for p in path.iterdir() if p.name.startswith(("_staging", "_segment_cut",
                                                                     "_agglomerate_work"))]


def test_nan_affinities_exit_2_and_leave_nothing(tmp_path: Path) -> None:
    affs = smooth_affinities(SHAPE, seed=3, dtype=np.float32)
    affs[1, 9, 10, 11] = np.nan
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    with pytest.raises(DataError, match="holds NaN"):
        segment(path, block=(8, 8, 8), progress=False)
    assert sorted(p.name for p in path.iterdir()) == ["affinities", "zarr.json"]
