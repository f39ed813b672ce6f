"""Predict: raw -> affinities, block by block with halos, seamless.

Every Dask task writes one chunk-aligned block. The network runs on **tiles**: a global
grid of tiles of ``tile`` output voxels (a multiple of the model's total downsampling
``step``), each fed its input window of ``tile + context`` voxels mirrored at the volume
border. A voxel's affinity therefore depends only on the volume, the model and the tile
shape, never on the block shape or on which block computed it: blockwise prediction
equals predicting the whole volume at once (bit for bit with the same tile shape; within
float rounding, ~1e-6, across tile shapes). The halo is derived from the model, never typed.

Tasks carry the checkpoint path, not the weights: each worker loads the model once and
caches it. With GPU workers (declared with ``resources={"GPU": 1}``) every inference task
claims one GPU, so a GPU runs one block at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import (
    ConfigError,
    DataError,
    DestinationExistsError,
    InputNotFoundError,
)
from ..geometry import BlockGrid, default_block
from ..kernels.resample import resampled_shape
from ..kernels.tiles import Tiling, default_tile
from ..nn.checkpoint import file_sha256
from ..nn.config import UNetConfig
from ..options import PredictOptions
from ..runtime.locks import check_free, leased
from ..runtime.scheduling import BlockCounts, LocalScheduler
from ..runtime.state import StageState, array_key, recording, run_recorded
from ..storage import (
    DEFAULT_CHUNKS,
    check_chunk_alignment,
    create_volume,
    dataset_from_array,
    delete_node,
    open_dataset,
    open_volume,
    rename_volume,
    require_space,
    shard_shape,
)
from ..storage.location import as_path
from .predict_tasks import (
    STAGED,
    BlockPrediction,
    PredictBlock,
    PredictStats,
    Totals,
    to_uint8,
)
from .stats import check_voxel_size, normalization_table

__all__ = ["BlockPrediction", "PredictPlan", "PredictStats", "default_model", "predict",
           "prepare_predict", "run_predict", "to_uint8", "written_offsets"]

log = logging.getLogger(__name__)
Vec = tuple[int, int, int]
#: Default output tile per device (rounded to the model's step): bench_predict on this CPU
#: finds 64^3 fastest for the shipped model (128^3 falls out of cache); a GPU wants more.
DEFAULT_TILE = {"cpu": 64, "cuda": 128}
#: Bump when a change of this module changes the affinities it writes (keys the run state).
VERSION = 1


def written_offsets(config: UNetConfig, long_range: bool) -> tuple[Vec, ...]:
    """The offsets predict writes: the nearest three (DESIGN.md), then with ``long_range``
    the model's longer ones. A model's LSDs are training targets, never outputs."""
    return config.offsets if long_range else config.offsets[:3]


def default_model() -> Path:
    """The shipped model (trained on fib25, see models/fib25/README.md)."""
    return Path(__file__).resolve().parent.parent / "models" / "fib25.pt"


@dataclass(frozen=True)
class PredictPlan:
    """A validated predict run."""

    dataset: str
    model: str
    model_sha256: str
    config: UNetConfig
    grid: BlockGrid
    tile: Vec
    net_output: Vec
    chunks: Vec
    dtype: Literal["uint8", "float32"]
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["bf16", "fp32"]  # resolved: never "auto"
    batch: int = 1
    raw_key: str = ""
    segment_defaults: str = "{}"  # the model's tuned segment thresholds (JSON)
    normalize: str = "none"
    lut: str = ""  # --normalize: raw's uint8 lookup table (hex), applied before the network
    resample: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # raw's, model's nm
    shards: Vec | None = None  # of the affinities (one per block), or one file per chunk
    long_range: bool = False  # --long-range: every offset of the model, not the nearest three

    @property
    def model_shape(self) -> tuple[int, ...]:
        """The grid the network runs on: raw's, or raw resampled to the model's voxels."""
        if self.resample is None:
            return self.grid.shape
        return resampled_shape(self.grid.shape, *self.resample)

    @property
    def spans(self) -> tuple[float, ...]:
        """Model voxels per raw voxel, per axis (1 without resampling)."""
        if self.resample is None:
            return (1.0,) * len(self.grid.shape)
        return tuple(d / m for d, m in zip(*self.resample, strict=True))

    @property
    def state(self) -> StageState:
        """The run state: keyed by raw, model checksum and everything that decides the
        affinities (not ``batch``, which does not)."""
        return StageState.of(self.dataset, "predict", {
            "version": VERSION, "raw": self.raw_key, "model_sha256": self.model_sha256,
            "block": list(self.grid.block_shape), "tile": list(self.tile),
            "net_output": list(self.net_output), "chunks": list(self.chunks),
            "dtype": self.dtype, "precision": self.precision, "device": self.device,
            **({"normalize": self.normalize, "lut": self.lut} if self.lut else {}),
            **({"resample": [list(v) for v in self.resample]} if self.resample else {}),
            **({"shards": list(self.shards)} if self.shards else {}),
            **({"long_range": True} if self.long_range else {})})

    @property
    def offsets(self) -> tuple[Vec, ...]:
        """The offsets written (:func:`written_offsets`)."""
        return written_offsets(self.config, self.long_range)

    @property
    def tiling(self) -> Tiling:
        """The global tile grid: ``tile``, ``net_output`` and the model's context."""
        return Tiling(self.tile, self.net_output, self.config.context)


