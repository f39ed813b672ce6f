"""The sample stage: a synthetic dataset written block by block, deterministic per seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from affinity_dist import sample
from affinity_dist.kernels.synthetic import SampleSpec, generate_region
from affinity_dist.storage import open_volume

from .helpers import run_cli


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return open_volume(path, "raw").array[...], open_volume(path, "labels").array[...]


def test_sample_is_deterministic_and_independent_of_blocks(tmp_path: Path) -> None:
    shape = (21, 50, 43)  # no chunk shape below divides it
    a = sample(tmp_path / "a.zarr", shape=shape, seed=5, chunks=(8, 16, 16), progress=False)
    b = sample(tmp_path / "b.zarr", shape=shape, seed=5, chunks=(16, 32, 24), progress=False,
               scheduler="synchronous")
    raw_a, labels_a = _read(a)
    raw_b, labels_b = _read(b)
    assert raw_a.shape == labels_a.shape == shape
    assert raw_a.dtype == np.uint8 and labels_a.dtype == np.uint64
    np.testing.assert_array_equal(raw_a, raw_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    whole_raw, whole_labels = generate_region(SampleSpec(shape, seed=5), (0, 0, 0), shape)
    np.testing.assert_array_equal(raw_a, whole_raw)
    np.testing.assert_array_equal(labels_a, whole_labels)
    c = sample(tmp_path / "c.zarr", shape=shape, seed=6, chunks=(8, 16, 16), progress=False)
    raw_c, labels_c = _read(c)
    assert (raw_c != raw_a).mean() > 0.5
    assert not np.array_equal(labels_c, labels_a)


def test_sample_cli_on_a_local_cluster_anisotropic(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    result = run_cli("sample", out, "--shape", "12", "40", "36", "--seed", "2",
                     "--voxel-size", "40", "4", "4", "--chunks", "8", "16", "16",
                     "--workers", "2")
    assert result.returncode == 0, result.stderr
    raw = open_volume(out, "raw")
    assert raw.voxel_size == (40.0, 4.0, 4.0) and raw.shape == (12, 40, 36)
    meta = json.loads((out / "zarr.json").read_text())["attributes"]
    assert meta["affinity_dist"]["sample"] == {"shape": [12, 40, 36], "seed": 2,
                                               "voxel_size": [40.0, 4.0, 4.0]}
    expected, _ = generate_region(SampleSpec((12, 40, 36), seed=2, voxel_size=(40, 4, 4)),
                                  (0, 0, 0), (12, 40, 36))
    np.testing.assert_array_equal(raw.array[...], expected)


def test_sample_bad_arguments_exit_2(tmp_path: Path) -> None:
    cases = {
        ("--shape", "0", "10", "10"): "--shape: got [0, 10, 10], expected every value >= 1",
        ("--seed", "-1"): "--seed: got -1",
        ("--voxel-size", "10", "0", "10"): "--voxel-size: got [10.0, 0.0, 10.0]",
        ("--shape", "10", "10"): "--shape: expected 3 arguments",
    }
    for args, message in cases.items():
        result = run_cli("sample", tmp_path / "x.zarr", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
        assert message in result.stderr, (args, result.stderr)
        assert not (tmp_path / "x.zarr").exists()
