"""Tests of the synthetic EM kernel: validation, determinism, region independence, realism."""

from __future__ import annotations

import functools
import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import ndimage

from affinity_dist.kernels import synthetic
from affinity_dist.kernels.synthetic import SampleSpec, generate_region, region_halo

SMALL = (20, 37, 29)
SPECS = [
    SampleSpec(SMALL, seed=0),
    SampleSpec(SMALL, seed=1, voxel_size=(40.0, 4.0, 4.0)),
    # dense, strongly blurred, odd voxel size: many boundaries and a halo of 10+ voxels
    SampleSpec(SMALL, seed=2, voxel_size=(7.0, 13.0, 9.5), neurite_spacing=120.0,
               min_separation=40.0, blur_sigma=25.0),
]
Volume = tuple[NDArray[np.uint8], NDArray[np.uint64]]


@functools.cache
def whole(spec: SampleSpec) -> Volume:
    return generate_region(spec, (0, 0, 0), spec.shape)


def assert_region_is_crop(spec: SampleSpec, start: tuple[int, ...], stop: tuple[int, ...]
                          ) -> None:
    raw, labels = generate_region(spec, start, stop)
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    np.testing.assert_array_equal(raw, whole(spec)[0][box])
    np.testing.assert_array_equal(labels, whole(spec)[1][box])


def boundary_mask(labels: NDArray[np.uint64]) -> NDArray[np.bool_]:
    """Voxels with a 6-neighbour of another label."""
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        step = np.diff(labels, axis=axis) != 0
        lower = [slice(None)] * 3
        upper = [slice(None)] * 3
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        out[tuple(lower)] |= step
        out[tuple(upper)] |= step
    return out


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"shape": (0, 5, 5)}, "shape"),
    ({"shape": (5, 5)}, "shape"),
    ({"shape": (5, 5, 2.5)}, "shape"),
    ({"voxel_size": (0.0, 4.0, 4.0)}, "voxel_size"),
    ({"voxel_size": (math.nan, 4.0, 4.0)}, "voxel_size"),
    ({"voxel_size": (math.inf, 4.0, 4.0)}, "voxel_size"),
    ({"voxel_size": (4.0, 4.0)}, "voxel_size"),
    ({"seed": 1.5}, "seed"),
    ({"neurite_spacing": -1.0}, "neurite_spacing"),
    ({"membrane_thickness": math.inf}, "membrane_thickness"),
    ({"blur_sigma": -0.5}, "blur_sigma"),
    ({"noise_sigma": math.nan}, "noise_sigma"),
    ({"drift_amplitude": 1.0}, "drift_amplitude"),
    ({"branch_interval": 0.0}, "branch_interval"),
])
def test_spec_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"shape": (8, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=f"SampleSpec.{field}") as info:
        SampleSpec(**args)  # type: ignore[arg-type]
    assert repr(kwargs[field]) in str(info.value) and "expected" in str(info.value)


def test_spec_normalises_and_accepts_edge_values() -> None:
    spec = SampleSpec([4, 5, 6], voxel_size=[40, 4, 4], branch_interval=math.inf,  # type: ignore[arg-type]
                      blur_sigma=0, noise_sigma=0, min_separation=0, drift_amplitude=0)
    assert spec.shape == (4, 5, 6) and spec.voxel_size == (40.0, 4.0, 4.0)
    assert hash(spec) == hash(SampleSpec((4, 5, 6), voxel_size=(40.0, 4.0, 4.0),
                                         branch_interval=math.inf, blur_sigma=0.0,
                                         noise_sigma=0.0, min_separation=0.0,
                                         drift_amplitude=0.0))
    raw, labels = generate_region(spec, (0, 0, 0), spec.shape)
    assert raw.shape == labels.shape == (4, 5, 6) and labels.min() >= 1


@pytest.mark.parametrize(("start", "stop"), [
    ((-1, 0, 0), (4, 4, 4)),
    ((0, 0, 0), (4, 4, 9)),
    ((2, 0, 0), (2, 4, 4)),
    ((3, 0, 0), (2, 4, 4)),
    ((0, 0), (4, 4)),
])
def test_region_rejects_bad_boxes(start: tuple[int, ...], stop: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="start, stop"):
        generate_region(SampleSpec((8, 8, 8)), start, stop)


def test_region_halo_is_per_axis_in_voxels() -> None:
    assert region_halo(SampleSpec((4, 4, 4))) == (4, 4, 4)
    assert region_halo(SampleSpec((4, 4, 4), voxel_size=(40.0, 4.0, 4.0))) == (1, 10, 10)
    assert region_halo(SampleSpec((4, 4, 4), blur_sigma=0.0)) == (0, 0, 0)


# -- determinism and region independence --------------------------------------------------


def test_deterministic_and_seeded() -> None:
    spec = SampleSpec((24, 32, 32), seed=11)
    first = generate_region(spec, (0, 0, 0), spec.shape)
    synthetic._build.cache_clear()  # rebuild the curves from scratch
    second = generate_region(SampleSpec((24, 32, 32), seed=11), (0, 0, 0), spec.shape)
    other = generate_region(SampleSpec((24, 32, 32), seed=12), (0, 0, 0), spec.shape)
    for i in range(2):
        np.testing.assert_array_equal(first[i], second[i])
        assert not np.array_equal(first[i], other[i])


