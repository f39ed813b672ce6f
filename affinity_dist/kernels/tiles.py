"""Tiled inference of one block: pure numpy, the network passed in as a function.

A block's output is assembled from the global tiles of a
:class:`Tiling` (below) that cover it: every tile is cut out of the
block's input window (read mirrored at the volume border by the caller), batched, passed
through ``forward``, and its kept part inside the block copied out. A voxel's value
therefore depends only on the volume, the network and the tiling, never on the block.

No torch, no Zarr, no Dask here: the stage passes a ``forward`` closure over its cached
model (:func:`affinity_dist.nn.inference.forward`); tests pass a fake one.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ..errors import bad_value
from ..geometry import Box, as_shape

__all__ = ["Forward", "TiledBlock", "Tiling", "default_tile", "predict_block"]

#: A batch of input tiles ``(N, 1, *tiling.input_shape)`` -> ``(N, C, *tiling.net_output)``.
Forward = Callable[[NDArray[Any]], NDArray[Any]]


@dataclass(frozen=True)
class Tiling:
    """The global grid of network tiles that predict runs on (any ndim, usually z, y, x).

    Output voxel ``p`` belongs to the tile starting at ``p // tile * tile``. A tile is
    computed by one network pass of input ``net_output + context`` voxels giving
    ``net_output`` (>= ``tile``) output voxels, of which the first ``tile`` are kept. The
    input of output voxel ``p`` starts ``left = context // 2`` voxels before it (the
    training crop's convention). Tiles depend only on the volume, never on the blocks.

    >>> t = Tiling((4, 4), (6, 4), (2, 3))
    >>> t.left, t.input_shape, t.origins(Box((3, 0), (5, 4)))
    ((1, 1), (8, 7), [(0, 0), (4, 0)])
    >>> t.input_box(Box((3, 0), (5, 4)))
    Box(start=(-1, -1), stop=(11, 6))
    """

    tile: tuple[int, ...]
    net_output: tuple[int, ...]
    context: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tile", as_shape(self.tile, "tile"))
        ndim = len(self.tile)
        object.__setattr__(self, "net_output", as_shape(self.net_output, "net_output",
                                                         ndim=ndim))
        object.__setattr__(self, "context", as_shape(self.context, "context", ndim=ndim,
                                                      minimum=0))
        if any(n < t for n, t in zip(self.net_output, self.tile, strict=True)):
            raise bad_value("net_output", self.net_output, f"at least the tile {self.tile}")

    @property
    def left(self) -> tuple[int, ...]:
        """Input voxels before an output voxel: the training crop's convention."""
        return tuple(c // 2 for c in self.context)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The network's input per tile: ``net_output + context``."""
        return tuple(n + c for n, c in zip(self.net_output, self.context, strict=True))

    def tile_starts(self, box: Box) -> list[range]:
        """Per axis, the starts of the global tiles that cover ``box``."""
        return [range(b0 // s * s, b1, s)
                for b0, b1, s in zip(box.start, box.stop, self.tile, strict=True)]

    def origins(self, box: Box) -> list[tuple[int, ...]]:
        """The first output voxel of every tile covering ``box``, in C order."""
        return list(itertools.product(*self.tile_starts(box)))

    def input_box(self, box: Box) -> Box:
        """The (unclipped) input window of all tiles covering ``box``."""
        starts = self.tile_starts(box)
        lo = tuple(r[0] - left for r, left in zip(starts, self.left, strict=True))
        hi = tuple(r[-1] + i - left for r, i, left in
                   zip(starts, self.input_shape, self.left, strict=True))
        return Box(lo, hi)

    def input_of(self, origin: Sequence[int], window: Box) -> tuple[slice, ...]:
        """Slices that cut the input of the tile at ``origin`` out of an array covering
        the input window ``window`` (see :meth:`input_box`)."""
        return tuple(slice(o - left - w, o - left - w + i) for o, left, w, i in
                     zip(origin, self.left, window.start, self.input_shape, strict=True))

    def kept(self, origin: Sequence[int], box: Box) -> tuple[tuple[slice, ...],
                                                             tuple[slice, ...]]:
        """Where the tile at ``origin`` lands in ``box``: slices into an array covering
        ``box`` and into the tile's network output (its kept part inside ``box``)."""
        start = tuple(origin)
        keep = box.intersect(Box(start, tuple(o + t for o, t in
                                              zip(start, self.tile, strict=True))))
        output = Box(start, tuple(o + n for o, n in zip(start, self.net_output, strict=True)))
        return keep.relative_to(box), keep.relative_to(output)


def default_tile(step: int, block: int, n: int, cap: int) -> int:
    """One axis of the default tile: the largest multiple of ``step`` up to ``cap`` (and no
    larger than the block or the volume of ``n`` voxels needs) that divides the block, so
    no tile straddles two blocks; else the largest such multiple.

    >>> default_tile(4, 96, 200, 64), default_tile(4, 100, 200, 64), default_tile(4, 64, 10, 64)
    (48, 20, 12)
    """
    limit = max(step, min(cap, block, -(-n // step) * step) // step * step)
    if block >= n:
        return limit
    dividing = [t for t in range(limit, 0, -step) if block % t == 0]
    return dividing[0] if dividing else limit


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
