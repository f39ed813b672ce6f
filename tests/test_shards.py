"""Sharded Zarr v3 arrays (``--shards``): one file per write block holding its chunks.

The shard shape follows the write block, so no two tasks write one file; a sharded run
equals the one-file-per-chunk run bit for bit (shapes the block does not divide), with
one file per block; tiled writes, pyramids and ``verify`` (a shard missing, altered, or
lacking a chunk in its index) work on shards; a killed sharded run resumes (in
test_resume.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import affinity_dist as ad
from affinity_dist.errors import ConfigError
from affinity_dist.geometry import Box
from affinity_dist.storage import (
    AUTO_SHARD_FILES,
    create_volume,
    list_arrays,
    open_volume,
    shard_shape,
    staged_dataset,
)

from .helpers import run_cli, tiny_model

SHAPE = (40, 48, 56)  # not divided by the blocks (16, 32, 32)
BLOCK = (16, 32, 32)


def test_shard_shape_follows_the_block() -> None:
    assert shard_shape("block", SHAPE, (16, 16, 16), BLOCK) == BLOCK
    assert shard_shape("none", SHAPE, (16, 16, 16), BLOCK) is None
    assert shard_shape("auto", SHAPE, (16, 16, 16), BLOCK) is None  # few files: no shards
    assert shard_shape("block", SHAPE, (16, 32, 32), BLOCK) is None  # a block is one chunk
    # a block covering an axis whole: rounded up to whole (clipped) chunks
    assert shard_shape("block", (40, 20, 56), (16, 16, 16), (16, 64, 32)) == (16, 32, 32)
    assert shard_shape("block", (40, 10, 56), (16, 16, 16), (16, 64, 32)) == (16, 10, 32)
    side = round((AUTO_SHARD_FILES * 2) ** (1 / 3)) + 1  # chunks per axis: above the limit
    assert shard_shape("auto", (side * 16,) * 3, (16, 16, 16), (32, 32, 32)) == (32, 32, 32)
    with pytest.raises(ConfigError, match="--shards: got 'some'"):
        shard_shape("some", SHAPE, (16, 16, 16), BLOCK)


def test_sharded_arrays_round_trip_tiled_and_refuse_bad_shards(tmp_path: Path) -> None:
    from affinity_dist.kernels.fragments import untile

    data = np.arange(2 * 2 * 2 * 4 * 6 * 8, dtype=np.uint64).reshape(2, 2, 2, 4, 6, 8) + 1
    box = Box((0, 0, 0), (8, 12, 16))
    with staged_dataset(tmp_path / "t.zarr") as group:
        for name in ("box", "tiles"):
            create_volume(group, name, shape=(10, 12, 16), dtype=np.uint64, chunks=(4, 6, 8),
                          shards=(8, 12, 16))
        create_volume(group, "affs", shape=(10, 12, 16), channels=3, dtype=np.uint8,
                      chunks=(4, 6, 8), shards=(8, 12, 16))
        with pytest.raises(ConfigError, match=r"shards: got \(8, 12, 12\), expected a "
                           r"multiple of the chunk shape \(4, 6, 8\)"):
            create_volume(group, "bad", shape=(10, 12, 16), dtype=np.uint8, chunks=(4, 6, 8),
                          shards=(8, 12, 12))
    dataset = tmp_path / "t.zarr"
    open_volume(dataset, "box", "r+").write(box, untile(data))
    open_volume(dataset, "tiles", "r+").write(box, data)  # tiles: one write of the shard
    for name in ("box", "tiles"):
        vol = open_volume(dataset, name)
        assert (vol.chunks, vol.shards, vol.write_unit) == ((4, 6, 8), (8, 12, 16),
                                                            (8, 12, 16))
        np.testing.assert_array_equal(vol.read(box), untile(data))
    assert sorted(p.name for p in (dataset / "tiles" / "c").rglob("*") if p.is_file()) == ["0"]
    affs = open_volume(dataset, "affs", "r+")
    assert affs.shards == (3, 8, 12, 16)
    value = np.random.default_rng(0).integers(0, 255, (3, 8, 12, 16), dtype=np.uint8)
    affs.write(box, value)
    np.testing.assert_array_equal(open_volume(dataset, "affs").read(box), value)


def _pipeline(folder: Path, shards: str) -> Path:
    dataset = folder / f"{shards}.zarr"
    ad.sample(dataset, shape=SHAPE, seed=3, chunks=(16, 16, 16), shards=shards,
              progress=False)
    ad.predict(dataset, model=str(folder / "tiny.pt"), block=BLOCK, shards=shards,
               progress=False)
    ad.segment(dataset, block=BLOCK, shards=shards, progress=False)
    ad.pyramid(dataset, arrays=("segmentation",), block=BLOCK, shards=shards, progress=False)
    return dataset


def _files(dataset: Path, name: str) -> int:
    return sum(1 for p in (dataset / name / "c").rglob("*") if p.is_file())


def test_a_sharded_run_equals_the_unsharded_one_with_a_file_per_block(tmp_path: Path) -> None:
    tiny_model(tmp_path / "tiny.pt")
    plain, sharded = (_pipeline(tmp_path, s) for s in ("none", "block"))
    blocks = 3 * 2 * 2
    for name in ("raw", "labels", "affinities", "fragments", "segmentation",
                 "pyramid/segmentation/s1"):
        a, b = open_volume(plain, name), open_volume(sharded, name)
        assert a.shards is None and b.shards is not None, name
        np.testing.assert_array_equal(a.read(Box((0, 0, 0), a.spatial_shape)),
                                      b.read(Box((0, 0, 0), b.spatial_shape)), name)
    # sample's and the stages' write blocks: one file each (sample: 256^3 -> one block)
    assert _files(sharded, "raw") == 1 and _files(plain, "raw") == 3 * 3 * 4
    for name in ("affinities", "fragments", "segmentation"):
        assert _files(sharded, name) == blocks, name
        assert _files(plain, name) == 3 * 3 * 4, name
    from affinity_dist.stages.verify import verify

    report = verify(sharded, progress=False)
    assert report.bad == [] and report.arrays == len(list_arrays(sharded))


def test_verify_names_a_missing_an_altered_and_an_incomplete_shard(tmp_path: Path) -> None:
    dataset = tmp_path / "v.zarr"
    ad.sample(dataset, shape=(32, 64, 64), seed=1, chunks=(16, 32, 32), shards="block",
              progress=False)
    with staged_dataset(tmp_path / "w.zarr") as group:
        create_volume(group, "raw", shape=(32, 64, 64), dtype=np.uint8, chunks=(16, 32, 32),
                      shards=(32, 64, 64))
    # a shard whose index lacks a chunk: written without the all-zero chunk; w.zarr's
    # raw was never written (its shard is missing)
    raw = open_volume(dataset, "raw", "r+").array
    data = np.asarray(raw[...])
    data[:16, :32, :32] = 0
    raw.with_config({"write_empty_chunks": False})[...] = data
    shard = dataset / "labels" / "c" / "0" / "0" / "0"
    altered = bytearray(shard.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    shard.write_bytes(bytes(altered))
    result = run_cli("-q", "verify", dataset, "--scheduler", "threads")
    assert result.returncode == 1, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines[0].startswith("labels: shard c/0/0/0 does not decode"), lines
    assert lines[1] == "raw: shard c/0/0/0 lacks 1 of its 8 chunks", lines
    result = run_cli("-q", "verify", tmp_path / "w.zarr", "--scheduler", "threads")
    assert result.returncode == 1 and result.stdout.strip() == "raw: shard c/0/0/0 is missing"


def test_a_large_volume_takes_the_large_block() -> None:
    from affinity_dist.geometry import (
        DEFAULT_BLOCK,
        LARGE_BLOCK,
        LARGE_VOLUME_BLOCKS,
        default_block,
    )

    side = 16  # blocks per axis in y and x; z takes the rest
    at_limit = (LARGE_VOLUME_BLOCKS // side**2 * 256, side * 256, side * 256)
    assert default_block((128,) * 3, at_limit) == DEFAULT_BLOCK
    assert default_block((128,) * 3, (at_limit[0] + 1, *at_limit[1:])) == LARGE_BLOCK
    assert default_block((100, 128, 96), (at_limit[0] + 1, *at_limit[1:])) == (600, 512, 576)
    assert default_block((128,) * 3) == DEFAULT_BLOCK  # no shape: the small block


def test_sharded_ingest_writes_a_shard_per_block_of_the_later_stages(tmp_path: Path) -> None:
    import h5py

    from affinity_dist import ingest

    raw = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    with h5py.File(tmp_path / "src.h5", "w") as f:
        f["raw"] = raw
    out = {}
    for shards in ("none", "block"):
        out[shards] = ingest(tmp_path / "src.h5", tmp_path / f"{shards}.zarr",
                             chunks=(16, 16, 16), shards=shards, progress=False)
        np.testing.assert_array_equal(open_volume(out[shards], "raw").read(
            Box((0, 0, 0), SHAPE)), raw)
    # sharded: one shard for the one default block (256^3 over 40 x 48 x 56), not one per
    # ingest block of at most 64 MB of uint64 (16 x 32 x 32 here: 12)
    assert open_volume(out["block"], "raw").shards == (48, 48, 64)
    assert _files(out["block"], "raw") == 1 and _files(out["none"], "raw") == 3 * 3 * 4