def _check_device(device: str, local: bool) -> str:
    """The device the default tile is chosen for: resolved here when the workers are
    local ('cuda' without a GPU refused), else as requested."""
    if device == "cuda" and not local:
        return "cuda"
    from ..nn.inference import resolve_device

    return resolve_device(device).type  # type: ignore[arg-type]




def _resampling(wanted: bool, data: Any, trained: Any, model: Path
                ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``--resample``: (raw's voxel size, the model's), or None where they agree."""
    if not wanted:
        return None
    if trained is None or len(trained) != 3:
        raise ConfigError(f"--resample: got the model {str(model)!r}, which records no voxel "
                          "size; expected a checkpoint that does (trained by this version)")
    if data is None or len(data) != 3:
        raise DataError("--resample: raw records no voxel size; expected one (ingest with "
                        "--voxel-size)")
    pair = tuple(float(v) for v in data), tuple(float(v) for v in trained)
    if all(abs(d / t - 1) < 1e-6 for d, t in zip(*pair, strict=True)):
        log.info("predict: raw is at the model's voxel size already; not resampled")
        return None
    return pair


def prepare_predict(dataset: str | os.PathLike[str], options: PredictOptions | None = None,
                    *, overwrite: bool = False, local: bool = True,
                    **kwargs: Any) -> PredictPlan:
    """Validate a predict run against the dataset and the model without writing anything
    (``local``: the run's workers are on this machine, so ``--device cuda`` can be
    checked here)."""
    from ..nn.checkpoint import load_checkpoint

    o = PredictOptions.of(options, **kwargs)
    check_free(dataset, "predict")  # a live run holds the outputs: refuse before any work
    raw = open_volume(dataset, "raw")
    if len(raw.shape) != 3:
        raise DataError(f"raw: got a {len(raw.shape)}D array of shape {raw.shape}, expected "
                        "3D (z, y, x)")
    if raw.dtype != np.uint8 and raw.dtype.kind != "f":
        raise DataError(f"raw: got dtype {raw.dtype}, expected uint8 or float (ingest with "
                        "--rescale maps other types onto 0-255)")
    path = Path(o.model) if o.model is not None else default_model()
    if o.model is None and not path.is_file():
        raise InputNotFoundError(f"--model: the shipped model {str(path)!r} is missing; "
                                 "expected a checkpoint (pass --model)")
    _, config, state = load_checkpoint(path)
    if config.in_channels != 1:
        raise ConfigError(f"--model: got {str(path)!r} with {config.in_channels} input "
                          "channels, expected 1 (raw is single-channel EM)")
    if config.padding != "valid" or config.norm in ("group", "instance"):
        raise ConfigError(f"--model: got padding {config.padding!r}, norm {config.norm!r}; "
                          "expected padding 'valid' and norm 'none' or 'batch' for seamless "
                          "blockwise prediction")
    resolved = _check_device(o.device, local)
    from ..nn.inference import resolve_precision

    precision = resolve_precision(o.precision, resolved)
    shape, step = raw.spatial_shape, config.step
    resample = _resampling(o.resample, raw.attrs.get("voxel_size"), state.get("voxel_size"),
                           path)
    _check_long_range(o.long_range, config, path, resample is not None)
    grid_shape = shape if resample is None else resampled_shape(shape, *resample)
    cz, cy, cx = o.chunks if o.chunks is not None else raw.chunks  # of the affinities
    block = o.block if o.block is not None else default_block((cz, cy, cx), grid_shape)
    check_chunk_alignment(block, (cz, cy, cx), shape)
    if any(b < s and b < n for b, s, n in zip(block, step, shape, strict=True)):
        raise ConfigError(f"--block: got {tuple(block)}, expected at least the model's "
                          f"output unit {step} (its total downsampling) per axis")
    spans = (1.0,) * 3 if resample is None else [d / m for d, m in zip(*resample, strict=True)]
    tile = o.tile if o.tile is not None else tuple(
        default_tile(s, math.ceil(b * f), n, DEFAULT_TILE[resolved])
        for s, b, f, n in zip(step, block, spans, grid_shape, strict=True))
    if any(t % s for t, s in zip(tile, step, strict=True)):
        raise ConfigError(f"--tile: got {tuple(tile)}, expected multiples of the model's "
                          f"output unit {step} (its total downsampling)")
    net_output = config.valid_shapes(1, minimum_output=tile)[0][1]
    if "affinities" in open_dataset(dataset) and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     "'affinities'; expected none (or pass --overwrite)")
    if o.dtype == "float32":  # 4 bytes a channel; zstd leaves float affinities ~1.2x
        channels = len(written_offsets(config, o.long_range))
        require_space(dataset, math.prod(shape) * 4 * channels / 1.2, "--float")
    z, y, x = tile
    lut = normalization_table(dataset, raw.dtype, str(path), state, o.normalize)
    if resample is None:
        check_voxel_size(raw.voxel_size, state.get("voxel_size"), path)
    return PredictPlan(str(dataset), str(path.absolute()), file_sha256(path), config,
                       BlockGrid(shape, block), (z, y, x), net_output, (cz, cy, cx),
                       o.dtype, o.device, precision, o.batch, array_key(dataset, "raw"),
                       json.dumps(state.get("segment", {})), o.normalize, lut, resample,
                       shard_shape(o.shards, shape, (cz, cy, cx), block), o.long_range)


def _check_long_range(wanted: bool, config: UNetConfig, model: Path, resampled: bool
                      ) -> None:
    """``--long-range``: refused for a model without longer offsets, and with
    ``--resample`` (only the nearest three map back onto raw's grid)."""
    if not wanted:
        return
    if len(config.offsets) <= 3:
        raise ConfigError(f"--long-range: got the model {str(model)!r}, whose only offsets "
                          "are the nearest three; expected a model trained with long-range "
                          "offsets")
    if resampled:
        raise ConfigError("--long-range: got it with --resample; expected one of them (only "
                          "the nearest three affinities are mapped back onto raw's grid)")


def _gpu_resources(client: Any | None) -> dict[str, float] | None:
    """Claim one GPU per task when the cluster's workers declare GPUs."""
    if client is None:
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any("GPU" in w.get("resources", {}) for w in workers) else None


def _attributes(plan: PredictPlan, key: str) -> dict[str, Any]:
    """The affinities' attributes: offsets, model, tile, encoding and the run key."""
    return {"offsets": [list(o) for o in plan.offsets], "model": plan.model,
            "model_sha256": plan.model_sha256, "tile": list(plan.tile),
            "precision": plan.precision, "normalization": "uint8/255",
            "intensity_normalization": plan.normalize,
            "resampled": ({"raw_voxel_size": list(plan.resample[0]),
                           "model_voxel_size": list(plan.resample[1]),
                           "model_grid": list(plan.model_shape)} if plan.resample else None),
            "segment_defaults": json.loads(plan.segment_defaults),
            "encoding": "uint8 0-255 = 0-1" if plan.dtype == "uint8" else "float32 0-1",
            "run_key": key}


def _usable(plan: PredictPlan, group: Any, key: str) -> bool:
    """Whether an interrupted run with this key left its staging array in place."""
    return STAGED in group and open_volume(plan.dataset, STAGED).attrs.get("run_key") == key


def _create_staging(plan: PredictPlan, group: Any, raw: Any, key: str) -> None:
    """1. The staging array the blocks write into, stamped with the run key."""
    create_volume(group, STAGED, shape=raw.spatial_shape, channels=len(plan.offsets),
                  dtype=plan.dtype, voxel_size=raw.voxel_size, offset=raw.offset,
                  chunks=plan.chunks, shards=plan.shards, attributes=_attributes(plan, key),
                  overwrite=True, register=False)


def _publish(plan: PredictPlan, group: Any, state: StageState, counts: BlockCounts) -> None:
    """3. The staging array renamed into place; the stage marked complete."""
    rename_volume(group, STAGED, "affinities")
    state.finish({"blocks": plan.grid.num_blocks})
    if counts.skipped:
        log.info("predict: resumed, %d blocks were done already", counts.skipped)


@leased("predict")
def run_predict(plan: PredictPlan, *, client: Any | None = None,
                scheduler: LocalScheduler = "threads", progress: bool = True) -> PredictStats:
    """Execute a validated plan; see :func:`predict`.

    1. create the staging array (or keep an interrupted run's, same key); 2. run the
    blocks, one recorded task each; 3. publish: rename into place; 4. the statistics.
    """
    group = open_dataset(plan.dataset, "r+")
    raw = open_volume(plan.dataset, "raw")
    resources = _gpu_resources(client)
    state = plan.state
    resuming = state.begin(keep=_usable(plan, group, state.key))
    log.info("predict: %d blocks of %s, tile %s (network %s -> %s), context %s, %s%s",
             plan.grid.num_blocks, plan.grid.block_shape, plan.tile,
             plan.tiling.input_shape, plan.net_output, plan.config.context,
             plan.precision, ", one GPU per task" if resources else "")
    if not resuming:
        _create_staging(plan, group, raw, state.key)
    counts = BlockCounts()
    clock = time.perf_counter()
    totals = Totals()
    with recording(state, "predict", lambda: delete_node(group, STAGED)):
        run_recorded(state, "predict", PredictBlock(plan), plan.grid.blocks, counts,
                     previous=False, reduce=totals, client=client, scheduler=scheduler,
                     progress=progress, resources=resources)
    seconds = time.perf_counter() - clock
    _publish(plan, group, state, counts)
    stats = totals.stats(seconds, counts)
    log.info("predict: %.2f Mvox/s; halo overhead %.2f (raw read / written), compute "
             "overhead %.2f (network input / output), %.0f %% of task time in the model",
             stats.voxels_per_second / 1e6, stats.halo_overhead, stats.compute_overhead,
             100 * stats.model_share)
    return stats


def predict(data: str | os.PathLike[str] | Any, options: PredictOptions | None = None, *,
            out: str | os.PathLike[str] | None = None,
            voxel_size: Sequence[float] = (1.0, 1.0, 1.0), overwrite: bool = False,
            client: Any | None = None, scheduler: LocalScheduler = "threads",
            progress: bool = True, **kwargs: Any) -> Path:
    """Predict ``affinities`` (c, z, y, x) from ``raw`` with a U-Net checkpoint.

    Parameters
    ----------
    data : a dataset path holding ``raw`` (the output is added to it), or a numpy/dask raw
        array, first stored as ``raw`` of a new dataset at ``out`` (with ``voxel_size`` and
        the options' chunks). uint8 raw is normalised as in training (/255); float raw is
        used as it is.
    options : :class:`~affinity_dist.options.PredictOptions` (model — default the shipped
        fib25 model —, block, tile, device, precision, dtype, batch, chunks), or its fields
        as keyword arguments. Results depend on the tile only by float rounding.
    client : ``distributed.Client``; ``None`` runs in this process (``scheduler``:
        threads or synchronous).
    """
    o = PredictOptions.of(options, **kwargs)
    if isinstance(data, str | os.PathLike):
        dataset: str | os.PathLike[str] = data
    else:
        dataset = dataset_from_array(out, "raw", data, voxel_size=voxel_size,
                                     chunks=o.chunks or DEFAULT_CHUNKS, overwrite=overwrite)
    plan = prepare_predict(dataset, o, overwrite=overwrite, local=client is None)
    run_predict(plan, client=client, scheduler=scheduler, progress=progress)
    return as_path(dataset)
