"""Arrays of a dataset: opening, creating (with the metadata of :mod:`.metadata`),
listing, renaming, and block reads and writes.

Imports :mod:`.metadata` and :mod:`.codecs`, never :mod:`.datasets`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import DTypeLike, NDArray

from ..errors import ConfigError, DataError, InputNotFoundError
from ..geometry import Box, as_shape, as_vector, read_mirrored
from .codecs import Codec, compressors, default_codec
from .integrity import read_checked
from .journal import note_chunks
from .listing import list_arrays, metadata_error, zarr_listing
from .location import PUBLISHING, as_path, move_tree
from .metadata import (
    SPATIAL_AXES,
    array_attributes,
    register_multiscale,
    unregister_multiscale,
)

__all__ = [
    "AUTO_SHARD_FILES",
    "DEFAULT_CHUNKS",
    "Volume",
    "check_chunk_alignment",
    "create_volume",
    "create_work_array",
    "group_path",
    "list_arrays",
    "move_node",
    "open_dataset",
    "open_volume",
    "rename_volume",
    "shard_shape",
    "zarr_listing",
]

DEFAULT_CHUNKS: tuple[int, int, int] = (128, 128, 128)

#: ``--shards auto`` shards an array that would otherwise have more chunk files than this
#: (at 128^3 chunks, volumes above about 3200^3). Below it one file per chunk is kept:
#: zarr-python 3.1 reads a sharded array up to 1.5x slower (halo'd windows of uint8
#: affinities 164 against 245 MB/s, bench_storage.py --layouts), and 10^4 files cost a
#: local file system little (about 20 us each to remove). Above it the file count is
#: what parallel file systems and object stores choke on.
AUTO_SHARD_FILES = 2**14


@dataclass(frozen=True)
class Volume:
    """A Zarr array of a dataset with its physical metadata.

    ``voxel_size`` and ``offset`` are in nm for the spatial axes (the last three).
    """

    array: zarr.Array[Any]
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        z, y, x = self.shape[-3:]
        return z, y, x

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        """The chunk shape (of the chunks inside the shards, for a sharded array)."""
        return tuple(self.array.chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard shape of a sharded array (one file per shard), else None."""
        shards = self.array.shards
        return None if shards is None else tuple(shards)

    @property
    def write_unit(self) -> tuple[int, ...]:
        """What one file holds, the unit two writers must never share: the shard shape
        of a sharded array, else the chunk shape."""
        return self.shards or self.chunks

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.array.attrs)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        z, y, x = (float(v) for v in self.attrs.get("voxel_size", (1.0, 1.0, 1.0)))
        return z, y, x

    @property
    def offset(self) -> tuple[float, float, float]:
        z, y, x = (float(v) for v in self.attrs.get("offset", (0.0, 0.0, 0.0)))
        return z, y, x

    @property
    def axis_names(self) -> tuple[str, ...]:
        default = ("c", "z", "y", "x")[-len(self.shape):]
        return tuple(str(a) for a in self.attrs.get("axis_names", default))

    def read(self, box: Box) -> NDArray[Any]:
        """Read the spatial ``box`` (all channels of a channel-first array)."""
        selection = (slice(None),) * (len(self.shape) - len(box.start)) + box.slices
        out: NDArray[Any] = read_checked(self.array, self.name, selection)
        return out

    def read_rows(self, start: int, stop: int) -> NDArray[Any]:
        """Rows ``start:stop`` of a 2-D work array (e.g. face planes)."""
        out: NDArray[Any] = read_checked(self.array, self.name,
                                         (slice(start, stop), slice(None)))
        return out

    def read_mirrored(self, window: Box) -> tuple[NDArray[Any], int]:
        """``window`` (spatial, may leave the volume), mirrored at the volume border (all
        channels); and the number of voxels read."""
        data, inside = read_mirrored(self.read, window, self.spatial_shape,
                                     lead=len(self.shape) - len(window.start))
        return data, inside.size

    def store(self, data: Any) -> None:
        """Write a whole dask (or numpy) array of this shape, chunk-aligned, in parallel
        (on the active distributed client, if any)."""
        import dask.array as da

        if tuple(data.shape) != self.shape:
            raise DataError(f"write to {self.name}: got shape {tuple(data.shape)}, "
                            f"expected {self.shape}")
        source = da.asarray(data).rechunk(self.write_unit)  # type: ignore[no-untyped-call]
        da.store(source, self.array, lock=False)  # type: ignore[arg-type]

    def write(self, box: Box, data: NDArray[Any]) -> None:
        """Write ``data`` at spatial ``box``; ``box`` should be aligned to the chunks.

        ``data`` is box-shaped, or, for a 3D array, tiled: (gz, gy, gx, tz, ty, tx) tiles
        of shape (tz, ty, tx) covering the box (``fragments.untile`` gives the box). Tiles
        of the chunk shape are written one by one without a copy: Zarr otherwise fills a
        new buffer per chunk and copies the chunk into it (256^3 uint64: 34 ms tiled,
        55 ms box-shaped). A sharded array gets the box in one write: a write of part of
        a shard reads, decodes and rewrites the whole shard.
        """
        if data.ndim == 6 and len(self.shape) == 3:
            grid, tile = data.shape[:3], data.shape[3:]
            if tuple(g * t for g, t in zip(grid, tile, strict=True)) != box.shape:
                raise DataError(f"write to {self.name}: got tiles {data.shape}, expected "
                                f"to cover {box.shape}")
            if self.shards is not None:
                data = data.transpose(0, 3, 1, 4, 2, 5).reshape(box.shape)
            else:
                for index in np.ndindex(*grid):
                    start = tuple(s + i * t
                                  for s, i, t in zip(box.start, index, tile, strict=True))
                    tile_box = Box(start, tuple(s + t for s, t in zip(start, tile, strict=True)))
                    self.array[tile_box.slices] = data[index]
                note_chunks(self.array, box.slices)
                return
        lead = (slice(None),) * (len(self.shape) - len(box.start))
        if data.shape[-len(box.start):] != box.shape:
            raise DataError(f"write to {self.name}: got data of shape {data.shape}, "
                            f"expected spatial shape {box.shape}")
        self.array[lead + box.slices] = data
        note_chunks(self.array, lead + box.slices)

    def write_rows(self, start: int, data: NDArray[Any]) -> None:
        """Write rows ``start, start + 1, ...`` of a 2-D work array (e.g. face planes)."""
        rows = (slice(start, start + data.shape[0]), slice(None))
        self.array[rows] = data
        note_chunks(self.array, rows)


