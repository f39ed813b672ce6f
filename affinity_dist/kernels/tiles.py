"""Tiled inference of one block: pure numpy, the network passed in as a function.

A block's output is assembled from the global tiles of a
:class:`~affinity_dist.geometry.Tiling` that cover it: every tile is cut out of the
block's input window (read mirrored at the volume border by the caller), batched, passed
through ``forward``, and its kept part inside the block copied out. A voxel's value
therefore depends only on the volume, the network and the tiling, never on the block.

No torch, no Zarr, no Dask here: the stage passes a ``forward`` closure over its cached
model (:func:`affinity_dist.nn.inference.forward`); tests pass a fake one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import bad_value
from ..geometry import Box, Tiling

__all__ = ["Forward", "TiledBlock", "predict_block"]

#: A batch of input tiles ``(N, 1, *tiling.input_shape)`` -> ``(N, C, *tiling.net_output)``.
Forward = Callable[[NDArray[Any]], NDArray[Any]]


class TiledBlock(NamedTuple):
    """A block's output and what its computation cost."""

    output: NDArray[Any]  # (channels, *box.shape)
    network_voxels: int  # input voxels fed to the network (tiles x input shape)
    model_seconds: float  # time spent in ``forward``


def predict_block(raw: NDArray[Any], box: Box, tiling: Tiling, forward: Forward, *,
                  channels: int, dtype: DTypeLike, batch: int = 1) -> TiledBlock:
    """The output of the block ``box`` from its input window.

    Parameters
    ----------
    raw : the input over ``tiling.input_box(box)`` (mirrored where it leaves the volume).
    box : the block's write region (global voxel indices).
    forward : the network on a batch of tiles (see :data:`Forward`).
    channels, dtype : of the output (and of ``forward``'s result).
    batch : tiles per ``forward`` call.

    The tiles are visited in C order of their origins, ``batch`` at a time.
    """
    window = tiling.input_box(box)
    if raw.shape != window.shape:
        raise bad_value("raw", raw.shape, f"the input window {window.shape} of block "
                        f"{box.start}..{box.stop}")
    if batch < 1:
        raise bad_value("batch", batch, "an integer >= 1")
    out = np.empty((channels, *box.shape), dtype)
    origins = tiling.origins(box)
    wanted = (channels, *tiling.net_output)
    in_model = 0.0
    for first in range(0, len(origins), batch):
        group = origins[first:first + batch]
        tiles = np.stack([raw[None, *tiling.input_of(origin, window)] for origin in group])
        clock = time.perf_counter()
        result = forward(tiles)
        in_model += time.perf_counter() - clock
        if result.shape != (len(group), *wanted):
            raise bad_value("network output", result.shape, f"{(len(group), *wanted)}")
        for origin, tile in zip(group, result, strict=True):
            into, part = tiling.kept(origin, box)
            out[:, *into] = tile[:, *part]
    return TiledBlock(out, len(origins) * math.prod(tiling.input_shape), in_model)
