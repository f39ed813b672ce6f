"""Storage layer: the only module that imports zarr.

A dataset is one Zarr v3 group (``sample.zarr/``) holding the arrays of DESIGN.md
(``raw``, ``labels``, ``affinities``, ``fragments``, ``segmentation``). Every array carries

* ``dimension_names`` (zarr v3 metadata) and, in its attributes, ``voxel_size`` and
  ``offset`` in nanometres, ``axis_names``, ``units`` and ``types`` (the keys
  funlib.persistence reads, so daisy/volara users open our arrays as they are);
* an entry in the group's OME-Zarr 0.5 ``multiscales`` list (one multiscale per array,
  named after it, its level 0 at the array's path), so NGFF viewers find voxel size and
  offset.

Outputs are written into a staging directory beside the destination and renamed into
place only when complete (:func:`staged_dataset`), so a failed run never looks finished
and an existing destination is untouched until a new one fully exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.codecs
from numpy.typing import DTypeLike, NDArray

from .errors import (
    ConfigError,
    DataError,
    DestinationExistsError,
    InputNotFoundError,
    bad_value,
)
from .geometry import Box, as_shape, as_vector

__all__ = [
    "DEFAULT_CHUNKS",
    "Volume",
    "check_chunk_alignment",
    "check_destination",
    "create_work_array",
    "delete_node",
    "rename_volume",
    "create_volume",
    "default_codec",
    "describe_dataset",
    "group_path",
    "list_arrays",
    "open_dataset",
    "open_external",
    "open_volume",
    "read_table",
    "staged_dataset",
    "write_table",
]

log = logging.getLogger(__name__)

#: Default spatial chunk shape (z, y, x): 128^3 uint8 = 2 MiB per raw chunk, few enough
#: files for terabytes (~500k chunks per TB of uint8) and a unit that blocks align to.
DEFAULT_CHUNKS: tuple[int, int, int] = (128, 128, 128)
SPATIAL_AXES = ("z", "y", "x")
NGFF_VERSION = "0.5"
Codec = Literal["blosc-lz4", "blosc-zstd", "zstd", "none"]


def default_codec(dtype: DTypeLike) -> Codec:
    """Default compressor per dtype, chosen by ``benchmarks/bench_storage.py``.

    uint8 (raw, affinities): plain zstd level 3 — fib25 raw 1.19x at ~520 MB/s write
    (blosc-lz4 1.07x; blosc-zstd-5 1.24x but ~190 MB/s), affinities 3.2x (blosc-lz4
    1.75x at the same speed). Wider integers (labels, fragments, segmentation): blosc-lz4
    with byte shuffle — 20-35x on label volumes and the fastest writes and reads, which
    bound the segment stage (it writes two uint64 volumes and reads one).
    """
    return "zstd" if np.dtype(dtype).itemsize == 1 else "blosc-lz4"


def _codecs(name: Codec, dtype: np.dtype[Any]) -> list[Any]:
    shuffle = (zarr.codecs.BloscShuffle.bitshuffle if dtype.itemsize == 1
               else zarr.codecs.BloscShuffle.shuffle)  # byte shuffle: measured faster
    if name == "blosc-lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle=shuffle,
                                       typesize=dtype.itemsize)]
    if name == "blosc-zstd":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle=shuffle,
                                       typesize=dtype.itemsize)]
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=3)]
    if name == "none":
        return []
    raise bad_value("codec", name, "one of blosc-lz4, blosc-zstd, zstd, none")


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
        return tuple(self.array.chunks)

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
        lead = (slice(None),) * (len(self.shape) - len(box.start))
        return np.asarray(self.array[lead + box.slices])

    def read_with_halo(self, box: Box, halo: Sequence[int]
                       ) -> tuple[NDArray[Any], tuple[tuple[int, int], ...]]:
        """Read ``box`` grown by ``halo``, clipped to the volume.

        Returns
        -------
        data : the clipped region (spatial shape ``box.shape + 2 * halo - padding``).
        padding : per spatial axis ``(before, after)`` voxels of halo outside the volume,
            for the caller to pad as it sees fit (mirror for raw, zeros for labels).
        """
        halo = as_shape(halo, "halo", ndim=len(box.start), minimum=0)
        wanted = box.grow(halo)
        clipped = wanted.clip(self.spatial_shape)
        padding = tuple((c0 - w0, w1 - c1) for w0, w1, c0, c1 in
                        zip(wanted.start, wanted.stop, clipped.start, clipped.stop, strict=True))
        return self.read(clipped), padding

    def store(self, data: Any) -> None:
        """Write a whole dask (or numpy) array of this shape, chunk-aligned, in parallel
        (on the active distributed client, if any)."""
        import dask.array as da

        if tuple(data.shape) != self.shape:
            raise DataError(f"write to {self.name}: got shape {tuple(data.shape)}, "
                            f"expected {self.shape}")
        source = da.asarray(data).rechunk(self.chunks)  # type: ignore[no-untyped-call]
        da.store(source, self.array, lock=False)  # type: ignore[arg-type]

    def write(self, box: Box, data: NDArray[Any]) -> None:
        """Write ``data`` at spatial ``box``; ``box`` should be aligned to the chunks."""
        lead = (slice(None),) * (len(self.shape) - len(box.start))
        if data.shape[-len(box.start):] != box.shape:
            raise DataError(f"write to {self.name}: got data of shape {data.shape}, "
                            f"expected spatial shape {box.shape}")
        self.array[lead + box.slices] = data


def open_dataset(path: str | os.PathLike[str], mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """Open an existing dataset group."""
    if not Path(path).exists():
        raise InputNotFoundError(f"dataset: got {str(path)!r}, expected an existing Zarr group")
    try:
        return zarr.open_group(store=str(path), mode=mode)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"dataset: got {str(path)!r}, expected a Zarr group ({err})") from None


def open_volume(path: str | os.PathLike[str], name: str, mode: Literal["r", "r+"] = "r") -> Volume:
    """Open array ``name`` of the dataset at ``path``."""
    group = open_dataset(path, mode)
    array = group.get(name)
    if not isinstance(array, zarr.Array):
        raise InputNotFoundError(f"array: got {name!r} in {str(path)!r}, expected an existing "
                                 f"array (present: {sorted(group.array_keys())})")
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
    channels : if given, a leading channel axis ``c`` of this length (one chunk).
    voxel_size, offset : nm per axis (z, y, x); voxel size must be positive.
    codec : compressor; default per dtype from :func:`default_codec`.
    register : add the array to the group's OME-Zarr multiscales (off for staging arrays,
        which :func:`rename_volume` registers under their final name).
    """
    shape = as_shape(shape, "shape", ndim=3)
    chunks = as_shape(chunks, "--chunks", ndim=3)
    voxel = as_vector("--voxel-size", voxel_size, positive=True)
    off = as_vector("offset", offset, positive=False)
    dt = np.dtype(dtype)
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape, strict=True))
    axes: tuple[str, ...] = SPATIAL_AXES
    if channels is not None:
        shape, chunks, axes = (channels, *shape), (channels, *chunks), ("c", *axes)
    attrs = {
        "voxel_size": voxel, "offset": off, "axis_names": list(axes),
        "units": ["" if a == "c" else "nm" for a in axes],
        "types": ["channel" if a == "c" else "space" for a in axes],
        **(attributes or {}),
    }
    array = group.create_array(
        name, shape=shape, dtype=dt, chunks=chunks, fill_value=0,
        compressors=_codecs(codec or default_codec(dt), dt), dimension_names=axes,
        attributes=attrs, overwrite=overwrite,
    )
    if register:
        _register_multiscale(group, name, axes, voxel, off)
    return Volume(_fast_writes(array), name)


