"""run: a workflow file end to end on a real LocalCluster; bad workflow files exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import ConfigError, InputNotFoundError
from affinity_dist.geometry import Box
from affinity_dist.stages.sample import sample
from affinity_dist.storage import list_arrays, open_volume
from affinity_dist.workflow.config import load_workflow

from .helpers import REPO, run_cli, tiny_model


def test_end_to_end_on_a_local_cluster(tmp_path: Path) -> None:
    sample(tmp_path / "s.zarr", shape=(40, 48, 56), seed=3, chunks=(16, 16, 16), progress=False)
    model = tiny_model(tmp_path / "tiny.pt")
    wf = tmp_path / "wf.toml"
    wf.write_text(f'''
stages = ["predict", "segment", "evaluate"]
[input]
dataset = "s.zarr"
[predict]
model = "{model.name}"
block = [16, 32, 32]
[segment]
threshold = 0.5
[cluster]
scheduler = "local"
workers = 2
''')
    result = run_cli("-q", "run", wf)
    assert result.returncode == 0, result.stderr
    assert "dask dashboard: http://127.0.0.1:" in result.stderr
    assert {"affinities", "fragments", "segmentation"} <= set(list_arrays(tmp_path / "s.zarr"))
    report = json.loads((tmp_path / "s-report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["predict", "segment", "evaluate"]
    predict, segment, evaluate = report["stages"]
    assert predict["blocks"] == 3 * 2 * 2 and predict["halo_overhead"] > 1
    assert segment["voxels"] == 40 * 48 * 56 and segment["voxels_per_second"] > 0
    assert evaluate["voi_split"] >= 0 and Path(evaluate["scores"]).is_file()
    assert all(Path(p).is_file() for p in evaluate["previews"])
    assert report["peak_worker_mb"] > 0
    summary = (tmp_path / "s-report.txt").read_text()
    assert "predict: 12 blocks (12 block tasks computed" in summary and "voi_split" in summary
    seg = open_volume(tmp_path / "s.zarr", "segmentation").read(Box((0, 0, 0), (40, 48, 56)))
    assert seg.max() > 0
    # every block computed once: predict 12, segment 3 passes x 1 block (default 256^3)
    assert [s["computed"] for s in report["stages"]][:2] == [12, 3]
    assert evaluate["computed"] > 0 and not any(s["skipped"] for s in report["stages"])


def test_ingest_stage_from_a_source(tmp_path: Path, gala: Path) -> None:
    wf = tmp_path / "wf.toml"
    wf.write_text(f'''
output = "g.zarr"
stages = ["ingest", "evaluate"]
[input]
source = "{gala}"
chunks = [25, 50, 100]
[cluster]
scheduler = "threads"
''')
    result = run_cli("-q", "run", wf)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "g-report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["ingest"]  # no segmentation to score
    assert report["stages"][0]["voxels"] == 50 * 100 * 200
    assert np.array_equal(open_volume(tmp_path / "g.zarr", "raw").chunks, (25, 50, 100))


@pytest.mark.parametrize(("text", "words"), [
    ('stages = ["predict"]\n[input]\ndataset = "d.zarr"\nthreshold = 2\n', "unknown key"),
    ('[input]\ndataset = "d.zarr"\n[segment]\nthreshold = "high"\n',
     "segment.threshold = 'high', expected float or int"),
    ('[input]\ndataset = "missing.zarr"\n', "expected an existing dataset"),
    ('[input]\nsource = "missing.h5"\n', "expected an existing file"),
    ('[input]\ndataset = "d.zarr"\n[predict]\nblok = [1, 2, 3]\n', "predict.blok"),
    ('[input]\ndataset = "d.zarr"\n[cluster]\nscheduler = "tcp://127.0.0.1:9"\n',
     "--scheduler: got 'tcp://127.0.0.1:9'"),
    ('[input]\ndataset = "d.zarr"\nstages = ["predictt"]\n', "unknown key"),
    ('stages = ["predictt"]\n[input]\ndataset = "d.zarr"\n', "stages"),
    ('[input\n', "expected valid TOML"),
])
def test_bad_workflow_files_exit_2(tmp_path: Path, text: str, words: str) -> None:
    sample(tmp_path / "d.zarr", shape=(8, 8, 8), progress=False)
    wf = tmp_path / "wf.toml"
    wf.write_text(text)
    result = run_cli("run", wf)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_shipped_workflows_are_valid(tmp_path: Path) -> None:
    workflow = load_workflow(REPO / "workflows" / "sample.toml") \
        if (REPO / "demo" / "sample.zarr").exists() else None
    if workflow is not None:
        assert workflow.stages == ("predict", "segment", "evaluate")
    fib = REPO / "workflows" / "fib25.toml"
    if (REPO.parent / "shared" / "data" / "fib25_sample2.h5").is_file():
        assert load_workflow(fib).stages == ("ingest", "predict", "segment", "evaluate")
    with pytest.raises(InputNotFoundError):
        load_workflow(tmp_path / "none.toml")
    (tmp_path / "two.toml").write_text('[input]\nsource = "a"\ndataset = "b"\n')
    with pytest.raises(ConfigError, match="both"):
        load_workflow(tmp_path / "two.toml")
