"""evaluate: blockwise scores equal skimage's in memory (with and without CREMI's boundary
tolerance); CLI, JSON, workflow and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import ConfigError, DataError
from affinity_dist.geometry import Box
from affinity_dist.kernels.metrics import border_mask
from affinity_dist.stages.evaluate import evaluate
from affinity_dist.storage import create_volume, staged_dataset

from .helpers import perturbations, run_cli

skimage_metrics = pytest.importorskip("skimage.metrics")


def dataset(path: Path, truth: np.ndarray, seg: np.ndarray | None,
            chunks: tuple[int, int, int] = (8, 16, 16),
            voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    with staged_dataset(path) as group:
        box = Box((0, 0, 0), truth.shape)
        create_volume(group, "labels", shape=truth.shape, dtype=np.uint64,
                      chunks=chunks, voxel_size=voxel_size).write(box, truth)
        if seg is not None:
            create_volume(group, "segmentation", shape=seg.shape, dtype=np.uint64,
                          chunks=chunks, voxel_size=voxel_size).write(box, seg)
    return path


@pytest.fixture(scope="module")
def fib25_truth() -> np.ndarray:
    import h5py

    from .helpers import shared_file

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


ANISOTROPIC = (40.0, 4.0, 6.0)  # nm, z y x: in-plane anisotropic too


def masked_truth(truth: np.ndarray, tolerance: float) -> np.ndarray:
    """The oracle: the whole volume's truth with CREMI's border mask set to 0."""
    return np.where(border_mask(truth, tolerance, ANISOTROPIC), 0, truth).astype(np.uint64)


@pytest.mark.parametrize("block", [(8, 16, 16), (24, 32, 48)])
def test_boundary_tolerance_blockwise_equals_whole_volume(tmp_path: Path,
                                                          fib25_truth: np.ndarray,
                                                          block: tuple[int, int, int]) -> None:
    """Blocks (not dividing 41 x 77 x 73) read their truth with a halo, so the mask and the
    scores equal the whole volume's; 12 nm is exactly 3 voxels in y and 2 in x (the
    farthest boundary voxel that counts sits at the edge of a halo of ceil(t / v))."""
    truth = fib25_truth
    cases = perturbations(truth)
    for name in ("shifted", "merged", "with background"):
        seg = cases[name]
        data = dataset(tmp_path / f"{name}.zarr".replace(" ", "_"), truth, seg,
                       voxel_size=ANISOTROPIC)
        for tolerance in (4.0, 10.0, 12):
            got = evaluate(data, block=block, boundary_tolerance=tolerance, progress=False)
            gt = masked_truth(truth, tolerance)
            split, merge = skimage_metrics.variation_of_information(gt, seg,
                                                                    ignore_labels=(0,))
            are, precision, recall = skimage_metrics.adapted_rand_error(gt, seg,
                                                                        ignore_labels=(0,))
            where = (name, tolerance)
            assert got.voxels == int((gt > 0).sum()) < int((truth > 0).sum()), where
            assert got.voi_split == pytest.approx(split, abs=1e-9), where
            assert got.voi_merge == pytest.approx(merge, abs=1e-9), where
            assert got.adapted_rand_error == pytest.approx(are, abs=1e-9), where
            assert got.rand_precision == pytest.approx(precision, abs=1e-9), where
            assert got.rand_recall == pytest.approx(recall, abs=1e-9), where


def test_boundary_tolerance_zero_is_off(tmp_path: Path, fib25_truth: np.ndarray) -> None:
    seg = perturbations(fib25_truth)["shifted"]
    data = dataset(tmp_path / "x.zarr", fib25_truth, seg, voxel_size=ANISOTROPIC)
    plain = evaluate(data, block=(24, 32, 48), progress=False)
    assert evaluate(data, block=(24, 32, 48), boundary_tolerance=0.0, progress=False) == plain
    assert evaluate(data, block=(24, 32, 48), boundary_tolerance=0, progress=False) == plain
    assert plain.voxels == int((fib25_truth > 0).sum())
    # any positive tolerance masks at least the boundary voxels (CREMI's max_dist = 0)
    tiny = evaluate(data, block=(24, 32, 48), boundary_tolerance=0.5, progress=False)
    assert tiny.voi_sum < plain.voi_sum and tiny.voxels < plain.voxels


def test_cli_boundary_tolerance_json(tmp_path: Path, fib25_truth: np.ndarray) -> None:
    seg = perturbations(fib25_truth)["shifted"]
    data = dataset(tmp_path / "x.zarr", fib25_truth, seg, voxel_size=ANISOTROPIC)
    out = tmp_path / "scores.json"
    result = run_cli("evaluate", "--input", data, "--boundary-tolerance", "12", "--json", out,
                     "--block", "24", "32", "48", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert "within 12 nm of a truth boundary" in result.stdout
    report = json.loads(out.read_text())
    assert report["boundary_tolerance"] == 12.0
    assert report["truth_voxel_size"] == list(ANISOTROPIC)
    gt = masked_truth(fib25_truth, 12.0)
    split, merge = skimage_metrics.variation_of_information(gt, seg, ignore_labels=(0,))
    assert report["voi_split"] == pytest.approx(split, abs=1e-9)
    assert report["voi_merge"] == pytest.approx(merge, abs=1e-9)
    assert report["voxels"] == int((gt > 0).sum())
    plain = tmp_path / "plain.json"
    assert run_cli("evaluate", "--input", data, "--json", plain,
                   "--scheduler", "synchronous").returncode == 0
    off = json.loads(plain.read_text())
    assert off["boundary_tolerance"] == 0.0
    assert off["voi_split"] + off["voi_merge"] > report["voi_sum"]


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-0.5"])
def test_bad_boundary_tolerance_exits_2(tmp_path: Path, value: str) -> None:
    data = dataset(tmp_path / "x.zarr", np.ones((4, 8, 8), np.uint64),
                   np.ones((4, 8, 8), np.uint64))
    result = run_cli("evaluate", "--input", data, "--boundary-tolerance", value,
                     "--json", tmp_path / "s.json", "--scheduler", "synchronous")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert (f"--boundary-tolerance: got {float(value)!r}, expected a finite number >= 0"
            in lines[0]), lines[0]
    assert not (tmp_path / "s.json").exists()


def test_boundary_tolerance_api_and_workflow(tmp_path: Path, fib25_truth: np.ndarray) -> None:
    from affinity_dist.workflow.config import load_workflow
    from affinity_dist.workflow.run import report_paths, run_workflow

    seg = perturbations(fib25_truth)["merged"]
    data = dataset(tmp_path / "x.zarr", fib25_truth, seg, voxel_size=ANISOTROPIC)
    for bad in (True, -2, float("nan"), "8"):
        with pytest.raises(ConfigError, match="--boundary-tolerance"):
            evaluate(data, boundary_tolerance=bad, progress=False)  # type: ignore[arg-type]
    file = tmp_path / "wf.toml"
    file.write_text('stages = ["evaluate"]\n[input]\ndataset = "x.zarr"\n'
                    '[evaluate]\nboundary_tolerance = 10\npreview = false\n'
                    '[cluster]\nscheduler = "threads"\n')
    workflow = load_workflow(file)
    assert workflow.evaluate.boundary_tolerance == 10
    run_workflow(workflow, progress=False)
    report = json.loads(report_paths(workflow)["scores"].read_text())
    want = evaluate(data, boundary_tolerance=10.0, progress=False)
    assert report["boundary_tolerance"] == 10.0
    assert report["voi_merge"] == pytest.approx(want.voi_merge, abs=1e-12)
    assert report["voxels"] == want.voxels < int((fib25_truth > 0).sum())
    file.write_text(file.read_text().replace("= 10", '= "10"'))
    with pytest.raises(ConfigError, match=r"evaluate\.boundary_tolerance"):
        load_workflow(file)
    file.write_text(file.read_text().replace('= "10"', "= nan"))
    with pytest.raises(ConfigError, match=r"evaluate\.boundary_tolerance = nan"):
        run_workflow(load_workflow(file), progress=False)


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


def test_previews_show_raw_segmentation_truth_and_errors(tmp_path: Path) -> None:
    from PIL import Image

    from affinity_dist.viewers.preview import MIN_PANEL, id_colours, overlay

    truth = np.zeros((6, 20, 30), np.uint64)
    truth[:, :, 15:] = 7
    truth[:, :, 5:15] = 3
    seg = truth.copy()
    seg[:, 10:, 15:] = 9  # truth 7 split in two (7, 9); truth 3 merged into 4 with some of 7
    seg[:, :, :20] = 4
    data = dataset(tmp_path / "x.zarr", truth, truth)
    raw = np.tile(np.linspace(50, 250, 30).astype(np.uint8), (6, 20, 1))
    with staged_dataset(tmp_path / "y.zarr") as group:
        box = Box((0, 0, 0), truth.shape)
        create_volume(group, "raw", shape=truth.shape, dtype=np.uint8,
                      voxel_size=(40, 4, 4)).write(box, raw)
        create_volume(group, "segmentation", shape=truth.shape, dtype=np.uint64,
                      voxel_size=(40, 4, 4)).write(box, seg)
    result = run_cli("evaluate", "--input", tmp_path / "y.zarr", "--truth", data,
                     "--preview", tmp_path / "p", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    xy = np.asarray(Image.open(tmp_path / "p-xy.png"))
    xz = np.asarray(Image.open(tmp_path / "p-xz.png"))
    # four panels (raw, segmentation, truth, errors), longer side >= MIN_PANEL
    zoom = MIN_PANEL // 30  # xy: 30 pixels wide -> 16x
    assert xy.shape[1] >= 4 * 30 * zoom and xy.shape[0] >= 20 * zoom
    assert xz.shape[0] >= MIN_PANEL and xz.shape[1] >= 4 * 30 * (MIN_PANEL // 60)  # 40 nm
    row = xy[xy.shape[0] // 3]  # off the boundary between segments 7 and 9
    panels = [row[12 + i * (30 * zoom + 12):12 + i * (30 * zoom + 12) + 30 * zoom]
              for i in range(4)]
    grey = panels[0][:, 0]
    assert grey.min() == 0 and grey.max() == 255  # raw contrast-stretched
    colours = {tuple(p) for p in panels[1][::zoom]}
    assert len(colours) >= 3  # segments 4 and 7 (or 9) in their own colours over raw
    errors = panels[3]
    assert (errors[:, 0] > errors[:, 2]).any()  # the most merged segment in red
    assert (errors[:, 2] > errors[:, 0] + 40).any()  # a split truth object in blue
    expected = overlay(np.array([[200]], np.uint8), np.array([[7]], np.uint64))[0, 0]
    assert tuple(expected) != (200, 200, 200)
    assert not np.array_equal(id_colours(np.array([1])), id_colours(np.array([2])))
    bad = run_cli("evaluate", "--input", data, "--preview", tmp_path / "no" / "p",
                  "--scheduler", "threads")
    assert bad.returncode == 2 and "--preview" in bad.stderr