@pytest.mark.parametrize("spec", SPECS, ids=["iso", "aniso", "dense"])
@pytest.mark.parametrize(("start", "stop"), [
    ((0, 0, 0), SMALL),  # whole volume
    ((0, 0, 0), (7, 11, 5)),  # corner
    ((13, 30, 20), SMALL),  # opposite corner
    ((5, 9, 8), (14, 27, 21)),  # interior, touches no border
    ((10, 18, 14), (11, 19, 15)),  # one voxel
    ((0, 17, 0), (20, 18, 29)),  # one slab across the whole volume
])
def test_region_equals_crop_of_whole(spec: SampleSpec, start: tuple[int, ...],
                                     stop: tuple[int, ...]) -> None:
    assert_region_is_crop(spec, start, stop)


@st.composite
def sub_boxes(draw: st.DrawFn) -> tuple[SampleSpec, tuple[int, ...], tuple[int, ...]]:
    spec = draw(st.sampled_from(SPECS))
    start = tuple(draw(st.integers(0, n - 1)) for n in spec.shape)
    stop = tuple(draw(st.integers(a + 1, n)) for a, n in zip(start, spec.shape, strict=True))
    return spec, start, stop


@settings(max_examples=40, deadline=None)
@given(sub_boxes())
def test_any_sub_box_equals_crop_of_whole(
        case: tuple[SampleSpec, tuple[int, ...], tuple[int, ...]]) -> None:
    assert_region_is_crop(*case)


def test_blockwise_tiling_in_threads_equals_whole() -> None:
    spec = SampleSpec((30, 40, 36), seed=5)
    raw, labels = np.zeros(spec.shape, np.uint8), np.zeros(spec.shape, np.uint64)
    boxes = [tuple(zip(*corner, strict=True)) for corner in itertools.product(
        *[[(a, min(a + 16, n)) for a in range(0, n, 16)] for n in spec.shape])]

    def run(box: tuple[tuple[int, int], ...]) -> None:
        start, stop = box
        sl = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        raw[sl], labels[sl] = generate_region(spec, start, stop)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, boxes))
    np.testing.assert_array_equal(raw, whole(spec)[0])
    np.testing.assert_array_equal(labels, whole(spec)[1])


def test_small_region_of_large_volume() -> None:
    spec = SampleSpec((256, 256, 256), seed=3)
    raw, labels = generate_region(spec, (120, 100, 130), (140, 124, 150))
    inner_raw, inner_labels = generate_region(spec, (125, 106, 133), (131, 110, 141))
    np.testing.assert_array_equal(inner_raw, raw[5:11, 6:10, 3:11])
    np.testing.assert_array_equal(inner_labels, labels[5:11, 6:10, 3:11])


# -- what the volume looks like -----------------------------------------------------------


@pytest.fixture(scope="module", params=[0, 1])
def cube(request: pytest.FixtureRequest) -> Volume:
    return whole(SampleSpec((64, 64, 64), seed=request.param))


def test_types_and_dense_labels(cube: Volume) -> None:
    raw, labels = cube
    assert raw.dtype == np.uint8 and labels.dtype == np.uint64
    assert raw.shape == labels.shape == (64, 64, 64)
    assert labels.min() >= 1 and raw.std() > 10


def test_membranes_are_dark(cube: Volume) -> None:
    raw, labels = cube
    boundary = boundary_mask(labels)
    interior = ndimage.distance_transform_edt(~boundary) > 4
    assert raw[boundary].mean() < raw[interior].mean() - 50
    assert 0.05 < (raw < 100).mean() < 0.4  # membranes are a minority


def test_number_and_shape_of_objects(cube: Volume) -> None:
    _, labels = cube
    ids, counts = np.unique(labels, return_counts=True)
    assert 10 <= len(ids) <= 200
    ratios = []
    for i in ids[counts >= 1000]:
        xyz = np.argwhere(labels == i) * 10.0
        eig = np.linalg.eigvalsh(np.cov(xyz.T))
        ratios.append(math.sqrt(eig[-1] / max(eig[0], 1e-9)))
    assert len(ratios) >= 5 and np.mean(ratios) > 2.0  # elongated, not blobs


def test_geometry_is_physical_for_anisotropic_voxels() -> None:
    iso = whole(SampleSpec((64, 64, 64), seed=4))[1]
    raw, aniso = whole(SampleSpec((16, 160, 160), seed=4, voxel_size=(40.0, 4.0, 4.0)))
    assert 0.5 < len(np.unique(aniso)) / len(np.unique(iso)) < 2  # same physical cube
    spread = []
    for i in np.unique(aniso):
        zyx = np.argwhere(aniso == i) * np.array([40.0, 4.0, 4.0])
        if len(zyx) > 2000:
            spread.append(zyx.std(axis=0))
    z, y, x = np.mean(spread, axis=0)
    assert 0.5 < z / x < 2 and 0.5 < y / x < 2  # isotropic in nm, 10x apart in voxels
    assert raw[boundary_mask(aniso)].mean() < raw.mean() - 20


def test_noise_blur_and_drift_change_raw_not_labels() -> None:
    plain = SampleSpec((16, 24, 24), seed=9, noise_sigma=0.0, blur_sigma=0.0, drift_amplitude=0.0)
    noisy = SampleSpec((16, 24, 24), seed=9)
    raw0, labels0 = whole(plain)
    raw1, labels1 = whole(noisy)
    np.testing.assert_array_equal(labels0, labels1)
    assert 5 < np.abs(raw1.astype(float) - raw0).mean() < 40
    assert len(np.unique(raw0[~boundary_mask(labels0)])) < len(np.unique(raw1))
