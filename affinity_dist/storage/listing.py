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

__all__ = ["list_arrays", "metadata_error", "zarr_listing"]


def metadata_error(path: str | os.PathLike[str], err: Exception) -> DataError:
    """The error for a dataset whose listing failed on broken metadata, naming the first
    ``zarr.json`` under ``path`` that is not a JSON object."""
    where = "the metadata of a member"
    for meta in sorted(Path(path).rglob("zarr.json")):
        try:
            ok = isinstance(json.loads(meta.read_text()), dict)
        except (OSError, ValueError):
            ok = False
        if not ok:
            where = str(meta)
            break
    return DataError(f"dataset {str(path)!r}: {where} is not valid Zarr metadata "
                     f"({type(err).__name__}: {err})")


@contextlib.contextmanager
def zarr_listing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Around a listing of the members of the dataset at ``path``: silence zarr's warning
    about files beside the arrays that are not Zarr nodes (the run state ``_run_state/``,
    webKnossos' ``datasource-properties.json``), and turn a broken member's metadata into
    one :class:`DataError` naming its file."""
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
        node = zarr.open(store=str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise DataError(f"SRC: got {str(path)!r}, expected a readable Zarr store ({err})") from None
    if isinstance(node, zarr.Array):
        return [""]
    with zarr_listing(path):
        members = node.members(max_depth=0 if top_level else None)
    return sorted(name for name, member in members if isinstance(member, zarr.Array))
