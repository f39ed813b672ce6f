"""Ingest: real CREMI-layout HDF5, TIFF stacks, PNG/TIFF slice folders, Zarr; bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from affinity_dist import ingest
from affinity_dist.storage import open_volume

from .helpers import run_cli


def _assert_ome(dst: Path, names: set[str], voxel: list[float]) -> None:
    ome = json.loads((dst / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    scales = {m["name"]: m for m in ome["multiscales"]}
    assert set(scales) == names
    for m in scales.values():
        assert m["datasets"][0]["coordinateTransformations"][0]["scale"] == voxel


@pytest.mark.parametrize("name", ["fib25_sample2.h5", "gala_train.h5"])
def test_ingest_real_cremi_hdf5_voxel_for_voxel(name: str, tmp_path: Path) -> None:
    from .helpers import shared_file

    src = shared_file(name)
    dst = ingest(src, tmp_path / "out.zarr", chunks=(64, 64, 64), progress=False)
    with h5py.File(src, "r") as f:
        raw, labels = f["volumes/raw"][...], f["volumes/labels/neuron_ids"][...]
    got_raw, got_labels = open_volume(dst, "raw"), open_volume(dst, "labels")
    assert got_raw.dtype == np.uint8 and got_labels.dtype == np.uint64
    np.testing.assert_array_equal(got_raw.array[...], raw)
    np.testing.assert_array_equal(got_labels.array[...], labels)
    assert got_raw.voxel_size == (10.0, 10.0, 10.0) == got_labels.voxel_size
    _assert_ome(dst, {"raw", "labels"}, [10.0, 10.0, 10.0])


def test_ingest_copies_the_labels_mask_and_training_reads_it(isbi: Path, tmp_path: Path
                                                              ) -> None:
    dst = ingest(isbi, tmp_path / "isbi.zarr", chunks=(15, 256, 256), progress=False)
    with h5py.File(isbi, "r") as f:
        mask = f["volumes/labels/mask"][...]
    got = open_volume(dst, "labels_mask")
    assert got.dtype == np.uint8 and got.voxel_size == (50.0, 4.0, 4.0)
    np.testing.assert_array_equal(got.array[...], mask)
    from affinity_dist.training.data import open_training_volume

    volume = open_training_volume(str(dst), background="boundary")
    assert volume.mask is not None and volume.mask.key == "labels_mask"
    assert open_training_volume(str(dst), mask_key="").mask is None


def test_ingest_cli_on_a_local_cluster(gala: Path, tmp_path: Path) -> None:
    """The CLI default: a LocalCluster of worker processes; progress on stderr."""
    dst = tmp_path / "gala.zarr"
    result = run_cli("ingest", gala, dst, "--workers", "2", "--chunks", "32", "64", "64")
    assert result.returncode == 0, result.stderr
    assert "dask dashboard: http://127.0.0.1" in result.stderr
    with h5py.File(gala, "r") as f:
        np.testing.assert_array_equal(open_volume(dst, "raw").array[...], f["volumes/raw"][...])
    assert open_volume(dst, "raw").chunks == (32, 64, 64)


def _volume(shape: tuple[int, int, int] = (7, 45, 38), dtype: type = np.uint8) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 255, shape).astype(dtype)


def test_ingest_tiff_stack(tmp_path: Path) -> None:
    data = _volume()
    tifffile.imwrite(tmp_path / "stack.tif", data)
    dst = ingest(tmp_path / "stack.tif", tmp_path / "t.zarr", voxel_size=(40, 4, 4),
                 chunks=(4, 16, 16), progress=False)
    vol = open_volume(dst, "raw")
    np.testing.assert_array_equal(vol.array[...], data)
    assert vol.voxel_size == (40.0, 4.0, 4.0)
    assert not (dst / "labels").exists()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_ingest_slice_folder_in_natural_order(tmp_path: Path, suffix: str) -> None:
    data = _volume((12, 33, 29))
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, section in enumerate(data):  # slice_2 must come before slice_10
        path = folder / f"slice_{z}{suffix}"
        if suffix == ".png":
            Image.fromarray(section).save(path)
        else:
            tifffile.imwrite(path, section)
    dst = ingest(folder, tmp_path / "s.zarr", voxel_size=(8, 8, 8), chunks=(5, 16, 16),
                 progress=False)
    np.testing.assert_array_equal(open_volume(dst, "raw").array[...], data)


def test_ingest_zarr_source_with_labels_and_rescale(tmp_path: Path) -> None:
    import zarr

    raw = np.linspace(-1.0, 3.0, 5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    labels = np.arange(5 * 6 * 7, dtype=np.int32).reshape(5, 6, 7)
    group = zarr.open_group(str(tmp_path / "src.zarr"), mode="w", zarr_format=2)
    group.create_array("raw", data=raw, chunks=(2, 3, 3))
    group.create_array("labels", data=labels, chunks=(2, 3, 3))
    group["raw"].attrs["resolution"] = [30, 5, 5]
    dst = ingest(tmp_path / "src.zarr", tmp_path / "z.zarr", rescale=True, chunks=(4, 4, 4),
                 progress=False)
    got = open_volume(dst, "raw")
    assert got.voxel_size == (30.0, 5.0, 5.0)
    expected = np.rint((raw.astype(np.float64) + 1.0) * 255 / 4.0).astype(np.uint8)
    np.testing.assert_array_equal(got.array[...], expected)
    np.testing.assert_array_equal(open_volume(dst, "labels").array[...], labels)


def _h5(path: Path, **arrays: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key.replace("__", "/"), data=value)
    return path


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        return ro
    if os.access("/sys", os.W_OK) and not Path("/sys").is_mount():
        pytest.skip("no unwritable directory available as root")
    return Path("/sys")


def _bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (CLI arguments, text the one error line must contain)."""
    good = _volume((6, 8, 9))
    src = _h5(tmp_path / "good.h5", volumes__raw=good)
    existing = tmp_path / "exists.zarr"
    existing.mkdir()
    (existing / "keep").write_text("mine")
    return {
        "missing source": ([str(tmp_path / "nope.h5")], "SRC: got"),
        "unknown key": ([str(src), "--raw-key", "volumes/nope"], "--raw-key: got 'volumes/nope'"),
        "2D raw": ([str(_h5(tmp_path / "2d.h5", volumes__raw=good[0]))], "got 2D data"),
        "4D raw": ([str(_h5(tmp_path / "4d.h5", volumes__raw=good[None]))], "got 4D data"),
        "float raw": ([str(_h5(tmp_path / "f.h5", volumes__raw=good.astype(np.float32)))],
                      "expected uint8 (pass --rescale"),
        "float labels": ([str(_h5(tmp_path / "fl.h5", volumes__raw=good,
                                  volumes__labels__neuron_ids=good.astype(np.float64)))],
                         "labels: got dtype float64, expected integer"),
        "shape mismatch": ([str(_h5(tmp_path / "sm.h5", volumes__raw=good,
                                    volumes__labels__neuron_ids=np.zeros((6, 8, 8), np.uint64)))],
                           "labels: got shape (6, 8, 8), expected the raw shape (6, 8, 9)"),
        "zero voxel size": ([str(src), "--voxel-size", "0", "4", "4"],
                            "--voxel-size: got [0.0, 4.0, 4.0]"),
        "negative voxel size": ([str(src), "--voxel-size", "40", "-4", "4"], "--voxel-size"),
        "existing destination": ([str(src), str(existing)], "pass --overwrite"),
        "unwritable destination": ([str(src), str(_unwritable_dir(tmp_path) / "o.zarr")],
                                   "writable directory"),
    }


