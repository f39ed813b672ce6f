"""metrics: VOI, adapted Rand and CREMI from block contingency tables vs skimage; CREMI's
boundary tolerance mask vs a direct reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from affinity_dist.kernels.metrics import border_mask, contingency, merge_contingency, scores

from .helpers import perturbations

skimage_metrics = pytest.importorskip("skimage.metrics")


def check_against_skimage(seg: np.ndarray, truth: np.ndarray, table_blocks: int = 1) -> None:
    z = seg.shape[0]
    cuts = np.linspace(0, z, table_blocks + 1).astype(int)
    tables = [contingency(seg[a:b], truth[a:b]) for a, b in itertools.pairwise(cuts)]
    got = scores(merge_contingency(tables))
    split, merge = skimage_metrics.variation_of_information(truth, seg, ignore_labels=(0,))
    are, precision, recall = skimage_metrics.adapted_rand_error(truth, seg, ignore_labels=(0,))
    assert got.voi_split == pytest.approx(split, abs=1e-9)
    assert got.voi_merge == pytest.approx(merge, abs=1e-9)
    assert got.adapted_rand_error == pytest.approx(are, abs=1e-9)
    assert got.rand_precision == pytest.approx(precision, abs=1e-9)
    assert got.rand_recall == pytest.approx(recall, abs=1e-9)


@pytest.mark.parametrize("volume", ["fib25_sample2.h5", "gala_train.h5"])
def test_equals_skimage_on_real_ground_truth(volume: str) -> None:
    import h5py

    from .helpers import shared_file

    with h5py.File(shared_file(volume)) as f:
        truth = f["volumes/labels/neuron_ids"][:40, :100, :100].astype(np.uint64)
    for name, seg in perturbations(truth).items():
        check_against_skimage(seg.astype(np.uint64), truth, table_blocks=1)
        check_against_skimage(seg.astype(np.uint64), truth, table_blocks=7)
        if name == "identity":
            s = scores(contingency(seg, truth))
            assert s.voi_sum == pytest.approx(0, abs=1e-12)
            assert s.adapted_rand_error == pytest.approx(0, abs=1e-12)


def test_worst_objects_name_the_error() -> None:
    truth = np.repeat(np.arange(1, 5, dtype=np.uint64), 250).reshape(10, 10, 10)
    seg = truth.copy()
    seg[truth == 2] = 1  # merge 1 and 2
    seg[(truth == 4) & (np.arange(10)[None, None, :] < 5)] = 9  # split 4
    s = scores(contingency(seg, truth))
    assert s.worst_merges[0][0] == 1
    assert s.worst_splits[0][0] == 4
    assert s.cremi_score == pytest.approx(np.sqrt(s.voi_sum * s.adapted_rand_error))
    assert s.segments == 4 and s.truth_objects == 4 and s.voxels == 1000


def reference_border_mask(labels: np.ndarray, tolerance: float,
                          voxel_size: tuple[float, float, float]) -> np.ndarray:
    """CREMI's border mask spelled out voxel by voxel: a boundary voxel has an in-plane
    4-neighbour (inside the array) with another label, 0 included; a voxel is masked when
    a boundary voxel of its section is within ``tolerance`` nm."""
    _, vy, vx = voxel_size
    depth, height, width = labels.shape
    out = np.zeros(labels.shape, bool)
    for z in range(depth):
        section = labels[z]
        boundary = [(y, x) for y in range(height) for x in range(width)
                    if any(0 <= y + dy < height and 0 <= x + dx < width
                           and section[y + dy, x + dx] != section[y, x]
                           for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)))]
        for y, x in itertools.product(range(height), range(width)):
            out[z, y, x] = any(((y - by) * vy) ** 2 + ((x - bx) * vx) ** 2 <= tolerance ** 2
                               for by, bx in boundary)
    return out


def blocky_labels(seed: int) -> np.ndarray:
    """Small labels with regions several voxels wide, label-0 regions, stray voxels and one
    section holding a single label (no boundary at all)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (4, 4, 5), dtype=np.uint64)
    labels = coarse.repeat(3, axis=1).repeat(3, axis=2)
    flips = rng.random(labels.shape) < 0.03
    labels[flips] = rng.integers(0, 6, int(flips.sum()))
    labels[2] = 3
    return labels


