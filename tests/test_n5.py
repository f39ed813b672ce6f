"""Tests for :mod:`affinity_dist.storage.n5`, the read-only N5 reader.

Two independent oracles are used:

* blocks written by hand in the tests (bytes per the N5 spec, compressed with
  the standard library, plus the literal example blocks of the N5 README), so
  the reader is tested even without optional packages;
* datasets written by ``tensorstore`` (driver ``n5``), when it is installed.
"""

from __future__ import annotations

import bz2
import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity_dist.storage.n5 import N5Array, find_n5_datasets, is_n5_dataset, n5_voxel_size

from .helpers import (
    HAND_COMPRESSIONS,
    Compressor,
    _hand_dataset,
    _identity,
    _write_attrs,
    _write_block,
)

# --------------------------------------------------------------------------
# Hand-written datasets (no optional dependency; writers in helpers.py)
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("compression", "compress"), HAND_COMPRESSIONS)
def test_handwritten_truncated_and_missing_blocks(
    tmp_path: Path, compression: dict[str, Any], compress: Compressor
) -> None:
    expected, arr = _hand_dataset(tmp_path / "ds", compression, compress)
    # The edge block files really are truncated (x: 3 + 2, z: 2 + 1).
    edge = (tmp_path / "ds" / "1" / "1" / "1").read_bytes()
    assert struct.unpack_from(">HHIII", edge) == (0, 3, 2, 2, 1)
    assert not (tmp_path / "ds" / "1" / "1" / "0").exists()
    assert arr.shape == (3, 4, 5)
    assert arr.chunks == (2, 2, 3)
    assert arr.ndim == 3
    assert arr.dtype == np.dtype(np.uint16)
    assert arr.dtype.isnative
    assert arr.attrs["resolution"] == [4.0, 4.0, 40.0]
    out = arr[:]
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, expected)
    for z0 in range(3):
        for x0 in range(5):
            np.testing.assert_array_equal(arr.read((z0, 1, x0), (3, 4, 5)), expected[z0:, 1:, x0:])


SPEC_BLOCKS = {
    # Literal example blocks of the N5 README (uint16 1x2x3 block holding 1..6).
    "raw": "0001 0002 0003 0004 0005 0006",
    "gzip": "1f8b0800 00000000 00006360 64606260 66606160 65600300 aaea6dbf 0c000000",
    "bzip2": (
        "425a6839 31415926 5359023e 0dd20000 0040007f 00200031 0c010d31 a8739433"
        " 7c5dc914 e1424008 f83748"
    ),
    "xz": (
        "fd377a58 5a000004 e6d6b446 02002101 16000000 742fe5a3 01000b00 01000200"
        " 03000400 05000600 0d0309ca 34ec15a7 0001240c a618d8d8 1fb6f37d 01000000"
        " 0004595a"
    ),
}


@pytest.mark.parametrize("ctype", sorted(SPEC_BLOCKS))
def test_spec_readme_example_block(tmp_path: Path, ctype: str) -> None:
    ds = tmp_path / "spec"
    _write_attrs(
        ds,
        {"dimensions": [1, 2, 3], "blockSize": [1, 2, 3], "dataType": "uint16",
         "compression": {"type": ctype}},
    )  # fmt: skip
    header = bytes.fromhex("0000 0003 00000001 00000002 00000003")
    (ds / "0" / "0").mkdir(parents=True)
    (ds / "0" / "0" / "0").write_bytes(header + bytes.fromhex(SPEC_BLOCKS[ctype]))
    arr = N5Array(ds)
    assert arr.shape == (3, 2, 1)
    np.testing.assert_array_equal(arr[...], np.arange(1, 7, dtype=np.uint16).reshape(3, 2, 1))


def test_old_style_compression_type(tmp_path: Path) -> None:
    ds = tmp_path / "old"
    _write_attrs(
        ds, {"dimensions": [4, 3], "blockSize": [2, 2], "dataType": "int32",
             "compressionType": "gzip"},
    )  # fmt: skip
    data = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    for gy in range(2):
        for gx in range(2):
            _write_block(
                ds, (gy, gx), data[2 * gy : 2 * gy + 2, 2 * gx : 2 * gx + 2], gzip.compress
            )
    np.testing.assert_array_equal(N5Array(ds)[:], data)