def _register_multiscale(group: zarr.Group, name: str, axes: Sequence[str],
                         voxel: Sequence[float], offset: Sequence[float]) -> None:
    """Add (or replace) the OME-Zarr 0.5 multiscale entry for array ``name``."""
    lead = len(axes) - 3
    entry: dict[str, Any] = {
        "name": name,
        "axes": [{"name": a, "type": "channel"} if a == "c"
                 else {"name": a, "type": "space", "unit": "nanometer"} for a in axes],
        "datasets": [{
            "path": name,
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] * lead + list(voxel)},
                {"type": "translation", "translation": [0.0] * lead + list(offset)},
            ],
        }],
    }
    attrs: dict[str, Any] = dict(group.attrs)
    ome: dict[str, Any] = dict(attrs.get("ome", {}))
    scales = [m for m in ome.get("multiscales", []) if m.get("name") != name]
    group.attrs["ome"] = {**ome, "version": NGFF_VERSION, "multiscales": [*scales, entry]}


def list_arrays(path: str | os.PathLike[str]) -> list[str]:
    """Paths of all arrays in a Zarr store (``[""]`` when the store is an array itself)."""
    try:
        node = zarr.open(store=str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise DataError(f"SRC: got {str(path)!r}, expected a readable Zarr store ({err})") from None
    if isinstance(node, zarr.Array):
        return [""]
    return sorted(name for name, member in node.members(max_depth=None)
                  if isinstance(member, zarr.Array))


def open_external(path: str | os.PathLike[str], key: str | None) -> zarr.Array[Any]:
    """Open an array of any Zarr (v2 or v3) store for reading, e.g. an ingest source."""
    try:
        node = zarr.open(store=str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise DataError(f"SRC: got {str(path)!r}, expected a readable Zarr store ({err})") from None
    if key:
        if not isinstance(node, zarr.Group) or key not in node:
            raise InputNotFoundError(f"key: got {key!r}, expected an array in {str(path)!r}")
        node = node[key]
    if not isinstance(node, zarr.Array):
        raise DataError(f"SRC: got group {str(path)!r}, expected an array: name one with a key")
    return node


def check_destination(dst: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Refuse a destination that exists (without ``overwrite``) or cannot be created."""
    target = Path(dst).absolute()
    if target.exists() and not overwrite:
        raise DestinationExistsError(f"DST: got {str(dst)!r}, which exists; "
                                     "expected a new path (or pass --overwrite)")
    if not target.parent.is_dir():
        raise bad_value("DST", str(dst), "a path whose parent directory exists",
                        InputNotFoundError)
    try:  # os.access says yes to root even on read-only mounts: really try
        Path(tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=target.parent)).rmdir()
    except OSError as err:
        raise bad_value("DST", str(dst), f"a path in a writable directory ({err.strerror})"
                        ) from None
    return target


@contextlib.contextmanager
def staged_dataset(dst: str | os.PathLike[str], *, overwrite: bool = False
                   ) -> Iterator[zarr.Group]:
    """Create a new dataset group atomically at ``dst``.

    Validates the destination first (:func:`check_destination`), yields a fresh group in
    a hidden staging directory beside ``dst``, and moves it into place only when the block
    exits without error. On error the staging directory is removed and ``dst`` is left
    exactly as it was.
    """
    target = check_destination(dst, overwrite=overwrite)
    parent = target.parent
    staging = parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
    except OSError as err:
        raise bad_value("DST", str(dst), f"a path in a writable directory ({err.strerror})"
                        ) from None
    try:
        group = zarr.open_group(store=str(staging), mode="w", zarr_format=3)
        yield group
        if target.exists():
            trash = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(trash)
            staging.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s", target)


def describe_dataset(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per array of a dataset: name, shape, dtype, chunks, voxel size, bytes."""
    group = open_dataset(path)
    rows = []
    for name, array in sorted(group.arrays()):
        stored = sum(p.stat().st_size for p in (Path(path) / name).rglob("*") if p.is_file())
        vol = Volume(array, name)
        rows.append({"name": name, "shape": vol.shape, "dtype": str(vol.dtype),
                     "chunks": vol.chunks, "voxel_size": vol.voxel_size, "offset": vol.offset,
                     "axes": vol.axis_names, "nbytes": array.nbytes, "stored_bytes": stored})
    return rows


def create_work_array(group: zarr.Group, name: str, *, shape: Sequence[int],
                      dtype: DTypeLike, chunks: Sequence[int]) -> zarr.Array[Any]:
    """A plain intermediate array (no physical metadata), e.g. block face planes."""
    dt = np.dtype(dtype)
    return group.create_array(name, shape=tuple(shape), dtype=dt, chunks=tuple(chunks),
                              fill_value=0, compressors=_codecs(default_codec(dt), dt),
                              overwrite=True)


def rename_volume(group: zarr.Group, old: str, new: str) -> None:
    """Move array ``old`` to ``new`` in a local dataset (replacing ``new``), metadata too."""
    root = Path(group_path(group))
    volume = Volume(group[old], old)  # type: ignore[arg-type]
    if (root / new).exists():
        trash = root / f"_trash_{new}_{uuid.uuid4().hex[:8]}"
        (root / new).rename(trash)
        shutil.rmtree(trash)
    (root / old).rename(root / new)
    attrs: dict[str, Any] = dict(group.attrs)
    ome: dict[str, Any] = dict(attrs.get("ome", {}))
    ome["multiscales"] = [m for m in ome.get("multiscales", []) if m.get("name") != old]
    group.attrs["ome"] = ome
    _register_multiscale(group, new, volume.axis_names, volume.voxel_size, volume.offset)


def write_table(group: zarr.Group, name: str, table: Any, attrs: dict[str, Any]) -> None:
    """Store a lookup table (a dataclass of 1D arrays and scalars) as a subgroup."""
    from dataclasses import asdict

    fields = asdict(table)
    sub = group.create_group(name, overwrite=True)
    scalars = {}
    for key, value in fields.items():
        if isinstance(value, np.ndarray):
            chunk = max(1, min(len(value), 2**20))
            sub.create_array(key, data=value, chunks=(chunk,),
                             compressors=_codecs("zstd", value.dtype))
        else:
            scalars[key] = value
    sub.attrs.update({**scalars, **attrs})


def read_table(path: str | os.PathLike[str], name: str = "lookup") -> dict[str, Any]:
    """Arrays and attributes of a stored lookup table."""
    group = open_dataset(path).get(name)
    if not isinstance(group, zarr.Group):
        raise InputNotFoundError(f"lookup table: got {name!r} in {str(path)!r}, expected a "
                                 "table written by segment")
    out: dict[str, Any] = dict(group.attrs)
    out.update({key: np.asarray(arr[...]) for key, arr in group.arrays()})
    return out


def delete_node(group: zarr.Group, name: str) -> None:
    """Remove an array or group of a local dataset, if present."""
    path = Path(group_path(group)) / name
    if path.exists():
        shutil.rmtree(path)


def group_path(group: zarr.Group) -> str:
    """Filesystem path of a group opened from a local directory (workers reopen it)."""
    root = getattr(group.store, "root", None)
    if root is None:
        raise ConfigError(f"dataset: got store {group.store!r}, expected a local directory")
    return str(Path(root) / group.path)


def check_chunk_alignment(block: Sequence[int], chunks: Sequence[int], shape: Sequence[int],
                          name: str = "--block") -> None:
    """Refuse a block shape that is not a multiple of the chunk shape (writes would race).

    An axis the block covers whole (block >= shape) needs no alignment.
    """
    if any(b % c and b < n for b, c, n in zip(block, chunks, shape, strict=True)):
        raise ConfigError(f"{name}: got {tuple(block)}, expected a multiple of the chunk "
                          f"shape {tuple(chunks)} so that no two blocks write one chunk")