def test_bad_inputs_exit_2_with_one_line_and_nothing_written(tmp_path: Path) -> None:
    cases = _bad_cases(tmp_path)
    for name, (args, message) in cases.items():
        dst = tmp_path / f"{name.replace(' ', '_')}.zarr"
        argv = ["ingest", *args] if len(args) > 1 and args[1].endswith(".zarr") else \
            ["ingest", args[0], str(dst), *args[1:]]
        before = sorted(p.name for p in tmp_path.iterdir())
        result = run_cli(*argv, "--scheduler", "synchronous")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1, (name, result.stderr)
        assert message in lines[0], (name, lines[0])
        assert "Traceback" not in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # nothing written
    assert (tmp_path / "exists.zarr" / "keep").read_text() == "mine"


def test_ingest_n5_written_by_tensorstore(tmp_path: Path) -> None:
    ts = pytest.importorskip("tensorstore", reason="tensorstore (dev extra) writes the N5 oracle")
    raw = _volume((9, 20, 17))
    labels = np.random.default_rng(4).integers(0, 2**40, raw.shape, dtype=np.uint64)
    for key, data in (("raw", raw), ("labels", labels)):
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file",
                                                     "path": str(tmp_path / "c.n5" / key)},
                         "metadata": {"dimensions": list(data.shape[::-1]),
                                      "blockSize": [8, 8, 4], "dataType": str(data.dtype),
                                      "compression": {"type": "gzip"}},
                         "transform": {"input_rank": 3, "output": [
                             {"input_dimension": 2}, {"input_dimension": 1},
                             {"input_dimension": 0}]},
                         "create": True}).result()
        store.write(data).result()
    (tmp_path / "c.n5" / "attributes.json").write_text('{"n5": "4.0.0"}')
    attrs = tmp_path / "c.n5" / "raw" / "attributes.json"
    attrs.write_text(attrs.read_text()[:-1] + ', "resolution": [4, 4, 40]}')
    dst = ingest(tmp_path / "c.n5", tmp_path / "n.zarr", chunks=(4, 8, 8), progress=False)
    np.testing.assert_array_equal(open_volume(dst, "raw").array[...], raw)
    np.testing.assert_array_equal(open_volume(dst, "labels").array[...], labels)
    assert open_volume(dst, "raw").voxel_size == (40.0, 4.0, 4.0)


def test_ingest_handwritten_n5_with_rescale(tmp_path: Path) -> None:
    from .helpers import HAND_COMPRESSIONS, _hand_dataset

    expected, _ = _hand_dataset(tmp_path / "h.n5" / "raw", *HAND_COMPRESSIONS[1])
    dst = ingest(tmp_path / "h.n5", tmp_path / "h.zarr", rescale=True, progress=False)
    low, high = float(expected.min()), float(expected.max())
    got = open_volume(dst, "raw")
    np.testing.assert_array_equal(got.array[...],
                                  np.rint((expected - low) * 255 / (high - low)).astype(np.uint8))
    assert got.voxel_size == (40.0, 4.0, 4.0)


def test_unreadable_n5_is_one_line_exit_2(tmp_path: Path) -> None:
    from .helpers import _write_attrs

    _write_attrs(tmp_path / "bad.n5" / "raw", {"dimensions": [4, 4, 4], "blockSize": [2, 2, 2],
                                               "dataType": "uint8",
                                               "compression": {"type": "snappy"}})
    result = run_cli("ingest", tmp_path / "bad.n5", tmp_path / "o.zarr")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unsupported N5 compression 'snappy'" in result.stderr
