"""Chunks that must be there and must decode: damage named by array and chunk key.

The project writes every chunk of every array it makes (``write_empty_chunks``), and
each chunk carries a CRC-32C after its compressor (:func:`.codecs.compressors`). So a
chunk file that is missing, truncated or altered is damage, never data: Zarr would read
a missing chunk as the fill value and may decode altered zstd bytes without error. Reads
through :class:`~.arrays.Volume` check presence and name the first bad chunk;
:func:`verify_chunks` checks every chunk of an array (the ``verify`` command).

A sharded array (Zarr v3 ``sharding_indexed``) keeps many chunks in one file with an index
of them at its end (itself with a CRC-32C). Its unit here is the shard: the file must be
there and decode, and (``verify``) its index must list every chunk inside the array, as
the project writes every chunk; zarr reads a chunk missing from the index as zeros.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["CorruptChunkError", "chunk_coords", "chunk_counts", "chunk_path", "decode_error",
           "read_checked", "require_chunks", "verify_chunks"]


class CorruptChunkError(DataError):
    """A chunk of an array is missing or does not decode: the dataset is damaged. Found
    mid-run it stops the stage with exit 1 (its finished blocks stay recorded)."""

    exit_code = 1


def chunk_counts(array: Any) -> tuple[int, ...]:
    """Chunks (shards, for a sharded array) per axis."""
    grid = array.metadata.chunk_grid.chunk_shape
    return tuple(-(-n // c) for n, c in zip(array.shape, grid, strict=True))


def chunk_coords(array: Any, selection: Sequence[slice]) -> Iterator[tuple[int, ...]]:
    """The grid coordinates of the chunks (shards, for a sharded array) that
    ``selection`` (one slice per axis) touches."""
    grid = array.metadata.chunk_grid.chunk_shape
    ranges = []
    for s, n, c in zip(selection, array.shape, grid, strict=True):
        start, stop, _ = s.indices(n)
        ranges.append(range(start // c, -(-stop // c)) if stop > start else range(0))
    return itertools.product(*ranges)


def store_root(array: Any) -> Path | None:
    """The folder (or store URL, as a path) of an array's store: a local directory or an
    fsspec store; None for others (in memory)."""
    root = getattr(array.store, "root", None)
    if root is not None:
        return Path(root)
    fs, key = getattr(array.store, "fs", None), getattr(array.store, "path", None)
    if fs is None or key is None:
        return None
    from .location import as_path

    return as_path(fs.unstrip_protocol(key))


def chunk_path(array: Any, coords: tuple[int, ...]) -> Path | None:
    """The file (object) of a chunk of an array on a directory or fsspec store (None for
    other stores)."""
    root = store_root(array)
    if root is None:
        return None
    path: Path = root / str(array.path) / str(array.metadata.encode_chunk_key(coords))
    return path


def _slices(array: Any, coords: tuple[int, ...]) -> tuple[slice, ...]:
    grid = array.metadata.chunk_grid.chunk_shape
    return tuple(slice(i * c, min((i + 1) * c, n))
                 for i, c, n in zip(coords, grid, array.shape, strict=True))


def _damage(name: str, array: Any, coords: tuple[int, ...], what: str) -> CorruptChunkError:
    key = array.metadata.encode_chunk_key(coords)
    return CorruptChunkError(f"{name}: {_unit(array)} {key} {what} "
                             f"({chunk_path(array, coords)}); the dataset is damaged: "
                             "affinity-dist verify lists every bad chunk")


def _problem(array: Any, coords: tuple[int, ...], *, decode: bool = True) -> str | None:
    """What is wrong with one chunk (shard): "is missing", "does not decode (...)",
    "lacks N of its M chunks" or None."""
    path = chunk_path(array, coords)
    if path is not None and not path.is_file():
        return "is missing"
    if decode:
        try:
            array[_slices(array, coords)]
        except Exception as err:  # any decoder error is damage
            return f"does not decode ({type(err).__name__}: {err})"
        if path is not None:
            return _missing_inner(array, coords, path)
    return None


_EMPTY = np.uint64(2**64 - 1)


def _missing_inner(array: Any, coords: tuple[int, ...], path: Path) -> str | None:
    """For a shard as the project writes them (index at the end: little-endian
    (offset, length) pairs and a CRC-32C, checked by the decode before): the chunks
    inside the array that its index lacks."""
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec

    codec = array.metadata.codecs[0] if len(array.metadata.codecs) == 1 else None
    if not isinstance(codec, ShardingCodec) or codec.index_location.value != "end" or [
            type(c) for c in codec.index_codecs] != [BytesCodec, Crc32cCodec]:
        return None
    shard = array.metadata.chunk_grid.chunk_shape
    inner = codec.chunk_shape
    per = tuple(s // c for s, c in zip(shard, inner, strict=True))
    with path.open("rb") as f:
        f.seek(-(16 * math.prod(per) + 4), os.SEEK_END)
        index = np.frombuffer(f.read(16 * math.prod(per)), "<u8").reshape(*per, 2)
    starts = np.indices(per).reshape(len(per), -1).T * inner + np.multiply(coords, shard)
    inside = (starts < np.asarray(array.shape)).all(axis=1).reshape(per)
    missing = int(((index[..., 0] == _EMPTY) & inside).sum())
    return f"lacks {missing} of its {int(inside.sum())} chunks" if missing else None


def require_chunks(array: Any, name: str, selection: Sequence[slice]) -> None:
    """Refuse to read ``selection`` while a chunk file under it is missing."""
    if store_root(array) is None:
        return
    for coords in chunk_coords(array, selection):
        if (what := _problem(array, coords, decode=False)) is not None:
            raise _damage(name, array, coords, what)


def decode_error(array: Any, name: str, selection: Sequence[slice], error: Exception
                 ) -> Exception:
    """The error to raise for a read of ``selection`` that failed with ``error``: the
    first chunk under it that does not decode, named; ``error`` itself if every chunk
    decodes on its own (the failure was elsewhere)."""
    for coords in chunk_coords(array, selection):
        if (what := _problem(array, coords)) is not None:
            return _damage(name, array, coords, what)
    return error


def read_checked(array: Any, name: str, selection: tuple[slice, ...]) -> Any:
    """``array[selection]`` as numpy, refusing a missing chunk and naming one that does
    not decode (every read of the project's arrays goes through here)."""
    require_chunks(array, name, selection)  # never a missing chunk as zeros
    try:
        return np.asarray(array[selection])
    except Exception as err:  # a chunk that does not decode: named
        raise decode_error(array, name, selection, err) from None


def verify_chunks(array: Any, name: str, coords: Sequence[tuple[int, ...]]) -> list[str]:
    """One line per bad chunk among ``coords`` of ``array``: missing, or not decoding
    (checksum, compressor or size)."""
    return [f"{name}: {_unit(array)} {array.metadata.encode_chunk_key(c)} {what}"
            for c in coords if (what := _problem(array, c)) is not None]


def _unit(array: Any) -> str:
    return "chunk" if array.shards is None else "shard"
