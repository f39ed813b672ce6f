"""Local shape descriptors: a brute-force reference, invariances, ranges, downsampling."""

from __future__ import annotations

import numpy as np
import pytest

from affinity_dist.errors import ConfigError
from affinity_dist.kernels.lsd import TRUNCATE, local_shape_descriptors


def _reference(labels: np.ndarray, sigma: float, voxel: tuple[float, float, float]
               ) -> np.ndarray:
    """Every voxel, every neighbour in the truncated (normalised, separable) Gaussian."""
    sig = np.array([sigma / v for v in voxel])
    radius = np.ceil(TRUNCATE * sig).astype(int)
    kernels = []
    for s, r in zip(sig, radius, strict=True):
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / s) ** 2)
        kernels.append(k / k.sum())
    out = np.zeros((10, *labels.shape))
    step = np.array(voxel, float)
    for p in np.ndindex(labels.shape):
        if labels[p] == 0:
            continue
        w_sum, first, second = 0.0, np.zeros(3), np.zeros((3, 3))
        for d in np.ndindex(*(2 * radius + 1)):
            q = np.array(p) + np.array(d) - radius
            if (q < 0).any() or (q >= labels.shape).any() or labels[tuple(q)] != labels[p]:
                continue
            w = np.prod([k[i] for k, i in zip(kernels, d, strict=True)])
            x = q * step
            w_sum += w
            first += w * x
            second += w * np.outer(x, x)
        mean = first / w_sum
        cov = second / w_sum - np.outer(mean, mean)
        sp = sig * step
        out[0:3, *p] = 0.5 + (mean - np.array(p) * step) / (2 * sp)
        out[3:6, *p] = np.diag(cov) / sp**2
        for k, (i, j) in enumerate(((0, 1), (0, 2), (1, 2))):
            out[6 + k, *p] = 0.5 + 0.5 * cov[i, j] / np.sqrt(max(cov[i, i] * cov[j, j], 1e-12))
        out[9, *p] = w_sum
    return np.clip(out, 0, 1)


def _blobs(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    labels = 1 + (z * 0.7 + y * 0.3 > shape[0] / 2) + 2 * (x > rng.integers(2, shape[2] - 2))
    labels[rng.random(shape) < 0.05] = 0
    return labels.astype(np.uint64)


@pytest.mark.parametrize("voxel", [(1.0, 1.0, 1.0), (3.0, 1.0, 1.0)])
def test_lsds_equal_a_brute_force_reference(voxel: tuple[float, float, float]) -> None:
    labels = _blobs((7, 9, 8), 0)
    lsds, mask = local_shape_descriptors(labels, 1.5, voxel)
    ref = _reference(labels, 1.5, voxel)
    assert lsds.shape == mask.shape == (10, 7, 9, 8) and lsds.dtype == np.float32
    assert np.abs(lsds - ref).max() < 2e-4
    assert (mask == (labels != 0)).all() and (lsds[:, labels == 0] == 0).all()


def test_region_equals_the_crop_of_the_whole_and_values_lie_in_0_1() -> None:
    labels = _blobs((12, 14, 13), 1)
    whole, _ = local_shape_descriptors(labels, 2.0)
    region = (slice(3, 9), slice(4, 10), slice(5, 12))
    part, _ = local_shape_descriptors(labels, 2.0, region=region)
    # the context reaches 3 sigma = 6 voxels: the region sees what the whole volume sees
    # wherever the region lies at least that far from the crop's border, and here it is
    # within it, so compare with a whole-volume computation that has the same context
    assert part.shape == (10, 6, 6, 7)
    assert np.abs(part - whole[(slice(None), *region)]).max() < 1e-5
    assert whole.min() >= 0 and whole.max() <= 1


def test_a_flip_mirrors_the_offsets_and_correlations() -> None:
    labels = _blobs((8, 10, 9), 2)
    a, _ = local_shape_descriptors(labels, 1.5)
    b, _ = local_shape_descriptors(labels[:, :, ::-1].copy(), 1.5)
    b = b[:, :, :, ::-1]
    seg = labels != 0
    assert np.abs(a[2] - (1 - b[2]))[seg].max() < 1e-4  # x offset changes sign
    assert np.abs(a[[0, 1, 3, 4, 5, 6, 9]] - b[[0, 1, 3, 4, 5, 6, 9]])[:, seg].max() < 1e-4
    assert np.abs(a[[7, 8]] - (1 - b[[7, 8]]))[:, seg].max() < 1e-4  # zx, yx change sign


def test_downsampled_lsds_stay_close_and_bad_parameters_are_refused() -> None:
    labels = np.repeat(np.repeat(np.repeat(_blobs((8, 8, 8), 3), 2, 0), 2, 1), 2, 2)
    full, _ = local_shape_descriptors(labels, 4.0)
    coarse, mask = local_shape_descriptors(labels, 4.0, downsample=2)
    assert coarse.shape == full.shape and (mask == (labels != 0)).all()
    assert np.abs(coarse - full).mean() < 0.03
    with pytest.raises(ConfigError, match="lsd_sigma"):
        local_shape_descriptors(labels, 0.0)
    with pytest.raises(ConfigError, match="lsd_downsample"):
        local_shape_descriptors(labels, 1.0, downsample=0)


def test_analytic_shapes_sphere_and_rod() -> None:
    z, y, x = np.indices((31, 31, 31)) - 15
    sphere = ((z**2 + y**2 + x**2) <= 10**2).astype(np.uint64)
    lsds, _ = local_shape_descriptors(sphere, 3.0)
    centre = lsds[:, 15, 15, 15]
    assert np.allclose(centre[0:3], 0.5, atol=1e-4)  # zero mean offset
    assert np.allclose(centre[3:6], centre[3], atol=1e-3)  # isotropic covariance
    assert np.allclose(centre[6:9], 0.5, atol=1e-3)  # no correlation
    assert centre[9] > 0.99  # the ball lies inside the sphere
    # off centre, near the surface along +x: the segment's mass lies towards -x
    assert lsds[2, 15, 15, 24] < 0.45 and abs(lsds[1, 15, 15, 24] - 0.5) < 1e-3
    # a thin rod along y: variance along y large, across small
    rod = np.zeros((21, 41, 21), np.uint64)
    rod[9:12, :, 9:12] = 1
    r, _ = local_shape_descriptors(rod, 3.0)
    at = r[:, 10, 20, 10]
    assert at[4] > 3 * at[3] and at[4] > 3 * at[5]
    assert abs(at[3] - at[5]) < 1e-3  # symmetric across the rod


def test_lsds_of_blocks_equal_the_whole_crop() -> None:
    labels = _blobs((16, 18, 20), 4)
    whole, _ = local_shape_descriptors(labels, 1.5)
    for zs in ((0, 7), (7, 16)):
        for ys in ((0, 9), (9, 18)):
            region = (slice(*zs), slice(*ys), slice(3, 17))
            block, _ = local_shape_descriptors(labels, 1.5, region=region)
            # float32 moments: the blocks' bounding boxes differ, so do their roundings
            assert np.abs(block - whole[(slice(None), *region)]).max() < 1e-4
