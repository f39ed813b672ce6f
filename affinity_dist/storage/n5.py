"""Read-only N5 dataset reader (local filesystem, numpy + numcodecs only).

Follows the file-system specification of https://github.com/saalfeldlab/n5.
N5 lists axes fastest-first (x, y, z); everything here is in numpy C-order
(z, y, x), i.e. N5 axis lists are reversed.  Missing blocks read as zeros.
Compressions: raw, gzip (``useZlib`` -> zlib), zlib, bzip2, xz, blosc, zstd;
the old-style ``compressionType`` attribute is accepted, and neither attribute
means raw (early N5).  Java ``lz4`` and object-mode (mode 2) blocks are not
supported.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numcodecs
import numpy as np
from numcodecs.abc import Codec

__all__ = ["N5Array", "find_n5_datasets", "is_n5_dataset", "n5_voxel_size"]

_DTYPES = {
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "int8": "i1", "int16": "i2", "int32": "i4", "int64": "i8",
    "float32": "f4", "float64": "f8",
}  # fmt: skip
_CODECS: dict[str, type[Codec] | None] = {
    "raw": None, "gzip": numcodecs.GZip, "zlib": numcodecs.Zlib, "bzip2": numcodecs.BZ2,
    "xz": numcodecs.LZMA, "blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd,
}  # fmt: skip


def _make_codec(compression: dict[str, Any], where: str) -> Codec | None:
    """Return the numcodecs codec decoding an N5 ``compression`` (None = raw)."""
    ctype = str(compression.get("type", "")).lower()
    if ctype not in _CODECS:
        raise ValueError(
            f"{where}: unsupported N5 compression {compression.get('type')!r} "
            f"(supported: {', '.join(_CODECS)})"
        )
    if ctype == "gzip" and compression.get("useZlib"):
        ctype = "zlib"
    codec = _CODECS[ctype]
    return None if codec is None else codec()


def _is_uint_list(value: Any) -> TypeGuard[list[int]]:
    """Tell whether ``value`` is a list of non-negative (non-bool) ints."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def _load_attrs(path: str) -> dict[str, Any]:
    """Read and parse ``<path>/attributes.json``."""
    attrs_path = Path(path, "attributes.json")
    if not attrs_path.is_file():
        raise FileNotFoundError(f"{path}: no attributes.json, not an N5 dataset")
    try:
        attrs = json.loads(attrs_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{attrs_path}: invalid JSON ({err})") from err
    if not isinstance(attrs, dict):
        raise ValueError(f"{attrs_path}: expected a JSON object, got {type(attrs).__name__}")
    return attrs


class N5Array:
    """Read-only view of one N5 dataset, exposed in numpy (C, z-y-x) order.

    Only the path and parsed metadata are stored and files are opened per read,
    so instances pickle cheaply (e.g. to Dask workers) and block reads are
    independent.

    Parameters
    ----------
    path : str or os.PathLike
        Directory of the dataset (the one holding ``attributes.json``).

    Attributes
    ----------
    shape, chunks : tuple of int
        Array and block shape, numpy order (N5 ``dimensions`` and ``blockSize``
        reversed).
    dtype : numpy.dtype
        Native-endian element type.
    ndim : int
        Number of dimensions.
    attrs : dict
        The full content of ``attributes.json``.

    Raises
    ------
    FileNotFoundError
        If ``path`` has no ``attributes.json``.
    ValueError
        If the attributes are not those of a supported N5 dataset.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path: str = str(Path(path).absolute())
        self.attrs: dict[str, Any] = _load_attrs(self.path)
        where, dims, block = self.path, self.attrs.get("dimensions"), self.attrs.get("blockSize")
        if dims is None:
            raise ValueError(f"{where}: attributes.json has no 'dimensions' (an N5 group?)")
        if not (_is_uint_list(dims) and _is_uint_list(block) and len(block) == len(dims)) or (
            0 in block
        ):
            raise ValueError(f"{where}: invalid 'dimensions' {dims} / 'blockSize' {block}")
        dtype_name = self.attrs.get("dataType")
        if dtype_name not in _DTYPES:
            raise ValueError(
                f"{where}: unsupported N5 dataType {dtype_name!r} ({', '.join(_DTYPES)})"
            )
        compression = self.attrs.get("compression", self.attrs.get("compressionType", "raw"))
        compression = {"type": compression} if isinstance(compression, str) else compression
        if not isinstance(compression, dict):
            raise ValueError(f"{where}: invalid compression {compression!r}")
        _make_codec(compression, where)  # validate now rather than at the first read
        self._compression: dict[str, Any] = compression
        self._disk_dtype = np.dtype(">" + _DTYPES[dtype_name])
        self.dtype: np.dtype[Any] = self._disk_dtype.newbyteorder("=")
        self.shape: tuple[int, ...] = tuple(reversed(dims))
        self.chunks: tuple[int, ...] = tuple(reversed(block))
        self.ndim: int = len(dims)

    def __repr__(self) -> str:
        return f"N5Array({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def _read_block(self, grid: tuple[int, ...], codec: Codec | None) -> np.ndarray | None:
        """Decode the block at numpy-order grid position ``grid`` (None if missing)."""
        path = Path(self.path, *(str(g) for g in reversed(grid)))
        try:
            buf = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            mode, ndim = struct.unpack_from(">HH", buf, 0)
            if mode not in (0, 1):
                raise ValueError(f"unsupported block mode {mode}")
            if ndim != self.ndim:
                raise ValueError(f"block has {ndim} dimensions, dataset has {self.ndim}")
            dims = struct.unpack_from(f">{ndim}I", buf, 4)
            offset, count = 4 + 4 * ndim, math.prod(dims)
            if mode == 1:
                (n_elements,) = struct.unpack_from(">I", buf, offset)
                if n_elements != count:
                    raise ValueError(f"varlength block holds {n_elements} elements, not {count}")
                offset += 4
            payload = memoryview(buf)[offset:]
            raw = payload if codec is None else codec.decode(payload)
            data = np.frombuffer(raw, dtype=self._disk_dtype, count=count)
        except Exception as err:  # codecs raise OSError, zlib.error, RuntimeError, ...
            raise ValueError(f"{path}: corrupt or unsupported N5 block ({err})") from err
        return data.reshape(dims[::-1])

    def read(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """Read the box ``[start, stop)`` (numpy axis order) into a new array.

        Parameters
        ----------
        start, stop : sequence of int
            Inclusive lower and exclusive upper corners, ``0 <= start <= stop <= shape``.

        Returns
        -------
        numpy.ndarray
            Native-endian array of shape ``stop - start``; missing blocks are 0.
        """
        lo, hi = [operator.index(s) for s in start], [operator.index(s) for s in stop]
        if not len(lo) == len(hi) == self.ndim or not all(
            0 <= a <= b <= n for a, b, n in zip(lo, hi, self.shape, strict=True)
        ):
            raise ValueError(f"{self.path}: invalid box {lo}..{hi} for shape {self.shape}")
        out = np.zeros(tuple(b - a for a, b in zip(lo, hi, strict=True)), dtype=self.dtype)
        if out.size == 0:
            return out
        codec = _make_codec(self._compression, self.path)
        for grid in itertools.product(
            *(range(a // c, (b - 1) // c + 1) for a, b, c in zip(lo, hi, self.chunks, strict=True))
        ):
            block = self._read_block(grid, codec)
            if block is None:
                continue
            src, dst = [], []
            for g, c, n, a, b in zip(grid, self.chunks, block.shape, lo, hi, strict=True):
                s0, s1 = max(a, g * c), min(b, g * c + min(n, c))
                src.append(slice(s0 - g * c, s1 - g * c))
                dst.append(slice(s0 - a, s1 - a))
            if all(s.stop > s.start for s in src):
                out[tuple(dst)] = block[tuple(src)]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        """Read ``self[key]`` for ints, slices with positive step and Ellipsis.

        Only the blocks overlapping the request are read; the result is what
        numpy would return for the same key on the full array (as an ndarray).
        """
        items = key if isinstance(key, tuple) else (key,)
        ell = [j for j, k in enumerate(items) if k is Ellipsis]
        if len(ell) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if ell:
            fill = (slice(None),) * (self.ndim - len(items) + 1)
            items = items[: ell[0]] + fill + items[ell[0] + 1 :]
        if len(items) > self.ndim:
            raise IndexError(f"too many indices: {len(items)} for {self.ndim} dimensions")
        items = items + (slice(None),) * (self.ndim - len(items))
        lo, hi, post = [], [], list[slice | int]()
        box: tuple[int, int]
        sel: slice | int
        for k, n in zip(items, self.shape, strict=True):
            if isinstance(k, slice):
                a, b, step = k.indices(n)
                if step <= 0:
                    raise IndexError(f"only positive slice steps are supported, got {step}")
                count = len(range(a, b, step))  # read only up to the last selected index
                box, sel = (a, a + (count - 1) * step + 1 if count else a), slice(None, None, step)
            elif isinstance(k, int | np.integer) and not isinstance(k, bool | np.bool_):
                idx = int(k) + n if k < 0 else int(k)
                if not 0 <= idx < n:
                    raise IndexError(f"index {k} is out of bounds for axis with size {n}")
                box, sel = (idx, idx + 1), 0
            else:
                raise TypeError(f"unsupported index {k!r}: use ints, slices or Ellipsis")
            lo.append(box[0])
            hi.append(box[1])
            post.append(sel)
        return np.asarray(self.read(lo, hi)[tuple(post)], order="C")


def is_n5_dataset(path: str | os.PathLike[str]) -> bool:
    """Tell whether ``path`` is an N5 dataset.

    Parameters
    ----------
    path : str or os.PathLike
        Directory to test.

    Returns
    -------
    bool
        True if ``path/attributes.json`` is a JSON object with ``dimensions``.
    """
    try:
        return "dimensions" in _load_attrs(os.fspath(path))
    except (OSError, ValueError):
        return False


def find_n5_datasets(root: str | os.PathLike[str]) -> list[str]:
    """List the N5 datasets under a container root.

    Parameters
    ----------
    root : str or os.PathLike
        Container (or group) directory.  Datasets are not descended into.

    Returns
    -------
    list of str
        Sorted '/'-separated paths relative to ``root`` (``["."]`` if ``root``
        itself is a dataset).
    """
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        if is_n5_dataset(dirpath):
            found.append(os.path.relpath(dirpath, root).replace(os.sep, "/"))
            dirnames.clear()
    return sorted(found)


def n5_voxel_size(attrs: dict[str, Any]) -> tuple[float, ...] | None:
    """Voxel size in numpy (z, y, x) order from N5 dataset attributes.

    Conventions, in priority order (both in N5 x, y, z order, units are not
    converted): ``resolution`` (paintera / BigCAT: list) and ``pixelResolution``
    (n5-viewer / BigDataViewer: list, or ``{"dimensions": [...], "unit": ...}``).

    Parameters
    ----------
    attrs : dict
        Content of the dataset's ``attributes.json``.

    Returns
    -------
    tuple of float or None
        The reversed voxel size, or None when neither attribute is present.

    Raises
    ------
    ValueError
        If the attribute is present but not a non-empty list of numbers.
    """
    for key in ("resolution", "pixelResolution"):
        if key not in attrs:
            continue
        value = attrs[key]
        if isinstance(value, dict):
            value = value.get("dimensions")
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            raise ValueError(f"malformed N5 {key!r} attribute: {attrs[key]!r}")
        return tuple(float(v) for v in reversed(value))
    return None
