"""The bad-input catalogue (integrity issue): every command refuses bad input the same way.

Each case runs the real command line on a copy of a small dataset and asserts the exit
status, exactly one line on stderr (with the words that name what was wrong) and an
unchanged destination: no file added, removed or rewritten.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import affinity_dist as ad
from affinity_dist.geometry import Box
from affinity_dist.storage import create_volume, open_dataset, open_volume

from .helpers import run_cli, tiny_model

SHAPE, CHUNKS = (16, 32, 32), (8, 16, 16)
SYNC = ["--scheduler", "synchronous"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``d.zarr`` (raw, labels, affinities, segmentation), a tiny model, a training HDF5."""
    root = tmp_path_factory.mktemp("bad_inputs")
    ad.sample(root / "d.zarr", shape=SHAPE, chunks=CHUNKS, progress=False)
    tiny_model(root / "tiny.pt")
    ad.predict(root / "d.zarr", model=str(root / "tiny.pt"), block=CHUNKS, progress=False)
    ad.segment(root / "d.zarr", block=CHUNKS, progress=False)
    raw = open_volume(root / "d.zarr", "raw").read(Box((0, 0, 0), SHAPE))
    labels = open_volume(root / "d.zarr", "labels").read(Box((0, 0, 0), SHAPE))
    with h5py.File(root / "train.h5", "w") as f:
        f["volumes/raw"] = raw
        f["volumes/labels/neuron_ids"] = labels
    return root


@dataclass(frozen=True)
class Case:
    args: list[str]  # {d}: the dataset, {t}: the folder, {m}: the tiny model
    message: str  # words the one stderr line holds
    setup: Callable[[Path], None] | None = None  # damage the copy first
    code: int = 2
    watch: str = "."  # the destination that must stay as it was (relative to the folder)


def _replace(name: str, data: np.ndarray, channels: bool = False) -> Callable[[Path], None]:
    """Replace array ``name`` of d.zarr by ``data``."""
    def setup(folder: Path) -> None:
        group = open_dataset(folder / "d.zarr", "r+")
        spatial = data.shape[-3:]
        create_volume(group, name, shape=spatial, channels=data.shape[0] if channels else None,
                      dtype=data.dtype, chunks=CHUNKS, overwrite=True).write(
            Box((0, 0, 0), spatial), data)
    return setup


def _affs(value: float, dtype: str = "float32") -> Callable[[Path], None]:
    data = np.full((3, *SHAPE), 0.5, dtype)
    data[1, 9, 10, 11] = value
    return _replace("affinities", data, channels=True)


def _raw(value: float | None, dtype: str = "float32") -> Callable[[Path], None]:
    data = np.full(SHAPE, 0.5, dtype)
    if value is not None:
        data[3, 4, 5] = value
    return _replace("raw", data)


def _labels(dtype: str, value: int = -5) -> Callable[[Path], None]:
    data = np.ones(SHAPE, dtype)
    data[2, 3, 4] = value
    return _replace("labels", data)


def _h5(raw_dtype: str = "uint8", raw_value: float | None = None, label: int = 1
        ) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        raw = np.full((96, 80, 80), 100, raw_dtype)  # room for the default training crop
        if raw_value is not None:
            raw[:, 40, 40] = raw_value  # every crop sees it
        labels = np.ones(raw.shape, np.int64)
        labels[48:] = 2
        labels[:, 40, 41] = label
        with h5py.File(folder / "bad.h5", "w") as f:
            f["volumes/raw"] = raw
            f["volumes/labels/neuron_ids"] = labels
        (folder / "v.toml").write_text("[validation]\naxis = 0\nstart = 48\n")
    return setup


def _write(name: str, text: str) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        (folder / name).write_text(text)
    return setup


def _workflow(**segment: object) -> Callable[[Path], None]:
    options = "\n".join(f"{k} = {json.dumps(v)}" for k, v in segment.items())
    return _write("wf.toml", f'stages = ["predict", "segment"]\n[input]\ndataset = "d.zarr"\n'
                             f'[predict]\nmodel = "tiny.pt"\n[segment]\n{options}\n'
                             '[cluster]\nscheduler = "synchronous"\n')


PREDICT = ["predict", "--input", "{d}", "--model", "{m}", "--overwrite", *SYNC]
SEGMENT = ["segment", "--input", "{d}", "--overwrite", *SYNC]
EVALUATE = ["evaluate", "--input", "{d}", "--overwrite", *SYNC]
TRAIN = ["train", "--data", "{t}/bad.h5", "--out", "{t}/run", "--config", "{t}/v.toml",
         "--iterations", "2"]

