"""Raw intensity statistics and normalisation maps: pure numpy (no I/O, no Dask).

A volume's statistics are the 256-bin histogram of its uint8 raw, summed over blocks (so
blockwise equals whole-volume exactly). Normalisation is a lookup table ``lut[raw]``, uint8
to uint8, that moves a volume's intensities onto those a model was trained on:

* ``"histogram"``: histogram matching, each level to the training level of the same
  cumulative fraction (the classic CDF map: monotone, identity for equal histograms);
* ``"percentiles"``: the linear map taking the volume's 1st and 99th percentiles onto the
  training ones, clipped to 0-255.

A table applies voxel by voxel, so predicting block by block stays equal to predicting the
whole volume.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError, DataError

__all__ = ["LEVELS", "NORMALIZATIONS", "check_histogram", "histogram", "lookup_table",
           "percentile"]

LEVELS = 256
Normalization = Literal["none", "histogram", "percentiles"]
NORMALIZATIONS = ("none", "histogram", "percentiles")


def histogram(raw: NDArray[Any]) -> NDArray[np.int64]:
    """Counts of the 256 levels of uint8 ``raw``."""
    if raw.dtype != np.uint8:
        raise DataError(f"raw: got dtype {raw.dtype}, expected uint8 for intensity statistics "
                        "(ingest with --rescale maps other types onto 0-255)")
    return np.bincount(raw.ravel(), minlength=LEVELS).astype(np.int64)


def check_histogram(counts: Any, voxels: int, what: str) -> NDArray[np.int64]:
    """``counts`` as 256 non-negative int64 summing to ``voxels``, else a DataError."""
    try:
        out = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    ok = (out.shape == (LEVELS,) and bool(np.all(out >= 0))
          and bool(np.all(out == np.round(out))) and int(out.sum()) == voxels > 0)
    if not ok:
        raise DataError(f"{what}: got an intensity histogram that is not {LEVELS} counts "
                        f"summing to the {voxels} voxels it describes (recompute it)")
    return out.astype(np.int64)


def percentile(counts: NDArray[np.int64], q: float) -> float:
    """The ``q``-th percentile (0-100) of a histogram, interpolated within its level."""
    cdf = np.cumsum(counts) / counts.sum()
    return float(np.interp(q / 100.0, np.concatenate([[0.0], cdf]), np.arange(LEVELS + 1)))


def lookup_table(source: NDArray[np.int64], target: NDArray[np.int64],
                 method: Normalization) -> NDArray[np.uint8]:
    """The uint8 -> uint8 table that moves ``source`` intensities onto ``target``'s."""
    if method == "none":
        return np.arange(LEVELS, dtype=np.uint8)
    if method == "percentiles":
        lo, hi = percentile(source, 1), percentile(source, 99)
        t_lo, t_hi = percentile(target, 1), percentile(target, 99)
        scale = (t_hi - t_lo) / max(hi - lo, 1e-6)
        mapped = t_lo + (np.arange(LEVELS) + 0.5 - lo) * scale
        out: NDArray[np.uint8] = np.clip(np.rint(mapped - 0.5), 0, 255).astype(np.uint8)
        return out
    if method != "histogram":
        raise ConfigError(f"--normalize: got {method!r}, expected one of {list(NORMALIZATIONS)}")
    # each level's mid cumulative fraction, looked up in the target's inverse CDF
    src = np.cumsum(source) / source.sum()
    mid = src - 0.5 * source / source.sum()
    tgt = np.cumsum(target) / target.sum()
    levels = np.interp(mid, np.concatenate([[0.0], tgt]), np.arange(LEVELS + 1) - 0.5)
    matched: NDArray[np.uint8] = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return matched
