"""Stage options: one validated object per stage, whichever door a value comes in by.

A workflow file with a bad value for any option of any stage exits 2 with one line naming
``section.key`` before any cluster starts (``distributed`` is never imported) and
writes nothing; the CLI and the API refuse the same values with the same checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import affinity_dist as ad
from affinity_dist.cli.args import build_parser
from affinity_dist.errors import ConfigError, InputNotFoundError
from affinity_dist.options import (
    EvaluateOptions,
    IngestOptions,
    PredictOptions,
    PyramidOptions,
    SampleOptions,
    SegmentOptions,
    StageOptions,
)

from .helpers import REPO

ALL = (SampleOptions, IngestOptions, PredictOptions, SegmentOptions, EvaluateOptions,
       PyramidOptions)

# (section, key, TOML value, words the one line must hold)
BAD = [
    ("input", "raw_key", '""', "input.raw_key = ''"),
    ("input", "labels_key", "5", "input.labels_key = 5, expected str"),
    ("input", "voxel_size", "[40, 0, 4]", "expected three positive numbers"),
    ("input", "voxel_size", "[40, 4]", "input.voxel_size"),
    ("input", "rescale", '"yes"', "input.rescale = 'yes', expected bool"),
    ("input", "chunks", "[0, 64, 64]", "input.chunks = [0, 64, 64], expected every value >= 1"),
    ("input", "chunks", "[64, 64]", "expected 3 values"),
    ("input", "chunk", "[64, 64, 64]", "unknown key input.chunk"),
    ("predict", "model", '"missing.pt"', "predict.model"),
    ("predict", "block", "[1, 2]", "predict.block = [1, 2], expected 3 values"),
    ("predict", "block", "[8.5, 8, 8]", "expected whole numbers"),
    ("predict", "tile", "[-1, 8, 8]", "predict.tile"),
    ("predict", "device", '"tpu"', "predict.device = 'tpu'"),
    ("predict", "precision", '"fp16"',
     "predict.precision = 'fp16', expected 'auto', 'bf16' or 'fp32'"),
    ("predict", "dtype", '"int8"', "predict.dtype"),
    ("predict", "batch", "0", "predict.batch = 0, expected an integer >= 1"),
    ("predict", "chunks", "[1, 2, 3, 4]", "predict.chunks"),
    ("segment", "threshold", "5.0", "segment.threshold = 5.0, expected a number in [0, 1]"),
    ("segment", "threshold", "-0.1", "segment.threshold = -0.1"),
    ("segment", "threshold", "nan", "segment.threshold = nan"),
    ("segment", "block", "[1, 2]", "segment.block = [1, 2]"),
    ("segment", "min_size", "-3", "segment.min_size = -3, expected an integer >= 0"),
    ("segment", "keep_fragments", "1", "segment.keep_fragments = 1, expected bool"),
    ("segment", "chunks", "[0, 1, 1]", "segment.chunks"),
    ("evaluate", "truth", '"missing.zarr"', "evaluate.truth"),
    ("evaluate", "segmentation", '""', "evaluate.segmentation"),
    ("evaluate", "labels", "3", "evaluate.labels = 3, expected str"),
    ("evaluate", "block", "[1, 2]", "evaluate.block"),
    ("evaluate", "min_truth_size", "-1", "evaluate.min_truth_size = -1"),
    ("evaluate", "top", "-1", "evaluate.top = -1"),
    ("evaluate", "boundary_tolerance", "-1.0", "evaluate.boundary_tolerance = -1.0"),
    ("evaluate", "boundary_tolerance", "inf", "evaluate.boundary_tolerance = inf"),
    ("evaluate", "preview", '"yes"', "evaluate.preview = 'yes', expected bool"),
    ("cluster", "workers", "0", "cluster.workers = 0"),
    ("cluster", "scheduler", "5", "cluster.scheduler = 5, expected str"),
]
# Values only the data can refuse: checked against the dataset before any cluster starts.
BAD_FOR_THE_DATA = [
    ("predict", "block", "[12, 16, 16]", "--block"),  # not a multiple of the 16^3 chunks
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("options") / "d.zarr"
    ad.sample(path, shape=(16, 16, 16), chunks=(16, 16, 16), progress=False)
    return path


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.parent.name != "cases"}


def _workflow(file: Path, section: str, key: str, value: str, *, source: bool) -> Path:
    head = ('output = "../out.zarr"\n[input]\nsource = "../src.h5"\n' if source
            else '[input]\ndataset = "../d.zarr"\n')
    body = {"input": "", "predict": "[predict]\n", "segment": "[segment]\n",
            "evaluate": "[evaluate]\n", "cluster": "[cluster]\n"}
    text = head if section == "input" else head + body[section]
    text += f"{key} = {value}\n"
    if section != "cluster":
        text += '[cluster]\nscheduler = "local"\nworkers = 1\n'
    file.write_text(text)
    return file


#: Runs ``affinity-dist run`` on each workflow file in turn, in one fresh interpreter (one
#: interpreter per case costs a minute on 2 cores), and reports per file: exit status,
#: stderr, and whether ``distributed`` (hence any cluster) had been imported by then.
_RUNNER = """
import contextlib, io, json, sys
from affinity_dist.cli import main
results = {}
for path in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", path])
    results[path] = {"rc": rc, "stderr": err.getvalue(),
                     "distributed": "distributed" in sys.modules}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def refused(dataset: Path) -> dict[str, tuple[dict[str, object], dict[str, int], dict[str, int]]]:
    """Every case of BAD + BAD_FOR_THE_DATA run once: id -> (result, tree before, after)."""
    folder = dataset.parent
    (folder / "src.h5").touch()  # ingest options are checked before the source is opened
    cases = folder / "cases"
    cases.mkdir()
    files = {}
    for n, (section, key, value, _) in enumerate(BAD + BAD_FOR_THE_DATA):
        files[f"{section}.{key}={value}"] = _workflow(cases / f"{n}.toml", section, key,
                                                      value, source=section == "input")
    before = _tree(folder)
    run = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, files.values())],
                         capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    after = _tree(folder)
    return {case: (results[str(file)], before, after) for case, file in files.items()}