def test_getitem_matches_numpy(tmp_path: Path) -> None:
    expected, arr = _hand_dataset(tmp_path / "ds", {"type": "raw"}, _identity)
    keys: list[Any] = [
        (), ..., 1, -1, (1, 2, 3), (-1, -4, -5), (slice(None), 2), (..., 1), (0, ..., 4),
        (slice(1, 3), slice(0, 4, 3), slice(None, None, 2)), (slice(5, 2),), np.int64(2),
        (slice(-2, None), ..., slice(-100, 100)), (np.int32(1), slice(1, 2), ...),
    ]  # fmt: skip
    for key in keys:
        got = arr[key]
        want = np.asarray(expected[key])
        assert isinstance(got, np.ndarray)
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("key", "exc"),
    [
        (slice(None, None, -1), IndexError),
        ((0, 0, 0, 0), IndexError),
        ((..., ...), IndexError),
        (3, IndexError),
        ((0, -5), IndexError),
        (1.5, TypeError),
        ((None,), TypeError),
        ([0, 1], TypeError),
    ],
)
def test_getitem_errors(tmp_path: Path, key: Any, exc: type[Exception]) -> None:
    _, arr = _hand_dataset(tmp_path / "ds", {"type": "raw"}, _identity)
    with pytest.raises(exc):
        arr[key]


def test_read_invalid_box(tmp_path: Path) -> None:
    _, arr = _hand_dataset(tmp_path / "ds", {"type": "raw"}, _identity)
    for start, stop in [((0, 0), (1, 1)), ((0, 0, 0), (3, 4, 6)), ((2, 0, 0), (1, 4, 5))]:
        with pytest.raises(ValueError, match="invalid box"):
            arr.read(start, stop)
    assert arr.read((1, 1, 1), (1, 3, 3)).shape == (0, 2, 2)


def test_pickle_roundtrip(tmp_path: Path) -> None:
    expected, arr = _hand_dataset(tmp_path / "ds", {"type": "gzip"}, gzip.compress)
    clone = pickle.loads(pickle.dumps(arr))
    assert (clone.shape, clone.dtype, clone.chunks) == (arr.shape, arr.dtype, arr.chunks)
    np.testing.assert_array_equal(clone[1:, :, 2:], expected[1:, :, 2:])


def test_dask_from_array_in_worker_processes(tmp_path: Path) -> None:
    da = pytest.importorskip("dask.array")
    expected, arr = _hand_dataset(tmp_path / "ds", {"type": "bzip2"}, bz2.compress)
    lazy = da.from_array(arr, chunks=arr.chunks)
    got = lazy[:, 1:, ::2].compute(scheduler="processes", num_workers=2)
    np.testing.assert_array_equal(got, expected[:, 1:, ::2])


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected, _ = _hand_dataset(tmp_path / "ds", {"type": "raw"}, _identity)
    monkeypatch.chdir(tmp_path)
    arr = N5Array("ds")
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(arr[:], expected)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

GOOD = {"dimensions": [4, 3], "blockSize": [2, 2], "dataType": "uint8",
        "compression": {"type": "raw"}}  # fmt: skip


def test_missing_attributes_json(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"attributes\.json"):
        N5Array(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope"):
        N5Array(tmp_path / "nope")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dataType": "complex64"}, "dataType 'complex64'"),
        ({"dataType": None}, "dataType"),
        ({"compression": {"type": "lz4"}}, "compression 'lz4'"),
        ({"compression": {"type": "snappy"}}, "compression 'snappy'"),
        ({"compression": None, "compressionType": "foo"}, "compression 'foo'"),
        ({"compression": 3}, "compression"),
        ({"dimensions": None}, "dimensions"),
        ({"dimensions": [4, -3]}, "dimensions"),
        ({"blockSize": [2]}, "blockSize"),
        ({"blockSize": [2, 0]}, "blockSize"),
        ({"blockSize": "2,2"}, "blockSize"),
    ],
)
def test_invalid_attributes(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    attrs = {**GOOD, **change}
    if attrs.get("compression") is None:
        attrs.pop("compression")
    if attrs.get("dimensions") is None:
        attrs.pop("dimensions")
    _write_attrs(tmp_path, attrs)
    with pytest.raises(ValueError, match=match) as info:
        N5Array(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "attributes.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        N5Array(tmp_path)
    (tmp_path / "attributes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        N5Array(tmp_path)


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (struct.pack(">HHII", 0, 2, 2, 2) + b"\x00" * 3, "corrupt"),  # too little data
        (struct.pack(">HHIII", 0, 3, 2, 2, 1) + b"\x00" * 4, "3 dimensions"),
        (struct.pack(">HHII", 2, 2, 2, 2) + b"\x00" * 4, "mode 2"),
        (struct.pack(">HHIII", 1, 2, 2, 2, 5) + b"\x00" * 5, "varlength"),
        (b"\x00\x00\x00", "corrupt"),
    ],
)
def test_corrupt_block(tmp_path: Path, block: bytes, match: str) -> None:
    _write_attrs(tmp_path, GOOD)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "0").write_bytes(block)
    arr = N5Array(tmp_path)
    assert arr[0:2, 0:2].sum() == 0  # block (0, 0) is missing: fine
    with pytest.raises(ValueError, match=match):
        arr[:]


