"""Blockwise segmentation equals whole-volume affinity-graph connected components."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affinity_dist import segment
from affinity_dist.geometry import Box
from affinity_dist.storage import create_volume, open_volume, read_table, staged_dataset

from .test_fragments import oracle_components, same_partition


def write_affinities(path: Path, affs: np.ndarray, chunks: tuple[int, int, int]) -> Path:
    with staged_dataset(path, overwrite=True) as group:
        vol = create_volume(group, "affinities", shape=affs.shape[1:], channels=affs.shape[0],
                            dtype=affs.dtype, chunks=chunks, voxel_size=(40, 4, 4))
        vol.write(Box((0, 0, 0), affs.shape[1:]), affs)
    return path


def random_affinities(shape: tuple[int, ...], seed: int, p: float = 0.75,
                      dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    affs = (rng.random((3, *shape)) < p) * rng.uniform(0.5, 1, (3, *shape))
    affs = affs.astype(np.float32)
    return np.rint(affs * 255).astype(np.uint8) if dtype == np.uint8 else affs


def check_against_oracle(path: Path, affs: np.ndarray, threshold: float) -> np.ndarray:
    seg = open_volume(path, "segmentation").array[...]
    assert seg.dtype == np.uint64 and seg.shape == affs.shape[1:]
    assert same_partition(seg, oracle_components(affs, threshold))
    ids = np.unique(seg)
    assert ids[0] >= 1 and (ids == np.arange(1, len(ids) + 1)).all()  # consecutive
    return seg


@pytest.mark.parametrize("block", [(4, 4, 4), (8, 4, 12), (16, 16, 16), (4, 12, 8)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_blockwise_equals_whole_volume(tmp_path: Path, block: tuple[int, int, int],
                                       dtype: type) -> None:
    # 17 = 2*8 + 1, 13 = 3*4 + 1, 9 = 2*4 + 1: one-voxel-thick edge blocks on every axis
    affs = random_affinities((17, 13, 9), seed=1, dtype=dtype)
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    segment(path, threshold=0.5, block=block, progress=False)
    check_against_oracle(path, affs, 0.5)
    fragments = open_volume(path, "fragments").array[...]
    # fragments never span blocks: the block id is in the high bits
    assert ((fragments >> np.uint64(32)) < np.prod([-(-n // b) for n, b in
                                                     zip((17, 13, 9), block)])).all()
    table = read_table(path)
    assert table["num_segments"] == len(np.unique(open_volume(path, "segmentation").array[...]))
    assert open_volume(path, "segmentation").voxel_size == (40.0, 4.0, 4.0)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(1, 14), st.integers(1, 14), st.integers(1, 14)),
       block=st.tuples(st.sampled_from([2, 4, 6]), st.sampled_from([2, 4, 8]),
                       st.sampled_from([2, 6])),
       seed=st.integers(0, 1000), p=st.floats(0.3, 0.95))
def test_partition_does_not_depend_on_block_shape(tmp_path: Path, shape: tuple[int, int, int],
                                                  block: tuple[int, int, int], seed: int,
                                                  p: float) -> None:
    affs = random_affinities(shape, seed, p)
    path = write_affinities(tmp_path / "h.zarr", affs, (2, 2, 2))
    segment(path, threshold=0.5, block=block, overwrite=True, progress=False)
    check_against_oracle(path, affs, 0.5)


def test_without_fragments_gives_the_same_segmentation(tmp_path: Path) -> None:
    affs = random_affinities((13, 11, 10), seed=3)
    a = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    b = write_affinities(tmp_path / "b.zarr", affs, (4, 4, 4))
    segment(a, block=(8, 4, 4), progress=False)
    segment(b, block=(8, 4, 4), keep_fragments=False, progress=False)
    np.testing.assert_array_equal(open_volume(a, "segmentation").array[...],
                                  open_volume(b, "segmentation").array[...])
    assert not (b / "fragments").exists() and (a / "fragments").exists()
