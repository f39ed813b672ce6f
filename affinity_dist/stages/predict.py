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

import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import (
    ConfigError,
    DataError,
    DestinationExistsError,
    InputNotFoundError,
    bad_value,
)
from ..geometry import BlockGrid, Box, as_shape
from ..nn.config import UNetConfig
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
)

__all__ = ["PredictPlan", "PredictStats", "default_model", "predict", "prepare_predict",
           "run_predict", "to_uint8"]

log = logging.getLogger(__name__)
Vec = tuple[int, int, int]
DEFAULT_BLOCK: Vec = (256, 256, 256)
#: Default output tile per device (rounded to the model's step): bench_predict on this CPU
#: finds 64^3 fastest for the shipped model (128^3 falls out of cache); a GPU wants more.
DEFAULT_TILE = {"cpu": 64, "cuda": 128}
STAGED = "_staging_affinities"
#: Bump when a change of this module changes the affinities it writes (keys the run state).
VERSION = 1


def default_model() -> Path:
    """The shipped model (trained on fib25, see models/fib25/README.md)."""
    return Path(__file__).resolve().parent.parent / "models" / "fib25.pt"


def to_uint8(affinities: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Affinities in [0, 1] as uint8 0-255 (rounded to nearest)."""
    scaled = np.clip(affinities, 0, 1) * np.float32(255)
    out: NDArray[np.uint8] = np.rint(scaled).astype(np.uint8)
    return out


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
    precision: Literal["bf16", "fp32"]
    batch: int = 1
    raw_key: str = ""

    @property
    def state(self) -> StageState:
        """The run state: keyed by raw, model checksum and everything that decides the
        affinities (not ``batch``, which does not)."""
        return StageState.of(self.dataset, "predict", {
            "version": VERSION, "raw": self.raw_key, "model_sha256": self.model_sha256,
            "block": list(self.grid.block_shape), "tile": list(self.tile),
            "net_output": list(self.net_output), "chunks": list(self.chunks),
            "dtype": self.dtype, "precision": self.precision, "device": self.device})

    @property
    def left(self) -> Vec:
        """Input voxels before an output voxel: the training crop's convention."""
        z, y, x = (c // 2 for c in self.config.context)
        return z, y, x

    def tile_starts(self, box: Box) -> list[range]:
        """Per axis, the starts of the global tiles that cover ``box``."""
        return [range(b0 // s * s, b1, s)
                for b0, b1, s in zip(box.start, box.stop, self.tile, strict=True)]

    def input_box(self, box: Box) -> Box:
        """The (unclipped) input window of all tiles covering ``box``."""
        starts = self.tile_starts(box)
        lo = tuple(r[0] - left for r, left in zip(starts, self.left, strict=True))
        hi = tuple(r[-1] + t + c - left for r, t, c, left in
                   zip(starts, self.net_output, self.config.context, self.left, strict=True))
        return Box(lo, hi)


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


@dataclass(frozen=True)
class _PredictBlock:
    plan: PredictPlan

    def __call__(self, block_id: int) -> tuple[int, int, int, float, float]:
        from ..nn.inference import cached_model, forward, resolve_device

        start = time.perf_counter()
        plan = self.plan
        box = plan.grid.write_box(block_id)
        window = plan.input_box(box)
        raw, read = open_volume(plan.dataset, "raw").read_mirrored(window)
        device = resolve_device(plan.device)
        model = cached_model(plan.model, device, plan.precision)
        channels = len(plan.config.offsets)
        out = np.empty((channels, *box.shape), plan.dtype)
        size = tuple(t + c for t, c in zip(plan.net_output, plan.config.context, strict=True))
        # raw[0, 0, 0] is the input of output voxel window.start + left
        base = tuple(s + left for s, left in zip(window.start, plan.left, strict=True))
        origins = list(itertools.product(*plan.tile_starts(box)))
        in_model = 0.0
        for first in range(0, len(origins), plan.batch):
            batch = origins[first:first + plan.batch]
            tiles = np.stack([raw[None, *(slice(o - b, o - b + n) for o, b, n in
                                          zip(origin, base, size, strict=True))]
                              for origin in batch])
            clock = time.perf_counter()
            affs = forward(model, tiles, device, plan.precision,
                           as_uint8=plan.dtype == "uint8")
            in_model += time.perf_counter() - clock
            for origin, tile in zip(batch, affs, strict=True):
                keep = box.intersect(Box(origin, _add(origin, plan.tile)))
                out[:, *keep.relative_to(box)] = tile[:, *keep.relative_to(
                    Box(origin, _add(origin, plan.net_output)))]
        open_volume(plan.dataset, STAGED, "r+").write(box, out)
        return (box.size, read, len(origins) * math.prod(size), in_model,
                time.perf_counter() - start)


def _add(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _check_device(device: str, local: bool) -> str:
    """Validate ``--device`` and name the device the default tile is chosen for: resolved
    here when the workers are local ('cuda' without a GPU refused), else as requested."""
    if device not in ("auto", "cpu", "cuda"):
        raise bad_value("--device", device, "'auto', 'cpu' or 'cuda'")
    if device == "cuda" and not local:
        return "cuda"
    from ..nn.inference import resolve_device

    return resolve_device(device).type  # type: ignore[arg-type]


def _default_tile(step: int, block: int, n: int, cap: int) -> int:
    """The largest multiple of ``step`` up to ``cap`` (and no larger than the block or the
    volume needs) that divides the block, so no tile straddles two blocks; else the
    largest such multiple."""
    limit = max(step, min(cap, block, -(-n // step) * step) // step * step)
    if block >= n:
        return limit
    dividing = [t for t in range(limit, 0, -step) if block % t == 0]
    return dividing[0] if dividing else limit


def prepare_predict(dataset: str | os.PathLike[str], *,
                    model: str | os.PathLike[str] | None = None,
                    block: Sequence[int] | None = None, tile: Sequence[int] | None = None,
                    device: str = "auto", precision: str = "bf16", dtype: str = "uint8",
                    batch: int = 1, overwrite: bool = False, local: bool = True) -> PredictPlan:
    """Validate a predict run without writing anything (``local``: the run's workers are
    on this machine, so ``--device cuda`` can be checked here)."""
    from ..training.train import load_checkpoint

    raw = open_volume(dataset, "raw")
    if len(raw.shape) != 3:
        raise DataError(f"raw: got a {len(raw.shape)}D array of shape {raw.shape}, expected "
                        "3D (z, y, x)")
    if raw.dtype != np.uint8 and raw.dtype.kind != "f":
        raise DataError(f"raw: got dtype {raw.dtype}, expected uint8 or float (ingest with "
                        "--rescale maps other types onto 0-255)")
    path = Path(model) if model is not None else default_model()
    if model is None and not path.is_file():
        raise InputNotFoundError(f"--model: the shipped model {str(path)!r} is missing; "
                                 "expected a checkpoint (pass --model)")
    _, config, _ = load_checkpoint(path)
    if config.in_channels != 1:
        raise ConfigError(f"--model: got {str(path)!r} with {config.in_channels} input "
                          "channels, expected 1 (raw is single-channel EM)")
    if config.padding != "valid" or config.norm in ("group", "instance"):
        raise ConfigError(f"--model: got padding {config.padding!r}, norm {config.norm!r}; "
                          "expected padding 'valid' and norm 'none' or 'batch' for seamless "
                          "blockwise prediction")
    resolved = _check_device(device, local)
    if precision not in ("bf16", "fp32"):
        raise bad_value("--precision", precision, "'bf16' or 'fp32'")
    if dtype not in ("uint8", "float32"):
        raise bad_value("--dtype", dtype, "'uint8' or 'float32'")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise bad_value("--batch", batch, "an integer >= 1")
    shape, chunks, step = raw.spatial_shape, raw.chunks, config.step
    if block is None:
        block = tuple(-(-b // c) * c for b, c in zip(DEFAULT_BLOCK, chunks, strict=True))
    block = as_shape(block, "--block", ndim=3)
    check_chunk_alignment(block, chunks, shape)
    if any(b < s and b < n for b, s, n in zip(block, step, shape, strict=True)):
        raise ConfigError(f"--block: got {tuple(block)}, expected at least the model's "
                          f"output unit {step} (its total downsampling) per axis")
    if tile is None:
        tile = tuple(_default_tile(s, b, n, DEFAULT_TILE[resolved])
                     for s, b, n in zip(step, block, shape, strict=True))
    tile = as_shape(tile, "--tile", ndim=3)
    if any(t % s for t, s in zip(tile, step, strict=True)):
        raise ConfigError(f"--tile: got {tuple(tile)}, expected multiples of the model's "
                          f"output unit {step} (its total downsampling)")
    net_output = config.valid_shapes(1, minimum_output=tile)[0][1]
    if "affinities" in open_dataset(dataset) and not overwrite:
        raise DestinationExistsError(f"--input: got {str(dataset)!r} which already holds "
                                     "'affinities'; expected none (or pass --overwrite)")
    z, y, x = tile
    cz, cy, cx = chunks
    return PredictPlan(str(dataset), str(path.absolute()), _sha256(path), config,
                       BlockGrid(shape, block), (z, y, x), net_output, (cz, cy, cx),
                       dtype, device, precision, batch,  # type: ignore[arg-type]
                       array_key(dataset, "raw"))


def _gpu_resources(client: Any | None) -> dict[str, float] | None:
    """Claim one GPU per task when the cluster's workers declare GPUs."""
    if client is None:
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any("GPU" in w.get("resources", {}) for w in workers) else None


def run_predict(plan: PredictPlan, *, client: Any | None = None,
                scheduler: LocalScheduler = "threads", progress: bool = True) -> PredictStats:
    """Execute a validated plan; see :func:`predict`."""
    group = open_dataset(plan.dataset, "r+")
    raw = open_volume(plan.dataset, "raw")
    config = plan.config
    attrs = {"offsets": [list(o) for o in config.offsets], "model": plan.model,
             "model_sha256": plan.model_sha256, "tile": list(plan.tile),
             "precision": plan.precision, "normalization": "uint8/255",
             "encoding": "uint8 0-255 = 0-1" if plan.dtype == "uint8" else "float32 0-1"}
    resources = _gpu_resources(client)
    state = plan.state
    attrs["run_key"] = state.key
    usable = STAGED in group and open_volume(plan.dataset, STAGED).attrs.get("run_key") == state.key
    resuming = state.begin(keep=usable)
    log.info("predict: %d blocks of %s, tile %s (network %s -> %s), context %s, %s%s",
             plan.grid.num_blocks, plan.grid.block_shape, plan.tile,
             _add(plan.net_output, config.context), plan.net_output, config.context,
             plan.precision, ", one GPU per task" if resources else "")
    if not resuming:
        create_volume(group, STAGED, shape=raw.spatial_shape, channels=len(config.offsets),
                      dtype=plan.dtype, voxel_size=raw.voxel_size, offset=raw.offset,
                      chunks=plan.chunks, attributes=attrs, overwrite=True, register=False)
    counts = BlockCounts()
    clock = time.perf_counter()
    with recording(state, "predict", lambda: delete_node(group, STAGED)):
        done = run_recorded(state, "predict", _PredictBlock(plan), list(plan.grid), counts,
                            previous=False, client=client, scheduler=scheduler,
                            progress=progress, resources=resources)
    seconds = time.perf_counter() - clock
    rename_volume(group, STAGED, "affinities")
    state.finish({"blocks": plan.grid.num_blocks})
    if counts.skipped:
        log.info("predict: resumed, %d blocks were done already", counts.skipped)
    stats = PredictStats(len(done), seconds, voxels=sum(d[0] for d in done),
                         read_voxels=sum(d[1] for d in done),
                         network_voxels=sum(d[2] for d in done),
                         model_seconds=sum(d[3] for d in done),
                         task_seconds=sum(d[4] for d in done), counts=counts)
    log.info("predict: %.2f Mvox/s; halo overhead %.2f (raw read / written), compute "
             "overhead %.2f (network input / output), %.0f %% of task time in the model",
             stats.voxels_per_second / 1e6, stats.halo_overhead, stats.compute_overhead,
             100 * stats.model_share)
    return stats


def predict(data: str | os.PathLike[str] | Any, *, model: str | os.PathLike[str] | None = None,
            out: str | os.PathLike[str] | None = None, block: Sequence[int] | None = None,
            tile: Sequence[int] | None = None, device: str = "auto", precision: str = "bf16",
            dtype: str = "uint8", batch: int = 1, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
            chunks: Sequence[int] = DEFAULT_CHUNKS, overwrite: bool = False,
            client: Any | None = None, scheduler: LocalScheduler = "threads",
            progress: bool = True) -> Path:
    """Predict ``affinities`` (c, z, y, x) from ``raw`` with a U-Net checkpoint.

    Parameters
    ----------
    data : a dataset path holding ``raw`` (the output is added to it), or a numpy/dask raw
        array, first stored as ``raw`` of a new dataset at ``out``. uint8 raw is normalised
        as in training (/255); float raw is used as it is.
    model : checkpoint (``model.pt`` of a training run); default: the shipped fib25 model.
    block : write block (z, y, x), a multiple of the chunk shape, at least the model's
        step; default 256^3 rounded up to whole chunks.
    tile : network output tile, a multiple of the model's step (default: up to 64^3 on
        CPU, 128^3 on GPU, dividing the block where possible so no tile straddles two
        blocks). Results depend on it only by float rounding.
    device : "auto" (CUDA where a worker has it), "cpu" or "cuda".
    precision : "bf16" (autocast, default) or "fp32".
    dtype : "uint8" (0-255, default) or "float32".
    batch : tiles per forward pass.
    client : ``distributed.Client``; ``None`` runs with Dask's local ``scheduler``.
    """
    if isinstance(data, str | os.PathLike):
        dataset: str | os.PathLike[str] = data
    else:
        dataset = dataset_from_array(out, "raw", data, voxel_size=voxel_size, chunks=chunks,
                                     overwrite=overwrite)
    plan = prepare_predict(dataset, model=model, block=block, tile=tile, device=device,
                           precision=precision, dtype=dtype, batch=batch, overwrite=overwrite,
                           local=client is None)
    run_predict(plan, client=client, scheduler=scheduler, progress=progress)
    return Path(dataset)
