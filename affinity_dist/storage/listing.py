"""Listing the members of a dataset: its arrays, and one clear error for a member whose
metadata is broken (zarr lists members concurrently and stops at the first bad one).

Imports nothing of this package: :mod:`.arrays` reads through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import zarr

from ..errors import DataError
from .location import as_path

__all__ = ["broken_metadata", "list_arrays", "metadata_error", "zarr_listing"]


#: The keys every Zarr v3 array's metadata must have (zarr-specs v3, "array metadata").
_ARRAY_KEYS = {"shape", "data_type", "chunk_grid", "chunk_key_encoding", "fill_value",
               "codecs"}


def broken_metadata(path: str | os.PathLike[str]) -> Path | None:
    """The first ``zarr.json`` of the hierarchy at ``path`` that is not a JSON object,
    or is Zarr v3 metadata without a node type or an array's required keys (zarr would
    leave such a member out of a listing without a word); None if there is none. Reads
    the metadata files only: the group's, its members', and those below each member
    group; never an array's chunk folders."""
    folders = [as_path(path)]
    while folders:
        folder = folders.pop(0)
        meta = folder / "zarr.json"
        try:
            node = json.loads(meta.read_text())
        except FileNotFoundError:
            continue  # not a node (zarr skips it with a warning)
        except (OSError, ValueError):
            return meta
        if not isinstance(node, dict) or _incomplete(node):
            return meta
        if node.get("node_type") == "group":
            try:
                folders += sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                return meta
    return None


def _incomplete(node: dict[str, object]) -> bool:
    """Zarr v3 metadata without a node type, or an array's without its required keys."""
    if node.get("zarr_format") != 3:
        return False  # another format: zarr judges it
    kind = node.get("node_type")
    return kind not in ("array", "group") or (kind == "array" and not set(node) >= _ARRAY_KEYS)


def metadata_error(path: str | os.PathLike[str], err: Exception | None = None, *,
                   bad: Path | None = None) -> DataError:
    """The error for a dataset with broken metadata, naming its first ``zarr.json`` that
    is not valid (``bad``, when already found by :func:`broken_metadata`; ``err``: what
    zarr raised, if it was zarr that found it)."""
    bad = bad or broken_metadata(path)
    where = "the metadata of a member" if bad is None else str(bad)
    why = "" if err is None else f" ({type(err).__name__}: {err})"
    return DataError(f"dataset {str(path)!r}: {where} is not valid Zarr metadata{why}")


@contextlib.contextmanager
def zarr_listing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Around a listing of the members of the dataset at ``path``: silence zarr's warning
    about files beside the arrays that are not Zarr nodes (the run state ``_run_state/``,
    webKnossos' ``datasource-properties.json``), and turn a broken member's metadata into
    one :class:`DataError` naming its file.

    The metadata files are checked first (:func:`broken_metadata`): zarr lists members
    concurrently and stops at the first error, and the reads it leaves behind are logged
    by asyncio when the process exits ("Task exception was never retrieved", "Task was
    destroyed but it is pending"), after the one error line. For metadata that parses but
    zarr still refuses, its pending reads are waited for before the error."""
    if (bad := broken_metadata(path)) is not None:
        raise metadata_error(path, bad=bad)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Object at .* is not recognized",
                                    category=UserWarning)
            yield
    except (ValueError, KeyError, TypeError) as err:  # a member's zarr.json is broken
        _settle_sibling_reads()
        raise metadata_error(path, err) from None


def _settle_sibling_reads(timeout: float = 30.0) -> None:
    """Let the reads a failed listing started beside the failing one finish on zarr's
    event loop. zarr lists members concurrently and stops at the first error; the others
    are left pending, and when the process exits asyncio logs each one as "Task was
    destroyed but it is pending" after the error line."""
    from zarr.core.sync import _get_loop

    async def settle() -> None:
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            done, _ = await asyncio.wait(others, timeout=timeout)
            for task in done:  # their errors are the same broken listing: mark them seen
                if not task.cancelled():
                    task.exception()

    asyncio.run_coroutine_threadsafe(settle(), _get_loop()).result(timeout + 5)


def list_arrays(path: str | os.PathLike[str], *, top_level: bool = False) -> list[str]:
    """Paths of all arrays in a Zarr store (``[""]`` when the store is an array itself);
    with ``top_level`` only the arrays directly in the group."""
    try:
        node = zarr.open(store=str(as_path(path)), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise DataError(f"SRC: got {str(path)!r}, expected a readable Zarr store ({err})") from None
    if isinstance(node, zarr.Array):
        return [""]
    with zarr_listing(path):
        members = node.members(max_depth=0 if top_level else None)
    return sorted(name for name, member in members if isinstance(member, zarr.Array))
