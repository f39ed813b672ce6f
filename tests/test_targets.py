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


def test_boundary_semantics_teaches_edges_into_label_0_as_different() -> None:
    target, mask = affinity_targets(LABELS, background="boundary")
    unknown_t, _ = affinity_targets(LABELS)
    assert (target == unknown_t).all()  # the same positives: only the mask grows
    # the membrane voxel (0, 1, 1): its -x and +x edges are known and 0
    assert mask[2, 0, 1].tolist() == [0, 1, 1, 1]
    assert target[2, 0, 1].tolist() == [0, 0, 0, 1]
    # everything inside the crop is known, the crop's own border excepted
    assert mask[2][:, :, 1:].all() and mask[1][:, 1:].all() and mask[0][1:].all()
    # two label-0 voxels side by side are not "the same neuron"
    zeros = np.zeros((1, 1, 3), np.uint64)
    t, m = affinity_targets(zeros, background="boundary")
    assert t.sum() == 0 and m[2].sum() == 2


def test_labels_mask_leaves_out_every_edge_touching_an_unannotated_voxel() -> None:
    annotated = np.ones(LABELS.shape, np.uint8)
    annotated[1] = 0  # section z = 1 is not annotated
    for background in ("unknown", "boundary"):
        target, mask = affinity_targets(LABELS, background=background, mask=annotated)
        assert not mask[:, 1].any()  # no edge of section 1, nor the -z edges into it
        full_t, full_m = affinity_targets(LABELS, background=background)
        assert (mask[1:, 0] == full_m[1:, 0]).all() and (target[:, 0] == full_t[:, 0]).all()
        # poisoning the unannotated labels changes nothing
        poisoned = LABELS.copy()
        poisoned[1] = 7
        t2, m2 = affinity_targets(poisoned, background=background, mask=annotated)
        assert (t2 == target).all() and (m2 == mask).all()


def test_negative_weight_scales_boundary_edges_after_balancing() -> None:
    target, mask = affinity_targets(LABELS)
    base = balance_weights(target, mask)
    heavy = balance_weights(target, mask, negative=3.0)
    neg = (target < 0.5) & (mask > 0)
    assert np.allclose(heavy[neg], 3 * base[neg]) and np.allclose(heavy[~neg], base[~neg])


def test_bad_background_is_refused() -> None:
    import pytest

    from affinity_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="background: got 'membrane'"):
        affinity_targets(LABELS, background="membrane")  # type: ignore[arg-type]


def test_grow_boundary_thickens_interfaces_only() -> None:
    from affinity_dist.kernels.targets import grow_boundary

    labels = np.zeros((1, 1, 12), np.uint64)
    labels[0, 0, :5], labels[0, 0, 5:9] = 1, 2  # 1 1 1 1 1 2 2 2 2 0 0 0
    assert grow_boundary(labels, 0).tolist() == labels.tolist()
    assert grow_boundary(labels, 1)[0, 0].tolist() == [1, 1, 1, 1, 0, 0, 2, 2, 2, 0, 0, 0]
    assert grow_boundary(labels, 2)[0, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 2, 2, 0, 0, 0]
    # in 3D the band follows the interface surface, on both sides
    cube = np.ones((6, 6, 6), np.uint64)
    cube[:, :, 3:] = 2
    grown = grow_boundary(cube, 1)
    assert (grown[:, :, 2:4] == 0).all() and (grown[:, :, :2] == 1).all()
    assert (grown[:, :, 4:] == 2).all()
