"""segment --method cc: blockwise segmentation equals whole-volume affinity-graph connected
components; bad inputs (either method) exit 2 with one line and nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affinity_dist import segment
from affinity_dist.geometry import Box
from affinity_dist.storage import create_volume, open_dataset, open_volume, staged_dataset

from .helpers import oracle_components, same_partition


def write_affinities(path: Path, affs: np.ndarray, chunks: tuple[int, int, int]) -> Path:
    with staged_dataset(path, overwrite=True) as group:
        vol = create_volume(group, "affinities", shape=affs.shape[1:], channels=affs.shape[0],
                            dtype=affs.dtype, chunks=chunks, voxel_size=(40, 4, 4))
        vol.write(Box((0, 0, 0), affs.shape[1:]), affs)
    return path


def random_affinities(shape: tuple[int, ...], seed: int, p: float = 0.75,
                      dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    affs = (rng.random((3, *shape)) < p) * rng.uniform(0.5, 1, (3, *shape))
    affs = affs.astype(np.float32)
    return np.rint(affs * 255).astype(np.uint8) if dtype == np.uint8 else affs


def check_against_oracle(path: Path, affs: np.ndarray, threshold: float) -> np.ndarray:
    seg = open_volume(path, "segmentation").array[...]
    assert seg.dtype == np.uint64 and seg.shape == affs.shape[1:]
    assert same_partition(seg, oracle_components(affs, threshold))
    ids = np.unique(seg)
    assert ids[0] >= 1 and (ids == np.arange(1, len(ids) + 1)).all()  # consecutive
    return seg


@pytest.mark.parametrize("block", [(4, 4, 4), (8, 4, 12), (16, 16, 16), (4, 12, 8)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_blockwise_equals_whole_volume(tmp_path: Path, block: tuple[int, int, int],
                                       dtype: type) -> None:
    # 17 = 2*8 + 1, 13 = 3*4 + 1, 9 = 2*4 + 1: one-voxel-thick edge blocks on every axis
    affs = random_affinities((17, 13, 9), seed=1, dtype=dtype)
    path = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    segment(path, method="cc", threshold=0.5, block=block, progress=False)
    check_against_oracle(path, affs, 0.5)
    fragments = open_volume(path, "fragments").array[...]
    # fragments never span blocks: the block id is in the high bits
    num_blocks = np.prod([-(-n // b) for n, b in zip((17, 13, 9), block, strict=True)])
    assert ((fragments >> np.uint64(32)) < num_blocks).all()
    lookup = open_dataset(path)["lookup"].attrs
    assert lookup["num_segments"] == len(np.unique(open_volume(path, "segmentation").array[...]))
    assert open_volume(path, "segmentation").voxel_size == (40.0, 4.0, 4.0)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(1, 14), st.integers(1, 14), st.integers(1, 14)),
       block=st.tuples(st.sampled_from([2, 4, 6]), st.sampled_from([2, 4, 8]),
                       st.sampled_from([2, 6])),
       seed=st.integers(0, 1000), p=st.floats(0.3, 0.95),
       fanout=st.tuples(st.integers(2, 4), st.integers(2, 3), st.integers(2, 5)))
def test_partition_does_not_depend_on_block_shape(tmp_path: Path, shape: tuple[int, int, int],
                                                  block: tuple[int, int, int], seed: int,
                                                  p: float, fanout: tuple[int, int, int]
                                                  ) -> None:
    affs = random_affinities(shape, seed, p)
    path = write_affinities(tmp_path / "h.zarr", affs, (2, 2, 2))
    segment(path, method="cc", threshold=0.5, block=block, overwrite=True, progress=False,
            fanout=fanout)
    check_against_oracle(path, affs, 0.5)


@pytest.mark.parametrize("fanout", [(2, 2, 2), (3, 2, 5), (4, 4, 4)])
@pytest.mark.parametrize("min_size", [0, 6])
def test_the_tree_reduction_holds_no_pair_list_at_any_fanout(
        tmp_path: Path, fanout: tuple[int, int, int], min_size: int) -> None:
    """Every component is final at one task: the root passes nothing up; each level's
    largest residual is reported; the same segmentation at every fan-out (one-voxel edge
    blocks on every axis)."""
    from affinity_dist.stages.segment import prepare_segment, run_segment

    affs = random_affinities((17, 13, 9), seed=4, p=0.66)
    path = write_affinities(tmp_path / "f.zarr", affs, (2, 2, 2))
    plan = prepare_segment(path, method="cc", block=(4, 4, 2), min_size=min_size,
                           fanout=fanout)
    summary = run_segment(plan, progress=False)
    levels = summary.levels
    assert len(levels) == plan.tree.num_levels >= 3
    assert levels[0]["tasks"] == plan.grid.num_blocks == 5 * 4 * 5
    assert levels[-1] == {**levels[-1], "tasks": 1, "regions": 0, "edges": 0}
    assert sum(s["merges"] for s in levels) > 0
    seg = open_volume(path, "segmentation").array[...]
    whole = oracle_components(affs, 0.5)
    big = np.bincount(whole.ravel())[whole] >= min_size
    assert (seg[~big] == 0).all() and same_partition(seg[big], whole[big])
    ids = np.unique(seg[big])
    assert (ids == np.arange(1, len(ids) + 1)).all() and summary.num_segments == len(ids)
    attrs = open_dataset(path)["lookup"].attrs
    assert attrs["fanout"] == list(fanout) and attrs["residuals"] == levels
    # records per task above the leaves (its merges, its children's labels), none per
    # block: the group's and the index's metadata besides
    above = sum(plan.tree.num_tasks(k) for k in range(1, plan.tree.num_levels))
    assert len(list((path / "lookup").rglob("zarr.json"))) <= 2 * above + 2 < 100


def test_without_fragments_gives_the_same_segmentation(tmp_path: Path) -> None:
    affs = random_affinities((13, 11, 10), seed=3)
    a = write_affinities(tmp_path / "a.zarr", affs, (4, 4, 4))
    b = write_affinities(tmp_path / "b.zarr", affs, (4, 4, 4))
    segment(a, method="cc", block=(8, 4, 4), progress=False)
    segment(b, method="cc", block=(8, 4, 4), keep_fragments=False, progress=False)
    np.testing.assert_array_equal(open_volume(a, "segmentation").array[...],
                                  open_volume(b, "segmentation").array[...])
    assert not (b / "fragments").exists() and (a / "fragments").exists()


def labels_to_affinities(labels: np.ndarray) -> np.ndarray:
    """DESIGN.md targets: 1 where both voxels carry the same nonzero id, else 0 (uint8)."""
    affs = np.zeros((3, *labels.shape), np.uint8)
    for c in range(3):
        here = tuple(slice(1, None) if a == c else slice(None) for a in range(3))
        there = tuple(slice(None, -1) if a == c else slice(None) for a in range(3))
        affs[c][here] = ((labels[here] == labels[there]) & (labels[here] > 0)) * 255
    return affs


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    """A real LocalCluster: 2 worker processes, 1 thread each."""
    from distributed import Client, LocalCluster

    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None) as cluster, Client(cluster) as c):
        yield c


def test_real_labels_give_back_ground_truth_on_a_local_cluster(
        tmp_path: Path, fib25: Path, client: object) -> None:
    import cc3d
    import h5py

    with h5py.File(fib25, "r") as f:
        gt = f["volumes/labels/neuron_ids"][...]
    affs = labels_to_affinities(gt)
    # 250 = 3*83 + 1 (a one-voxel-thick edge block in z), 3*64 + 58, 5*48 + 10
    path = write_affinities(tmp_path / "fib25.zarr", affs, (83, 32, 16))
    segment(path, method="cc", threshold=0.5, block=(83, 64, 48), client=client, progress=False)
    seg = open_volume(path, "segmentation").array[...]
    parts = cc3d.connected_components(gt, connectivity=6)  # each label's connected parts
    inside = gt > 0
    assert same_partition(seg[inside], parts[inside])
    assert len(np.unique(seg[inside])) > 400


def test_random_affinities_on_a_local_cluster(tmp_path: Path, client: object) -> None:
    affs = random_affinities((23, 19, 21), seed=7, p=0.7)
    path = write_affinities(tmp_path / "r.zarr", affs, (4, 8, 4))
    segment(path, method="cc", threshold=0.5, block=(8, 8, 12), client=client, progress=False)
    check_against_oracle(path, affs, 0.5)


def test_dask_array_input(tmp_path: Path, client: object) -> None:
    import dask.array as da

    affs = random_affinities((20, 17, 9), seed=11, dtype=np.float32)
    out = segment(da.from_array(affs, chunks=(3, 7, 7, 7)), method="cc", out=tmp_path / "d.zarr",
                  voxel_size=(40, 4, 4), chunks=(8, 8, 8), block=(8, 16, 8), client=client,
                  progress=False)
    np.testing.assert_array_equal(open_volume(out, "affinities").array[...], affs)
    check_against_oracle(out, affs, 0.5)
    assert open_volume(out, "segmentation").voxel_size == (40.0, 4.0, 4.0)


def test_min_size_removes_small_segments_only(tmp_path: Path) -> None:
    affs = random_affinities((15, 14, 13), seed=5, p=0.62)
    path = write_affinities(tmp_path / "m.zarr", affs, (4, 4, 4))
    segment(path, method="cc", threshold=0.5, block=(8, 4, 8), min_size=6, progress=False)
    seg = open_volume(path, "segmentation").array[...]
    whole = oracle_components(affs, 0.5)
    sizes = np.bincount(whole.ravel())
    big = sizes[whole] >= 6
    assert (seg[~big] == 0).all() and (seg[big] > 0).all()
    assert same_partition(seg[big], whole[big])
    ids = np.unique(seg[big])
    assert (ids == np.arange(1, len(ids) + 1)).all()
    assert big.any() and (~big).any()  # the volume exercises both sides


def _files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")}


@pytest.mark.parametrize("method", ["cc", "agglomerate"])
def test_bad_inputs_exit_2_with_one_line_and_nothing_written(tmp_path: Path, method: str
                                                             ) -> None:
    from .helpers import run_cli

    good = random_affinities((9, 10, 11), seed=2)
    nan = good.astype(np.float32) / 255
    nan[1, 8, 9, 10] = np.nan  # in the last block
    cases: dict[str, tuple[Path, list[str], str]] = {}

    def case(name: str, affs: np.ndarray | None, args: list[str], message: str,
             channels: bool = True) -> None:
        path = tmp_path / f"{name.replace(' ', '_')}.zarr"
        with staged_dataset(path) as group:
            if affs is not None:
                vol = create_volume(group, "affinities", shape=affs.shape[-3:],
                                    channels=affs.shape[0] if channels else None,
                                    dtype=affs.dtype, chunks=(4, 4, 4))
                vol.write(Box((0, 0, 0), affs.shape[-3:]), affs)
        cases[name] = (path, args, message)

    case("two channels", good[:2], [], "affinities: got 2 channels, expected at least 3")
    case("3D array", good[0], [], "expected 4D (c, z, y, x)", channels=False)
    case("NaN", nan, ["--block", "8", "8", "8"], "holds nan, expected values in [0, 1]")
    case("threshold high", good, ["--threshold", "1.5"], "--threshold: got 1.5")
    case("threshold negative", good, ["--threshold", "-0.1"], "expected a number in [0, 1]")
    case("block zero", good, ["--block", "0", "8", "8"], "--block: got [0, 8, 8]")
    case("block unaligned", good, ["--block", "6", "8", "8"], "multiple of the chunk shape")
    case("missing affinities", None, [], "array: got 'affinities'")
    for name, (path, args, message) in cases.items():
        before = _files(path)
        result = run_cli("segment", "--input", path, "--method", method, *args,
                         "--scheduler", "synchronous")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (name, result.stderr)
        assert len(lines) == 1 and message in lines[0], (name, result.stderr)
        assert _files(path) == before, name  # nothing written, nothing left behind
    missing = run_cli("segment", "--input", tmp_path / "nope.zarr")
    assert missing.returncode == 2 and "expected an existing Zarr group" in missing.stderr
