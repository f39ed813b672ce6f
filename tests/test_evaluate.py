"""evaluate: blockwise scores equal skimage's in memory; CLI, JSON and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import DataError
from affinity_dist.evaluate import evaluate
from affinity_dist.geometry import Box
from affinity_dist.storage import create_volume, staged_dataset

from .conftest import run_cli
from .test_metrics import perturbations

skimage_metrics = pytest.importorskip("skimage.metrics")


def dataset(path: Path, truth: np.ndarray, seg: np.ndarray | None,
            chunks: tuple[int, int, int] = (8, 16, 16)) -> Path:
    with staged_dataset(path) as group:
        box = Box((0, 0, 0), truth.shape)
        create_volume(group, "labels", shape=truth.shape, dtype=np.uint64,
                      chunks=chunks).write(box, truth)
        if seg is not None:
            create_volume(group, "segmentation", shape=seg.shape, dtype=np.uint64,
                          chunks=chunks).write(box, seg)
    return path


@pytest.fixture(scope="module")
def fib25_truth() -> np.ndarray:
    import h5py

    from .conftest import shared_file

    with h5py.File(shared_file("fib25_sample2.h5")) as f:
        return f["volumes/labels/neuron_ids"][100:141, 50:127, 60:133].astype(np.uint64)


@pytest.mark.parametrize("block", [(8, 16, 16), (24, 32, 48), (48, 80, 80)])
def test_blockwise_equals_skimage_on_real_truth(tmp_path: Path, fib25_truth: np.ndarray,
                                                block: tuple[int, int, int]) -> None:
    truth = fib25_truth  # 41 x 77 x 73: no block shape above divides it
    for name, seg in perturbations(truth).items():
        data = dataset(tmp_path / f"{name}.zarr".replace(" ", "_"), truth, seg)
        got = evaluate(data, block=block, progress=False)
        split, merge = skimage_metrics.variation_of_information(truth, seg, ignore_labels=(0,))
        are, precision, recall = skimage_metrics.adapted_rand_error(truth, seg,
                                                                    ignore_labels=(0,))
        assert got.voi_split == pytest.approx(split, abs=1e-9), name
        assert got.voi_merge == pytest.approx(merge, abs=1e-9), name
        assert got.adapted_rand_error == pytest.approx(are, abs=1e-9), name
        assert got.rand_precision == pytest.approx(precision, abs=1e-9)
        assert got.rand_recall == pytest.approx(recall, abs=1e-9)


def test_min_truth_size_equals_removing_small_objects(tmp_path: Path,
                                                      fib25_truth: np.ndarray) -> None:
    truth = fib25_truth
    seg = perturbations(truth)["shifted"]
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    small = ids[sizes < 500]
    assert len(small) > 0
    data = dataset(tmp_path / "x.zarr", truth, seg)
    got = evaluate(data, min_truth_size=500, progress=False)
    pruned = np.where(np.isin(truth, small), 0, truth)
    split, merge = skimage_metrics.variation_of_information(pruned, seg, ignore_labels=(0,))
    assert got.voi_split == pytest.approx(split, abs=1e-9)
    assert got.voi_merge == pytest.approx(merge, abs=1e-9)
    assert got.truth_objects == len(ids) - len(small)


def test_cli_prints_and_writes_json(tmp_path: Path, fib25_truth: np.ndarray) -> None:
    seg = perturbations(fib25_truth)["merged"]
    data = dataset(tmp_path / "x.zarr", fib25_truth, seg)
    truth_only = dataset(tmp_path / "truth.zarr", fib25_truth, None)
    out = tmp_path / "scores.json"
    result = run_cli("evaluate", "--input", data, "--truth", truth_only, "--json", out,
                     "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert "VOI split" in result.stdout and "most merged segments" in result.stdout
    report = json.loads(out.read_text())
    assert report["voi_split"] == pytest.approx(0, abs=1e-12)
    assert report["voi_merge"] > 0
    assert report["worst_merges"][0][1] > 0
    assert report["cremi_score"] == pytest.approx(
        np.sqrt((report["voi_split"] + report["voi_merge"]) * report["adapted_rand_error"]))


@pytest.mark.parametrize(("kind", "words"), [
    ("no-segmentation", "'segmentation'"),
    ("shape", "expected the segmentation's shape"),
    ("json-dir", "--json"),
    ("block", "--block"),
])
def test_bad_inputs_exit_2(tmp_path: Path, kind: str, words: str) -> None:
    truth = np.ones((10, 20, 30), np.uint64)
    args: list[str | Path] = []
    if kind == "no-segmentation":
        data = dataset(tmp_path / "x.zarr", truth, None)
    elif kind == "shape":
        data = dataset(tmp_path / "x.zarr", truth, truth)
        other = dataset(tmp_path / "y.zarr", truth[:5], None)
        args = ["--truth", other]
    else:
        data = dataset(tmp_path / "x.zarr", truth, truth)
        args = (["--json", tmp_path / "nope" / "s.json"] if kind == "json-dir"
                else ["--block", "5", "5", "5"])
    result = run_cli("evaluate", "--input", data, "--scheduler", "synchronous", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert not (tmp_path / "nope").exists()


def test_api_errors(tmp_path: Path) -> None:
    data = dataset(tmp_path / "x.zarr", np.ones((4, 4, 4), np.uint64), None)
    with pytest.raises(DataError):
        evaluate(data, segmentation="labels", truth=dataset(
            tmp_path / "y.zarr", np.ones((4, 4, 5), np.uint64), None), progress=False)


def test_previews_show_raw_and_segments(tmp_path: Path) -> None:
    from PIL import Image

    from affinity_dist.preview import id_colours, overlay

    truth = np.zeros((6, 20, 30), np.uint64)
    truth[:, :, 15:] = 7
    data = dataset(tmp_path / "x.zarr", truth, truth)
    raw = np.full((6, 20, 30), 200, np.uint8)
    with staged_dataset(tmp_path / "y.zarr") as group:
        box = Box((0, 0, 0), truth.shape)
        create_volume(group, "raw", shape=truth.shape, dtype=np.uint8,
                      voxel_size=(40, 4, 4)).write(box, raw)
        create_volume(group, "segmentation", shape=truth.shape, dtype=np.uint64,
                      voxel_size=(40, 4, 4)).write(box, truth)
    result = run_cli("evaluate", "--input", tmp_path / "y.zarr", "--truth", data,
                     "--preview", tmp_path / "p", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    xy = np.asarray(Image.open(tmp_path / "p-xy.png"))
    xz = np.asarray(Image.open(tmp_path / "p-xz.png"))
    assert xy.shape == (20, 30, 3)
    assert xz.shape == (60, 30, 3)  # z stretched 10x: 40 nm sections, 4 nm pixels
    assert (xy[:, :15] == 200).all()  # background: raw only
    expected = overlay(np.array([[200]], np.uint8), np.array([[7]], np.uint64))[0, 0]
    assert (xy[:, 15:] == expected).all()  # segment 7's colour blended over raw
    assert not np.array_equal(id_colours(np.array([1])), id_colours(np.array([2])))
    bad = run_cli("evaluate", "--input", data, "--preview", tmp_path / "no" / "p",
                  "--scheduler", "threads")
    assert bad.returncode == 2 and "--preview" in bad.stderr