def open_dataset(path: str | os.PathLike[str], mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """Open an existing dataset group."""
    if not as_path(path).exists():
        raise InputNotFoundError(f"dataset: got {str(path)!r}, expected an existing Zarr group")
    try:
        group = zarr.open_group(store=str(as_path(path)), mode=mode)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"dataset: got {str(path)!r}, expected a Zarr group ({err})") from None
    writer = group.attrs.get(PUBLISHING) if mode == "r" else None
    if writer is not None:  # only the writer's own tasks open it, to write
        raise DataError(f"dataset: got {str(path)!r}, which a run has not finished writing "
                        f"({writer}); expected a published dataset (rerun that run, with "
                        "--overwrite if it was killed)")
    return group


def open_volume(path: str | os.PathLike[str], name: str, mode: Literal["r", "r+"] = "r") -> Volume:
    """Open array ``name`` of the dataset at ``path``."""
    group = open_dataset(path, mode)
    try:
        array = group.get(name)
    except (ValueError, KeyError, TypeError) as err:
        raise metadata_error(path, err) from None
    if not isinstance(array, zarr.Array):
        raise InputNotFoundError(f"array: got {name!r} in {str(path)!r}, expected an existing "
                                 f"array (present: {list_arrays(path, top_level=True)})")
    return Volume(_fast_writes(array), name)


def _fast_writes(array: zarr.Array[Any]) -> zarr.Array[Any]:
    """Write every chunk, empty or not: zarr's all-fill-value check before each chunk
    write costs more than the write itself (measured: 256^3 uint64 in 100 ms with the
    check, 45 ms without). Absent chunks still read as 0; run state never depends on which
    chunk files exist."""
    return array.with_config({"write_empty_chunks": True})


def create_volume(
    group: zarr.Group,
    name: str,
    *,
    shape: Sequence[int],
    dtype: DTypeLike,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    offset: Sequence[float] = (0.0, 0.0, 0.0),
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    shards: Sequence[int] | None = None,
    channels: int | None = None,
    codec: Codec | None = None,
    attributes: dict[str, Any] | None = None,
    overwrite: bool = False,
    register: bool = True,
) -> Volume:
    """Create array ``name`` in ``group`` with its physical and OME-Zarr metadata.

    Parameters
    ----------
    shape, chunks : spatial (z, y, x) shape and chunk shape; chunks are clipped to shape.
    shards : spatial shard shape (Zarr v3 sharding: one file per shard), a multiple of the
        clipped chunks (:func:`shard_shape` makes one); None: one file per chunk.
    channels : if given, a leading channel axis ``c`` of this length (one chunk).
    voxel_size, offset : nm per axis (z, y, x); voxel size must be positive.
    codec : compressor; default per dtype (and channel axis) from :func:`default_codec`.
    register : add the array to the group's OME-Zarr multiscales (off for staging arrays,
        which :func:`rename_volume` registers under their final name).
    """
    shape = as_shape(shape, "shape", ndim=3)
    chunks = as_shape(chunks, "--chunks", ndim=3)
    voxel = as_vector("--voxel-size", voxel_size, positive=True)
    off = as_vector("offset", offset, positive=False)
    dt = np.dtype(dtype)
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    if shards is not None:
        shards = as_shape(shards, "shards", ndim=3)
        if any(s % c for s, c in zip(shards, chunks, strict=True)):
            raise ConfigError(f"shards: got {tuple(shards)}, expected a multiple of the "
                              f"chunk shape {chunks}")
    axes: tuple[str, ...] = SPATIAL_AXES
    if channels is not None:
        shape, chunks, axes = (channels, *shape), (channels, *chunks), ("c", *axes)
        shards = None if shards is None else (channels, *shards)
    attrs = {**array_attributes(axes, voxel, off), **(attributes or {})}
    array = group.create_array(
        name, shape=shape, dtype=dt, chunks=chunks, shards=shards, fill_value=0,
        compressors=compressors(codec or default_codec(dt, channels), dt),
        dimension_names=axes,
        attributes=attrs, overwrite=overwrite,
    )
    if register:
        register_multiscale(group, name, axes, voxel, off)
    return Volume(_fast_writes(array), name)


