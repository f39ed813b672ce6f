"""webKnossos metadata: layers, x/y/z order, voxel size, mags of the pyramid, segment
ids, paths of existing arrays; the CLI writes it and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from affinity_dist.geometry import Box
from affinity_dist.stages.pyramid import pyramid
from affinity_dist.storage import create_volume, open_volume, staged_dataset
from affinity_dist.viewers.webknossos import (
    FILENAME,
    webknossos_properties,
    write_webknossos_metadata,
)

from .helpers import run_cli

SHAPE = (12, 40, 52)  # z, y, x
VOXEL = (40.0, 4.0, 4.0)
OFFSET = (80.0, 8.0, 12.0)  # nm: 2, 2, 3 voxels


def make_dataset(path: Path, affinity_dtype: str = "uint8") -> dict[str, np.ndarray]:
    """raw, labels, segmentation (ids up to ~2^40) and 3-channel affinities with offset."""
    rng = np.random.default_rng(1)
    data = {
        "raw": rng.integers(0, 256, SHAPE).astype(np.uint8),
        "labels": rng.integers(0, 50, SHAPE).astype(np.uint64),
        "segmentation": rng.integers(0, 2**40, SHAPE).astype(np.uint64),
        "affinities": (rng.random((3, *SHAPE)) * (255 if affinity_dtype == "uint8" else 1)
                       ).astype(affinity_dtype),
    }
    with staged_dataset(path) as group:
        for name, array in data.items():
            create_volume(group, name, shape=SHAPE, dtype=array.dtype, voxel_size=VOXEL,
                          offset=OFFSET, chunks=(4, 16, 16),
                          channels=3 if array.ndim == 4 else None
                          ).write(Box((0, 0, 0), SHAPE), array)
    return data


def layer(props: dict[str, Any], name: str) -> dict[str, Any]:
    return next(x for x in props["dataLayers"] if x["name"] == name)


def test_properties_match_the_dataset_and_its_pyramid(tmp_path: Path) -> None:
    path = tmp_path / "wk.zarr"
    data = make_dataset(path)
    levels = pyramid(path, levels=3, block=(8, 32, 32), progress=False)
    props = webknossos_properties(path)
    assert props["version"] == 1 and props["id"]["name"] == "wk"
    assert props["scale"] == {"factor": [4.0, 4.0, 40.0], "unit": "nanometer"}  # x, y, z
    assert [x["name"] for x in props["dataLayers"]] == ["raw", "affinities", "labels",
                                                         "segmentation"]
    for item in props["dataLayers"]:
        assert item["dataFormat"] == "zarr3"
        assert item["boundingBox"] == {"topLeft": [3, 2, 2], "width": 52, "height": 40,
                                       "depth": 12}
        # Pyramid factors (1,2,2) per level along z,y,x -> mags [x, y, z].
        assert [m["mag"] for m in item["mags"]] == [[1, 1, 1], [2, 2, 1], [4, 4, 1],
                                                    [8, 8, 1]]
        assert [m["path"] for m in item["mags"]] == [f"./{item['name']}"] + [
            f"./{p}" for p in levels[item["name"]]]
        for mag in item["mags"]:
            array = open_volume(path, mag["path"][2:])  # the path is an existing array
            assert array.voxel_size == tuple(
                v * f for v, f in zip(VOXEL, mag["mag"][::-1], strict=True))
            order = mag["axisOrder"]
            assert [array.axis_names[order[a]] for a in ("x", "y", "z")] == ["x", "y", "z"]
            assert (path / mag["path"] / "zarr.json").is_file()
    assert layer(props, "raw")["category"] == "color"
    assert layer(props, "raw")["elementClass"] == "uint8"
    aff = layer(props, "affinities")
    assert aff["category"] == "color" and aff["numChannels"] == 3
    assert all(m["axisOrder"] == {"c": 0, "z": 1, "y": 2, "x": 3} for m in aff["mags"])
    for name in ("labels", "segmentation"):
        seg = layer(props, name)
        assert seg["category"] == "segmentation" and seg["elementClass"] == "uint64"
        assert seg["largestSegmentId"] == int(data[name].max())
    assert props["defaultViewConfiguration"]["position"] == [3 + 26, 2 + 20, 2 + 6]


def test_float_affinities_become_one_layer_per_channel(tmp_path: Path) -> None:
    path = tmp_path / "f.zarr"
    make_dataset(path, affinity_dtype="float32")
    props = webknossos_properties(path)
    channels = [x for x in props["dataLayers"] if x["name"].startswith("affinities")]
    assert [x["name"] for x in channels] == ["affinities_c0", "affinities_c1", "affinities_c2"]
    for c, item in enumerate(channels):
        assert item["elementClass"] == "float" and item["numChannels"] == 1
        assert [m["channelIndex"] for m in item["mags"]] == [c]
        assert item["mags"][0]["path"] == "./affinities"


def test_anisotropic_mismatch_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "m.zarr"
    with staged_dataset(path) as group:
        create_volume(group, "raw", shape=(4, 8, 8), dtype=np.uint8, voxel_size=(40, 4, 4))
        create_volume(group, "labels", shape=(4, 8, 8), dtype=np.uint64, voxel_size=(40, 6, 6))
        create_volume(group, "segmentation", shape=(2, 4, 4), dtype=np.uint64,
                      voxel_size=(80, 8, 8))
    props = webknossos_properties(path)
    assert [x["name"] for x in props["dataLayers"]] == ["raw", "segmentation"]
    seg = layer(props, "segmentation")
    assert seg["mags"][0]["mag"] == [2, 2, 2]
    assert seg["boundingBox"] == {"topLeft": [0, 0, 0], "width": 8, "height": 8, "depth": 4}


def test_cli_writes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.zarr"
    make_dataset(path)
    result = run_cli("view", path, "--webknossos")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(path / FILENAME)
    written = json.loads((path / FILENAME).read_text())
    assert written == webknossos_properties(path)
    assert write_webknossos_metadata(path) == path / FILENAME  # replaces it


@pytest.mark.parametrize("arrays", [{}, {"raw": (3, 4, 4, 4)}])
def test_cli_bad_input_writes_nothing(tmp_path: Path, arrays: dict[str, tuple[int, ...]]
                                      ) -> None:
    path = tmp_path / "bad.zarr"
    with staged_dataset(path) as group:
        create_volume(group, "other", shape=(4, 4, 4), dtype=np.uint8)
        for name, shape in arrays.items():
            create_volume(group, name, shape=shape[1:], channels=shape[0], dtype=np.uint8)
    for target in (path, tmp_path / "missing.zarr"):
        result = run_cli("view", target, "--webknossos")
        assert result.returncode == 2, result.stderr
        line, = result.stderr.strip().splitlines()
        assert "expected" in line and "Traceback" not in result.stderr
        assert not (target / FILENAME).exists()
