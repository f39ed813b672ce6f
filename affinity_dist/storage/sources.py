"""Readers of the volumes labs have: HDF5 (CREMI), multi-page TIFF, folders of TIFF/PNG
slices, Zarr (v2/v3) and N5.

A :class:`Source` is a small picklable description (path, key, shape, dtype, metadata)
that opens its file anew in :meth:`Source.read`, so Dask can ship it to worker processes
and each block reads only its region. Readers touch no Dask; Zarr goes through
:mod:`affinity_dist.storage`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, InputNotFoundError, bad_value
from ..geometry import Box
from .location import as_path, is_remote

__all__ = ["Source", "detect_format", "open_source"]

Format = Literal["hdf5", "tiff", "slices", "zarr", "n5"]
RAW_KEYS = ("volumes/raw", "raw")
LABEL_KEYS = ("volumes/labels/neuron_ids", "labels", "volumes/labels")
MASK_KEYS = ("volumes/labels/mask", "labels_mask")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")


def _natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def detect_format(path: Path) -> Format:
    """Guess the format of ``path`` from what is on disk."""
    if not path.exists():
        raise InputNotFoundError(f"SRC: got {str(path)!r}, expected an existing file or folder")
    if is_remote(path):  # HDF5, TIFF and N5 are read from local files only
        if any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr"
        raise bad_value("SRC", str(path), "a Zarr store (the format read from an object "
                        "store; copy other formats to a local file first)", DataError)
    if path.is_file():
        if path.suffix.lower() in TIFF_SUFFIXES:
            return "tiff"
        import h5py

        if h5py.is_hdf5(path):
            return "hdf5"
        raise bad_value("SRC", str(path), "an HDF5 file, a TIFF stack or a folder "
                        "(Zarr, N5, TIFF/PNG slices)", DataError)
    if any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray")):
        return "zarr"
    if (path / "attributes.json").exists() or path.suffix.lower() == ".n5":
        return "n5"
    if any(p.suffix.lower() in SLICE_SUFFIXES for p in path.iterdir()):
        return "slices"
    raise bad_value("SRC", str(path), "a folder holding Zarr, N5 or TIFF/PNG slices", DataError)


@dataclass(frozen=True)
class Source:
    """One array of a source: where it is and what it holds. ``read`` opens it anew."""

    format: Format
    path: str
    key: str | None
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    voxel_size: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    files: tuple[str, ...] = field(default=(), repr=False)  # slices only

    def read(self, box: Box) -> NDArray[Any]:
        """Read the region ``box`` (z, y, x) as a numpy array."""
        z0, z1 = box.start[0], box.stop[0]
        yx = box.slices[1:]
        if self.format == "hdf5":
            import h5py

            with h5py.File(self.path, "r") as f:
                return np.asarray(f[self.key][box.slices])
        if self.format == "tiff":
            import tifffile

            pages = tifffile.imread(self.path, key=range(z0, z1))
            return np.asarray(pages).reshape(z1 - z0, *self.shape[1:])[(slice(None), *yx)]
        if self.format == "slices":
            return np.stack([_read_slice(Path(self.files[z]), self.shape[1:])[yx]
                             for z in range(z0, z1)])
        return np.asarray(_open_array(self.format, self.path, self.key)[box.slices])


def _read_slice(path: Path, shape: tuple[int, ...]) -> NDArray[Any]:
    image = _peek(path)
    if image.shape != shape:
        raise DataError(f"slice {str(path)!r}: got shape {image.shape}, expected {shape} "
                        "like the first slice (a grayscale image)")
    return image


def _open_array(fmt: Format, path: str, key: str | None) -> Any:
    if fmt == "zarr":
        from .datasets import open_external

        return open_external(path, key)
    from .n5 import N5Array

    try:
        return N5Array(Path(path) / key if key else path)
    except (ValueError, OSError) as err:
        raise DataError(f"SRC: got N5 {path!r}, expected a readable dataset ({err})") from None


def _keys_present(fmt: Format, path: Path) -> list[str]:
    if fmt == "hdf5":
        import h5py

        found: list[str] = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: found.append(name)
                         if isinstance(obj, h5py.Dataset) else None)
        return found
    if fmt == "n5":
        from .n5 import find_n5_datasets

        return find_n5_datasets(path)
    from .arrays import list_arrays

    return list_arrays(path)


def _physical(attrs: Any, names: tuple[str, ...]) -> tuple[float, ...] | None:
    for name in names:
        if name in attrs:
            value = attrs[name]
            if isinstance(value, dict):
                value = value.get("dimensions", value.get("voxel_size"))
            try:
                return tuple(float(v) for v in np.asarray(value).ravel())
            except (TypeError, ValueError):
                return None
    return None


def _describe(fmt: Format, path: Path, key: str | None) -> Source:
    """Open ``key`` of ``path`` once to read its shape, dtype and metadata."""
    if fmt == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            ds = f[key]
            return Source(fmt, str(path), key, tuple(ds.shape), np.dtype(ds.dtype),
                          _physical(ds.attrs, ("resolution", "voxel_size", "element_size_um")),
                          _physical(ds.attrs, ("offset",)))
    if fmt == "tiff":
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(series.shape)
            if len(shape) == 2 and len(tif.pages) > 1:
                shape = (len(tif.pages), *shape)
            return Source(fmt, str(path), None, shape, np.dtype(series.dtype))
    if fmt == "slices":
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES),
                       key=_natural_key)
        first = _peek(files[0])
        return Source(fmt, str(path), None, (len(files), *first.shape), first.dtype,
                      files=tuple(str(f) for f in files))
    array = _open_array(fmt, str(path), key)
    from .n5 import n5_voxel_size

    attrs = dict(array.attrs)
    voxel = (n5_voxel_size(attrs) if fmt == "n5" else None) or _physical(
        attrs, ("voxel_size", "resolution"))
    return Source(fmt, str(path), key, tuple(array.shape), np.dtype(array.dtype), voxel,
                  _physical(attrs, ("offset",)))


def _peek(path: Path) -> NDArray[Any]:
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def open_source(src: str | os.PathLike[str], key: str | None, *,
                role: Literal["raw", "labels", "mask"],
                option: str) -> Source | None:
    """Describe the ``role`` array of ``src``.

    ``key`` names the array inside a container (HDF5, Zarr, N5); ``None`` tries the usual
    names (CREMI ``volumes/raw``, ``volumes/labels/neuron_ids``, ``volumes/labels/mask``;
    ``raw``, ``labels``, ``labels_mask``). Returns ``None`` for labels or a mask when the
    source has none and no key was given. TIFF
    stacks and slice folders hold raw only.
    """
    path = as_path(src)
    fmt = detect_format(path)
    if fmt in ("tiff", "slices"):
        if role != "raw":
            return None
        return _describe(fmt, path, None)
    present = _keys_present(fmt, path)
    if key is None:
        if fmt == "zarr" and present == [""]:  # SRC is an array itself
            return _describe(fmt, path, None) if role == "raw" else None
        candidates = {"raw": RAW_KEYS, "labels": LABEL_KEYS, "mask": MASK_KEYS}[role]
        key = next((k for k in candidates if k in present), None)
        if key is None:
            if role != "raw":
                return None
            raise InputNotFoundError(f"{option}: no raw array found under the usual names "
                                     f"{list(RAW_KEYS)} in {str(path)!r}; expected one of "
                                     f"{present} named with {option}")
    elif key.strip("/") not in present:
        raise InputNotFoundError(f"{option}: got {key!r}, expected an array of {str(path)!r} "
                                 f"(present: {present})")
    return _describe(fmt, path, key.strip("/"))
