"""``affinity-dist stats``: the intensity histogram of a dataset's raw, blockwise; and the
checks of a dataset against the model that predicts it (intensities, voxel size).

Every block of raw (the default block, chunk-aligned) is counted into 256 levels on the
cluster; the client sums O(blocks) histograms and stores the result as the small table
``intensity`` beside the arrays (counts, the voxels they cover, the identity of the raw
they describe, and its 1st / 50th / 99th percentiles). ``predict --normalize`` maps raw
onto the model's training intensities with it (:mod:`affinity_dist.kernels.intensity`).

A stored histogram is trusted only after checking it against the data: 256 non-negative
counts summing to raw's voxel count, and written for the raw on disk now (its run key or
shape, dtype and metadata time); anything else is refused with one line.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ..geometry import BlockGrid, default_block
from ..kernels.intensity import check_histogram, histogram, percentile
from ..runtime.locks import writer_lease
from ..runtime.scheduling import LocalScheduler, run_blocks
from ..runtime.state import array_key

__all__ = ["TABLE", "check_voxel_size", "normalization_table", "raw_histogram", "stats",
           "stored_histogram"]

TABLE = "intensity"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Count:
    dataset: str
    grid: BlockGrid

    def __call__(self, block_id: int) -> NDArray[np.int64]:
        from ..storage import open_volume

        raw = open_volume(self.dataset, "raw").read(self.grid.write_box(block_id))
        return histogram(raw)


def raw_histogram(dataset: str | os.PathLike[str], *, client: Any | None = None,
                  scheduler: LocalScheduler = "threads", progress: bool = True
                  ) -> NDArray[np.int64]:
    """The 256-level histogram of ``raw`` (uint8), counted block by block."""
    from ..storage import open_volume

    raw = open_volume(dataset, "raw")
    if raw.dtype != np.uint8:
        raise DataError(f"raw: got dtype {raw.dtype}, expected uint8 for intensity statistics "
                        "(ingest with --rescale maps other types onto 0-255)")
    grid = BlockGrid(raw.spatial_shape, default_block(raw.chunks, raw.spatial_shape))
    parts = run_blocks(_Count(str(dataset), grid), range(grid.num_blocks), client=client,
                       stage="stats", scheduler=scheduler, progress=progress)
    counts: NDArray[np.int64] = np.sum(parts, axis=0, dtype=np.int64)
    return counts


@dataclass(frozen=True)
class _Intensity:  # the stored table's one array
    counts: NDArray[np.int64]


def stats(dataset: str | os.PathLike[str], *, client: Any | None = None,
          scheduler: LocalScheduler = "threads", progress: bool = True) -> dict[str, Any]:
    """Count raw's intensities and store them as the ``intensity`` table; returns its
    attributes (voxels, raw identity, percentiles)."""
    from ..storage import open_dataset, open_volume
    from ..storage.datasets import write_table

    with writer_lease(str(dataset), "stats"):
        counts = raw_histogram(dataset, client=client, scheduler=scheduler, progress=progress)
        raw = open_volume(dataset, "raw")
        attrs = {"voxels": int(math.prod(raw.spatial_shape)),
                 "raw": array_key(dataset, "raw"),
                 "percentiles": {str(q): round(percentile(counts, q), 3) for q in (1, 50, 99)}}
        write_table(open_dataset(dataset, mode="r+"), TABLE, _Intensity(counts), attrs)
    return attrs


def stored_histogram(dataset: str | os.PathLike[str]) -> NDArray[np.int64] | None:
    """The checked ``intensity`` histogram of ``dataset`` (None where stats never ran)."""
    from ..storage import open_dataset, open_volume
    from ..storage.datasets import read_table

    if TABLE not in open_dataset(dataset):
        return None
    table = read_table(dataset, TABLE)
    voxels = int(math.prod(open_volume(dataset, "raw").spatial_shape))
    if table.get("raw") != array_key(dataset, "raw"):
        raise DataError(f"--input: the intensity histogram of {str(dataset)!r} describes "
                        "another raw than the one on disk; expected a fresh one (rerun "
                        "affinity-dist stats)")
    return check_histogram(table.get("counts"), voxels, f"{dataset}/{TABLE}")


def normalization_table(dataset: str | os.PathLike[str], dtype: Any, model: str,
                        model_state: dict[str, Any], method: str) -> str:
    """``predict --normalize``: the uint8 lookup table (hex; "" for "none") that maps the
    dataset's raw (of ``dtype``) onto the model's training intensities, after checking
    both histograms."""
    from ..errors import ConfigError
    from ..kernels.intensity import lookup_table

    if method == "none":
        return ""
    if dtype != np.uint8:
        raise DataError(f"--normalize: got raw of dtype {dtype}, expected uint8")
    target = model_state.get("raw_histogram")
    if target is None:
        raise ConfigError(f"--normalize: got {method!r} with model {model!r}, which records no "
                          "training histogram; expected a model trained by this version "
                          "(or --normalize none)")
    trained = check_histogram(target, int(np.sum(target)) if isinstance(target, list) else -1,
                              f"--model {model}")
    source = stored_histogram(dataset)
    if source is None:
        raise DataError(f"--normalize: got {method!r}, but {str(dataset)!r} has no intensity "
                        f"histogram; expected one (run: affinity-dist stats --input {dataset})")
    return lookup_table(source, trained, method).tobytes().hex()  # type: ignore[arg-type]


def check_voxel_size(data: Any, trained: Any, model: Path) -> None:
    """Warn when the data's voxel size is not the one the model was trained at."""
    if trained is None or data is None or len(data) != 3:
        return
    if any(abs(float(d) / float(t) - 1) > 0.1 for d, t in zip(data, trained, strict=True)):
        log.warning("predict: raw's voxel size %s nm is not the %s nm model %s was trained "
                    "at; its affinities may be poor (fine-tune it on a few labelled "
                    "sections: README, 'Segment a new dataset')",
                    "x".join(f"{float(v):g}" for v in data),
                    "x".join(f"{float(v):g}" for v in trained), model.name)
