"""view: neuroglancer layers from a dataset, the server, a headless-Chromium screenshot
of the segmentation, and one-line errors for bad input."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import affinity_dist as ad
from affinity_dist.geometry import Box
from affinity_dist.kernels.targets import affinity_targets
from affinity_dist.storage import create_volume, open_dataset, open_volume, staged_dataset
from affinity_dist.viewers.neuroglancer import AFFINITY_SHADER, add_layers, viewable_layers

from .helpers import REPO, run_cli

SHAPE = (16, 128, 128)
VOXEL = (40.0, 10.0, 10.0)  # anisotropic, z coarsest


def segmented_dataset(path: Path, *, sharded: bool = False) -> Path:
    """A synthetic sample with affinities derived from its labels (uint8, as predict
    writes them), segmented blockwise: raw, labels, affinities, fragments, segmentation.
    ``sharded``: every array in shards of 16x64x64 holding 16x32x32 chunks."""
    chunks, shards = ((16, 32, 32), "block") if sharded else ((16, 64, 64), "none")
    ad.sample(path, shape=SHAPE, seed=3, voxel_size=VOXEL, chunks=chunks, shards=shards,
              progress=False)
    labels = open_volume(path, "labels")
    target, _ = affinity_targets(labels.read(Box((0, 0, 0), SHAPE)))
    group = open_dataset(path, "r+")
    create_volume(group, "affinities", shape=SHAPE, channels=3, dtype=np.uint8,
                  voxel_size=VOXEL, chunks=chunks, shards=(16, 64, 64) if sharded else None
                  ).store((target * 255).astype(np.uint8))
    ad.segment(path, block=(16, 64, 64), shards=shards, progress=False)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return segmented_dataset(tmp_path_factory.mktemp("view") / "x.zarr")


def nm(space: Any) -> list[float]:
    """Scales of a neuroglancer coordinate space (stored in metres) in nm."""
    assert all(u == "m" for u, n in zip(space.units, space.names, strict=True)
               if not n.endswith("^"))
    return [round(s * 1e9, 6) if u == "m" else float(s)
            for s, u in zip(space.scales, space.units, strict=True)]


def test_layers_and_state_without_a_browser(dataset: Path) -> None:
    import neuroglancer
    from neuroglancer.local_volume import MeshesNotSupportedForVolume

    layers = viewable_layers(dataset)
    assert [(lay.name, lay.kind, lay.visible) for lay in layers] == [
        ("raw", "image", True), ("affinities", "rgb", False), ("labels", "segmentation", False),
        ("fragments", "segmentation", False), ("segmentation", "segmentation", True)]
    state = neuroglancer.ViewerState()
    add_layers(state, layers, fit_pixels=640)
    assert list(state.dimensions.names) == ["x", "y", "z"]
    assert nm(state.dimensions) == [10.0, 10.0, 40.0]
    assert list(state.position) == [64.0, 64.0, 8.0]  # the centre, in x, y, z voxels
    assert state.cross_section_scale == pytest.approx(128 / 640)
    assert [layer.name for layer in state.layers] == [lay.name for lay in layers]
    assert [layer.visible is not False for layer in state.layers] == [
        lay.visible for lay in layers]
    types = {layer.name: layer.layer.type for layer in state.layers}
    assert types == {"raw": "image", "affinities": "image", "labels": "segmentation",
                     "fragments": "segmentation", "segmentation": "segmentation"}
    aff = state.layers["affinities"].layer
    assert aff.shader == AFFINITY_SHADER
    assert all(f"getDataValue({c})" in aff.shader for c in range(3))
    aff_volume = aff.source[0].url
    assert list(aff_volume.dimensions.names) == ["c^", "z", "y", "x"]
    assert list(aff_volume.dimensions.units) == ["", "m", "m", "m"]
    assert aff_volume.dimensions.scales[0] == 1.0 and nm(aff_volume.dimensions)[1:] == [*VOXEL]
    seg_volume = state.layers["segmentation"].layer.source[0].url
    assert list(seg_volume.dimensions.names) == ["z", "y", "x"]
    assert nm(seg_volume.dimensions) == list(VOXEL)
    assert seg_volume.volume_type == "segmentation" and seg_volume.data_type == "uint64"
    # Served lazily from Zarr: a request returns exactly that region of the array.
    start, stop = np.array([3, 10, 70]), np.array([9, 50, 128])
    data, _ = seg_volume.get_encoded_subvolume("npz", start, stop, "1,1,1")
    served = np.load(io.BytesIO(zlib.decompress(data)))
    expected = open_volume(dataset, "segmentation").read(Box(tuple(start), tuple(stop)))
    assert np.array_equal(served, expected)
    with pytest.raises(MeshesNotSupportedForVolume):
        seg_volume.get_object_mesh(int(expected.max()))


def test_offset_in_voxels(tmp_path: Path) -> None:
    import neuroglancer

    with staged_dataset(tmp_path / "o.zarr") as group:
        create_volume(group, "raw", shape=(4, 8, 8), dtype=np.uint8, voxel_size=(40, 4, 4),
                      offset=(400, 40, 80), chunks=(4, 8, 8))
    state = neuroglancer.ViewerState()
    add_layers(state, viewable_layers(tmp_path / "o.zarr"))
    volume = state.layers["raw"].layer.source[0].url
    assert list(volume.voxel_offset) == [10, 10, 20]
    assert list(state.position) == [24.0, 14.0, 12.0]  # x, y, z centre in 4, 4, 40 nm


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_server_serves_the_viewer_until_interrupted(dataset: Path, stop: int) -> None:
    # started with SIGINT ignored, as a non-interactive shell starts background jobs:
    # the viewer still stops on Ctrl-C (and on SIGTERM)
    command = f'trap "" INT; exec "{sys.executable}" -m affinity_dist view "{dataset}"'
    proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        with urllib.request.urlopen(url, timeout=60) as reply:
            assert reply.status == 200
            assert "neuroglancer" in reply.read().decode().lower()
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def needs_browser() -> None:
    """Skip, saying why, where Chromium or chromedriver is not installed."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("Chromium and chromedriver are not installed (/usr/bin/chromium, "
                    "/usr/bin/chromedriver): run .ci/install_browser.sh")


