"""segment --method agglomerate: blockwise on Dask equals whole-volume agglomeration of the
same fragments, for block shapes that do not divide the volume; a new threshold only cuts
the stored merge tree; bad affinities refused with nothing left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affinity_dist import segment
from affinity_dist.errors import DataError
from affinity_dist.geometry import Box, ReductionTree
from affinity_dist.kernels.graph import native_affinities
from affinity_dist.stages.segment import prepare_segment
from affinity_dist.storage import create_volume, list_arrays, open_volume, staged_dataset

from .helpers import greedy_reference, volume_contacts


def smooth_affinities(shape: tuple[int, int, int], seed: int, dtype: type = np.uint8
                      ) -> np.ndarray:
    """Affinities of a few blobby objects: high inside, low across, with noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 1.5)
    objects = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75]))
    affs = np.zeros((3, *shape))
    for c, off in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
        here = tuple(slice(o, None) for o in off)
        there = tuple(slice(0, n - o) for o, n in zip(off, shape, strict=True))
        affs[c][here] = np.where(objects[here] == objects[there], 0.9, 0.15)
    affs = np.clip(affs + rng.normal(0, 0.12, affs.shape), 0, 1)
    return (np.rint(affs * 255).astype(np.uint8) if dtype == np.uint8
            else affs.astype(np.float32))


def write_affinities(path: Path, affs: np.ndarray, chunks: tuple[int, int, int],
                     voxel_size: tuple[float, ...] = (10, 10, 10)) -> Path:
    with staged_dataset(path, overwrite=True) as group:
        create_volume(group, "affinities", shape=affs.shape[1:], channels=3, dtype=affs.dtype,
                      chunks=chunks, voxel_size=voxel_size).write(
            Box((0, 0, 0), affs.shape[1:]), affs)
    return path


def read(path: Path, name: str) -> np.ndarray:
    volume = open_volume(path, name)
    return volume.read(Box((0, 0, 0), volume.spatial_shape))


def reference(fragments: np.ndarray, affs: np.ndarray, threshold: float,
              min_size: int = 0) -> np.ndarray:
    """Whole-volume greedy agglomeration of the stored fragments (one global queue); with
    ``min_size``, continued below the threshold for regions smaller than it."""
    scale = 255 if affs.dtype == np.uint8 else 2**24
    u, v, sums, counts = volume_contacts(fragments, native_affinities(affs))
    ids, voxels = np.unique(fragments, return_counts=True)
    size = {"sizes": dict(zip(ids.tolist(), voxels.tolist(), strict=True)),
            "min_size": min_size, "size_threshold": threshold} if min_size else {}
    labels, _ = greedy_reference(u, v, sums, counts, scale, -1.0 if min_size else threshold,
                                 **size)
    flat = fragments.ravel()
    return np.array([labels.get(int(f), int(f)) for f in flat], np.uint64).reshape(
        fragments.shape)


SHAPE = (17, 21, 19)  # 17 = 2*8 + 1 ...: one-voxel edge blocks for block 8 and 4


@pytest.mark.parametrize(("block", "fanout", "dtype"), [
    ((8, 8, 8), (2, 2, 2), np.uint8), ((4, 12, 8), (3, 2, 2), np.uint8),
    ((16, 20, 4), (2, 2, 2), np.float32)])