def create_work_array(group: zarr.Group, name: str, *, shape: Sequence[int],
                      dtype: DTypeLike, chunks: Sequence[int]) -> zarr.Array[Any]:
    """A plain intermediate array (no physical metadata), e.g. block face planes."""
    dt = np.dtype(dtype)
    return group.create_array(name, shape=tuple(shape), dtype=dt, chunks=tuple(chunks),
                              fill_value=0, compressors=compressors(default_codec(dt), dt),
                              overwrite=True)


def rename_volume(group: zarr.Group, old: str, new: str) -> None:
    """Move array ``old`` to ``new`` in a local dataset (replacing ``new``), metadata too."""
    volume = Volume(group[old], old)  # type: ignore[arg-type]
    move_node(group, old, new)
    unregister_multiscale(group, old)
    register_multiscale(group, new, volume.axis_names, volume.voxel_size, volume.offset)


def move_node(group: zarr.Group, old: str, new: str) -> None:
    """Rename a node (array or group) of a dataset, replacing ``new``
    (:func:`.location.move_tree`: locally the old ``new`` is renamed aside, then deleted,
    so it never stays half-deleted; on an object store a server-side copy, its metadata
    last)."""
    root = as_path(group_path(group))
    move_tree(root / old, root / new)


def group_path(group: zarr.Group) -> str:
    """The path or store URL of a group opened from a directory or an fsspec store
    (workers reopen it)."""
    root = getattr(group.store, "root", None)
    if root is not None:
        return str(Path(root) / group.path)
    fs, key = getattr(group.store, "fs", None), getattr(group.store, "path", None)
    if fs is None or key is None:
        raise ConfigError(f"dataset: got store {group.store!r}, expected a local directory "
                          "or a store URL")
    return "/".join(p for p in (fs.unstrip_protocol(key).rstrip("/"), group.path) if p)


def shard_shape(mode: str, shape: Sequence[int], chunks: Sequence[int],
                block: Sequence[int]) -> tuple[int, int, int] | None:
    """The spatial shard shape of an array of ``shape`` and ``chunks`` written in
    ``block``s (a multiple of the chunks), for ``--shards`` ``mode``: ``block`` gives one
    shard per block (the block rounded up to whole chunks where it covers an axis whole),
    ``none`` one file per chunk (None), ``auto`` shards above :data:`AUTO_SHARD_FILES`
    chunks. One shard is written by one block only, so no two writers share a file."""
    if mode not in ("auto", "block", "none"):
        raise ConfigError(f"--shards: got {mode!r}, expected auto, block or none")
    clipped = [min(c, n) for c, n in zip(chunks, shape, strict=True)]
    shard = tuple(-(-min(b, n) // c) * c for b, n, c in zip(block, shape, clipped, strict=True))
    files = math.prod(-(-n // c) for n, c in zip(shape, clipped, strict=True))
    if mode == "none" or shard == tuple(clipped) or (mode == "auto" and
                                                      files <= AUTO_SHARD_FILES):
        return None
    z, y, x = shard
    return z, y, x


def check_chunk_alignment(block: Sequence[int], chunks: Sequence[int], shape: Sequence[int],
                          name: str = "--block") -> None:
    """Refuse a block shape that is not a multiple of the chunk shape (writes would race).

    An axis the block covers whole (block >= shape) needs no alignment.
    """
    if any(b % c and b < n for b, c, n in zip(block, chunks, shape, strict=True)):
        raise ConfigError(f"{name}: got {tuple(block)}, expected a multiple of the chunk "
                          f"shape {tuple(chunks)} so that no two blocks write one chunk")