def saturated_hues(image: np.ndarray) -> tuple[float, int]:
    """Fraction of strongly coloured pixels and the number of 10-degree hue bins holding
    at least 0.5 % of the image (grey raw has neither)."""
    hsv = np.asarray(Image.fromarray(image[..., :3]).convert("HSV")).reshape(-1, 3)
    coloured = hsv[(hsv[:, 1] > 80) & (hsv[:, 2] > 60)]
    bins = np.bincount((coloured[:, 0].astype(int) * 36) // 256, minlength=36)
    return len(coloured) / len(hsv), int(np.sum(bins > 0.005 * len(hsv)))


@pytest.mark.slow
def test_screenshot_shows_the_segmentation(dataset: Path, tmp_path: Path) -> None:
    needs_browser()
    png = tmp_path / "view.png"
    result = run_cli("view", dataset, "--screenshot", png, "--size", "480", "400")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0].startswith("http://127.0.0.1:") and lines[-1] == str(png)
    image = np.asarray(Image.open(png))
    assert image.shape[:2] == (400, 480)
    fraction, hues = saturated_hues(image)
    # The segmentation layer covers the middle 90 % of the shorter side, in many colours.
    assert fraction > 0.4, fraction
    assert hues >= 6, hues
    # Without the segmentation (raw only) nothing is coloured: the check can fail.
    raw_only = tmp_path / "raw.zarr"
    with staged_dataset(raw_only) as group:
        raw = open_volume(dataset, "raw")
        create_volume(group, "raw", shape=SHAPE, dtype=np.uint8, voxel_size=VOXEL,
                      chunks=(16, 64, 64)).store(raw.array[...])
    result = run_cli("view", raw_only, "--screenshot", tmp_path / "raw.png",
                     "--size", "480", "400")
    assert result.returncode == 0, result.stderr
    grey = np.asarray(Image.open(tmp_path / "raw.png"))
    assert saturated_hues(grey)[0] < 0.01