@pytest.mark.parametrize("voxel_size", [(1.0, 1.0, 1.0), (40.0, 4.0, 4.0), (8.0, 4.0, 6.0),
                                        (1.0, 7.5, 2.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_border_mask_equals_reference(voxel_size: tuple[float, float, float], seed: int
                                      ) -> None:
    labels = blocky_labels(seed)
    for tolerance in (0.0, 1.0, 3.9, 4.0, 6.0, 8.0, 10.5, 12.0, 30.0):
        got = border_mask(labels, tolerance, voxel_size)
        want = reference_border_mask(labels, tolerance, voxel_size)
        assert got.dtype == bool and got.shape == labels.shape
        assert np.array_equal(got, want), (tolerance, np.argwhere(got != want)[:5])
        assert not got[2].any()  # one label: no boundary, nothing masked
    assert border_mask(labels, 30.0, voxel_size)[[0, 1, 3]].any()


def test_border_mask_semantics_by_hand() -> None:
    """Both sides of a boundary, label 0 counting as a label, array edges no boundary,
    distances in nm per in-plane axis, no masking across sections."""
    row = np.array([1, 1, 1, 2, 2, 2, 2, 2], np.uint64)
    labels = np.stack([np.tile(row, (3, 1)), np.tile(np.where(row == 2, 0, row), (3, 1)),
                       np.full((3, 8), 5, np.uint64)])
    cols = np.arange(8)
    for tolerance, masked in ((0.0, {2, 3}), (3.9, {2, 3}), (4.0, {1, 2, 3, 4}),
                              (8.0, {0, 1, 2, 3, 4, 5})):
        got = border_mask(labels, tolerance, (40.0, 1.0, 4.0))
        want = np.isin(cols, sorted(masked))
        assert (got[0] == want).all() and (got[1] == want).all(), tolerance
        assert not got[2].any()
    across_y = np.repeat(np.array([1, 1, 2, 2, 2], np.uint64)[:, None], 4, axis=1)[None]
    assert border_mask(across_y, 5.0, (1.0, 10.0, 1.0))[0, :, 0].tolist() == \
        [False, True, True, False, False]  # the next row is 10 nm away
    assert border_mask(across_y, 10.0, (1.0, 10.0, 1.0))[0, :, 0].tolist() == \
        [True, True, True, True, False]


@pytest.mark.parametrize(("tolerance", "voxel_size"), [(-1.0, (1, 1, 1)),
                                                       (float("nan"), (1, 1, 1)),
                                                       (float("inf"), (1, 1, 1)),
                                                       (1.0, (1, 0, 1)), (1.0, (1, 1))])
def test_border_mask_refuses_bad_arguments(tolerance: float, voxel_size: tuple[float, ...]
                                           ) -> None:
    with pytest.raises(ValueError, match=r"tolerance_nm|voxel_size"):
        border_mask(np.ones((2, 3, 3), np.uint64), tolerance, voxel_size)


def shift_without_wrap(truth: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``truth`` moved by (dy, dx) voxels in every section, the first rows and columns
    repeated (no wrap-around: every error lies within (dy, dx) of a truth boundary)."""
    padded = np.pad(truth, ((0, 0), (dy, 0), (dx, 0)), mode="edge")
    return padded[:, :truth.shape[1], :truth.shape[2]]


@pytest.mark.parametrize("shift", [(0, 1), (1, 0), (1, 1), (0, 3)])
def test_larger_tolerance_forgives_boundary_shifts(shift: tuple[int, int]) -> None:
    """VOI of a shifted segmentation never grows with the tolerance and reaches 0 once the
    tolerance covers the shift (a one-voxel shift: as soon as the tolerance is on)."""
    import h5py

    from .helpers import shared_file

    with h5py.File(shared_file("fib25_sample2.h5")) as f:
        truth = f["volumes/labels/neuron_ids"][100:130, 50:127, 60:133].astype(np.uint64)
    seg = shift_without_wrap(truth, *shift)
    voxel_size = (40.0, 4.0, 6.0)
    vois = []
    for tolerance in (0, 2, 4, 6, 8, 12, 18, 24):
        gt = truth.copy()
        if tolerance:
            gt[border_mask(truth, tolerance, voxel_size)] = 0
        vois.append(scores(contingency(seg, gt)).voi_sum)
    assert vois[0] > 0.5
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(vois)), vois
    assert vois[-1] == pytest.approx(0, abs=1e-12)
    if max(shift) == 1 and min(shift) == 0:
        assert vois[1] == pytest.approx(0, abs=1e-12)
