"""kernels.tiles: tiled block prediction with a fake network (no torch) equals predicting
the whole volume in one piece and a direct computation on the mirrored volume."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from affinity_dist.errors import ConfigError
from affinity_dist.geometry import BlockGrid, Box, reflect_indices
from affinity_dist.kernels.tiles import Tiling, predict_block

SHAPE = (13, 17, 11)
#: odd and even context: input voxels before / after an output voxel (1, 1) (1, 2) (2, 2)
CONTEXT = (2, 3, 4)
#: net_output larger than the tile along two axes: the surplus is computed and dropped
TILING = Tiling(tile=(4, 6, 4), net_output=(5, 6, 7), context=CONTEXT)


def fake_network(tiles: np.ndarray, *, as_uint8: bool = False) -> np.ndarray:
    """A 'valid' network: (N, 1, out + context) -> (N, 3, out). Output voxel p sees the
    input window of context + 1 voxels starting ``left`` before it: channel 0 its mean,
    1 the voxel itself, 2 first minus last voxel of the window. Integer sums: exact."""
    x = tiles[:, 0].astype(np.int64)
    window = tuple(c + 1 for c in CONTEXT)
    views = sliding_window_view(x, window, axis=(1, 2, 3))  # (N, *out, *window)
    out = views.shape[1:4]
    left = TILING.left
    own = x[:, left[0]:left[0] + out[0], left[1]:left[1] + out[1], left[2]:left[2] + out[2]]
    channels = [views.sum(axis=(4, 5, 6)) / math.prod(window), own,
                views[..., 0, 0, 0] - views[..., -1, -1, -1]]
    if as_uint8:
        return np.stack([np.asarray(c).astype(np.int64) % 256 for c in channels],
                        axis=1).astype(np.uint8)
    return np.stack(channels, axis=1).astype(np.float32)


def volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SHAPE).astype(np.uint8)


def read_mirrored(raw: np.ndarray, window: Box) -> np.ndarray:
    """``window`` of ``raw`` mirrored at the border, as storage's Volume.read_mirrored."""
    index = [reflect_indices(a, b, n) for a, b, n in
             zip(window.start, window.stop, raw.shape, strict=True)]
    return raw[np.ix_(*index)]


def blockwise(raw: np.ndarray, block: tuple[int, ...], batch: int = 1,
              dtype: Any = np.float32, **network: Any) -> np.ndarray:
    out = np.full((3, *raw.shape), 77, dtype)
    for block_id in BlockGrid(raw.shape, block):
        box = BlockGrid(raw.shape, block).write_box(block_id)
        result = predict_block(read_mirrored(raw, TILING.input_box(box)), box, TILING,
                               lambda t: fake_network(t, **network), channels=3,
                               dtype=dtype, batch=batch)
        assert result.output.shape == (3, *box.shape)
        assert result.network_voxels == (len(TILING.origins(box))
                                         * math.prod(TILING.input_shape))
        assert result.model_seconds >= 0
        out[:, *box.slices] = result.output
    return out


def oracle(raw: np.ndarray, **network: Any) -> np.ndarray:
    """The fake network applied once to the whole volume mirror-padded by its context."""
    pad = [(left, c - left) for left, c in zip(TILING.left, CONTEXT, strict=True)]
    padded = np.pad(raw, pad, mode="reflect")
    index = [reflect_indices(-left, n + c - left, n) for left, c, n in
             zip(TILING.left, CONTEXT, raw.shape, strict=True)]
    np.testing.assert_array_equal(padded, raw[np.ix_(*index)])  # one border convention
    result: np.ndarray = fake_network(padded[None, None], **network)[0]
    return result


@pytest.mark.parametrize("block", [SHAPE, (5, 7, 3), (4, 16, 10), (12, 6, 8), (1, 17, 2)])
def test_blockwise_equals_whole_volume_and_direct_computation(block: tuple[int, ...]) -> None:
    raw = volume()
    whole = blockwise(raw, SHAPE)
    np.testing.assert_array_equal(whole, oracle(raw))
    np.testing.assert_array_equal(blockwise(raw, block), whole)


@pytest.mark.parametrize("batch", [2, 3, 100])
def test_batches_do_not_change_the_result(batch: int) -> None:
    raw = volume(1)
    np.testing.assert_array_equal(blockwise(raw, (4, 16, 10), batch=batch),
                                  blockwise(raw, (4, 16, 10)))


def test_uint8_output_from_a_uint8_network() -> None:
    raw = volume(2)
    out = blockwise(raw, (5, 7, 3), dtype=np.uint8, as_uint8=True)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, oracle(raw, as_uint8=True))


def test_tiles_reach_the_network_in_batches() -> None:
    box = Box((3, 5, 2), (9, 13, 11))
    raw = read_mirrored(volume(), TILING.input_box(box))
    seen: list[int] = []

    def network(tiles: np.ndarray) -> np.ndarray:
        assert tiles.shape[1:] == (1, *TILING.input_shape)
        assert tiles.dtype == np.uint8
        seen.append(len(tiles))
        return fake_network(tiles)

    assert len(TILING.origins(box)) == 3 * 3 * 3  # z 0 4 8, y 0 6 12, x 0 4 8
    predict_block(raw, box, TILING, network, channels=3, dtype=np.float32, batch=5)
    assert seen == [5, 5, 5, 5, 5, 2]


def test_bad_window_or_network_output_is_one_line() -> None:
    box = Box((0, 0, 0), (4, 6, 4))
    raw = read_mirrored(volume(), TILING.input_box(box))
    with pytest.raises(ConfigError, match=r"^raw: got .* expected the input window"):
        predict_block(raw[:-1], box, TILING, fake_network, channels=3, dtype=np.float32)
    with pytest.raises(ConfigError, match=r"^network output: got"):
        predict_block(raw, box, TILING, lambda t: fake_network(t)[:, :2], channels=3,
                      dtype=np.float32)
    with pytest.raises(ConfigError, match=r"^batch: got 0"):
        predict_block(raw, box, TILING, fake_network, channels=3, dtype=np.float32, batch=0)


def test_the_kernel_imports_no_torch_dask_or_zarr() -> None:
    code = ("import sys, affinity_dist.kernels.tiles\n"
            "heavy = [m for m in ('torch', 'dask', 'zarr', 'distributed') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)
