"""The command-line contract of the README: ``--chunks`` wherever an array is created,
``--overwrite`` honoured by every stage that writes (pyramid levels, evaluate's reports),
pyramid levels staged so that a failed run leaves the old ones in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import affinity_dist as ad
from affinity_dist.errors import DestinationExistsError
from affinity_dist.geometry import Box
from affinity_dist.stages import pyramid as pyramid_stage
from affinity_dist.storage import list_arrays, open_dataset, open_volume

from .helpers import run_cli, tiny_model


@pytest.fixture
def segmented(tmp_path: Path) -> Path:
    """A synthetic dataset (16^3 chunks) with affinities from its labels, segmented."""
    path = tmp_path / "d.zarr"
    ad.sample(path, shape=(24, 32, 32), chunks=(16, 16, 16), progress=False)
    labels = open_volume(path, "labels").read(Box((0, 0, 0), (24, 32, 32)))
    affs = np.zeros((3, *labels.shape), np.uint8)
    for axis in range(3):
        same = np.diff(labels, axis=axis) == 0
        where = [slice(None)] * 3
        where[axis] = slice(1, None)
        affs[axis][tuple(where)] = 255 * same
    ad.segment(affs, out=tmp_path / "a.zarr", chunks=(16, 16, 16), progress=False)
    return tmp_path / "a.zarr"


def test_chunks_of_every_array_a_stage_creates(tmp_path: Path, segmented: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    ad.sample(tmp_path / "r.zarr", shape=(16, 16, 16), chunks=(16, 16, 16), progress=False)
    result = run_cli("predict", "--input", tmp_path / "r.zarr", "--model", model,
                     "--chunks", "8", "8", "8", "--block", "8", "8", "8",
                     "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert open_volume(tmp_path / "r.zarr", "affinities").chunks == (3, 8, 8, 8)
    result = run_cli("segment", "--input", segmented, "--chunks", "8", "8", "16",
                     "--overwrite", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    for name in ("fragments", "segmentation"):
        assert open_volume(segmented, name).chunks == (8, 8, 16)
    result = run_cli("pyramid", "--input", segmented, "--arrays", "segmentation", "--levels",
                     "1", "--chunks", "4", "4", "4", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert open_volume(segmented, "pyramid/segmentation/s1").chunks == (4, 4, 4)
    bad = run_cli("segment", "--input", segmented, "--chunks", "8", "8", "12", "--block", "16",
                  "16", "16", "--overwrite", "--scheduler", "threads")  # 16: no multiple of 12
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_pyramid_keeps_existing_levels_unless_overwrite(segmented: Path) -> None:
    args = ("pyramid", "--input", segmented, "--arrays", "segmentation", "--levels", "1",
            "--scheduler", "threads")
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr
    assert run_cli(*args, "--overwrite").returncode == 0


def test_a_failed_pyramid_leaves_the_old_levels(segmented: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ad.pyramid(segmented, arrays=["segmentation"], levels=2, progress=False)
    level = open_volume(segmented, "pyramid/segmentation/s1")
    before = level.read(Box((0, 0, 0), level.spatial_shape))
    multiscales = dict(open_dataset(segmented).attrs)["ome"]["multiscales"]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(pyramid_stage, "downsample", broken)
    with pytest.raises(Exception, match="disk full"):
        ad.pyramid(segmented, arrays=["segmentation"], levels=3, overwrite=True,
                   progress=False, scheduler="synchronous")
    level = open_volume(segmented, "pyramid/segmentation/s1")
    assert np.array_equal(level.read(Box((0, 0, 0), level.spatial_shape)), before)
    assert dict(open_dataset(segmented).attrs)["ome"]["multiscales"] == multiscales
    assert "pyramid/segmentation/s3" not in list_arrays(segmented)
    with pytest.raises(DestinationExistsError):
        ad.pyramid(segmented, arrays=["segmentation"], progress=False)


def test_evaluate_keeps_an_existing_report_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    ad.sample(path, shape=(16, 16, 16), progress=False)
    report = tmp_path / "scores.json"
    report.write_text("{}")
    args = ("evaluate", "--input", path, "--segmentation", "labels", "--json", report,
            "--scheduler", "threads")
    refused = run_cli(*args)
    assert refused.returncode == 2 and "--json" in refused.stderr, refused.stderr
    assert report.read_text() == "{}"
    assert run_cli(*args, "--overwrite").returncode == 0
    assert '"voi_split": 0.0' in report.read_text()


def test_relative_dataset_paths_run_every_stage(tmp_path: Path) -> None:
    """``affinity-dist predict --input isbi.zarr`` as the README writes it: the done
    markers list the written files relative to the dataset whatever path names it."""
    model = tiny_model(tmp_path / "tiny.pt")
    steps = [("sample", "d.zarr", "--shape", "16", "32", "32", "--scheduler", "threads"),
             ("predict", "--input", "d.zarr", "--model", str(model), "--scheduler", "threads"),
             ("segment", "--input", "d.zarr", "--scheduler", "threads"),
             ("segment", "--input", "d.zarr", "--method", "cc", "--overwrite", "--threshold",
              "0.5", "--scheduler", "threads")]
    for step in steps:
        result = run_cli(*step, cwd=tmp_path)
        assert result.returncode == 0, (step, result.stderr)
    assert (tmp_path / "d.zarr" / "segmentation").is_dir()
