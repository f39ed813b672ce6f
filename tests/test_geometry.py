"""Block geometry: exact tiling, halos, faces, ids (hypothesis over awkward shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity_dist.errors import ConfigError
from affinity_dist.geometry import BlockGrid, Box, as_shape, as_vector


@st.composite
def grids(draw: st.DrawFn, max_ndim: int = 3) -> tuple[BlockGrid, tuple[int, ...]]:
    ndim = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.lists(st.integers(1, 17), min_size=ndim, max_size=ndim)))
    block = tuple(draw(st.integers(1, s + 3)) for s in shape)
    halo = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    return BlockGrid(shape, block), halo


@settings(max_examples=150, deadline=None)
@given(grids())
def test_write_blocks_tile_volume_exactly_once(case: tuple[BlockGrid, tuple[int, ...]]) -> None:
    grid, _ = case
    cover = np.zeros(grid.shape, np.int32)
    for block_id in grid:
        box = grid.write_box(block_id)
        assert all(s >= 1 for s in box.shape)  # edge blocks may be 1 voxel thick, never empty
        cover[box.slices] += 1
    assert (cover == 1).all()


@settings(max_examples=150, deadline=None)
@given(grids())
def test_read_regions_contain_write_regions_and_report_padding(
        case: tuple[BlockGrid, tuple[int, ...]]) -> None:
    grid, halo = case
    volume = Box((0,) * grid.ndim, grid.shape)
    for block_id in grid:
        write = grid.write_box(block_id)
        read, padding = grid.read_box(block_id, halo)
        assert read.contains(write)
        assert volume.contains(read)
        for axis, (before, after) in enumerate(padding):
            # the clipped read region plus the padding is exactly write +- halo
            assert read.start[axis] - before == write.start[axis] - halo[axis]
            assert read.stop[axis] + after == write.stop[axis] + halo[axis]
            assert before >= 0 and after >= 0
            assert (before > 0) == (write.start[axis] - halo[axis] < 0)


@settings(max_examples=200, deadline=None)
@given(grids())
def test_faces_pair_exactly_the_neighbouring_blocks(case: tuple[BlockGrid, tuple[int, ...]]
                                                    ) -> None:
    grid, _ = case
    expected = set()
    for a in grid:
        index = grid.block_index(a)
        for axis in range(grid.ndim):
            up = list(index)
            up[axis] += 1
            if up[axis] < grid.grid_shape[axis]:
                expected.add((a, grid.block_id(up), axis))
    faces = grid.faces()
    assert faces.shape == (len(expected), 3)
    assert {tuple(int(v) for v in row) for row in faces} == expected
    for lower, upper, axis in faces:
        # the face plane is the upper block's start and the lower block's stop
        assert grid.write_box(int(upper)).start[axis] == grid.write_box(int(lower)).stop[axis]


@settings(max_examples=200, deadline=None)
@given(grids())
def test_block_index_and_id_round_trip(case: tuple[BlockGrid, tuple[int, ...]]) -> None:
    grid, _ = case
    assert [grid.block_id(grid.block_index(i)) for i in grid] == list(range(grid.num_blocks))


def test_one_voxel_edge_blocks() -> None:
    grid = BlockGrid((9, 5, 7), (4, 4, 3))
    assert grid.grid_shape == (3, 2, 3)
    assert grid.write_box(grid.num_blocks - 1).shape == (1, 1, 1)
    box, padding = grid.read_box(0, (2, 1, 0))
    assert box == Box((0, 0, 0), (6, 5, 3))
    assert padding == ((2, 0), (1, 0), (0, 0))


def test_anisotropic_halo() -> None:
    grid = BlockGrid((20, 100, 100), (10, 50, 50))
    box, padding = grid.read_box(grid.block_id((1, 1, 0)), (2, 16, 16))
    assert box == Box((8, 34, 0), (20, 100, 66))
    assert padding == ((0, 2), (0, 16), (16, 0))


@pytest.mark.parametrize("value", [(0, 4, 4), (4, -1, 4), (4, 4), (2.5, 4, 4)])
def test_bad_block_shapes(value: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="block"):
        BlockGrid((10, 10, 10), value)  # type: ignore[arg-type]


def test_validators_name_argument_and_value() -> None:
    with pytest.raises(ConfigError, match=r"--block: got \(4, 0, 4\), expected every value >= 1"):
        as_shape((4, 0, 4), "--block")
    with pytest.raises(ConfigError, match=r"--voxel-size: got .*expected three positive"):
        as_vector("--voxel-size", (0, 4, 4))
    with pytest.raises(ValueError):  # leaves subclass the builtin
        as_vector("--voxel-size", (float("nan"), 4, 4))
