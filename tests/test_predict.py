"""predict: seamless blockwise inference, tiles, the CLI's bad inputs, a real cluster."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affinity_dist.errors import ConfigError, DataError, InputNotFoundError
from affinity_dist.geometry import Box, reflect_indices
from affinity_dist.nn.config import UNetConfig
from affinity_dist.stages.predict import (
    default_model,
    predict,
    prepare_predict,
    run_predict,
    to_uint8,
)
from affinity_dist.storage import create_volume, list_arrays, open_volume, staged_dataset

from .helpers import TINY, run_cli, tiny_model

torch = pytest.importorskip("torch")

SHAPE = (29, 45, 39)  # divisible by none of the block shapes below


def raw_dataset(path: Path, shape: tuple[int, ...] = SHAPE, dtype: Any = np.uint8,
                chunks: tuple[int, ...] = (8, 8, 8), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, shape).astype(dtype)
    if np.dtype(dtype).kind == "f":
        data /= 255
    with staged_dataset(path) as group:
        create_volume(group, "raw", shape=shape[-3:], dtype=dtype, chunks=chunks[-3:],
                      channels=shape[0] if len(shape) == 4 else None).write(
            Box((0, 0, 0), shape[-3:]), data)
    return path


def read_affinities(path: Path) -> np.ndarray:
    volume = open_volume(path, "affinities")
    return volume.read(Box((0, 0, 0), volume.spatial_shape))


def whole_volume_oracle(model_path: Path, raw: np.ndarray) -> np.ndarray:
    """One forward pass over the whole mirror-padded volume (fp32): the reference."""
    from affinity_dist.nn.checkpoint import load_checkpoint

    model, config, _ = load_checkpoint(model_path)
    model.eval()
    out_shape = config.valid_shapes(1, minimum_output=raw.shape)[0][1]
    before = [c // 2 for c in config.context]
    after = [o + c - b - n for o, c, b, n in zip(out_shape, config.context, before, raw.shape,
                                                 strict=True)]
    padded = np.pad(raw.astype(np.float32) / 255, list(zip(before, after, strict=True)),
                    mode="reflect")
    with torch.inference_mode():
        out = torch.sigmoid(model(torch.from_numpy(padded)[None, None]))[0].numpy()
    return out[:, :raw.shape[0], :raw.shape[1], :raw.shape[2]]


def test_reflect_indices_read_like_numpy_pad() -> None:
    for n in (1, 2, 5, 9):
        line = np.arange(n)
        pad = 23
        padded = np.pad(line, pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, int)
        for start in range(-pad, n):
            for stop in range(start, n + pad + 1):
                got = line[reflect_indices(start, stop, n)]
                assert got.tolist() == padded[start + pad:stop + pad].tolist()


def test_blockwise_equals_whole_volume_prediction(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    results = {}
    for name, block in (("whole", SHAPE), ("a", (16, 16, 24)), ("b", (8, 24, 16))):
        for dtype in ("float32", "uint8"):
            data = raw_dataset(tmp_path / f"{name}-{dtype}.zarr")
            predict(data, model=model, block=block, tile=(8, 12, 12), precision="fp32",
                    dtype=dtype, progress=False)
            results[name, dtype] = read_affinities(data)
    raw = open_volume(tmp_path / "whole-uint8.zarr", "raw").read(Box((0, 0, 0), SHAPE))
    oracle = whole_volume_oracle(model, raw)
    assert results["whole", "float32"].shape == (3, *SHAPE)
    for name in ("whole", "a", "b"):
        assert np.abs(results[name, "float32"] - oracle).max() <= 1e-5
        assert np.array_equal(results[name, "uint8"], results["whole", "uint8"])
        assert np.array_equal(results[name, "uint8"], to_uint8(results[name, "float32"]))
    # the map is not trivial: affinities vary over the volume
    assert results["whole", "float32"].std() > 0.01


def test_a_model_with_auxiliary_outputs_writes_its_nearest_three_seamlessly(
        tmp_path: Path) -> None:
    from dataclasses import replace

    config = replace(TINY, offsets=(*TINY.offsets, (-2, 0, 0), (0, 0, -3)), lsds=True)
    model = tiny_model(tmp_path / "aux.pt", config)
    results = {}
    for name, block in (("whole", SHAPE), ("a", (16, 16, 24))):
        data = raw_dataset(tmp_path / f"{name}.zarr")
        predict(data, model=model, block=block, tile=(8, 12, 12), precision="fp32",
                dtype="float32", progress=False)
        results[name] = read_affinities(data)
        assert open_volume(data, "affinities").attrs["offsets"] == [list(o) for o in
                                                                     TINY.offsets]
    raw = open_volume(tmp_path / "whole.zarr", "raw").read(Box((0, 0, 0), SHAPE))
    oracle = whole_volume_oracle(model, raw)  # all 3 + 2 + 10 channels
    assert oracle.shape[0] == 15 and results["whole"].shape == (3, *SHAPE)
    for affs in results.values():
        assert np.abs(affs - oracle[:3]).max() <= 1e-5


def test_default_tiles_follow_the_block_within_float_rounding(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    outs = []
    for block in ((8, 8, 8), (24, 32, 40)):
        data = raw_dataset(tmp_path / f"{block[0]}.zarr")
        plan = prepare_predict(data, model=model, block=block, precision="fp32",
                               dtype="float32")
        assert all(t <= b for t, b in zip(plan.tile, block, strict=True))
        run_predict(plan, progress=False)
        outs.append(read_affinities(data))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-5


def test_auto_precision_is_bf16_only_where_it_is_native(tmp_path: Path) -> None:
    from affinity_dist.nn.inference import cpu_has_native_bf16, resolve_precision

    avx2 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
    graviton = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"
    assert not cpu_has_native_bf16(avx2)
    assert cpu_has_native_bf16(sapphire) and cpu_has_native_bf16(graviton)
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    data = raw_dataset(tmp_path / "s.zarr", shape=(8, 16, 16))
    plan = prepare_predict(data, model=tiny_model(tmp_path / "tiny.pt"), device="cpu")
    assert plan.precision == expected  # the plan (and so the run key) holds the resolved one
    assert plan.state.config["precision"] == expected


def test_bf16_weights_give_what_bf16_autocast_gives(tmp_path: Path) -> None:
    from affinity_dist.nn.inference import cached_model, forward

    path = str(tiny_model(tmp_path / "tiny.pt"))
    cpu = torch.device("cpu")
    shape = TINY.valid_shapes(3)[-1][0]
    tiles = np.random.default_rng(0).integers(0, 256, (2, 1, *shape), dtype=np.uint8)
    bf16 = cached_model(path, cpu, "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    fp32 = cached_model(path, cpu, "fp32")
    assert next(fp32.parameters()).dtype == torch.float32
    direct = forward(bf16, tiles, cpu, "bf16")
    np.testing.assert_array_equal(direct, forward(fp32, tiles, cpu, "bf16"))  # autocast
    assert np.abs(direct - forward(fp32, tiles, cpu, "fp32")).max() < 0.05


def test_float_raw_and_bf16(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    as_uint8 = raw_dataset(tmp_path / "u8.zarr")
    as_float = raw_dataset(tmp_path / "f.zarr", dtype=np.float32)
    for data in (as_uint8, as_float):
        predict(data, model=model, block=(16, 16, 16), dtype="float32", progress=False)
    a, b = read_affinities(as_uint8), read_affinities(as_float)
    assert np.abs(a - b).max() <= 1e-5  # uint8/255 and the same floats are the same input
    oracle = whole_volume_oracle(model, open_volume(as_uint8, "raw").read(Box((0, 0, 0), SHAPE)))
    assert np.abs(a - oracle).max() < 0.05  # bf16 autocast stays close to fp32


def test_array_input_and_metadata(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    raw = np.random.default_rng(1).integers(0, 256, (20, 24, 28), dtype=np.uint8)
    out = predict(raw, model=model, out=tmp_path / "new.zarr", voxel_size=(40, 4, 4),
                  chunks=(8, 8, 8), progress=False)
    affs = open_volume(out, "affinities")
    assert affs.shape == (3, 20, 24, 28)
    assert affs.dtype == np.uint8
    assert affs.voxel_size == (40.0, 4.0, 4.0)
    assert affs.attrs["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert len(affs.attrs["model_sha256"]) == 64
    assert sorted(list_arrays(out)) == ["affinities", "raw"]


def test_long_range_offsets_are_training_targets_predict_writes_the_nearest(
        tmp_path: Path) -> None:
    config = UNetConfig(downsample_factors=((2, 2, 2),), num_fmaps=2,
                        offsets=((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-3, 0, 0), (0, -5, 0)))
    model = tiny_model(tmp_path / "lr.pt", config)
    data = raw_dataset(tmp_path / "lr.zarr")
    predict(data, model=model, progress=False)
    affinities = open_volume(data, "affinities")
    assert affinities.shape == (3, *SHAPE)
    assert affinities.attrs["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]


def test_long_range_writes_every_offset_seamlessly_when_asked(tmp_path: Path) -> None:
    """``--long-range``: the nearest three, then the model's longer offsets (not its
    LSDs), blockwise equal to the whole-volume network; segment reads the first three."""
    from dataclasses import replace

    import affinity_dist as ad

    offsets = (*TINY.offsets, (-2, 0, 0), (0, 0, -3))
    model = tiny_model(tmp_path / "aux.pt", replace(TINY, offsets=offsets, lsds=True))
    results = {}
    for name, block in (("whole", SHAPE), ("a", (16, 16, 24))):
        data = raw_dataset(tmp_path / f"{name}.zarr")
        predict(data, model=model, block=block, tile=(8, 12, 12), precision="fp32",
                dtype="float32", long_range=True, progress=False)
        results[name] = read_affinities(data)
        assert open_volume(data, "affinities").attrs["offsets"] == [list(o) for o in offsets]
    raw = open_volume(tmp_path / "whole.zarr", "raw").read(Box((0, 0, 0), SHAPE))
    oracle = whole_volume_oracle(model, raw)  # 5 affinities + 10 LSD channels
    for affs in results.values():
        assert affs.shape == (5, *SHAPE)
        assert np.abs(affs - oracle[:5]).max() <= 1e-5
    ad.segment(tmp_path / "a.zarr", block=(16, 16, 24), progress=False)
    segmentation = open_volume(tmp_path / "a.zarr", "segmentation")
    assert segmentation.read(Box((0, 0, 0), SHAPE)).all()  # every voxel assigned
    # the run key holds the choice: without it, the same dataset is another run
    plain = prepare_predict(tmp_path / "a.zarr", model=model, block=(16, 16, 24),
                            tile=(8, 12, 12), precision="fp32", dtype="float32",
                            overwrite=True)
    assert plain.offsets == TINY.offsets
    assert plain.state.key != prepare_predict(
        tmp_path / "a.zarr", model=model, block=(16, 16, 24), tile=(8, 12, 12),
        precision="fp32", dtype="float32", long_range=True, overwrite=True).state.key


def test_long_range_needs_a_model_with_long_range_offsets(tmp_path: Path) -> None:
    data = raw_dataset(tmp_path / "raw.zarr")
    model = tiny_model(tmp_path / "tiny.pt")
    result = run_cli("predict", "--input", data, "--model", model, "--long-range")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--long-range: got the model" in result.stderr
    assert "expected a model trained with long-range offsets" in result.stderr
    assert sorted(list_arrays(data)) == ["raw"]  # nothing written


def test_model_is_cached_per_process(tmp_path: Path) -> None:
    from affinity_dist.nn.inference import cached_model

    path = tiny_model(tmp_path / "tiny.pt")
    cpu = torch.device("cpu")
    assert cached_model(str(path), cpu) is cached_model(str(path), cpu)
    tiny_model(path, seed=1)  # a replaced checkpoint is loaded again
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cached_model(str(path), cpu) is not None


def test_shipped_model_predicts_fib25_boundaries(tmp_path: Path, fib25: Path) -> None:
    """The default model on held-out real data (fib25 z >= 186): affinity F1 vs truth."""
    import h5py

    from affinity_dist.kernels.targets import affinity_targets

    with h5py.File(fib25) as f:
        raw = f["volumes/raw"][190:230, 100:180, 100:180]
        labels = f["volumes/labels/neuron_ids"][190:230, 100:180, 100:180].astype(np.uint64)
    out = predict(raw, out=tmp_path / "fib.zarr", chunks=(40, 80, 80), progress=False)
    affs = read_affinities(out).astype(np.float32) / 255
    target, mask = affinity_targets(labels)
    predicted, truth, valid = affs > 0.5, target > 0.5, mask > 0
    tp = np.sum(predicted & truth & valid)
    f1 = 2 * tp / (np.sum(predicted & valid) + np.sum(truth & valid))
    assert f1 > 0.85, f1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    outs = []
    for device in ("cpu", "cuda"):
        data = raw_dataset(tmp_path / f"{device}.zarr")
        predict(data, model=model, device=device, precision="fp32", dtype="float32",
                progress=False)
        outs.append(read_affinities(data))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-3


def _bad(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    model = tiny_model(tmp_path / "tiny.pt")
    data = tmp_path / "x.zarr"
    args = ["--model", str(model)]
    if kind == "uint16":
        raw_dataset(data, dtype=np.uint16)
    elif kind == "2d":
        with staged_dataset(data) as group:
            group.create_array("raw", shape=(30, 40), dtype=np.uint8, chunks=(8, 8))
    elif kind == "channels":
        raw_dataset(data)
        tiny_model(model, UNetConfig(downsample_factors=((2, 2, 2),), num_fmaps=2,
                                     in_channels=2))
    elif kind == "small-block":
        raw_dataset(data, chunks=(2, 2, 2))
        args += ["--block", "2", "2", "2"]
    elif kind == "missing-model":
        raw_dataset(data)
        args = ["--model", str(tmp_path / "nope.pt")]
    elif kind == "no-raw":
        with staged_dataset(data) as group:
            group.create_group("other")
    elif kind == "bad-tile":
        raw_dataset(data)
        args += ["--tile", "3", "8", "8"]
    return data, args


@pytest.mark.parametrize(("kind", "words"), [
    ("uint16", "expected uint8 or float"),
    ("2d", "expected 3D"),
    ("channels", "2 input channels, expected 1"),
    ("small-block", "output unit"),
    ("missing-model", "expected a checkpoint file"),
    ("no-raw", "'raw'"),
    ("bad-tile", "--tile"),
])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path: Path, kind: str,
                                                           words: str) -> None:
    data, args = _bad(tmp_path, kind)
    before = sorted(p.name for p in data.iterdir())
    result = run_cli("predict", "--input", data, "--scheduler", "synchronous", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert sorted(p.name for p in data.iterdir()) == before


def test_api_errors_are_typed(tmp_path: Path) -> None:
    data, _ = _bad(tmp_path, "uint16")
    with pytest.raises(DataError):
        prepare_predict(data, model=tmp_path / "tiny.pt")
    good = raw_dataset(tmp_path / "good.zarr")
    with pytest.raises(InputNotFoundError):
        prepare_predict(good, model=tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="--device"):
        prepare_predict(good, model=tmp_path / "tiny.pt", device="tpu")
    same = UNetConfig(downsample_factors=((2, 2, 2),), num_fmaps=2, padding="same")
    with pytest.raises(ConfigError, match="seamless"):
        prepare_predict(good, model=tiny_model(tmp_path / "same.pt", same))
    assert default_model().is_file()


def test_cli_predicts_then_segments(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    data = raw_dataset(tmp_path / "x.zarr")
    result = run_cli("predict", "--input", data, "--model", model, "--block", "16", "16", "16",
                     "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert "Mvox/s" in result.stdout
    result = run_cli("segment", "--input", data, "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert open_volume(data, "segmentation").shape == SHAPE


@pytest.fixture(scope="module")
def local_cluster() -> Any:
    distributed = pytest.importorskip("distributed")
    with (distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None) as cluster,
          distributed.Client(cluster) as client):
        yield client


def test_on_a_local_cluster_with_two_processes(tmp_path: Path, local_cluster: Any) -> None:
    model = tiny_model(tmp_path / "tiny.pt")
    outs = []
    for name, client in (("threads", None), ("cluster", local_cluster)):
        data = raw_dataset(tmp_path / f"{name}.zarr")
        predict(data, model=model, block=(8, 16, 16), tile=(8, 8, 8), client=client,
                progress=False)
        outs.append(read_affinities(data).astype(np.int16))
    # fp32 convolutions sum in an order that depends on the torch thread count (threads:
    # several per task, cluster: one): at most one uint8 step apart where a value rounds
    assert np.abs(outs[0] - outs[1]).max() <= 1
    threads = local_cluster.run(torch.get_num_threads)
    assert set(threads.values()) == {1}  # one torch thread per single-threaded worker
    assert set(local_cluster.run(_malloc_tuned).values()) == {True}


def _malloc_tuned() -> bool:
    """Did this worker tune glibc's malloc (memory.keep_freed_memory) for its blocks?"""
    import sys

    from affinity_dist.runtime import memory

    return bool(memory._MALLOC_TUNED) or not sys.platform.startswith("linux")


