"""Whole datasets: atomic creation, destination checks, external sources, tables.

The top of the storage layer: it imports :mod:`.arrays` and :mod:`.codecs`, which never
import it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import (
    ConfigError,
    DataError,
    DestinationExistsError,
    InputNotFoundError,
    bad_value,
)
from .arrays import (
    Volume,
    create_volume,
    group_path,
    open_dataset,
    zarr_listing,
)
from .codecs import compressors
from .integrity import read_checked
from .location import (
    PUBLISHING,
    as_path,
    is_remote,
    remove_tree,
    stored_bytes,
    write_object,
)

__all__ = [
    "check_destination",
    "dataset_from_array",
    "delete_node",
    "describe_dataset",
    "open_external",
    "process_alive",
    "read_table",
    "read_table_slice",
    "require_space",
    "staged_dataset",
    "write_atomic",
    "write_json",
    "write_table",
]

log = logging.getLogger(__name__)


def open_external(path: str | os.PathLike[str], key: str | None) -> zarr.Array[Any]:
    """Open an array of any Zarr (v2 or v3) store for reading, e.g. an ingest source."""
    try:
        node = zarr.open(store=str(as_path(path)), mode="r")
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
    if is_remote(dst):
        return _check_remote(dst, overwrite=overwrite)
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


def _check_remote(dst: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """:func:`check_destination` for a store URL: the prefix must hold nothing (but the
    leftovers of a killed run of this host), and a probe object must be writable."""
    target = as_path(dst)
    writer = publishing_writer(target)
    if writer is not None and not overwrite and not writer_dead(writer):
        raise DestinationExistsError(f"DST: got {str(dst)!r}, which a live run is writing "
                                     f"({writer}); expected a new path")
    if writer is None and target.exists() and not overwrite:
        raise DestinationExistsError(f"DST: got {str(dst)!r}, which exists; "
                                     "expected a new path (or pass --overwrite)")
    probe = target.parent / f".{target.name}.probe-{uuid.uuid4().hex[:8]}"
    try:
        write_object(probe, b"")
        remove_tree(probe)
    except Exception as err:  # no bucket, no credentials, no endpoint: botocore's own types
        raise bad_value("DST", str(dst), "a writable store location "
                        f"({type(err).__name__}: {err})") from None
    return target


def publishing_writer(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The writer of a dataset on an object store that is not yet published (its group
    metadata still names it: :func:`staged_dataset`), else None."""
    try:
        meta = json.loads((as_path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    writer = meta.get("attributes", {}).get(PUBLISHING) if isinstance(meta, dict) else None
    return writer if isinstance(writer, dict) else None


def writer_dead(writer: dict[str, Any]) -> bool:
    """Whether the writer a :data:`PUBLISHING` record names was on this host and is gone."""
    pid = writer.get("pid")
    return writer.get("host") == _host() and isinstance(pid, int) and not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def _host() -> str:
    """This host's name as staging directories carry it (no "-", their separator)."""
    return socket.gethostname().replace("-", "_")


def _remove_dead_staging(target: Path) -> None:
    """Remove the staging directories that killed runs on this host left beside
    ``target`` (their pid is gone); those of live runs or other hosts stay."""
    for path in target.parent.glob(f".{glob.escape(target.name)}.staging-*"):
        parts = path.name.rsplit(".staging-", 1)[1].split("-")
        if (len(parts) == 3 and parts[0] == _host() and parts[1].isdigit()
                and not process_alive(int(parts[1]))):
            log.warning("removing %s, left by a killed run", path)
            shutil.rmtree(path, ignore_errors=True)


def require_space(dst: str | os.PathLike[str], nbytes: float, what: str) -> None:
    """Refuse a write of about ``nbytes`` where the file system of ``dst`` (or of its
    nearest existing parent) has less free space. Object stores have no such limit here."""
    if is_remote(dst):
        return
    place = Path(dst).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free
    if nbytes > free:
        raise DataError(f"{what}: needs about {_size(nbytes)}, but {place} has "
                        f"{_size(free)} free")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


@contextlib.contextmanager
def staged_dataset(dst: str | os.PathLike[str], *, overwrite: bool = False
                   ) -> Iterator[zarr.Group]:
    """Create a new dataset group atomically at ``dst``.

    Validates the destination first (:func:`check_destination`), yields a fresh group in
    a hidden staging directory beside ``dst``, and moves it into place only when the block
    exits without error. On error the staging directory is removed and ``dst`` is left
    exactly as it was.

    On an object store (no rename) the group is written in place, its metadata naming
    the writer (:data:`PUBLISHING`) until the block exits without error: the last write
    removes it and so publishes the dataset. Readers refuse a dataset that is not
    published; on error it is removed. ``overwrite`` removes the old dataset first.
    """
    if is_remote(dst):
        with _published(dst, overwrite=overwrite) as group:
            yield group
        return
    target = check_destination(dst, overwrite=overwrite)
    parent = target.parent
    _remove_dead_staging(target)
    staging = parent / f".{target.name}.staging-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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


@contextlib.contextmanager
def _published(dst: str | os.PathLike[str], *, overwrite: bool) -> Iterator[zarr.Group]:
    target = check_destination(dst, overwrite=overwrite)
    remove_tree(target)  # the old dataset (overwrite) or a killed run's leftovers
    group = zarr.open_group(store=str(target), mode="w", zarr_format=3)
    group.attrs[PUBLISHING] = {"host": _host(), "pid": os.getpid(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        yield group
        del group.attrs[PUBLISHING]  # the last write: the dataset is published
    except BaseException:
        remove_tree(target)
        raise
    log.info("wrote %s", target)


def describe_dataset(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per array of a dataset: name, shape, dtype, chunks, shards (None where
    unsharded), voxel size, bytes."""
    group = open_dataset(path)
    rows = []
    with zarr_listing(path):
        arrays = sorted(group.arrays())
    for name, array in arrays:
        stored = stored_bytes(as_path(path) / name)
        vol = Volume(array, name)
        rows.append({"name": name, "shape": vol.shape, "dtype": str(vol.dtype),
                     "chunks": vol.chunks, "shards": vol.shards, "voxel_size": vol.voxel_size,
                     "offset": vol.offset,
                     "axes": vol.axis_names, "nbytes": array.nbytes, "stored_bytes": stored})
    return rows


def write_table(group: zarr.Group, name: str, table: Any, attrs: dict[str, Any],
                extra: dict[str, np.ndarray] | None = None) -> None:
    """Store a lookup table (a dataclass of 1D arrays and scalars, plus ``extra`` arrays)
    as a subgroup; tasks read their slices of it with :func:`read_table_slice`."""
    from dataclasses import asdict

    fields = {**asdict(table), **(extra or {})}
    sub = group.create_group(name, overwrite=True)
    scalars = {}
    for key, value in fields.items():
        if isinstance(value, np.ndarray):
            chunk = max(1, min(len(value), 2**18))
            sub.create_array(key, data=value, chunks=(chunk,),  # every chunk, zeros too
                             compressors=compressors("zstd1", value.dtype),
                             config={"write_empty_chunks": True})
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
    out.update({key: read_checked(arr, f"{name}/{key}", (slice(None),) * arr.ndim)
                for key, arr in group.arrays()})
    return out


def read_table_slice(path: str | os.PathLike[str], name: str, key: str,
                     start: int | None = None, stop: int | None = None) -> np.ndarray:
    """``[start:stop]`` of one array of a stored table (a block's part of the lookup)."""
    array = zarr.open_array(store=str(as_path(path) / name / key), mode="r")
    out: np.ndarray = read_checked(array, f"{name}/{key}", (slice(start, stop),))
    return out


def delete_node(group: zarr.Group, name: str) -> None:
    """Remove an array or group of a dataset, if present."""
    remove_tree(as_path(group_path(group)) / name)


def dataset_from_array(out: str | os.PathLike[str] | None, name: str, data: Any, *,
                       voxel_size: Sequence[float], chunks: Sequence[int],
                       overwrite: bool = False) -> str:
    """A new dataset at ``out`` whose array ``name`` is ``data`` (numpy or dask; 3D, or
    4D channel-first), written chunk by chunk; returns the dataset path."""
    if out is None:
        raise ConfigError(f"out: got None, expected the path of a new dataset to hold the "
                          f"{name} array and the outputs")
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    if len(shape) not in (3, 4):
        raise DataError(f"{name}: got an array of shape {shape}, expected (z, y, x) or "
                        "(c, z, y, x)")
    channels = shape[0] if len(shape) == 4 else None
    with staged_dataset(out, overwrite=overwrite) as group:
        create_volume(group, name, shape=shape[-3:], channels=channels, dtype=data.dtype,
                      voxel_size=voxel_size, chunks=chunks).store(data)
    return str(out)


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write a file under a unique temporary name, then rename: never half a file, even
    with two writers of the same path (on an object store: one PUT, which is atomic)."""
    body = data.encode() if isinstance(data, str) else data
    if is_remote(path):
        write_object(as_path(path), body)
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(body)
    tmp.replace(target)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON, atomically (:func:`write_atomic`)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")
