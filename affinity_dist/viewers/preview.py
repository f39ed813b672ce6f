"""Preview PNGs: raw with the segmentation overlaid, an xy and an xz section.

:func:`overlay` is the pure kernel (2D arrays in, an RGB image out); :func:`write_previews`
reads the two central sections of a dataset (one plane each: never the volume) and writes
``PREFIX-xy.png`` and ``PREFIX-xz.png``. Segment colours come from a hash of the id, so a
segment keeps its colour across sections, runs and blocks; label 0 stays uncoloured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from ..geometry import Box
from ..storage import list_arrays, open_volume

__all__ = ["id_colours", "overlay", "write_previews"]


def id_colours(ids: NDArray[Any]) -> NDArray[np.uint8]:
    """A bright RGB colour per id (a hash, stable across calls); (..., 3) uint8."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    channels = [(x >> np.uint64(shift)) & np.uint64(0xFF) for shift in (8, 24, 40)]
    rgb = np.stack(channels, axis=-1).astype(np.uint16)
    return (64 + rgb * 191 // 255).astype(np.uint8)


def overlay(raw: NDArray[Any] | None, segmentation: NDArray[Any],
            alpha: float = 0.45) -> NDArray[np.uint8]:
    """RGB image of ``raw`` (uint8 grey; mid-grey if None) with ``segmentation`` blended
    in at ``alpha``; background 0 is left as raw."""
    if raw is None:
        raw = np.full(segmentation.shape, 128, np.uint8)
    if raw.shape != segmentation.shape:
        raise ValueError(f"raw {raw.shape} and segmentation {segmentation.shape} differ")
    grey = np.repeat(raw.astype(np.float32)[..., None], 3, axis=-1)
    colour = id_colours(segmentation).astype(np.float32)
    mixed = np.where((segmentation != 0)[..., None], (1 - alpha) * grey + alpha * colour, grey)
    out: NDArray[np.uint8] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def _scale(image: NDArray[np.uint8], voxel: tuple[float, float]) -> Any:
    """A PIL image with square pixels in nm (anisotropic sections stretched)."""
    from PIL import Image

    picture = Image.fromarray(image)
    rows, cols = image.shape[:2]
    ratio = voxel[0] / voxel[1]
    if ratio != 1:
        picture = picture.resize((cols, max(1, round(rows * ratio))), Image.Resampling.NEAREST)
    return picture


def write_previews(dataset: str | os.PathLike[str], prefix: str | os.PathLike[str],
                   segmentation: str = "segmentation") -> list[Path]:
    """Write ``PREFIX-xy.png`` (central z) and ``PREFIX-xz.png`` (central y)."""
    target = Path(f"{prefix}-xy.png")
    if not target.parent.is_dir():
        raise ConfigError(f"--preview: got {str(prefix)!r}, expected a prefix in an "
                          "existing directory")
    seg = open_volume(dataset, segmentation)
    raw = open_volume(dataset, "raw") if "raw" in list_arrays(dataset) else None
    nz, ny, nx = seg.spatial_shape
    vz, vy, vx = seg.voxel_size
    written = []
    for name, box, voxel in (("xy", Box((nz // 2, 0, 0), (nz // 2 + 1, ny, nx)), (vy, vx)),
                             ("xz", Box((0, ny // 2, 0), (nz, ny // 2 + 1, nx)), (vz, vx))):
        labels = seg.read(box).squeeze(axis=0 if name == "xy" else 1)
        grey = None
        if raw is not None and raw.dtype == np.uint8 and raw.spatial_shape == seg.spatial_shape:
            grey = raw.read(box).squeeze(axis=0 if name == "xy" else 1)
        path = Path(f"{prefix}-{name}.png")
        tmp = path.with_name(f".{path.name}.tmp.png")
        _scale(overlay(grey, labels), voxel).save(tmp)
        tmp.replace(path)
        written.append(path)
    return written