def test_a_sharded_dataset_has_the_same_layers_and_webknossos_metadata(
        dataset: Path, tmp_path: Path) -> None:
    from affinity_dist.viewers.webknossos import webknossos_properties

    sharded = segmented_dataset(tmp_path / f"{dataset.stem}.zarr", sharded=True)
    assert [(la.name, la.kind, la.visible) for la in viewable_layers(sharded)] == [
        (la.name, la.kind, la.visible) for la in viewable_layers(dataset)]
    assert webknossos_properties(sharded) == webknossos_properties(dataset)


@pytest.mark.slow
def test_a_sharded_dataset_looks_the_same(dataset: Path, tmp_path: Path) -> None:
    """Zarr v3 shards (every array: one file per 16x64x64 block of 16x32x32 chunks) render
    as the one-file-per-chunk dataset does, pixel for pixel."""
    needs_browser()
    sharded = segmented_dataset(tmp_path / "sharded.zarr", sharded=True)
    for name in ("raw", "labels", "affinities", "fragments", "segmentation"):
        assert open_volume(sharded, name).shards is not None, name
    images = []
    for path in (dataset, sharded):
        png = tmp_path / f"{path.stem}.png"
        result = run_cli("view", path, "--screenshot", png, "--size", "480", "400")
        assert result.returncode == 0, result.stderr
        images.append(np.asarray(Image.open(png)))
    assert saturated_hues(images[1])[0] > 0.4
    assert np.array_equal(images[0], images[1])


@pytest.mark.slow
def test_screenshot_shows_affinities_as_rgb(dataset: Path, tmp_path: Path) -> None:
    needs_browser()
    only = tmp_path / "aff.zarr"
    with staged_dataset(only) as group:
        aff = open_volume(dataset, "affinities")
        create_volume(group, "affinities", shape=SHAPE, channels=3, dtype=np.uint8,
                      voxel_size=VOXEL, chunks=(16, 64, 64)).store(aff.array[...])
    png = tmp_path / "aff.png"
    result = run_cli("view", only, "--screenshot", png, "--size", "400", "400")
    assert result.returncode == 0, result.stderr
    rgb = np.asarray(Image.open(png))[..., :3].reshape(-1, 3)
    # Inside cells all three affinities are 255 (white); at a boundary some channel is 0.
    white = np.all(rgb == 255, axis=1).mean()
    pure = {tuple(c) for c in rgb[np.all((rgb == 0) | (rgb == 255), axis=1)]}
    assert white > 0.4, white
    assert len(pure - {(0, 0, 0), (255, 255, 255)}) >= 3, pure


@pytest.mark.slow
def test_screenshot_timeout_exits_1(dataset: Path, tmp_path: Path) -> None:
    needs_browser()
    result = run_cli("view", dataset, "--screenshot", tmp_path / "late.png",
                     "--timeout", "0.001")
    assert result.returncode == 1, result.stderr
    line, = result.stderr.strip().splitlines()
    assert "screenshot" in line and "timeout" in line
    assert not (tmp_path / "late.png").exists()


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path: Path, dataset: Path) -> None:
    one_line_error(run_cli("view", tmp_path / "missing.zarr"), "dataset", "missing.zarr")
    with staged_dataset(tmp_path / "empty.zarr") as group:
        create_volume(group, "other", shape=(4, 4, 4), dtype=np.uint8)
    one_line_error(run_cli("view", tmp_path / "empty.zarr"), "dataset", "raw", "segmentation")
    one_line_error(run_cli("view", dataset, "--screenshot", tmp_path / "shot.jpg"),
                   "--screenshot", ".png")
    one_line_error(run_cli("view", dataset, "--screenshot", tmp_path / "no" / "shot.png"),
                   "--screenshot", "parent directory")
    one_line_error(run_cli("view", dataset, "--port", "70000"), "--port", "70000")
    one_line_error(run_cli("view", dataset, "--screenshot", tmp_path / "s.png", "--size",
                           "0", "10"), "--size")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*/*.png"))


def test_missing_browser_exits_2(tmp_path: Path, dataset: Path) -> None:
    # A PATH holding only this Python: no chromium, no chromedriver.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir)}
    result = subprocess.run([sys.executable, "-m", "affinity_dist", "view", str(dataset),
                             "--screenshot", str(tmp_path / "s.png")], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=300, check=False)
    one_line_error(result, "--screenshot", "chromium", "chromedriver")
    assert not (tmp_path / "s.png").exists()
