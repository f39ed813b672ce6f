"""Intensity statistics (``stats``) and ``predict --normalize``: blockwise histograms equal
numpy's, stored ones are checked against the data, and a normalised prediction equals the
plain prediction of the mapped raw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from affinity_dist.errors import DataError
from affinity_dist.geometry import Box
from affinity_dist.kernels.intensity import histogram, lookup_table, percentile
from affinity_dist.stages.sample import sample
from affinity_dist.stages.stats import TABLE, stats, stored_histogram
from affinity_dist.storage import open_volume

from .helpers import run_cli, tiny_model


def _raw(path: Path) -> np.ndarray:
    raw = open_volume(path, "raw")
    return raw.read(Box((0, 0, 0), raw.spatial_shape))


def test_blockwise_histogram_equals_numpy_and_is_checked_when_read(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    sample(path, shape=(40, 70, 50), seed=2, chunks=(16, 32, 32), progress=False)
    assert stored_histogram(path) is None  # never counted
    attrs = stats(path, progress=False)
    raw = _raw(path)
    expected = np.bincount(raw.ravel(), minlength=256)
    assert (stored_histogram(path) == expected).all()
    assert attrs["voxels"] == raw.size
    assert attrs["percentiles"]["50"] == pytest.approx(np.percentile(raw, 50), abs=1.0)
    # tampered counts are refused, not trusted
    counts = zarr.open_array(str(path / TABLE / "counts"), mode="r+")
    counts[0] = int(counts[0]) + 5
    with pytest.raises(DataError, match="summing to the 140000 voxels"):
        stored_histogram(path)
    stats(path, progress=False)
    # a histogram of an earlier raw is refused once raw changes
    _rewrite_raw(path)
    with pytest.raises(DataError, match="describes another raw"):
        stored_histogram(path)


def _rewrite_raw(path: Path) -> None:
    """Raw replaced by other data, as a user's re-ingest would (its key changes)."""
    raw = zarr.open_array(str(path / "raw"), mode="r+")
    raw[:2] = 0
    raw.attrs["run_key"] = "another raw"


def test_lookup_tables_match_histograms_and_percentiles() -> None:
    rng = np.random.default_rng(0)
    target = np.clip(rng.normal(120, 30, 200_000), 0, 255).astype(np.uint8)
    darker = np.rint(255 * (target / 255.0) ** 1.8).astype(np.uint8)  # a gamma change
    h_t, h_d = histogram(target), histogram(darker)
    same = lookup_table(h_t, h_t, "histogram")
    assert (np.abs(same.astype(int) - np.arange(256))[h_t > 0] <= 1).all()
    for method in ("histogram", "percentiles"):
        lut = lookup_table(h_d, h_t, method)
        assert (np.diff(lut.astype(int)) >= 0).all()  # monotone: order of intensities kept
        mapped = histogram(lut[darker])
        for q in (1, 50, 99) if method == "histogram" else (1, 99):
            assert percentile(mapped, q) == pytest.approx(percentile(h_t, q), abs=3.0)
    assert (lookup_table(h_d, h_t, "none") == np.arange(256)).all()


def _model_with_histogram(tmp_path: Path, counts: np.ndarray) -> Path:
    import torch

    path = tiny_model(tmp_path / "tiny.pt")
    state = torch.load(path, weights_only=True)
    state["raw_histogram"] = [int(c) for c in counts]
    torch.save(state, path)
    return path


def test_normalized_predict_equals_plain_predict_of_the_mapped_raw(tmp_path: Path) -> None:
    """Blockwise, on blocks that do not divide the volume (the same ones for both: the
    default tile follows the block, and fp32 sums change with the tile)."""
    path = tmp_path / "d.zarr"
    sample(path, shape=(36, 70, 50), seed=1, chunks=(12, 32, 32), progress=False)
    raw = _raw(path)
    rng = np.random.default_rng(1)
    trained = histogram(np.clip(rng.normal(90, 20, 100_000), 0, 255).astype(np.uint8))
    model = _model_with_histogram(tmp_path, trained)
    assert run_cli("stats", "--input", path, "--scheduler", "threads").returncode == 0
    result = run_cli("predict", "--input", path, "--model", model, "--normalize", "histogram",
                     "--block", "24", "32", "32", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    normalized = open_volume(path, "affinities")
    assert normalized.attrs["intensity_normalization"] == "histogram"
    got = normalized.read(Box((0, 0, 0), normalized.spatial_shape))
    mapped = tmp_path / "m.zarr"
    sample(mapped, shape=(36, 70, 50), seed=1, chunks=(12, 32, 32), progress=False)
    lut = lookup_table(histogram(raw), trained, "histogram")
    zarr.open_array(str(mapped / "raw"), mode="r+")[...] = lut[raw]
    result = run_cli("predict", "--input", mapped, "--model", model, "--block", "24", "32",
                     "32", "--scheduler", "threads")  # same blocks, so the same tiles
    assert result.returncode == 0, result.stderr
    plain = open_volume(mapped, "affinities")
    assert (plain.read(Box((0, 0, 0), plain.spatial_shape)) == got).all()
    assert not (got == _plain_affinities(tmp_path, model)).all()  # normalising changed it


def _plain_affinities(tmp_path: Path, model: Path) -> np.ndarray:
    path = tmp_path / "p.zarr"
    sample(path, shape=(36, 70, 50), seed=1, chunks=(12, 32, 32), progress=False)
    assert run_cli("predict", "--input", path, "--model", model, "--block", "24", "32",
                   "32", "--scheduler", "threads").returncode == 0
    affs = open_volume(path, "affinities")
    return affs.read(Box((0, 0, 0), affs.spatial_shape))


def test_normalize_without_statistics_or_model_histogram_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    sample(path, shape=(16, 32, 32), seed=1, chunks=(16, 32, 32), progress=False)
    bare = tiny_model(tmp_path / "bare.pt")
    model = _model_with_histogram(tmp_path, np.full(256, 10))
    cases = [(model, "has no intensity histogram; expected one (run: affinity-dist stats"),
             (bare, "records no training histogram")]
    for i, (ckpt, message) in enumerate(cases):
        if i:
            stats(path, progress=False)
        result = run_cli("predict", "--input", path, "--model", ckpt, "--normalize",
                         "percentiles", "--scheduler", "threads")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
        assert "affinities" not in zarr.open_group(str(path), mode="r")
    result = run_cli("stats", "--input", tmp_path / "none.zarr", "--scheduler", "threads")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_a_voxel_size_other_than_the_models_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from affinity_dist.stages.predict import prepare_predict

    model = tiny_model(tmp_path / "tiny.pt")
    state = torch.load(model, weights_only=True)
    state["voxel_size"] = [10.0, 10.0, 10.0]
    torch.save(state, model)
    warned = {}
    for voxel in ((10, 10, 10), (50, 4, 4)):
        path = tmp_path / f"d{voxel[0]}.zarr"
        sample(path, shape=(16, 32, 32), seed=1, chunks=(16, 32, 32), voxel_size=voxel,
               progress=False)
        caplog.clear()
        prepare_predict(path, model=str(model))
        warned[voxel[0]] = "voxel size 50x4x4 nm is not the 10x10x10 nm model" in caplog.text
    assert warned == {10: False, 50: True}
