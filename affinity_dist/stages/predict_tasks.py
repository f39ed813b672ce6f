"""Predict's block task: one chunk-aligned block of affinities from its raw window, and
the run's statistics summed from the blocks' results.

On raw's own grid the block's tiles are cut from its mirrored input window. With
``--resample`` the network runs on the model's grid (:mod:`affinity_dist.kernels.resample`):
the block's model-grid box is computed, raw resampled over that box's input window (read
from the data voxels it needs), the tiles predicted there, and the affinities mapped back
onto the block's data voxels. Both are functions of global positions only, so the blockwise
result equals the whole volume's in both cases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..geometry import Box, reflect_indices
from ..kernels.resample import affinities_back, model_box_of, resample_window
from ..kernels.tiles import TiledBlock, predict_block
from ..kernels.values import require_finite
from ..runtime.markers import register_result
from ..runtime.scheduling import BlockCounts
from ..storage import open_volume

if TYPE_CHECKING:
    from .predict import PredictPlan

__all__ = ["STAGED", "BlockPrediction", "PredictBlock", "PredictStats", "Totals",
           "to_uint8"]

STAGED = "_staging_affinities"


def to_uint8(affinities: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Affinities in [0, 1] as uint8 0-255 (rounded to nearest)."""
    scaled = np.clip(affinities, 0, 1) * np.float32(255)
    out: NDArray[np.uint8] = np.rint(scaled).astype(np.uint8)
    return out


@register_result
class BlockPrediction(NamedTuple):
    """What one block task did (its recorded result)."""

    voxels: int  # output voxels written
    read_voxels: int  # raw voxels read
    network_voxels: int  # network input voxels
    model_seconds: float  # in the network
    task_seconds: float  # the whole task


@dataclass(frozen=True)
class PredictStats:
    """What a predict run did (for reports and benchmarks)."""

    blocks: int
    seconds: float
    voxels: int
    read_voxels: int
    network_voxels: int
    model_seconds: float = 0.0
    task_seconds: float = 0.0
    counts: BlockCounts | None = None

    @property
    def model_share(self) -> float:
        """Share of the tasks' time spent in the network (the rest: I/O, glue)."""
        return self.model_seconds / max(self.task_seconds, 1e-9)

    @property
    def halo_overhead(self) -> float:
        """Raw voxels read per affinity voxel written."""
        return self.read_voxels / max(self.voxels, 1)

    @property
    def compute_overhead(self) -> float:
        """Network input voxels per output voxel written (context + tile rounding)."""
        return self.network_voxels / max(self.voxels, 1)

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / max(self.seconds, 1e-9)


class Totals:
    """The sums of the blocks' results, added up as they arrive (nothing kept per block)."""

    def __init__(self) -> None:
        self.blocks = 0
        self.sums = BlockPrediction(0, 0, 0, 0.0, 0.0)

    def __call__(self, _: int, done: BlockPrediction) -> None:
        self.blocks += 1
        self.sums = BlockPrediction._make(a + b for a, b in zip(self.sums, done, strict=True))

    def stats(self, seconds: float, counts: BlockCounts) -> PredictStats:
        """The run's statistics from its blocks' results."""
        d = self.sums
        return PredictStats(self.blocks, seconds, voxels=d.voxels, read_voxels=d.read_voxels,
                            network_voxels=d.network_voxels, model_seconds=d.model_seconds,
                            task_seconds=d.task_seconds, counts=counts)


@dataclass(frozen=True)
class PredictBlock:
    plan: PredictPlan

    def __call__(self, block_id: int) -> BlockPrediction:
        start = time.perf_counter()
        plan = self.plan
        box = plan.grid.write_box(block_id)
        if plan.resample is None:
            output, read, block = self._direct(block_id, box)
        else:
            output, read, block = self._resampled(block_id, box)
        open_volume(plan.dataset, STAGED, "r+").write(box, output)
        return BlockPrediction(box.size, read, block.network_voxels, block.model_seconds,
                               time.perf_counter() - start)

    def _network(self, as_uint8: bool) -> Any:
        from ..nn.inference import cached_model, forward, resolve_device

        plan = self.plan
        device = resolve_device(plan.device)
        model = cached_model(plan.model, device, plan.precision)

        def network(tiles: NDArray[Any]) -> NDArray[Any]:
            return forward(model, tiles, device, plan.precision, as_uint8=as_uint8,
                           channels=len(plan.offsets))
        return network

    def _lut(self, raw: NDArray[Any]) -> NDArray[Any]:
        if not self.plan.lut:
            return raw
        mapped: NDArray[Any] = np.frombuffer(bytes.fromhex(self.plan.lut), np.uint8)[raw]
        return mapped

    def _direct(self, block_id: int, box: Box) -> tuple[NDArray[Any], int, TiledBlock]:
        plan, tiling = self.plan, self.plan.tiling
        window = tiling.input_box(box)
        raw, read = open_volume(plan.dataset, "raw").read_mirrored(window)
        raw = self._lut(raw)
        require_finite("raw", raw, f"block {block_id}", index=[  # NaN would zero a tile
            reflect_indices(a, b, n) for a, b, n in
            zip(window.start, window.stop, plan.grid.shape, strict=True)])
        block = predict_block(raw, box, tiling, self._network(plan.dtype == "uint8"),
                              channels=len(plan.offsets), dtype=plan.dtype, batch=plan.batch)
        return block.output, read, block

    def _resampled(self, block_id: int, box: Box) -> tuple[NDArray[Any], int, TiledBlock]:
        plan, tiling = self.plan, self.plan.tiling
        shape, model_shape, spans = plan.grid.shape, plan.model_shape, plan.spans
        model_box = model_box_of(box, spans, model_shape)
        window = tiling.input_box(model_box)
        volume, read = open_volume(plan.dataset, "raw"), [0]

        def source(part: Box) -> NDArray[Any]:
            data = volume.read(part)
            require_finite("raw", data, f"block {block_id}", part.start)
            read[0] += part.size
            return self._lut(data)

        raw = resample_window(source, [reflect_indices(a, b, n) for a, b, n in zip(
            window.start, window.stop, model_shape, strict=True)], shape,
            [1 / s for s in spans])
        block = predict_block(raw, model_box, tiling, self._network(False),
                              channels=len(plan.offsets), dtype=np.float32, batch=plan.batch)
        back = affinities_back(block.output, model_box, box, spans, model_shape)
        return (to_uint8(back) if plan.dtype == "uint8" else back), read[0], block

    def outputs(self, block_id: int) -> list[tuple[str, tuple[slice, ...]]]:
        """What the block writes: its box of the staged affinities (all channels)."""
        return [(STAGED, (slice(None), *self.plan.grid.write_box(block_id).slices))]