def test_oversized_block_is_clipped_to_its_grid_cell(tmp_path: Path) -> None:
    _write_attrs(tmp_path, GOOD)  # numpy shape (3, 4), chunks (2, 2)
    _write_block(tmp_path, (0, 0), np.full((3, 3), 5, dtype=np.uint8))  # claims 3x3
    _write_block(tmp_path, (0, 1), np.full((2, 2), 9, dtype=np.uint8))
    expected = np.zeros((3, 4), dtype=np.uint8)
    expected[:2, :2] = 5
    expected[:2, 2:] = 9
    np.testing.assert_array_equal(N5Array(tmp_path)[:], expected)


def test_corrupt_compressed_block(tmp_path: Path) -> None:
    _write_attrs(tmp_path, {**GOOD, "compression": {"type": "gzip"}})
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "0").write_bytes(struct.pack(">HHII", 0, 2, 2, 2) + b"garbage!")
    with pytest.raises(ValueError, match=r"0.0"):
        N5Array(tmp_path)[:]


# --------------------------------------------------------------------------
# Discovery and metadata helpers
# --------------------------------------------------------------------------


def test_find_and_is_n5_dataset(tmp_path: Path) -> None:
    root = tmp_path / "c.n5"
    _write_attrs(root, {"n5": "2.0.0"})
    _write_hand = _hand_dataset(root / "volumes" / "raw", {"type": "raw"}, _identity)
    assert _write_hand[1].shape == (3, 4, 5)
    _write_attrs(root / "volumes" / "labels" / "s0", GOOD)
    _write_attrs(root / "volumes" / "labels", {"multiScale": True})
    (root / "empty_group").mkdir()
    assert find_n5_datasets(root) == ["volumes/labels/s0", "volumes/raw"]
    assert is_n5_dataset(root / "volumes" / "raw")
    assert is_n5_dataset(str(root / "volumes" / "labels" / "s0"))
    assert not is_n5_dataset(root)
    assert not is_n5_dataset(root / "volumes" / "labels")
    assert not is_n5_dataset(root / "empty_group")
    assert not is_n5_dataset(tmp_path / "missing")
    (root / "bad").mkdir()
    (root / "bad" / "attributes.json").write_text("{oops")
    assert not is_n5_dataset(root / "bad")
    assert find_n5_datasets(root / "volumes" / "raw") == ["."]
    with pytest.raises(FileNotFoundError):
        find_n5_datasets(tmp_path / "missing")


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({}, None),
        ({"resolution": [4, 4, 40]}, (40.0, 4.0, 4.0)),
        ({"pixelResolution": {"dimensions": [8.0, 6.0, 30.0], "unit": "nm"}}, (30.0, 6.0, 8.0)),
        ({"pixelResolution": [1.5, 2.5]}, (2.5, 1.5)),
        ({"resolution": [1, 2, 3], "pixelResolution": [9, 9, 9]}, (3.0, 2.0, 1.0)),
    ],
)
def test_n5_voxel_size(attrs: dict[str, Any], expected: tuple[float, ...] | None) -> None:
    assert n5_voxel_size(attrs) == expected