def _finished(client: Any, prefix: str) -> int:
    def count(dask_scheduler: Any) -> int:
        return sum(ts.state == "memory" and str(ts.key).startswith(prefix)
                   for ts in dask_scheduler.tasks.values())
    return int(client.run_on_scheduler(count))


def test_a_worker_killed_mid_prediction(tmp_path: Path, local_cluster: Any) -> None:
    model = tiny_model(tmp_path / "tiny.pt", UNetConfig(downsample_factors=((2, 2, 2),),
                                                          num_fmaps=16, fmap_inc_factor=2))
    shape = (32, 48, 48)
    undisturbed = raw_dataset(tmp_path / "calm.zarr", shape)
    disturbed = raw_dataset(tmp_path / "kill.zarr", shape)
    options = {"model": model, "block": (8, 8, 8), "tile": (8, 8, 8), "progress": False}
    predict(undisturbed, **options)
    pids = local_cluster.run(os.getpid)
    plan = prepare_predict(disturbed, model=model, block=(8, 8, 8), tile=(8, 8, 8),
                           local=False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_predict(plan, client=local_cluster, progress=False)
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while _finished(local_cluster, "predict") < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    done_at_kill = _finished(local_cluster, "predict")
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    thread.join(timeout=300)
    assert not errors, errors
    assert done_at_kill < plan.grid.num_blocks  # the kill landed mid-run
    killed = next(iter(pids))
    deadline = time.monotonic() + 60  # the nanny restarts it under a new address; until
    while time.monotonic() < deadline:  # the scheduler drops the old one, a broadcast fails
        workers = local_cluster.scheduler_info()["workers"]
        if len(workers) == 2 and killed not in workers:
            break
        time.sleep(0.1)
    assert set(local_cluster.run(os.getpid).values()) != set(pids.values())  # restarted
    assert np.array_equal(read_affinities(undisturbed), read_affinities(disturbed))
