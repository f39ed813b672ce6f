"""Resampling to the model's voxel size: the kernels, and ``predict --resample`` blockwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affinity_dist.errors import ConfigError
from affinity_dist.geometry import Box, reflect_indices
from affinity_dist.kernels.resample import (
    affinities_back,
    model_box_of,
    resample_window,
    resampled_shape,
)
from affinity_dist.storage import create_volume, open_volume, staged_dataset

from .helpers import TINY, run_cli, tiny_model

ISBI_LIKE = ((50.0, 4.0, 4.0), (10.0, 10.0, 10.0))  # sections under an isotropic model


def _reader(volume: np.ndarray) -> Any:
    def read(box: Box) -> np.ndarray:
        assert all(0 <= a < b <= n for a, b, n in zip(box.start, box.stop, volume.shape,
                                                      strict=True)), box
        return volume[box.slices]
    return read


def _whole(volume: np.ndarray, source: Any, target: Any, order: Any = "linear"
           ) -> np.ndarray:
    shape = resampled_shape(volume.shape, source, target)
    return resample_window(_reader(volume), [np.arange(n) for n in shape], volume.shape,
                           [t / s for s, t in zip(source, target, strict=True)], order=order)


def test_equal_voxel_sizes_are_the_identity() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (7, 9, 11)).astype(np.uint8)
    assert np.array_equal(_whole(raw, (4, 4, 4), (4, 4, 4)), raw)
    affs = rng.random((3, 7, 9, 11)).astype(np.float32)
    box = Box((0, 0, 0), raw.shape)
    assert model_box_of(box, (1, 1, 1), raw.shape) == box
    assert np.array_equal(affinities_back(affs, box, box, (1, 1, 1), raw.shape), affs)


def test_shapes_coordinates_and_nearest_labels() -> None:
    assert resampled_shape((30, 512, 512), *ISBI_LIKE) == (150, 205, 205)
    assert resampled_shape((1, 2, 3), (1, 1, 1), (100, 100, 100)) == (1, 1, 1)
    with pytest.raises(ValueError, match="target voxel size"):
        resampled_shape((3, 3, 3), (1, 1, 1), (0, 1, 1))
    labels = np.arange(6 * 4 * 4, dtype=np.uint64).reshape(6, 4, 4)
    up = _whole(labels, (50, 10, 10), (10, 10, 10), "nearest")
    assert up.shape == (30, 4, 4)  # every section becomes five planes, ids kept
    assert np.array_equal(up, np.repeat(labels, 5, axis=0))
    # linear raw follows the physical coordinate: a ramp stays a ramp (clamped at ends)
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], (20, 3, 3))
    down = _whole(np.ascontiguousarray(ramp), (4, 4, 4), (10, 10, 10))
    expected = np.clip((np.arange(8) + 0.5) * 2.5 - 0.5, 0, 19)
    assert np.allclose(down[:, 0, 0], expected)


def test_any_window_equals_the_whole_volume_resampled() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (6, 23, 19)).astype(np.uint8)
    labels = rng.integers(0, 9, raw.shape).astype(np.uint32)
    for source, order, volume in ((ISBI_LIKE[0], "linear", raw),
                                  ((8, 3, 7), "linear", raw.astype(np.float32)),
                                  (ISBI_LIKE[0], "nearest", labels)):
        whole = _whole(volume, source, ISBI_LIKE[1], order)
        shape = whole.shape
        ratios = [t / s for s, t in zip(source, ISBI_LIKE[1], strict=True)]
        for _ in range(20):  # windows reaching past the grid are read mirrored
            lo = [int(rng.integers(-4, n)) for n in shape]
            hi = [a + int(rng.integers(1, n + 4)) for a, n in zip(lo, shape, strict=True)]
            idx = [reflect_indices(a, b, n) for a, b, n in zip(lo, hi, shape, strict=True)]
            got = resample_window(_reader(volume), idx, volume.shape, ratios, order=order)
            assert got.dtype == volume.dtype
            assert np.array_equal(got, whole[np.ix_(*idx)])


def test_affinities_back_take_the_crossed_minimum_and_interpolate_finer_edges() -> None:
    data_shape = (4, 10, 10)
    spans = [d / m for d, m in zip(*ISBI_LIKE, strict=True)]  # 5 model planes a section
    model_shape = resampled_shape(data_shape, *ISBI_LIKE)
    model = np.ones((3, *model_shape), np.float32)
    model[0, 8] = 0.25  # a boundary between model planes 7 and 8: inside section 1 -> 2
    model[2] = np.linspace(0, 1, model_shape[2], dtype=np.float32)[None, None, :]
    box = Box((0, 0, 0), data_shape)
    whole = Box((0, 0, 0), model_shape)
    back = affinities_back(model, whole, box, spans, model_shape)
    assert back.shape == (3, *data_shape)
    assert np.all(back[0, 2] == 0.25)  # data sections 1 (plane 7) and 2 (plane 12)
    assert np.all(back[0, [0, 1, 3]] == 1)
    # x edges of 4 nm under 10 nm voxels: the model's ramp read at each edge's midpoint
    mid = np.clip((np.arange(10) + 0.5) * 0.4 - 0.5 - 0.2 + 0.5, 0, model_shape[2] - 1)
    assert np.allclose(back[2, 0, 0], np.interp(mid, np.arange(model_shape[2]),
                                                model[2, 0, 0]))


def test_affinities_back_blockwise_equals_whole() -> None:
    rng = np.random.default_rng(2)
    data_shape = (7, 31, 26)
    for source in (ISBI_LIKE[0], (6.0, 13.0, 10.0)):
        spans = [s / t for s, t in zip(source, ISBI_LIKE[1], strict=True)]
        model_shape = resampled_shape(data_shape, source, ISBI_LIKE[1])
        model = rng.random((3, *model_shape)).astype(np.float32)
        full = affinities_back(model, Box((0, 0, 0), model_shape), Box((0, 0, 0), data_shape),
                               spans, model_shape)
        for _ in range(20):
            lo = [int(rng.integers(0, n)) for n in data_shape]
            box = Box(tuple(lo), tuple(int(rng.integers(a + 1, n + 1))
                                       for a, n in zip(lo, data_shape, strict=True)))
            need = model_box_of(box, spans, model_shape)
            assert all(0 <= a < b <= n for a, b, n in zip(need.start, need.stop,
                                                          model_shape, strict=True))
            got = affinities_back(model[(slice(None), *need.slices)], need, box, spans,
                                  model_shape)
            assert np.array_equal(got, full[(slice(None), *box.slices)])


# ---- predict --resample ---------------------------------------------------------------

SHAPE = (7, 45, 39)  # no block shape below divides it
OFFSET = (250.0, 40.0, 12.0)  # nm


def _dataset(path: Path, voxel_size: Any = ISBI_LIKE[0]) -> Path:  # nm
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, SHAPE).astype(np.uint8)
    with staged_dataset(path) as group:
        create_volume(group, "raw", shape=SHAPE, dtype=np.uint8, chunks=(2, 8, 8),
                      voxel_size=voxel_size, offset=OFFSET).write(Box((0, 0, 0), SHAPE), data)
    return path


def _model(path: Path, voxel_size: Any = ISBI_LIKE[1]) -> Path:
    import torch

    from affinity_dist.nn.checkpoint import load_checkpoint, save_model

    tiny_model(path)
    model, config, _ = load_checkpoint(path)
    extra = {} if voxel_size is None else {"voxel_size": list(voxel_size)}
    with torch.no_grad():
        return save_model(path, model, config, **extra)


def test_predict_resample_blockwise_equals_the_whole_volume_reference(tmp_path: Path
                                                                      ) -> None:
    from affinity_dist.stages.predict import predict

    from .test_predict import whole_volume_oracle

    model = _model(tmp_path / "m.pt")
    out = {}
    for name, block in (("whole", SHAPE), ("a", (4, 16, 24)), ("b", (2, 24, 8))):
        for dtype in ("float32", "uint8"):
            data = _dataset(tmp_path / f"{name}-{dtype}.zarr")
            predict(data, model=model, block=block, tile=(8, 8, 8), precision="fp32",
                    dtype=dtype, resample=True, progress=False)
            affs = open_volume(data, "affinities")
            assert affs.spatial_shape == SHAPE
            assert tuple(affs.voxel_size) == ISBI_LIKE[0] and tuple(affs.offset) == OFFSET
            assert affs.attrs["resampled"]["model_grid"] == list(
                resampled_shape(SHAPE, *ISBI_LIKE))
            out[name, dtype] = affs.read(Box((0, 0, 0), SHAPE))
    # the reference: the whole raw resampled, one network pass, mapped back
    raw = open_volume(tmp_path / "whole-uint8.zarr", "raw").read(Box((0, 0, 0), SHAPE))
    model_raw = _whole(raw, *ISBI_LIKE)
    model_shape = model_raw.shape
    reference = affinities_back(whole_volume_oracle(model, model_raw),
                                Box((0, 0, 0), model_shape), Box((0, 0, 0), SHAPE),
                                [d / m for d, m in zip(*ISBI_LIKE, strict=True)],
                                model_shape)
    for name in ("whole", "a", "b"):
        assert np.abs(out[name, "float32"] - reference).max() <= 1e-5
        assert np.array_equal(out[name, "uint8"], out["whole", "uint8"])
    assert out["whole", "float32"].std() > 0.01


def test_resample_needs_both_voxel_sizes_and_skips_when_equal(tmp_path: Path,
                                                              caplog: Any) -> None:
    from affinity_dist.stages.predict import prepare_predict

    bare = _model(tmp_path / "bare.pt", None)
    with pytest.raises(ConfigError, match="records no voxel size"):
        prepare_predict(_dataset(tmp_path / "a.zarr"), model=bare, resample=True)
    _model(tmp_path / "m.pt")
    same = prepare_predict(_dataset(tmp_path / "c.zarr", (10, 10, 10)),
                           model=tmp_path / "m.pt", resample=True)
    assert same.resample is None and "resample" not in same.state.config
    plan = prepare_predict(_dataset(tmp_path / "d.zarr"), model=tmp_path / "m.pt",
                           resample=True)
    assert plan.resample == ISBI_LIKE and plan.state.config["resample"]
    assert all(t % s == 0 for t, s in zip(plan.tile, TINY.step, strict=True))


def test_cli_resample_without_a_voxel_size_exits_2(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "x.zarr")
    before = sorted(p.name for p in data.iterdir())
    result = run_cli("predict", "--input", data, "--model", _model(tmp_path / "b.pt", None),
                     "--resample", "--scheduler", "synchronous")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resample" in lines[0], result.stderr
    assert sorted(p.name for p in data.iterdir()) == before