@pytest.mark.parametrize(
    "attrs",
    [{"resolution": "4,4,40"}, {"resolution": [4, True]}, {"pixelResolution": {"unit": "nm"}},
     {"resolution": []}],
)  # fmt: skip
def test_n5_voxel_size_malformed(attrs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed"):
        n5_voxel_size(attrs)


# --------------------------------------------------------------------------
# tensorstore oracle
# --------------------------------------------------------------------------

# (numpy shape, numpy chunks, dtype, N5 compression, truncate edge blocks)
TS_CASES: list[tuple[tuple[int, ...], tuple[int, ...], str, dict[str, Any], bool]] = [
    ((13, 17, 19), (4, 5, 6), "uint8", {"type": "raw"}, True),
    ((13, 17, 19), (4, 5, 6), "int8", {"type": "gzip"}, True),
    ((11, 10, 9), (4, 4, 4), "uint16", {"type": "gzip", "useZlib": True}, False),
    ((11, 10, 9), (3, 4, 5), "int16", {"type": "bzip2"}, False),
    ((11, 10, 9), (5, 3, 4), "uint32", {"type": "xz"}, False),
    ((3, 7, 9, 10), (2, 3, 4, 4), "int32",
     {"type": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}, False),
    ((3, 7, 9, 10), (1, 4, 5, 3), "uint64", {"type": "zstd", "level": 3}, False),
    ((9, 10, 11), (4, 4, 4), "int64",
     {"type": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 2}, False),
    ((9, 10, 11), (4, 3, 5), "float32", {"type": "gzip"}, False),
    ((2, 5, 6, 7), (2, 2, 4, 3), "float64", {"type": "raw"}, True),
]  # fmt: skip


def _random_volume(
    shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        data = rng.standard_normal(shape).astype(dt) * 1e3
    else:
        info = np.iinfo(dt)
        data = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    data[tuple(slice(0, c) for c in chunks)] = 0  # tensorstore does not store all-zero blocks
    return data


def _truncate_edge_blocks(
    ds: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, codec: str
) -> int:
    """Rewrite full-size edge blocks as truncated ones (as Java N5 writes them)."""
    comp, decomp = (gzip.compress, gzip.decompress) if codec == "gzip" else (_identity, _identity)
    disk = np.dtype(dtype).newbyteorder(">")
    n = 0
    for f in sorted(p for p in ds.rglob("*") if p.is_file() and p.name != "attributes.json"):
        grid = tuple(int(p) for p in f.relative_to(ds).parts)[::-1]
        buf = f.read_bytes()
        mode, nd = struct.unpack_from(">HH", buf)
        dims = struct.unpack_from(f">{nd}I", buf, 4)
        block = np.frombuffer(decomp(buf[4 + 4 * nd :]), disk).reshape(dims[::-1])
        keep = tuple(min(c, s - g * c) for g, c, s in zip(grid, chunks, shape, strict=True))
        if mode == 0 and keep != block.shape:
            sub = np.ascontiguousarray(block[tuple(slice(0, k) for k in keep)])
            f.write_bytes(struct.pack(f">HH{nd}I", 0, nd, *keep[::-1]) + comp(sub.tobytes()))
            n += 1
    return n


@pytest.fixture(
    scope="module",
    params=TS_CASES,
    ids=[f"{len(c[0])}d-{c[2]}-{c[3]['type']}{'-trunc' if c[4] else ''}" for c in TS_CASES],
)
def ts_dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[np.ndarray, N5Array]:
    ts = pytest.importorskip("tensorstore")
    shape, chunks, dtype, compression, truncate = request.param
    ds = tmp_path_factory.mktemp("ts") / "data.n5" / "vol"
    data = _random_volume(shape, chunks, dtype, seed=TS_CASES.index(request.param))
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(ds)},
        "metadata": {
            "dimensions": list(shape[::-1]),
            "blockSize": list(chunks[::-1]),
            "dataType": dtype,
            "compression": compression,
        },
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec).result()
    store[...] = data.T  # tensorstore's n5 index order is N5 order (x first)
    np.testing.assert_array_equal(store.read().result().T, data)
    if truncate:
        assert _truncate_edge_blocks(ds, shape, chunks, dtype, compression["type"]) > 0
    assert not ds.joinpath(*["0"] * len(shape)).exists()  # the all-zero block
    return data, N5Array(ds)


def test_tensorstore_full_array(ts_dataset: tuple[np.ndarray, N5Array]) -> None:
    data, arr = ts_dataset
    assert arr.shape == data.shape
    assert arr.dtype == data.dtype
    assert arr.ndim == data.ndim
    out = arr[...]
    assert out.dtype == data.dtype
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(arr))[:], data)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_tensorstore_random_boxes(
    ts_dataset: tuple[np.ndarray, N5Array], data: st.DataObject
) -> None:
    expected, arr = ts_dataset
    start, stop, key = [], [], list[int | slice]()
    for n in expected.shape:
        a = data.draw(st.integers(0, n))
        b = data.draw(st.integers(a, n))
        start.append(a)
        stop.append(b)
        kind = data.draw(st.sampled_from(["slice", "int", "step"]))
        if kind == "int" and n > 0:
            key.append(data.draw(st.integers(-n, n - 1)))
        elif kind == "step":
            key.append(slice(a, b, data.draw(st.integers(1, 4))))
        else:
            key.append(slice(a, b))
    box = arr.read(start, stop)
    np.testing.assert_array_equal(
        box, expected[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
    )
    np.testing.assert_array_equal(arr[tuple(key)], expected[tuple(key)])


def test_find_tensorstore_datasets(ts_dataset: tuple[np.ndarray, N5Array]) -> None:
    root = Path(ts_dataset[1].path).parent
    assert find_n5_datasets(root) == ["vol"]
