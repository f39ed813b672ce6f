"""Records: small per-task tables of a tree reduction (edges, merges, residuals), one Zarr
array each, beside a dataset's arrays.

A record is a set of named 1-D fields of 8-byte numbers (uint64, int64, float64) of any
lengths, stored as one uint64 array (two files: metadata and one chunk) whose attributes
list the fields' names, types and lengths. Reading checks them against the data on disk
and accepts only those three types: a record is data, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from ..errors import DataError
from .codecs import compressors
from .integrity import read_checked
from .journal import note_chunks, note_file

__all__ = ["read_record", "write_record"]

_TYPES = {"<u8": np.uint64, "<i8": np.int64, "<f8": np.float64}


def write_record(dataset: str | os.PathLike[str], name: str,
                 fields: Mapping[str, NDArray[Any]]) -> None:
    """Write record ``name`` (a path inside the dataset), replacing any older one."""
    spec: list[Any] = []
    parts = []
    for key, value in fields.items():
        a = np.ascontiguousarray(value)
        kind = a.dtype.newbyteorder("<").str
        if a.ndim != 1 or kind not in _TYPES:
            raise TypeError(f"record field {key!r}: got {a.dtype} of shape {a.shape}, "
                            "expected 1-D uint64, int64 or float64")
        spec.append([key, kind, int(a.size)])
        parts.append(a.astype(_TYPES[kind], copy=False).view(np.uint64))
    flat = np.concatenate([np.zeros(0, np.uint64), *parts])
    array = zarr.create_array(store=str(Path(dataset) / name), shape=flat.shape,
                              chunks=(max(1, flat.size),), dtype=np.uint64, fill_value=0,
                              compressors=compressors("zstd1", np.dtype(np.uint64)),
                              attributes={"record": spec},
                              config={"write_empty_chunks": True}, overwrite=True)
    note_file(Path(dataset) / name / "zarr.json")
    if flat.size:
        array[:] = flat
        note_chunks(array, (slice(None),))


def read_record(dataset: str | os.PathLike[str], name: str) -> dict[str, NDArray[Any]]:
    """The fields of record ``name``, checked against its metadata."""
    path = Path(dataset) / name
    try:
        array = zarr.open_array(store=str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise DataError(f"record {str(path)!r}: missing or unreadable ({error})") from None
    spec: Any = array.attrs.get("record")
    ok = isinstance(spec, list) and all(
        isinstance(s, list) and len(s) == 3 and isinstance(s[0], str) and s[1] in _TYPES
        and isinstance(s[2], int) and s[2] >= 0 for s in spec)
    if not ok or sum(s[2] for s in spec) != array.shape[0]:
        raise DataError(f"record {str(path)!r}: fields {spec!r} do not match its "
                        f"{array.shape[0]} values")
    flat = np.zeros(0, np.uint64)
    if array.shape[0]:
        flat = read_checked(array, f"record {name}", (slice(None),))
    out: dict[str, NDArray[Any]] = {}
    start = 0
    for key, kind, length in spec:
        out[str(key)] = flat[start:start + length].view(_TYPES[kind]).copy()
        start += length
    return out
