"""Block geometry: exact tiling, halos, faces, ids (hypothesis over awkward shapes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity_dist.errors import ConfigError
from affinity_dist.geometry import BlockGrid, Box, ReductionTree, as_shape, as_vector
from affinity_dist.kernels.tiles import Tiling, default_tile


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


@st.composite
def tilings(draw: st.DrawFn) -> tuple[Tiling, Box]:
    tile = tuple(draw(st.lists(st.integers(1, 7), min_size=3, max_size=3)))
    net_output = tuple(t + draw(st.integers(0, 3)) for t in tile)
    context = tuple(draw(st.lists(st.integers(0, 9), min_size=3, max_size=3)))
    start = tuple(draw(st.lists(st.integers(0, 20), min_size=3, max_size=3)))
    stop = tuple(s + draw(st.integers(1, 15)) for s in start)
    return Tiling(tile, net_output, context), Box(start, stop)


@settings(max_examples=150, deadline=None)
@given(tilings())
def test_tiles_cover_a_box_once_and_read_inside_its_input_window(
        case: tuple[Tiling, Box]) -> None:
    tiling, box = case
    assert tiling.left == tuple(c // 2 for c in tiling.context)
    window = tiling.input_box(box)
    cover = np.zeros(box.shape, np.int32)
    lo, hi = list(window.shape), [0, 0, 0]
    for origin in tiling.origins(box):
        assert all(o % t == 0 for o, t in zip(origin, tiling.tile, strict=True))
        into, part = tiling.kept(origin, box)
        cover[into] += 1
        out = np.zeros(tiling.net_output, bool)
        assert out[part].shape == cover[into].shape  # the kept part is inside the output
        # the tile's output part starts at its origin: global voxel = origin + index
        assert all(p.start + o == i.start + b for p, o, i, b in
                   zip(part, origin, into, box.start, strict=True))
        cut = tiling.input_of(origin, window)
        assert all(s.start >= 0 and s.stop <= n and s.stop - s.start == i for s, n, i in
                   zip(cut, window.shape, tiling.input_shape, strict=True))
        # the input of output voxel ``origin`` starts ``left`` voxels before it
        assert all(s.start + w == o - left for s, w, o, left in
                   zip(cut, window.start, origin, tiling.left, strict=True))
        lo = [min(a, s.start) for a, s in zip(lo, cut, strict=True)]
        hi = [max(a, s.stop) for a, s in zip(hi, cut, strict=True)]
    assert (cover == 1).all()
    assert lo == [0, 0, 0] and tuple(hi) == window.shape  # the window is the tiles' hull


def test_tiling_refuses_an_output_smaller_than_the_tile() -> None:
    with pytest.raises(ConfigError, match=r"net_output: got \(4, 3, 4\), expected at least"):
        Tiling((4, 4, 4), (4, 3, 4), (2, 2, 2))
    with pytest.raises(ConfigError, match="context"):
        Tiling((4, 4, 4), (4, 4, 4), (2, -1, 2))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(1, 300), st.integers(1, 300), st.integers(1, 150))
def test_default_tile_is_the_largest_fitting_multiple_of_the_step(
        step: int, block: int, n: int, cap: int) -> None:
    tile = default_tile(step, block, n, cap)
    assert tile % step == 0
    fitting = list(range(step, max(step, min(cap, block, -(-n // step) * step)) + 1, step))
    if block < n and any(block % t == 0 for t in fitting):
        assert tile == max(t for t in fitting if block % t == 0)
    else:
        assert tile == max(fitting, default=step)


@pytest.mark.parametrize(("grid", "fanout"), [((1, 1, 1), (2, 2, 2)), ((3, 1, 5), (2, 2, 2)),
                                              ((4, 3, 2), (3, 2, 4)), ((2, 2, 2), (2, 2, 2))])
def test_leaf_groups_partition_the_blocks_as_their_parents_see_them(
        grid: tuple[int, int, int], fanout: tuple[int, int, int]) -> None:
    tree = ReductionTree(grid, fanout)
    groups = [tree.leaf_group(g) for g in range(tree.num_leaf_groups)]
    assert sorted(b for group in groups for b in group) == list(range(int(np.prod(grid))))
    if tree.num_levels > 1:
        for g, group in enumerate(groups):
            assert [tree.parent(0, b) for b in group] == [(g, i) for i in range(len(group))]
    else:
        assert groups == [[0]]