@pytest.mark.parametrize(("section", "key", "value", "words"), BAD + BAD_FOR_THE_DATA,
                         ids=[f"{s}.{k}={v}" for s, k, v, _ in BAD + BAD_FOR_THE_DATA])
def test_a_bad_value_in_a_workflow_exits_2_before_any_cluster(
        refused: dict[str, tuple[dict[str, object], dict[str, int], dict[str, int]]],
        section: str, key: str, value: str, words: str) -> None:
    result, before, after = refused[f"{section}.{key}={value}"]
    stderr = str(result["stderr"])
    assert result["rc"] == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], stderr
    assert "Traceback" not in stderr
    assert result["distributed"] is False, "a cluster was started (distributed imported)"
    assert after == before, "a run wrote something"


def test_the_same_workflow_with_good_values_runs(dataset: Path, tmp_path: Path) -> None:
    """The control: the base workflow of the cases above is valid and loads."""
    from affinity_dist.workflow.config import load_workflow

    (tmp_path / "sub").mkdir()
    (tmp_path / "d.zarr").symlink_to(dataset)
    workflow = load_workflow(_workflow(tmp_path / "sub" / "wf.toml", "segment", "threshold",
                                       "0.7", source=False))
    assert workflow.segment == SegmentOptions(threshold=0.7)
    assert workflow.stages == ("predict", "segment", "evaluate")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_option_is_on_the_command_line(cls: type[StageOptions]) -> None:
    """The parser is built from the options: every field has its flag, and parsing no
    flag gives the options' defaults."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices[cls.stage]
    dests = {a.dest for a in command._actions}
    assert set(cls.names()) <= dests
    required = {"sample": ["x.zarr"], "ingest": ["a.h5", "b.zarr"]}.get(
        cls.stage, ["--input", "x.zarr"])
    args = parser.parse_args([cls.stage, *required])
    assert cls.from_args(args) == cls()


def test_command_line_values_become_options() -> None:
    args = build_parser().parse_args(["segment", "--input", "x.zarr", "--threshold", "0.9",
                                      "--block", "64", "64", "64", "--no-fragments"])
    assert SegmentOptions.from_args(args) == SegmentOptions(threshold=0.9, block=(64, 64, 64),
                                                            keep_fragments=False)
    args = build_parser().parse_args(["predict", "--input", "x.zarr", "--float"])
    assert PredictOptions.from_args(args).dtype == "float32"


def test_api_keywords_are_checked_by_the_same_options(dataset: Path) -> None:
    with pytest.raises(ConfigError, match="segment: got unknown option 'thresold'"):
        ad.segment(dataset, thresold=0.5)
    with pytest.raises(ConfigError, match=r"--threshold: got 1.5, expected a number in \[0, 1\]"):
        ad.segment(dataset, threshold=1.5)
    with pytest.raises(InputNotFoundError, match="--model"):
        ad.predict(dataset, model=dataset / "missing.pt")
    with pytest.raises(ConfigError, match="options: got"):
        ad.segment(dataset, PredictOptions())  # type: ignore[arg-type]


def test_options_are_frozen_normalised_and_overridable() -> None:
    o = SegmentOptions(block=[64, 64, 64])  # type: ignore[arg-type]
    assert o.block == (64, 64, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threshold = 0.1  # type: ignore[misc]
    assert SegmentOptions.of(o, threshold=0.2) == SegmentOptions(threshold=0.2,
                                                                 block=(64, 64, 64))
    with pytest.raises(ConfigError, match=r"unknown key segment\.thresold"):
        SegmentOptions.from_dict({"thresold": 0.5})
    assert SegmentOptions.from_dict({"threshold": 1}).threshold == 1.0
    assert EvaluateOptions().as_dict()["boundary_tolerance"] == 0.0
