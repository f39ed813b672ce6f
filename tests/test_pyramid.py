"""pyramid: level shapes and voxel sizes, exact ids for labels, means for raw, metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affinity_dist.geometry import Box
from affinity_dist.stages.pyramid import downsample, level_factors, pyramid
from affinity_dist.storage import create_volume, open_dataset, open_volume, staged_dataset

from .helpers import run_cli


def dataset(path: Path, shape: tuple[int, int, int], voxel: tuple[float, float, float]
            ) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, shape).astype(np.uint8)
    labels = rng.integers(1, 2**40, (8, 8, 8)).astype(np.uint64)
    labels = np.kron(labels, np.ones((-(-shape[0] // 8), -(-shape[1] // 8), -(-shape[2] // 8)),
                                     np.uint64))[:shape[0], :shape[1], :shape[2]]
    with staged_dataset(path) as group:
        box = Box((0, 0, 0), shape)
        create_volume(group, "raw", shape=shape, dtype=np.uint8, voxel_size=voxel,
                      offset=(100, 200, 300), chunks=(16, 16, 16)).write(box, raw)
        create_volume(group, "labels", shape=shape, dtype=np.uint64, voxel_size=voxel,
                      chunks=(16, 16, 16)).write(box, labels)
    return path, raw, np.ascontiguousarray(labels)


def test_level_factors_follow_anisotropy() -> None:
    assert level_factors((10, 10, 10), (100, 100, 100), None) == [(2, 2, 2)] * 2
    assert level_factors((40, 4, 4), (50, 1000, 1000), 5) == [(1, 2, 2)] * 3 + [(2, 2, 2)] * 2
    assert level_factors((10, 10, 10), (5, 5, 5), None) == []


def test_downsample_mean_and_striding() -> None:
    block = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    mean = downsample(block, (2, 2, 2), labels=False)
    assert mean.shape == (3, 2, 2)
    assert mean[0, 0, 0] == np.rint(block[:2, :2, :2].mean())
    assert mean[2, 1, 1] == np.rint(block[4:, 2:, 2:].mean())  # partial cell
    assert np.array_equal(downsample(block, (2, 2, 2), labels=True), block[::2, ::2, ::2])


def test_pyramid_levels(tmp_path: Path) -> None:
    path, raw, labels = dataset(tmp_path / "x.zarr", (37, 70, 70), (40.0, 4.0, 4.0))
    done = pyramid(path, levels=4, block=(16, 32, 32), progress=False)
    assert done["raw"] == [f"pyramid/raw/s{k}" for k in (1, 2, 3, 4)]
    shapes = [(37, 35, 35), (37, 18, 18), (37, 9, 9), (19, 5, 5)]
    voxels = [(40, 8, 8), (40, 16, 16), (40, 32, 32), (80, 64, 64)]
    lab = labels
    for k, (shape, voxel) in enumerate(zip(shapes, voxels, strict=True), start=1):
        level = open_volume(path, f"pyramid/labels/s{k}")
        assert level.spatial_shape == shape and level.voxel_size == voxel
        data = level.read(Box((0, 0, 0), shape))
        f = (2 if k == 4 else 1, 2, 2)
        lab = lab[::f[0], ::f[1], ::f[2]]
        assert np.array_equal(data, lab)  # ids kept exactly
        assert set(np.unique(data)) <= set(np.unique(labels))
    s1 = open_volume(path, "pyramid/raw/s1")
    assert np.array_equal(s1.read(Box((0, 0, 0), (37, 35, 35))),
                          downsample(raw, (1, 2, 2), labels=False))
    assert s1.offset == (100.0, 202.0, 302.0)  # centre of the first 2x2 cell
    ome = dict(open_dataset(path).attrs)["ome"]["multiscales"]
    entry = next(m for m in ome if m["name"] == "raw")
    assert [d["path"] for d in entry["datasets"]] == ["raw"] + done["raw"]
    assert entry["datasets"][4]["coordinateTransformations"][0]["scale"] == [80, 64, 64]


def test_cli(tmp_path: Path) -> None:
    path, _, _ = dataset(tmp_path / "x.zarr", (20, 40, 40), (10.0, 10.0, 10.0))
    result = run_cli("pyramid", "--input", path, "--arrays", "labels", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert "labels: 1 levels" in result.stdout
    bad = run_cli("pyramid", "--input", path, "--arrays", "nope", "--scheduler", "threads")
    assert bad.returncode == 2 and "--arrays" in bad.stderr


@pytest.mark.parametrize("levels", ["0", "x"])
def test_bad_levels(tmp_path: Path, levels: str) -> None:
    path, _, _ = dataset(tmp_path / "x.zarr", (20, 40, 40), (10.0, 10.0, 10.0))
    bad = run_cli("pyramid", "--input", path, "--levels", levels, "--scheduler", "threads")
    assert bad.returncode == 2 and "--levels" in bad.stderr
