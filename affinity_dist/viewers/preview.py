"""Preview PNGs people look at: raw, segmentation, ground truth and errors side by side.

For an xy section (central z) and an xz section (central y) :func:`write_previews` reads
one plane of each array (never the volume) and writes ``PREFIX-xy.png`` and
``PREFIX-xz.png``: a row of panels, each at least :data:`MIN_PANEL` pixels on its longer
side (nearest-neighbour zoom, square pixels in nm for anisotropic data), captioned:

* **raw** alone, contrast-stretched (1st-99th percentile of the section);
* **segmentation** blended over raw (colours hashed from the ids, so a segment keeps its
  colour across sections and runs; boundaries between segments drawn dark);
* **truth** the same, when the dataset (or ``truth``) holds ``labels``;
* **errors**, when the worst objects of an evaluation are given: the most merged
  segments in red (their other voxels dimmed) and the most split truth objects in blue
  outlines, so the largest mistakes are where the eye goes.

:func:`overlay` and :func:`panel_row` are the pure kernels (2D arrays in, RGB out).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError
from ..geometry import Box
from ..storage import list_arrays, open_volume, write_atomic
from ..storage.location import as_path, is_remote

__all__ = ["MIN_PANEL", "errors_view", "id_colours", "overlay", "panel_row", "stretch",
           "write_previews"]

#: Smallest size of a panel's longer side, pixels.
MIN_PANEL = 480


def id_colours(ids: NDArray[Any]) -> NDArray[np.uint8]:
    """A bright RGB colour per id (a hash, stable across calls); (..., 3) uint8."""
    x = ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(29)
    channels = [(x >> np.uint64(shift)) & np.uint64(0xFF) for shift in (8, 24, 40)]
    rgb = np.stack(channels, axis=-1).astype(np.uint16)
    return (64 + rgb * 191 // 255).astype(np.uint8)


def stretch(raw: NDArray[Any]) -> NDArray[np.uint8]:
    """uint8 grey with the 1st-99th percentile of ``raw`` mapped onto 0-255."""
    values = raw.astype(np.float32)
    lo, hi = (np.percentile(values, (1, 99)) if values.size else (0.0, 1.0))
    scaled = (values - lo) * (255.0 / max(float(hi - lo), 1e-6))
    out: NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def _edges(labels: NDArray[Any]) -> NDArray[np.bool_]:
    """Pixels whose right or lower neighbour has another id."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(raw: NDArray[Any] | None, segmentation: NDArray[Any],
            alpha: float = 0.45) -> NDArray[np.uint8]:
    """RGB image of ``raw`` (uint8 grey; mid-grey if None) with ``segmentation`` blended
    in at ``alpha`` and dark lines between segments; background 0 is left as raw."""
    if raw is None:
        raw = np.full(segmentation.shape, 128, np.uint8)
    if raw.shape != segmentation.shape:
        raise ValueError(f"raw {raw.shape} and segmentation {segmentation.shape} differ")
    grey = np.repeat(raw.astype(np.float32)[..., None], 3, axis=-1)
    colour = id_colours(segmentation).astype(np.float32)
    mixed = np.where((segmentation != 0)[..., None], (1 - alpha) * grey + alpha * colour, grey)
    mixed[_edges(segmentation) & (segmentation != 0)] *= 0.35
    out: NDArray[np.uint8] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def errors_view(raw: NDArray[Any] | None, segmentation: NDArray[Any],
                truth: NDArray[Any] | None, merged: Sequence[int], split: Sequence[int]
                ) -> NDArray[np.uint8]:
    """Raw dimmed, the ``merged`` segments in red, the ``split`` truth objects outlined in
    blue (each split object's segments shown by their dark boundaries)."""
    grey = (np.full(segmentation.shape, 128, np.uint8) if raw is None else raw)
    out = np.repeat((grey.astype(np.float32) * 0.55)[..., None], 3, axis=-1)
    bad = np.isin(segmentation, np.asarray(merged, np.uint64))
    out[bad] = 0.5 * out[bad] + 0.5 * np.array([230, 40, 40], np.float32)
    if truth is not None and len(split):
        objects = np.isin(truth, np.asarray(split, np.uint64))
        inside = objects & ~_edges(segmentation)
        out[inside] = 0.7 * out[inside] + 0.3 * np.array([60, 110, 255], np.float32)
        outline = _edges(np.where(objects, truth, 0)) & objects
        out[outline] = np.array([40, 90, 255], np.float32)
    result: NDArray[np.uint8] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return result


