"""Tests of the training augmentations: effects, raw/label consistency, validation."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import ndimage

from affinity_dist.errors import ConfigError, DataError
from affinity_dist.kernels.augment import (
    AugmentConfig,
    add_noise,
    augment,
    blur,
    darken,
    drop_sections,
    elastic_field,
    flip,
    random_transpose_order,
    scale_shift,
    shift_sections,
    transpose,
    warp,
)

ANISO = (40.0, 4.0, 4.0)
ISO = (8.0, 8.0, 8.0)
OFF = AugmentConfig.from_dict({f.name: 0.0 for f in dataclasses.fields(AugmentConfig)
                                if f.name.endswith("_prob")})


def only(**kwargs: object) -> AugmentConfig:
    """Every augmentation off except the given fields."""
    return dataclasses.replace(OFF, **kwargs)  # type: ignore[arg-type]


def blocky(shape: tuple[int, int, int], block: tuple[int, int, int], seed: int = 0
           ) -> NDArray[np.uint64]:
    """Labels constant on boxes of ``block`` voxels, random ids >= 1 (some > 2**53)."""
    rng = np.random.default_rng(seed)
    coarse = [-(-s // b) for s, b in zip(shape, block, strict=True)]
    ids = rng.integers(1, 2**63, size=coarse, dtype=np.uint64)
    ids.flat[:3] = [1, 2, 3]
    big = ids.repeat(block[0], 0).repeat(block[1], 1).repeat(block[2], 2)
    return np.ascontiguousarray(big[: shape[0], : shape[1], : shape[2]])


def raw_of(labels: NDArray[np.uint64]) -> NDArray[np.float32]:
    """A deterministic function of the labels, values in [0, 1]."""
    grey = (labels % np.uint64(251)) * np.uint64(37) % np.uint64(255)
    return grey.astype(np.float32) / np.float32(255)


def interior(labels: NDArray[np.uint64]) -> NDArray[np.bool_]:
    """Voxels whose 3x3x3 neighbourhood (reflected at the border) has one label only."""
    lo = ndimage.minimum_filter(labels, size=3, mode="reflect")
    hi = ndimage.maximum_filter(labels, size=3, mode="reflect")
    mask: NDArray[np.bool_] = lo == hi
    return mask


def random_sample(shape: tuple[int, int, int], seed: int = 0
                  ) -> tuple[NDArray[np.float32], NDArray[np.uint64]]:
    labels = blocky(shape, (2, 5, 5), seed)
    raw = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return raw, labels


# -- flips and transposes ---------------------------------------------------------------------


def test_flip_twice_is_identity() -> None:
    raw, labels = random_sample((6, 9, 11))
    for n in range(4):
        for axes in itertools.combinations(range(3), n):
            r, lab = flip(*flip(raw, labels, axes), axes)
            np.testing.assert_array_equal(r, raw)
            np.testing.assert_array_equal(lab, labels)
            if axes:
                assert not np.array_equal(flip(raw, labels, axes)[0], raw)


def test_transpose_then_inverse_is_identity() -> None:
    raw, labels = random_sample((7, 7, 7))
    for order in itertools.permutations(range(3)):
        r, lab = transpose(raw, labels, order)
        np.testing.assert_array_equal(r, raw.transpose(order))
        r, lab = transpose(r, lab, np.argsort(order).tolist())
        np.testing.assert_array_equal(r, raw)
        np.testing.assert_array_equal(lab, labels)


def test_transpose_order_respects_voxel_size_and_shape() -> None:
    rng = np.random.default_rng(0)
    aniso = {random_transpose_order((8, 8, 8), ANISO, rng) for _ in range(200)}
    assert aniso == {(0, 1, 2), (0, 2, 1)}  # z never moves
    iso = {random_transpose_order((8, 8, 8), ISO, rng) for _ in range(300)}
    assert iso == set(itertools.permutations(range(3)))
    oblong = {random_transpose_order((8, 8, 12), ISO, rng) for _ in range(100)}
    assert oblong == {(0, 1, 2), (1, 0, 2)}  # x has another length: shape kept
    assert {random_transpose_order((8, 8, 8), (5, 6, 7), rng) for _ in range(50)} == {(0, 1, 2)}


def test_augment_flips_and_transposes_never_move_z_of_anisotropic_data() -> None:
    shape = (5, 6, 6)
    labels = np.arange(1, 1 + np.prod(shape), dtype=np.uint64).reshape(shape)
    config = only(flip_prob=0.5, transpose_prob=1.0)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(60):
        _, out = augment(raw_of(labels), labels, ANISO, config, rng)
        z, y, _ = np.unravel_index((out - 1).astype(np.int64), shape)
        grid = np.indices(shape)
        assert np.array_equal(z, grid[0]) or np.array_equal(z, shape[0] - 1 - grid[0])
        seen.add(bool(np.array_equal(np.abs(y - 2.5), np.abs(grid[2] - 2.5))))
    assert seen == {True, False}  # y <-> x happened, and not always


# -- elastic -----------------------------------------------------------------------------------


def test_elastic_zero_amplitude_is_identity() -> None:
    raw, labels = random_sample((6, 20, 24))
    field = elastic_field(raw.shape, ISO, 0.0, 100.0, np.random.default_rng(0))
    assert not field.any()
    r, lab = warp(raw, labels, field)
    np.testing.assert_array_equal(r, raw)
    np.testing.assert_array_equal(lab, labels)
    config = only(elastic_prob=1.0, elastic_amplitude=0.0)
    r, lab = augment(raw, labels, ISO, config, np.random.default_rng(0))
    np.testing.assert_array_equal(r, raw)
    np.testing.assert_array_equal(lab, labels)


def test_warp_by_a_constant_field_interpolates_and_rounds() -> None:
    raw, labels = random_sample((4, 12, 14))
    field = np.zeros((3, *raw.shape), np.float32)
    field[1], field[2] = 1.4, -2.6  # sample at y + 1.4, x - 2.6
    r, lab = warp(raw, labels, field)
    inner = (slice(None), slice(0, 10), slice(3, 14))
    np.testing.assert_array_equal(lab[inner], labels[:, 1:11, 0:11])  # nearest: y + 1, x - 3
    x0 = 0.6 * raw[:, 1:11, 0:11] + 0.4 * raw[:, 2:12, 0:11]
    x1 = 0.6 * raw[:, 1:11, 1:12] + 0.4 * raw[:, 2:12, 1:12]
    np.testing.assert_allclose(r[inner], 0.6 * x0 + 0.4 * x1, atol=1e-6)
    with pytest.raises(DataError, match="field"):
        warp(raw, labels, field[:2])


def test_elastic_field_is_smooth_and_in_plane_for_anisotropic_data() -> None:
    rng = np.random.default_rng(0)
    field = elastic_field((8, 64, 64), ANISO, 12.0, 160.0, rng)
    assert field.shape == (3, 8, 64, 64) and field.dtype == np.float32
    assert not field[0].any()  # no displacement across sections
    assert 1.0 < field[1:].std() < 6.0  # about 12 nm / 4 nm = 3 voxels
    assert np.abs(np.diff(field[1:], axis=3)).max() < 1.0  # smooth: < 1 voxel per voxel
    iso = elastic_field((16, 16, 16), ISO, 16.0, 64.0, rng)
    assert all(iso[a].std() > 0.5 for a in range(3))


def test_elastic_changes_raw_keeps_labels() -> None:
    shape = (10, 48, 48)
    labels = blocky(shape, (5, 12, 12))
    raw = raw_of(labels) + np.random.default_rng(0).random(shape, dtype=np.float32) * 0.01
    config = only(elastic_prob=1.0, elastic_amplitude=12.0, elastic_spacing=80.0)
    r, lab = augment(raw, labels, ANISO, config, np.random.default_rng(3))
    assert not np.array_equal(r, raw)
    assert set(np.unique(lab)) <= set(np.unique(labels))
    assert 0.6 < np.mean(lab == labels) < 1.0


@pytest.mark.parametrize(("voxel_size", "seed"), [(ANISO, 0), (ISO, 1), ((10.0, 8.0, 8.0), 2)])
def test_elastic_keeps_raw_consistent_with_labels(voxel_size: tuple[float, ...], seed: int
                                                  ) -> None:
    shape = (12, 40, 40)
    labels = blocky(shape, (6, 10, 10), seed)
    field = elastic_field(shape, voxel_size, 16.0, 80.0, np.random.default_rng(seed))
    assert np.abs(field).max() > 1.0
    r, lab = warp(raw_of(labels), labels, field)
    away = interior(lab)
    assert away.mean() > 0.2
    assert np.mean(np.abs(r - raw_of(lab))[away] < 1e-5) >= 0.95
    assert not np.array_equal(lab, labels)


# -- misaligned sections ------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "stop", "offset"), [(2, 6, (2, -3)), (3, 4, (-1, 4)),
                                                        (1, 6, (0, 0))])
def test_shift_sections_moves_content_by_the_offset(start: int, stop: int,
                                                    offset: tuple[int, int]) -> None:
    raw, labels = random_sample((6, 10, 12))
    raw_in, lab_in = raw.copy(), labels.copy()
    r, lab = shift_sections(raw, labels, start, stop, offset)
    np.testing.assert_array_equal(raw, raw_in)
    np.testing.assert_array_equal(labels, lab_in)
    dy, dx = offset
    keep = [z for z in range(6) if not start <= z < stop]
    np.testing.assert_array_equal(r[keep], raw[keep])
    np.testing.assert_array_equal(lab[keep], labels[keep])
    dst = (slice(start, stop), slice(max(dy, 0), 10 + min(dy, 0)),
           slice(max(dx, 0), 12 + min(dx, 0)))
    src = (slice(start, stop), slice(max(-dy, 0), 10 - max(dy, 0)),
           slice(max(-dx, 0), 12 - max(dx, 0)))
    np.testing.assert_array_equal(r[dst], raw[src])
    np.testing.assert_array_equal(lab[dst], labels[src])
    uncovered = np.ones(lab.shape, bool)
    uncovered[dst] = False
    uncovered[keep] = False
    assert uncovered.sum() == (stop - start) * (10 * 12 - (10 - abs(dy)) * (12 - abs(dx)))
    assert not lab[uncovered].any()  # unknown
    assert set(np.unique(r[uncovered])) <= set(np.unique(raw[start:stop]))  # reflected


def test_augment_misalignment_only_for_sectioned_z() -> None:
    raw, labels = random_sample((8, 30, 30))
    config = only(misalign_prob=1.0, misalign_max_shift=20.0)
    for seed in range(5):
        r, lab = augment(raw, labels, ISO, config, np.random.default_rng(seed))
        np.testing.assert_array_equal(r, raw)
    changed = 0
    for seed in range(10):
        r, lab = augment(raw, labels, ANISO, config, np.random.default_rng(seed))
        same = [np.array_equal(lab[z], labels[z]) for z in range(8)]
        changed += not all(same)
        assert same[0] or sum(same) == 7  # a slab from z >= 1 on, or one slipped section
        moved = [z for z in range(8) if not same[z]]
        if moved:
            assert moved == list(range(moved[0], moved[-1] + 1))
        assert (lab[moved] == 0).mean() <= 1 - (25 / 30) ** 2 + 1e-9  # |shift| <= 5 voxels
    assert changed >= 8


def test_geometric_augmentations_keep_raw_consistent_with_labels() -> None:
    labels = blocky((8, 24, 24), (2, 3, 4))
    raw = raw_of(labels)
    config = only(flip_prob=0.5, transpose_prob=1.0, misalign_prob=1.0, misalign_max_shift=24.0)
    for seed in range(12):
        r, lab = augment(raw, labels, ANISO, config, np.random.default_rng(seed))
        known = lab != 0
        assert known.mean() > 0.5
        np.testing.assert_array_equal(r[known], raw_of(lab)[known])
    elastic = dataclasses.replace(config, elastic_prob=1.0, elastic_amplitude=16.0,
                                  elastic_spacing=80.0)
    labels = blocky((8, 40, 40), (4, 10, 10))
    for seed in range(4):
        r, lab = augment(raw_of(labels), labels, ANISO, elastic, np.random.default_rng(seed))
        away = interior(lab) & (lab != 0)
        assert np.mean(np.abs(r - raw_of(lab))[away] < 1e-5) >= 0.95


# -- intensity ---------------------------------------------------------------------------------


def test_drop_sections_makes_sections_constant() -> None:
    raw, labels = random_sample((6, 16, 16))
    out = drop_sections(raw, [1, 4], 0.25)
    assert (out[[1, 4]] == np.float32(0.25)).all()
    np.testing.assert_array_equal(out[[0, 2, 3, 5]], raw[[0, 2, 3, 5]])
    assert not (raw == np.float32(0.25)).all()
    for fill in ("zero", "mean"):
        config = only(missing_prob=1.0, missing_max_sections=3, missing_fill=fill)
        r, lab = augment(raw, labels, ANISO, config, np.random.default_rng(0))
        np.testing.assert_array_equal(lab, labels)
        flat = [z for z in range(6) if np.ptp(r[z]) == 0]
        assert 1 <= len(flat) <= 3
        np.testing.assert_array_equal(np.delete(r, flat, 0), np.delete(raw, flat, 0))
        want = 0.0 if fill == "zero" else raw.mean()
        np.testing.assert_allclose(r[flat], want, atol=1e-6)


def test_blur_lowers_gradients_per_axis_in_nm() -> None:
    raw = np.random.default_rng(0).random((8, 32, 32), dtype=np.float32)
    out = blur(raw, 8.0, ANISO)  # 2 voxels in-plane, 0.2 sections in z
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert np.abs(np.diff(out, axis=2)).mean() < 0.3 * np.abs(np.diff(raw, axis=2)).mean()
    assert np.abs(np.diff(out, axis=1)).mean() < 0.3 * np.abs(np.diff(raw, axis=1)).mean()
    z_profile = np.indices(raw.shape)[0] % 2 * np.float32(1)
    assert np.abs(np.diff(blur(z_profile, 8.0, ANISO), axis=0)).min() > 0.99
    assert np.abs(np.diff(blur(z_profile, 8.0, (4.0, 4.0, 4.0)), axis=0)).max() < 0.1
    np.testing.assert_allclose(blur(raw, 0.0, ANISO), raw)
    r, _ = augment(raw, blocky(raw.shape, (2, 4, 4)), ANISO,
                   only(blur_prob=1.0, blur_sigma=(6.0, 10.0)), np.random.default_rng(0))
    assert np.abs(np.diff(r, axis=2)).mean() < 0.5 * np.abs(np.diff(raw, axis=2)).mean()


def test_darken_lowers_the_mean() -> None:
    raw = np.random.default_rng(0).random((4, 16, 16), dtype=np.float32)
    assert darken(raw, 2.0, 1.0).mean() < raw.mean() - 0.1
    assert darken(raw, 1.0, 0.5).mean() == pytest.approx(raw.mean() / 2, rel=1e-6)
    assert (darken(raw, 1.5, 0.8) <= raw).all()
    config = only(darken_prob=1.0, darken_gamma=(1.5, 2.0), darken_scale=(0.6, 0.9))
    for seed in range(5):
        r, _ = augment(raw, blocky(raw.shape, (2, 4, 4)), ISO, config,
                       np.random.default_rng(seed))
        assert r.mean() < 0.8 * raw.mean()


def test_scale_shift() -> None:
    raw = np.random.default_rng(0).random((3, 5, 7), dtype=np.float32)
    out = scale_shift(raw, 0.5, 0.1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, raw * 0.5 + 0.1, rtol=1e-6)
    config = only(intensity_prob=1.0, intensity_scale=(0.5, 0.5), intensity_shift=(0.2, 0.2))
    r, _ = augment(raw, blocky(raw.shape, (1, 1, 1)), ISO, config, np.random.default_rng(0))
    np.testing.assert_allclose(r, raw * 0.5 + 0.2, rtol=1e-6)


def test_noise_raises_std_by_sigma() -> None:
    raw = np.full((8, 64, 64), 0.5, dtype=np.float32)
    out = add_noise(raw, 0.05, np.random.default_rng(0))
    assert out.dtype == np.float32
    assert out.std() == pytest.approx(0.05, rel=0.05)
    assert out.mean() == pytest.approx(0.5, abs=0.005)
    config = only(noise_prob=1.0, noise_sigma=(0.03, 0.03))
    r, _ = augment(raw, blocky(raw.shape, (2, 8, 8)), ISO, config, np.random.default_rng(0))
    assert r.std() == pytest.approx(0.03, rel=0.05)


# -- the pipeline -----------------------------------------------------------------------------


def test_all_off_is_identity_and_defaults_change_things() -> None:
    raw, labels = random_sample((8, 24, 24))
    labels %= np.uint64(2**32)
    r, lab = augment(raw.astype(np.float64), labels.astype(np.uint32), ANISO, OFF,
                     np.random.default_rng(0))
    assert r.dtype == np.float32 and lab.dtype == np.uint64
    np.testing.assert_array_equal(r, raw)
    np.testing.assert_array_equal(lab, labels)
    outs = [augment(raw, labels, ANISO, AugmentConfig(), np.random.default_rng(s))[0]
            for s in range(5)]
    assert sum(not np.array_equal(o, raw) for o in outs) >= 4


def test_same_seed_same_output_and_inputs_untouched() -> None:
    raw, labels = random_sample((8, 32, 32))
    raw_in, lab_in = raw.copy(), labels.copy()
    config = AugmentConfig(flip_prob=0.5, transpose_prob=1, elastic_prob=1, misalign_prob=1,
                           blur_prob=1, missing_prob=1, darken_prob=1, intensity_prob=1,
                           noise_prob=1)
    a = augment(raw, labels, ANISO, config, np.random.default_rng(7))
    b = augment(raw, labels, ANISO, config, np.random.default_rng(7))
    c = augment(raw, labels, ANISO, config, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(raw, raw_in)
    np.testing.assert_array_equal(labels, lab_in)


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 12), st.integers(1, 12)),
       voxel_size=st.sampled_from([ANISO, ISO, (10.0, 8.0, 8.0), (4.0, 4.0, 30.0)]),
       seed=st.integers(0, 2**32 - 1))
def test_shapes_dtypes_and_ranges(shape: tuple[int, int, int],
                                  voxel_size: tuple[float, float, float], seed: int) -> None:
    raw, labels = random_sample(shape, seed % 1000)
    config = AugmentConfig(flip_prob=0.5, transpose_prob=0.5, elastic_prob=0.5,
                           misalign_prob=0.5, blur_prob=0.5, missing_prob=0.5, darken_prob=0.5,
                           intensity_prob=0.5, noise_prob=0.5, intensity_shift=(-0.5, 0.5),
                           noise_sigma=(0.0, 0.5))
    r, lab = augment(raw * 3 - 1, labels, voxel_size, config, np.random.default_rng(seed))
    assert r.shape == lab.shape == shape
    assert r.dtype == np.float32 and lab.dtype == np.uint64
    assert r.min() >= 0 and r.max() <= 1
    assert set(np.unique(lab)) <= {0, *np.unique(labels).tolist()}


def test_bad_samples_are_rejected() -> None:
    raw, labels = random_sample((4, 5, 6))
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="shapes"):
        augment(raw, labels[:, :4], ISO, OFF, rng)
    with pytest.raises(DataError, match="shapes"):
        augment(raw[0], labels[0], ISO, OFF, rng)
    with pytest.raises(DataError, match="raw dtype"):
        augment((raw * 255).astype(np.uint8), labels, ISO, OFF, rng)
    with pytest.raises(DataError, match="labels dtype"):
        augment(raw, labels.astype(np.float64), ISO, OFF, rng)
    for vs in [(4.0, 4.0), (0.0, 4.0, 4.0), (float("inf"), 1.0, 1.0), "abc"]:
        with pytest.raises(ConfigError, match="voxel_size"):
            augment(raw, labels, vs, OFF, rng)  # type: ignore[arg-type]


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("flip_prob", 1.5, "in [0, 1]"), ("noise_prob", -0.1, "in [0, 1]"),
    ("elastic_prob", float("nan"), "in [0, 1]"), ("blur_prob", True, "in [0, 1]"),
    ("misalign_slip_prob", "0.5", "in [0, 1]"),
    ("elastic_amplitude", -1.0, ">= 0"), ("elastic_spacing", 0.0, "> 0"),
    ("misalign_max_shift", float("inf"), ">= 0"),
    ("blur_sigma", (-1.0, 2.0), ">= 0"), ("blur_sigma", (3.0, 2.0), "lo <= hi"),
    ("blur_sigma", 2.0, "2 finite numbers"), ("noise_sigma", (0.0, -0.1), ">= 0"),
    ("noise_sigma", (0.0, 0.1, 0.2), "2 finite numbers"),
    ("darken_gamma", (0.5, 2.0), ">= 1"), ("darken_scale", (0.5, 1.5), "(0, 1]"),
    ("darken_scale", (0.0, 1.0), "(0, 1]"), ("intensity_scale", (-1.0, 1.0), "> 0"),
    ("intensity_shift", (0.0, float("nan")), "finite"),
    ("missing_max_sections", 0, "integer >= 1"), ("missing_max_sections", 1.5, "integer"),
    ("missing_fill", "edge", "'zero' or 'mean'"),
])
def test_config_validation(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        AugmentConfig(**{field: value})  # type: ignore[arg-type]
    message = str(err.value)
    assert f"AugmentConfig.{field}" in message
    assert repr(value) in message or str(value) in message
    assert expected in message


def test_config_from_dict() -> None:
    config = AugmentConfig.from_dict({"flip_prob": 0, "blur_sigma": [1, 2],
                                      "missing_max_sections": 3})
    assert config == AugmentConfig(flip_prob=0.0, blur_sigma=(1.0, 2.0), missing_max_sections=3)
    assert config.blur_sigma == (1.0, 2.0) and isinstance(config.flip_prob, float)
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    with pytest.raises(ConfigError, match=r"'flip_probability'.*flip_prob"):
        AugmentConfig.from_dict({"flip_probability": 0.5})
    with pytest.raises(ConfigError, match=r"AugmentConfig\.noise_prob"):
        AugmentConfig.from_dict({"noise_prob": 2})
    with pytest.raises(ConfigError, match="mapping"):
        AugmentConfig.from_dict([("flip_prob", 0.5)])  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.flip_prob = 0.5  # type: ignore[misc]
