"""Affinity targets from hand-drawn labels; mask; class balancing."""

from __future__ import annotations

import numpy as np

from affinity_dist.kernels.targets import affinity_targets, balance_weights

# two neurons (1, 2) split along x, an unknown (0) voxel column, drawn by hand
LABELS = np.array([[[1, 1, 2, 2],
                    [1, 0, 2, 2]],
                   [[1, 1, 2, 2],
                    [1, 1, 1, 2]]], np.uint64)


def test_nearest_neighbour_targets_and_mask_by_hand() -> None:
    target, mask = affinity_targets(LABELS)
    assert target.shape == mask.shape == (3, 2, 2, 4) and target.dtype == np.float32
    # channel 2 (-x): voxel (0,0,1) and (0,0,0) both 1 -> 1; (0,0,2) vs (0,0,1): 2 vs 1 -> 0
    assert target[2, 0, 0].tolist() == [0, 1, 0, 1]
    assert mask[2, 0, 0].tolist() == [0, 1, 1, 1]  # x = 0 has no -x neighbour
    # row y=1, z=0 holds the unknown voxel: every edge touching it is masked
    assert mask[2, 0, 1].tolist() == [0, 0, 0, 1]
    assert mask[1, 0, 1, 1] == 0 and mask[0, 1, 1, 1] == 0
    # channel 0 (-z): z=1 row y=1 x=2 is 1 below 2 -> 0, known
    assert target[0, 1, 1].tolist() == [1, 0, 0, 1] and mask[0, 1, 1].tolist() == [1, 0, 1, 1]
    assert not mask[0, 0].any()  # z = 0 has no -z neighbour
    assert (target <= mask).all()  # never a positive target on a masked edge


def test_long_range_offsets() -> None:
    target, mask = affinity_targets(LABELS, ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, 0, -2)))
    assert target.shape[0] == 4
    assert target[3, 0, 0].tolist() == [0, 0, 0, 0]  # x=2 vs x=0: 2 vs 1
    assert mask[3, 0, 0].tolist() == [0, 0, 1, 1]
    assert target[3, 1, 1].tolist() == [0, 0, 1, 0] and mask[3, 1, 1].tolist() == [0, 0, 1, 1]


def test_balance_weights_equalise_classes() -> None:
    target, mask = affinity_targets(LABELS)
    weights = balance_weights(target, mask)
    for c in range(3):
        pos = (weights[c] * (target[c] > 0.5)).sum()
        neg = (weights[c] * ((target[c] < 0.5) & (mask[c] > 0))).sum()
        if pos and neg:
            assert abs(pos - neg) < 1e-4
        assert (weights[c][mask[c] == 0] == 0).all()
