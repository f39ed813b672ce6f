"""Per-block kernels: affinity-graph connected components, global ids, face pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity_dist.errors import ConfigError, DataError
from affinity_dist.kernels.fragments import (
    apply_mapping,
    block_plane,
    face_pairs,
    global_ids,
    label_block,
    native_threshold,
    split_ids,
    tile_grid,
    untile,
)

from .helpers import oracle_components, same_partition


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
       p=st.floats(0, 1), seed=st.integers(0, 2**16), dtype=st.sampled_from(["uint8", "f4"]))
def test_label_block_equals_scipy_oracle(shape: tuple[int, int, int], p: float, seed: int,
                                         dtype: str) -> None:
    rng = np.random.default_rng(seed)
    affs = (rng.random((3, *shape)) < p).astype(np.float32) * rng.random((3, *shape))
    if dtype == "uint8":
        affs = np.rint(affs * 255).astype(np.uint8)
    labels, n = label_block(affs, 0.3)
    assert labels.dtype == np.uint32 and labels.shape == shape
    assert labels.min() == 1 and labels.max() == n  # consecutive, 0 never used
    assert same_partition(labels, oracle_components(affs, 0.3))


def test_labels_are_in_raster_order_and_long_range_channels_ignored() -> None:
    affs = np.zeros((5, 2, 2, 2), np.float32)  # two extra long-range channels
    affs[3:] = 1.0
    affs[2, 1, 1, 1] = 1.0  # joins (1,1,1) to (1,1,0)
    labels, n = label_block(affs, 0.5)
    assert n == 7
    assert labels.ravel().tolist() == [1, 2, 3, 4, 5, 6, 7, 7]


def test_uint8_threshold_matches_float_semantics() -> None:
    values = np.arange(256, dtype=np.uint8)
    for t in (0.0, 0.5, 127 / 255, 0.9999, 1.0):
        assert ((values > native_threshold(t, np.dtype(np.uint8)))
                == (values / 255.0 > t)).all(), t


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan")])
def test_bad_threshold(t: float) -> None:
    with pytest.raises(ConfigError, match="--threshold"):
        label_block(np.zeros((3, 2, 2, 2), np.float32), t)


def test_bad_affinity_arrays() -> None:
    with pytest.raises(DataError, match=r"expected \(3, z, y, x\)"):
        label_block(np.zeros((2, 2, 2, 2), np.float32), 0.5)
    with pytest.raises(DataError, match="expected uint8"):
        label_block(np.zeros((3, 2, 2, 2), np.int16), 0.5)


def test_global_ids_round_trip_and_overflow() -> None:
    local = np.array([[0, 1], [2**32 - 1, 5]], np.uint32)
    ids = global_ids(local, 2**32 - 1)
    block, loc = split_ids(ids[ids > 0])
    assert (block == 2**32 - 1).all()
    assert loc.tolist() == [1, 2**32 - 1, 5]
    assert ids[0, 0] == 0
    with pytest.raises(DataError, match="block 4294967296"):
        global_ids(local, 2**32)


def test_face_pairs_only_edges_above_threshold() -> None:
    lower = np.array([[1, 1, 2], [3, 3, 3]], np.uint64)
    upper = np.array([[7, 8, 8], [9, 9, 7]], np.uint64)
    affs = np.array([[200, 255, 10], [0, 128, 255]], np.uint8)
    pairs = face_pairs(lower, upper, affs, 0.5)
    assert pairs.dtype == np.uint64
    assert pairs.T.tolist() == [[1, 7], [1, 8], [3, 7], [3, 9]]
    big = face_pairs(lower << np.uint64(40), upper, affs, 0.5)  # ids above 32 bits
    assert big.T.tolist() == [[1 << 40, 7], [1 << 40, 8], [3 << 40, 7], [3 << 40, 9]]
    empty = face_pairs(lower, upper, np.zeros_like(affs), 0.5)
    assert empty.shape == (2, 0)


def test_label_block_with_block_id_gives_global_ids() -> None:
    affs = (np.random.default_rng(1).random((3, 6, 7, 8)) < 0.6).astype(np.uint8) * 255
    local, n = label_block(affs, 0.5)
    ids, m = label_block(affs, 0.5, block_id=12345)
    assert n == m and ids.dtype == np.uint64
    np.testing.assert_array_equal(ids, global_ids(local, 12345))


@pytest.mark.parametrize(("shape", "tile", "tiled"), [
    ((8, 12, 10), (4, 6, 5), True), ((8, 12, 10), (8, 12, 10), True),
    ((8, 12, 10), (4, 4, 4), False), ((1, 1, 3), (1, 1, 1), True)])
def test_tiled_labels_and_mapping_are_the_block_in_chunk_order(
        shape: tuple[int, int, int], tile: tuple[int, int, int], tiled: bool) -> None:
    affs = (np.random.default_rng(2).random((3, *shape)) < 0.55).astype(np.uint8) * 255
    plain, n = label_block(affs, 0.5, block_id=7)
    ids, m = label_block(affs, 0.5, block_id=7, tile=tile)
    assert n == m and ids.dtype == np.uint64
    assert ids.shape == ((*tile_grid(shape, tile), *tile) if tiled else shape)  # type: ignore[misc]
    np.testing.assert_array_equal(untile(ids), plain)
    for axis in range(3):
        for index in (0, -1):
            np.testing.assert_array_equal(block_plane(ids, axis, index),
                                          np.take(plain, index, axis=axis))
    mapping = np.random.default_rng(3).integers(1, 99, n + 1).astype(np.uint64)
    expected = mapping[(plain & np.uint64(0xFFFFFFFF)).astype(np.int64)]
    out = apply_mapping(plain, mapping, tile=tile)
    assert out.shape == ids.shape
    np.testing.assert_array_equal(untile(out), expected)
    in_place = plain.copy()
    out = apply_mapping(in_place, mapping, tile=tile, in_place=True)
    assert (out is in_place) is not tiled
    np.testing.assert_array_equal(untile(out), expected)


def test_mapping_refuses_ids_outside_the_table_in_both_layouts() -> None:
    fragments = global_ids(np.full((4, 4, 4), 5, np.uint32), 3)
    for tile in (None, (2, 2, 2)):
        with pytest.raises(DataError, match="got local id 5, expected < 5"):
            apply_mapping(fragments, np.zeros(5, np.uint64), tile=tile)
