"""metrics: VOI, adapted Rand and CREMI from block contingency tables vs skimage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from affinity_dist.metrics import contingency, merge_contingency, scores

skimage_metrics = pytest.importorskip("skimage.metrics")


def perturbations(truth: np.ndarray) -> dict[str, np.ndarray]:
    """Segmentations with known errors: two ids merged, one id split, a one-voxel shift."""
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    big = ids[np.argsort(sizes)[::-1]]
    merged = truth.copy()
    merged[merged == big[1]] = big[0]
    split = truth.copy()
    half = np.zeros(truth.shape, bool)
    half[:, :, truth.shape[2] // 2:] = True
    split[(truth == big[0]) & half] = truth.max() + 1
    shifted = np.roll(truth, 1, axis=2)
    return {"identity": truth, "merged": merged, "split": split, "shifted": shifted,
            "with background": np.where(np.roll(truth, 3, 0) == big[2], 0, truth)}


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

    from .conftest import shared_file

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
