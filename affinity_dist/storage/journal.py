"""Which files a task wrote: the evidence a run-state record keeps of a block's data.

While a task runs inside :func:`journal`, every write through this package (volume
boxes, face rows, records) notes the chunk files it touched. The task's done record then
lists each file with its size and CRC-32 (:func:`digests`), so that a record can be
checked against the data on disk (:func:`mismatch`) before it is trusted: a marker whose
data was deleted, truncated or overwritten is redone, not believed.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .integrity import chunk_coords, chunk_path
from .location import as_path, mtime_ns, relative

__all__ = ["chunk_files", "digests", "journal", "mismatch", "note_chunks", "note_file"]

_FILES: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar(
    "affinity_dist_journal", default=None)
_READ = 1 << 22


@contextlib.contextmanager
def journal() -> Iterator[set[str]]:
    """Collect the paths of the files written by this thread's task (nested: the inner
    journal collects, the outer one gets them too)."""
    outer = _FILES.get()
    files: set[str] = set()
    token = _FILES.set(files)
    try:
        yield files
    finally:
        _FILES.reset(token)
        if outer is not None:
            outer.update(files)


def note_file(path: str | os.PathLike[str]) -> None:
    """Note one written file (no-op outside a journal)."""
    files = _FILES.get()
    if files is not None:
        files.add(str(as_path(path).absolute()))


def _chunk_files(array: Any, selection: Sequence[slice]) -> Iterator[Path]:
    for coords in chunk_coords(array, selection):
        path = chunk_path(array, coords)
        if path is None:  # not a local directory: no file to check
            raise NotImplementedError("run-state records need a directory or fsspec store: "
                                      f"{array.store}")
        yield path


def note_chunks(array: Any, selection: Sequence[slice]) -> None:
    """Note the chunk (or shard) files of a Zarr v3 ``array`` that a write of
    ``selection`` (one slice per axis, steps of 1) touched."""
    files = _FILES.get()
    if files is not None:
        files.update(str(path) for path in _chunk_files(array, selection))


@functools.lru_cache(maxsize=64)
def _opened(dataset: str, name: str, stamp: int) -> Any:
    """An array, opened once per version of its metadata (checking 10^5 markers)."""
    from .arrays import open_volume

    return open_volume(dataset, name).array


def chunk_files(dataset: str | os.PathLike[str], name: str, selection: Sequence[slice]
                ) -> set[str]:
    """The chunk files a write of ``selection`` into array ``name`` must leave (relative
    to the dataset): what a block's done marker has to list."""
    array = _opened(str(dataset), name, mtime_ns(as_path(dataset) / name / "zarr.json"))
    return {relative(path, dataset) for path in _chunk_files(array, selection)}


def _crc(path: str) -> tuple[int, int]:
    crc, size = 0, 0
    with as_path(path).open("rb") as f:
        while chunk := f.read(_READ):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return size, crc


def digests(files: Iterable[str], root: str | os.PathLike[str]) -> list[list[Any]]:
    """``[relative path, size, crc32]`` of each file, paths relative to ``root`` (sorted)."""
    out = []
    for path in sorted(files):
        try:
            rel = relative(path, root)
        except ValueError:
            raise ValueError(f"written file {path!r} lies outside the dataset {root}") from None
        out.append([rel, *_crc(path)])
    return out


def mismatch(entries: Iterable[Sequence[Any]], root: str | os.PathLike[str], *,
             content: bool = True) -> str | None:
    """Why the files of a record do not match the disk (None when every one does): a
    missing file, another size, or (with ``content``) another CRC-32."""
    base = as_path(root)
    for rel, size, crc in entries:
        path = base / rel
        try:
            if not content:
                if path.stat().st_size != size:
                    return f"{rel}: {path.stat().st_size} bytes, the record says {size}"
                continue
            got = _crc(str(path))
        except OSError:
            return f"{rel}: missing"
        if got != (size, crc):
            return f"{rel}: changed since the block was recorded"
    return None