def test_blockwise_equals_whole_volume_agglomeration(tmp_path: Path, block: tuple[int, ...],
                                                     fanout: tuple[int, ...],
                                                     dtype: type) -> None:
    affs = smooth_affinities(SHAPE, seed=1, dtype=dtype)
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    for t in (0.3, 0.5, 0.7):
        segment(path, threshold=t, block=block, fanout=fanout, min_seed_size=4,
                halo=(3, 3, 3), overwrite=True, progress=False)
        fragments, seg = read(path, "fragments"), read(path, "segmentation")
        assert (seg > 0).all()  # every voxel assigned
        np.testing.assert_array_equal(seg, reference(fragments, affs, t))
    assert len(np.unique(fragments)) > 10 and len(np.unique(seg)) < len(np.unique(fragments))
    # the leaves' records: one per leaf group (the blocks under a level-1 task), not per block
    grid = tuple(-(-n // b) for n, b in zip(SHAPE, block, strict=True))
    tree = ReductionTree(grid, fanout)
    for name in ("region_graph", "merge_tree"):
        records = sorted(int(p.name) for p in (path / name / "0").iterdir())
        assert records == list(range(tree.num_leaf_groups)) and len(records) < np.prod(grid)


def test_new_threshold_only_cuts_the_tree(tmp_path: Path) -> None:
    affs = smooth_affinities(SHAPE, seed=2)
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    segment(path, threshold=0.5, block=(8, 8, 8), min_seed_size=4, progress=False)
    fragments = path / "fragments" / "zarr.json"
    stamp = fragments.stat().st_mtime_ns
    plan = prepare_segment(path, threshold=0.7, block=(8, 8, 8), min_seed_size=4,
                           overwrite=True)
    from affinity_dist.stages.segment import run_segment

    summary = run_segment(plan, progress=False)
    assert fragments.stat().st_mtime_ns == stamp  # fragments and tree kept
    assert summary.num_segments == len(np.unique(read(path, "segmentation")))
    assert not [n for n in list_arrays(path) if n.startswith("_")]
    assert not [p.name for p in path.iterdir() if p.name.startswith(("_staging", "_segment_cut",
                                                                     "_agglomerate_work"))]


def test_nan_affinities_exit_2_and_leave_nothing(tmp_path: Path) -> None:
    affs = smooth_affinities(SHAPE, seed=3, dtype=np.float32)
    affs[1, 9, 10, 11] = np.nan
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    with pytest.raises(DataError, match="holds nan"):
        segment(path, block=(8, 8, 8), progress=False)
    assert sorted(p.name for p in path.iterdir()) == ["affinities", "zarr.json"]


def test_tune_scores_every_threshold_and_keeps_the_best(tmp_path: Path) -> None:
    import json

    from affinity_dist.kernels.metrics import contingency, scores

    from .helpers import run_cli

    affs = smooth_affinities(SHAPE, seed=4)
    path = write_affinities(tmp_path / "t.zarr", affs, (4, 4, 4))
    from scipy import ndimage

    truth = ndimage.label(affs.mean(axis=0) > 100)[0].astype(np.uint64)
    with staged_dataset(tmp_path / "truth.zarr") as group:
        create_volume(group, "labels", shape=SHAPE, dtype=np.uint64, chunks=(8, 8, 8),
                      voxel_size=(10, 10, 10)).write(Box((0, 0, 0), SHAPE), truth)
    result = run_cli("tune", "--input", path, "--truth", tmp_path / "truth.zarr",
                     "--thresholds", "0.7", "0.3", "0.5", "--block", "8", "8", "8",
                     "--min-seed-size", "4", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    table = json.loads((tmp_path / "t-tune.json").read_text())
    assert [r["threshold"] for r in table["rows"]] == [0.3, 0.5, 0.7]  # sorted, one tree
    best = min(table["rows"], key=lambda r: r["voi_sum"])
    assert open_volume(path, "segmentation").attrs["threshold"] == best["threshold"]
    for row in table["rows"]:  # each row is segment + evaluate at that threshold
        segment(path, threshold=row["threshold"], block=(8, 8, 8), min_seed_size=4,
                overwrite=True, progress=False)
        s = scores(contingency(read(path, "segmentation"), truth))
        assert row["voi_split"] == pytest.approx(s.voi_split, abs=1e-9)
        assert row["voi_merge"] == pytest.approx(s.voi_merge, abs=1e-9)
    assert table["best"] == best and f"best threshold {best['threshold']:g}" in result.stdout
    assert (tmp_path / "t-tune.png").stat().st_size > 1000
    again = run_cli("tune", "--input", path, "--truth", tmp_path / "truth.zarr",
                    "--scheduler", "threads")
    assert again.returncode == 2 and "--overwrite" in again.stderr  # segmentation exists


def test_default_threshold_is_the_models_and_is_checked(tmp_path: Path) -> None:
    affs = smooth_affinities((8, 8, 8), seed=5)

    def dataset(name: str, defaults: object) -> Path:
        with staged_dataset(tmp_path / name) as group:
            create_volume(group, "affinities", shape=(8, 8, 8), channels=3, dtype=np.uint8,
                          chunks=(8, 8, 8), attributes={"segment_defaults": defaults}).write(
                Box((0, 0, 0), (8, 8, 8)), affs)
        return tmp_path / name

    tuned = dataset("tuned.zarr", {"agglomerate": {"threshold": 0.62}, "cc": {"threshold": 0.9}})
    assert prepare_segment(tuned).threshold == 0.62
    assert prepare_segment(tuned, method="cc").threshold == 0.9
    assert prepare_segment(tuned, threshold=0.3).threshold == 0.3
    assert prepare_segment(dataset("none.zarr", {})).threshold == 0.5
    with pytest.raises(DataError, match=r"segment_defaults.agglomerate.threshold = 'high'"):
        prepare_segment(dataset("bad.zarr", {"agglomerate": {"threshold": "high"}}))


def test_predict_copies_the_checkpoints_thresholds(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from affinity_dist import predict
    from affinity_dist.nn.checkpoint import save_model
    from affinity_dist.nn.config import build_model

    from .helpers import TINY

    model = save_model(tmp_path / "m.pt", build_model(TINY), TINY,
                       segment={"agglomerate": {"threshold": 0.42}})
    raw = np.random.default_rng(0).integers(0, 255, (16, 24, 24)).astype(np.uint8)
    out = predict(raw, model=model, out=tmp_path / "p.zarr", chunks=(16, 24, 24),
                  progress=False)
    attrs = open_volume(out, "affinities").attrs
    assert attrs["segment_defaults"] == {"agglomerate": {"threshold": 0.42}}
    assert prepare_segment(out).threshold == 0.42


@pytest.mark.parametrize(("block", "min_size"), [((8, 8, 8), 30), ((4, 12, 8), 300)])
def test_min_size_merges_small_segments_into_their_best_neighbour(
        tmp_path: Path, block: tuple[int, ...], min_size: int) -> None:
    affs = smooth_affinities(SHAPE, seed=6)
    path = write_affinities(tmp_path / "m.zarr", affs, (4, 4, 4))
    for t in (0.5, 0.8):
        segment(path, threshold=t, min_size=min_size, block=block, min_seed_size=4,
                halo=(2, 2, 2), overwrite=True, progress=False)
        fragments, seg = read(path, "fragments"), read(path, "segmentation")
        np.testing.assert_array_equal(seg, reference(fragments, affs, t, min_size))
        assert np.unique(seg, return_counts=True)[1].min() >= min_size  # none left small
        plain = reference(fragments, affs, t)
        assert len(np.unique(seg)) < len(np.unique(plain))  # small segments were merged
    assert not (path / "_segment_cut").exists()


@pytest.mark.parametrize("per_section", [False, True])
def test_real_neurons_blockwise_equals_whole_volume(tmp_path: Path, per_section: bool
                                                    ) -> None:
    """fib25's real neurons (a crop) as noisy affinities, anisotropic voxels: the blockwise
    result equals the whole-volume agglomeration of the same fragments; per-section
    fragments never cross a z section."""
    import h5py

    from .helpers import shared_file

    with h5py.File(shared_file("fib25_sample2.h5")) as f:
        ids = np.asarray(f["volumes/labels/neuron_ids"][100:121, 40:93, 60:107])
    rng = np.random.default_rng(0)
    affs = np.zeros((3, *ids.shape), np.float64)
    for c, off in enumerate(((1, 0, 0), (0, 1, 0), (0, 0, 1))):
        here = tuple(slice(o, None) for o in off)
        there = tuple(slice(0, n - o) for o, n in zip(off, ids.shape, strict=True))
        affs[c][here] = np.where(ids[here] == ids[there], 0.85, 0.1)
    affs = np.rint(np.clip(affs + rng.normal(0, 0.15, affs.shape), 0, 1) * 255)
    path = write_affinities(tmp_path / "r.zarr", affs.astype(np.uint8), (4, 8, 8),
                            voxel_size=(30, 10, 10))
    segment(path, threshold=0.5, block=(8, 16, 24), per_section=per_section,
            min_seed_size=20, progress=False)
    fragments, seg = read(path, "fragments"), read(path, "segmentation")
    np.testing.assert_array_equal(seg, reference(fragments, affs.astype(np.uint8), 0.5))
    if per_section:
        pairs = np.unique(np.stack([fragments.ravel(), np.indices(ids.shape)[0].ravel()]),
                          axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1]  # one section per fragment
    from affinity_dist.kernels.metrics import contingency, scores

    s = scores(contingency(seg, ids.astype(np.uint64)))
    assert s.voi_split + s.voi_merge < 1.5  # the neurons come back (noisy affinities)


@pytest.mark.parametrize(("block", "min_size"), [((8, 8, 8), 0), ((4, 12, 8), 0),
                                                 ((5, 20, 8), 30)])
def test_within_sections_never_merges_across_z(tmp_path: Path, block: tuple[int, ...],
                                               min_size: int) -> None:
    """``--within-sections``: z affinities that would join everything (all 1, as a model
    never taught across sections may give) play no part. The result is the whole-volume
    agglomeration of the same fragments without their z contacts, for blocks that do not
    divide the volume, and no segment reaches over two sections."""
    affs = smooth_affinities(SHAPE, seed=4)
    affs[0] = 255
    path = write_affinities(tmp_path / "w.zarr", affs, (1, 4, 4))
    segment(path, threshold=0.5, block=block, min_seed_size=4, halo=(2, 3, 3),
            min_size=min_size, progress=False)
    joined = len(np.unique(read(path, "segmentation")))
    planar = affs.copy()
    planar[0] = 0  # no contact across z can be merged
    z = np.indices(SHAPE)[0]
    for t in (0.3, 0.5, 0.7):
        segment(path, threshold=t, block=block, min_seed_size=4, halo=(2, 3, 3),
                within_sections=True, min_size=min_size, overwrite=True, progress=False)
        fragments, seg = read(path, "fragments"), read(path, "segmentation")
        assert (seg > 0).all()
        pairs = np.unique(np.stack([seg.ravel(), z.ravel()]), axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1]  # one section per segment
        if not min_size:
            np.testing.assert_array_equal(seg, reference(fragments, planar, t))
    assert len(np.unique(seg)) > SHAPE[0] > joined  # without it, sections are joined
    with pytest.raises(Exception, match="--within-sections: got --method cc"):
        prepare_segment(path, method="cc", within_sections=True, overwrite=True)