def _zoom(image: NDArray[np.uint8], voxel: tuple[float, float]) -> Any:
    """A PIL image, square pixels in nm, zoomed (nearest) to at least MIN_PANEL pixels."""
    from PIL import Image

    rows, cols = image.shape[:2]
    height = rows * voxel[0] / voxel[1]  # in pixels of the columns' size
    factor = max(1.0, MIN_PANEL / max(height, cols, 1))
    size = (max(1, round(cols * factor)), max(1, round(height * factor)))
    return Image.fromarray(image).resize(size, Image.Resampling.NEAREST)


def panel_row(panels: Sequence[tuple[str, NDArray[np.uint8]]], voxel: tuple[float, float]
              ) -> Any:
    """One PIL image: the captioned panels side by side on white."""
    from PIL import Image, ImageDraw

    pictures = [(title, _zoom(image, voxel)) for title, image in panels]
    gap, caption = 12, 22
    width = sum(p.width for _, p in pictures) + gap * (len(pictures) + 1)
    height = max(p.height for _, p in pictures) + caption + 2 * gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, picture in pictures:
        draw.text((x, gap // 2), title, fill=(0, 0, 0))
        canvas.paste(picture, (x, gap // 2 + caption))
        x += picture.width + gap
    return canvas


def write_previews(dataset: str | os.PathLike[str], prefix: str | os.PathLike[str],
                   segmentation: str = "segmentation", *,
                   truth: str | os.PathLike[str] | None = None, labels: str = "labels",
                   merged: Sequence[int] = (), split: Sequence[int] = ()) -> list[Path]:
    """Write ``PREFIX-xy.png`` (central z) and ``PREFIX-xz.png`` (central y): raw,
    segmentation, truth (``labels`` of ``truth`` or of the dataset, when present) and, with
    ``merged`` / ``split`` ids (an evaluation's worst segments / truth objects), errors."""
    target = as_path(f"{prefix}-xy.png")
    if not is_remote(target) and not target.parent.is_dir():
        raise ConfigError(f"--preview: got {str(prefix)!r}, expected a prefix in an "
                          "existing directory")
    seg = open_volume(dataset, segmentation)
    arrays = list_arrays(dataset)
    raw = open_volume(dataset, "raw") if "raw" in arrays else None
    source = truth if truth is not None else dataset
    gt = (open_volume(source, labels) if labels in list_arrays(source) else None)
    nz, ny, nx = seg.spatial_shape
    vz, vy, vx = seg.voxel_size
    written = []
    for name, box, voxel in (("xy", Box((nz // 2, 0, 0), (nz // 2 + 1, ny, nx)), (vy, vx)),
                             ("xz", Box((0, ny // 2, 0), (nz, ny // 2 + 1, nx)), (vz, vx))):
        axis = 0 if name == "xy" else 1
        ids = seg.read(box).squeeze(axis=axis)
        grey = None
        if raw is not None and raw.spatial_shape == seg.spatial_shape and \
                (raw.dtype == np.uint8 or raw.dtype.kind == "f"):
            grey = stretch(raw.read(box).squeeze(axis=axis))
        panels = [("raw", np.repeat((grey if grey is not None else
                                     np.full(ids.shape, 128, np.uint8))[..., None], 3, -1)),
                  (segmentation, overlay(grey, ids))]
        truth_ids = None
        if gt is not None and gt.spatial_shape == seg.spatial_shape:
            truth_ids = gt.read(box).squeeze(axis=axis)
            panels.append(("truth", overlay(grey, truth_ids)))
        if merged or split:
            panels.append((f"errors: {len(merged)} most merged (red), {len(split)} most "
                           "split (blue)", errors_view(grey, ids, truth_ids, merged, split)))
        path, png = as_path(f"{prefix}-{name}.png"), io.BytesIO()
        panel_row(panels, voxel).save(png, format="PNG")
        write_atomic(path, png.getvalue())
        written.append(path)
    return written
