"""Done markers as data: a block's small result and the files it wrote, never pickle.

Markers are stored in batches: an ``.npz`` file (read with ``allow_pickle=False``)
holding one ``meta`` member, UTF-8 JSON::

    {"format": "affinity_dist.markers/2", "markers": [
        {"step": ..., "block": ..., "key": ...,
         "files": [[path relative to the dataset, size, crc32], ...], "result": ...},
        ...]}

and the numeric arrays the results refer to (``a0``, ``a1``, ...), shared by the batch.
A result is built from ``None``, bools, ints, floats, strings, numeric numpy arrays,
lists, dicts with string keys and the named tuples a stage registered with
:func:`register_result`; decoding accepts nothing else. Reading a marker runs no code
from it: a forged one is at worst a marker that does not verify, and its block is
computed again.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

__all__ = ["FORMAT", "Marker", "MarkerError", "decode_markers", "encode_markers",
           "register_result"]

FORMAT = "affinity_dist.markers/2"
_RESULTS: dict[str, type[Any]] = {}
N = TypeVar("N", bound=type)


class MarkerError(ValueError):
    """A marker that cannot be trusted (unreadable, of another format, inconsistent)."""


class Marker(NamedTuple):
    step: str
    block: int
    key: str
    files: list[list[Any]]
    result: Any


def register_result(cls: N) -> N:
    """Allow the named tuple ``cls`` as (part of) a recorded block result."""
    if not (issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise TypeError(f"{cls!r} is not a named tuple")
    known = _RESULTS.setdefault(cls.__name__, cls)
    if known is not cls:
        raise TypeError(f"two result types named {cls.__name__!r}: {known!r} and {cls!r}")
    return cls


def _encode(value: Any, arrays: list[np.ndarray[Any, Any]]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"a recorded array must be numeric, got {value.dtype}")
        arrays.append(value)
        return {"array": len(arrays) - 1}
    if isinstance(value, tuple) and type(value).__name__ in _RESULTS:
        if _RESULTS[type(value).__name__] is not type(value):
            raise TypeError(f"{type(value)!r} is not the registered result type")
        return {"tuple": type(value).__name__,
                "fields": {f: _encode(getattr(value, f), arrays)
                           for f in getattr(value, "_fields")}}  # noqa: B009
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("a recorded dict must have string keys")
        return {"dict": {k: _encode(v, arrays) for k, v in value.items()}}
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return {"list": [_encode(v, arrays) for v in value]}
    raise TypeError(f"cannot record a {type(value).__name__} (register named tuples with "
                    "register_result)")


def encode_markers(markers: Sequence[Marker]) -> bytes:
    """The bytes of a batch file of markers."""
    arrays: list[np.ndarray[Any, Any]] = []
    entries = [{"step": m.step, "block": int(m.block), "key": m.key, "files": m.files,
                "result": _encode(m.result, arrays)} for m in markers]
    buffer = io.BytesIO()
    text = json.dumps({"format": FORMAT, "markers": entries}, allow_nan=True).encode()
    members = {"meta": np.frombuffer(text, np.uint8),
               **{f"a{i}": a for i, a in enumerate(arrays)}}
    np.savez(buffer, **members)  # type: ignore[arg-type]
    return buffer.getvalue()


def _decode(value: Any, arrays: Mapping[str, np.ndarray[Any, Any]]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if not (isinstance(value, dict) and len(value) in (1, 2)):
        raise MarkerError(f"unexpected value {str(value)[:60]!r}")
    if len(value) == 1 and "array" in value:
        name = f"a{value['array']}" if isinstance(value["array"], int) else ""
        if name not in arrays:
            raise MarkerError(f"array {value['array']!r} is missing")
        return arrays[name]
    if len(value) == 1 and isinstance(value.get("dict"), dict):
        return {str(k): _decode(v, arrays) for k, v in value["dict"].items()}
    if len(value) == 1 and isinstance(value.get("list"), list):
        return [_decode(v, arrays) for v in value["list"]]
    kind = value.get("tuple")
    cls = _RESULTS.get(kind) if isinstance(kind, str) else None
    fields = value.get("fields")
    if cls is None or not isinstance(fields, dict) or list(fields) != list(cls._fields):
        raise MarkerError(f"unknown result type or fields {str(value)[:60]!r}")
    return cls(*(_decode(fields[f], arrays) for f in cls._fields))


def _files(value: Any) -> list[list[Any]]:
    ok = isinstance(value, list) and all(
        isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
        and not e[0].startswith(("/", "..")) and "/../" not in e[0]
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in e[1:])
        for e in value)
    if not ok:
        raise MarkerError("its file list is malformed")
    return value  # type: ignore[no-any-return]


def _marker(entry: Any, arrays: Mapping[str, np.ndarray[Any, Any]]) -> Marker:
    if not isinstance(entry, dict):
        raise MarkerError("an entry is not an object")
    step, block, key = entry.get("step"), entry.get("block"), entry.get("key")
    if not (isinstance(step, str) and isinstance(block, int) and not isinstance(block, bool)
            and block >= 0 and isinstance(key, str)):
        raise MarkerError("its step, block or key is malformed")
    return Marker(step, block, key, _files(entry.get("files")),
                  _decode(entry.get("result"), arrays))


def decode_markers(data: bytes) -> tuple[list[Marker], list[str]]:
    """The markers of a batch file, and what is wrong with each entry that does not decode
    (left out); :class:`MarkerError` for a file that is not a batch of markers at all."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            members = {name: npz[name] for name in npz.files}
        meta = json.loads(members.pop("meta").tobytes().decode())
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError,
            zipfile.BadZipFile) as err:
        raise MarkerError(f"unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT \
            or not isinstance(meta.get("markers"), list):
        raise MarkerError(f"not a batch of markers of format {FORMAT}")
    if any(a.dtype.kind not in "biuf" for a in members.values()):
        raise MarkerError("it holds a non-numeric array")
    markers, problems = [], []
    for entry in meta["markers"]:
        try:
            markers.append(_marker(entry, members))
        except MarkerError as err:
            problems.append(str(err))
    return markers, problems