CASES: dict[str, Case] = {
    # sample
    "sample shape zero": Case(["sample", "{t}/n.zarr", "--shape", "0", "8", "8"], "--shape"),
    "sample chunks negative": Case(["sample", "{t}/n.zarr", "--chunks", "-1", "8", "8"],
                                   "--chunks"),
    "sample exists": Case(["sample", "{d}"], "--overwrite"),
    "sample beyond free space": Case(["sample", "{t}/n.zarr", "--shape", "100000", "100000",
                                      "100000"], "free"),
    "sample voxel zero": Case(["sample", "{t}/n.zarr", "--voxel-size", "0", "1", "1"],
                              "--voxel-size"),
    # ingest
    "ingest missing source": Case(["ingest", "{t}/nope.h5", "{t}/n.zarr"], "nope.h5"),
    "ingest missing key": Case(["ingest", "{t}/train.h5", "{t}/n.zarr", "--raw-key", "nope"],
                               "nope"),
    "ingest destination exists": Case(["ingest", "{t}/train.h5", "{d}"], "--overwrite"),
    "ingest truncated hdf5": Case(["ingest", "{t}/cut.h5", "{t}/n.zarr"], "cut.h5",
                                  _write("cut.h5", "\x89HDF\r\n\x1a\n truncated")),
    # predict
    "predict missing dataset": Case(["predict", "--input", "{t}/nope.zarr"], "nope.zarr"),
    "predict missing model": Case([*PREDICT[:4], "{t}/nope.pt", *PREDICT[5:]], "nope.pt"),
    "predict garbage model": Case([*PREDICT[:4], "{t}/bad.pt", *PREDICT[5:]], "bad.pt",
                                  _write("bad.pt", "not a checkpoint")),
    "predict uint16 raw": Case(PREDICT, "uint16", _raw(None, "uint16")),
    "predict int8 raw": Case(PREDICT, "int8", _raw(None, "int8")),
    "predict NaN raw": Case(PREDICT, "raw: block 0 voxel", _raw(float("nan"))),
    "predict inf raw": Case(PREDICT, "holds inf", _raw(float("inf"))),
    "predict -inf raw": Case(PREDICT, "holds -inf", _raw(float("-inf"))),
    "predict block zero": Case([*PREDICT, "--block", "0", "16", "16"], "--block"),
    "predict block unaligned": Case([*PREDICT, "--block", "12", "16", "16"], "multiple"),
    "predict device cuda": Case([*PREDICT, "--device", "cuda"], "--device"),
    "predict bad precision": Case([*PREDICT, "--precision", "fp8"], "--precision"),
    "predict exists": Case(PREDICT[:5] + SYNC, "--overwrite"),
    "predict workers zero": Case([*PREDICT, "--workers", "0"], "--workers"),
    "predict no raw": Case(PREDICT, "'raw'", lambda f: shutil.rmtree(f / "d.zarr" / "raw")),
    # segment
    "segment missing dataset": Case(["segment", "--input", "{t}/nope.zarr"], "nope.zarr"),
    "segment NaN": Case(SEGMENT, "holds nan, expected values in [0, 1]", _affs(float("nan"))),
    "segment inf": Case(SEGMENT, "holds inf", _affs(float("inf"))),
    "segment above one": Case(SEGMENT, "holds 1.5", _affs(1.5)),
    "segment negative": Case(SEGMENT, "holds -0.25", _affs(-0.25)),
    "segment cc NaN": Case([*SEGMENT, "--method", "cc"], "holds nan", _affs(float("nan"))),
    "segment cc above one": Case([*SEGMENT, "--method", "cc"], "holds 2.0", _affs(2.0)),
    "segment int16 affinities": Case(SEGMENT, "int16", _affs(0, "int16")),
    "segment threshold high": Case([*SEGMENT, "--threshold", "1.5"], "--threshold"),
    "segment threshold negative": Case([*SEGMENT, "--threshold", "-0.1"], "--threshold"),
    "segment method bogus": Case([*SEGMENT, "--method", "bogus"], "--method"),
    "segment min size negative": Case([*SEGMENT, "--min-size", "-1"], "--min-size"),
    "segment block zero": Case([*SEGMENT, "--block", "0", "16", "16"], "--block"),
    "segment block unaligned": Case([*SEGMENT, "--block", "8", "12", "16"], "multiple"),
    "segment exists": Case(SEGMENT[:3] + SYNC, "--overwrite"),
    "segment no affinities": Case(SEGMENT, "'affinities'",
                                  lambda f: shutil.rmtree(f / "d.zarr" / "affinities")),
    # evaluate
    "evaluate missing dataset": Case(["evaluate", "--input", "{t}/nope.zarr"], "nope.zarr"),
    "evaluate negative labels": Case(EVALUATE, "ids >= 0", _labels("int64")),
    "evaluate float labels": Case(EVALUATE, "integer", _labels("float32", 1)),
    "evaluate missing truth": Case([*EVALUATE, "--truth", "{t}/nope.zarr"], "nope.zarr"),
    "evaluate missing array": Case([*EVALUATE, "--segmentation", "nope"], "nope"),
    "evaluate min truth negative": Case([*EVALUATE, "--min-truth-size", "-1"],
                                        "--min-truth-size"),
    "evaluate block zero": Case([*EVALUATE, "--block", "0", "16", "16"], "--block"),
    # train
    "train missing data": Case([*TRAIN[:2], "{t}/nope.h5", *TRAIN[3:]], "nope.h5", _h5()),
    "train uint16 raw": Case(TRAIN, "uint16", _h5("uint16")),
    "train NaN raw": Case(TRAIN, "holds nan", _h5("float32", float("nan"))),
    "train negative labels": Case(TRAIN, "ids >= 0", _h5(label=-3)),
    "train unknown config key": Case([*TRAIN[:6], "{t}/c.toml", *TRAIN[7:]], "bogus",
                                     _write("c.toml", "bogus = 1\n")),
    "train iterations zero": Case([*TRAIN[:-1], "0"], "--iterations", _h5()),
    "train unwritable run dir": Case([*TRAIN[:4], "{t}/bad.h5/run", *TRAIN[5:]], "bad.h5",
                                     _h5()),
    "train missing init": Case([*TRAIN, "--init", "{t}/nope.pt"], "nope.pt", _h5()),
    # run, info, verify, view
    "run missing workflow": Case(["run", "{t}/nope.toml"], "nope.toml"),
    "run threshold before predict": Case(["run", "{t}/wf.toml"], "threshold",
                                         _workflow(threshold=1.5)),
    "run unknown option": Case(["run", "{t}/wf.toml"], "bogus", _workflow(bogus=1)),
    "info missing": Case(["info", "{t}/nope.zarr"], "nope.zarr"),
    "info broken array metadata": Case(["info", "{d}"], "zarr.json",
                                       _write("d.zarr/raw/zarr.json", "{not json")),
    "verify broken array metadata": Case(["verify", "{d}", *SYNC], "zarr.json",
                                         _write("d.zarr/raw/zarr.json", "{not json")),
    "info array metadata without keys": Case(["info", "{d}"], "raw/zarr.json", _write(
        "d.zarr/raw/zarr.json", '{"zarr_format": 3, "node_type": "array"}')),
    "view broken array metadata": Case(["view", "{d}"],
                                       "zarr.json", _write("d.zarr/raw/zarr.json", "[1]")),
    "view webknossos broken metadata": Case(["view", "{d}", "--webknossos"], "zarr.json",
                                            _write("d.zarr/raw/zarr.json", "{not json")),
    "verify missing": Case(["verify", "{t}/nope.zarr", *SYNC], "nope.zarr"),
    "view timeout zero": Case(["view", "{d}", "--screenshot", "{t}/s.png", "--timeout", "0"],
                              "--timeout"),
}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_catalogue_is_large() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(base: Path, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    for item in ("d.zarr", "tiny.pt", "train.h5"):
        copy = shutil.copytree if (base / item).is_dir() else shutil.copy
        copy(base / item, tmp_path / item)
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    args = [a.format(d=tmp_path / "d.zarr", t=tmp_path, m=tmp_path / "tiny.pt")
            for a in case.args]
    result = run_cli("-q", *args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == case.code, (name, result.stderr[-2000:])
    assert len(lines) == 1, (name, result.stderr[-2000:])
    assert case.message in lines[0], (name, lines[0])
    assert _snapshot(tmp_path) == before, name  # nothing written, nothing left behind
