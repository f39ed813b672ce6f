"""Records: small per-task tables of a tree reduction (edges, merges, residuals), one Zarr
array each, beside a dataset's arrays.

A record is a set of named 1-D fields of 8-byte numbers (uint64, int64, float64) of any
lengths, stored as one uint64 array (two files: metadata and one chunk) whose attributes
list the fields' names, types and lengths. Reading checks them against the data on disk
and accepts only those three types: a record is data, never code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray

from ..errors import DataError
from .codecs import compressors
from .integrity import read_checked
from .journal import note_chunks, note_file
from .location import as_path

__all__ = ["read_record", "record_part", "write_parts", "write_record"]

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
    array = zarr.create_array(store=str(as_path(dataset) / name), shape=flat.shape,
                              chunks=(max(1, flat.size),), dtype=np.uint64, fill_value=0,
                              compressors=compressors("zstd1", np.dtype(np.uint64)),
                              attributes={"record": spec},
                              config={"write_empty_chunks": True}, overwrite=True)
    note_file(as_path(dataset) / name / "zarr.json")
    if flat.size:
        array[:] = flat
        note_chunks(array, (slice(None),))


def read_record(dataset: str | os.PathLike[str], name: str) -> dict[str, NDArray[Any]]:
    """The fields of record ``name``, checked against its metadata."""
    path = as_path(dataset) / name
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


def write_parts(dataset: str | os.PathLike[str], name: str,
                parts: Sequence[Mapping[str, NDArray[Any]]]) -> None:
    """Write one record holding several records of the same fields (one part per child
    task, in order: one file for a parent's children instead of one each): each field
    concatenated, and ``starts``, every field's offsets of the parts (fields x parts+1).
    :func:`record_part` takes one back out."""
    keys = list(parts[0]) if parts else []
    if "starts" in keys or any(list(p) != keys for p in parts):
        raise TypeError("record parts must have the same fields, not 'starts'")
    fields = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in keys}
    starts = [np.cumsum([0, *(np.asarray(p[k]).size for p in parts)]) for k in keys]
    write_record(dataset, name, {**fields, "starts": np.concatenate(
        [np.zeros(0, np.int64), *starts]).astype(np.int64)})


def record_part(record: Mapping[str, NDArray[Any]], name: str, position: int, count: int
                ) -> dict[str, NDArray[Any]]:
    """Part ``position`` of ``count`` of a record written by :func:`write_parts`, after
    checking its offsets against its fields."""
    keys = [k for k in record if k != "starts"]
    starts = record.get("starts")
    ok = starts is not None and starts.size == len(keys) * (count + 1) and 0 <= position < count
    rows = np.asarray(starts).reshape(len(keys), count + 1) if ok else None
    if rows is None or not (np.all(rows[:, 0] == 0) and np.all(np.diff(rows, axis=1) >= 0)
                            and all(int(row[-1]) == record[k].size
                                    for k, row in zip(keys, rows, strict=True))):
        raise DataError(f"record {name!r}: its parts do not match {count} children "
                        f"(part {position} wanted)")
    return {k: record[k][int(row[position]):int(row[position + 1])]
            for k, row in zip(keys, rows, strict=True)}
