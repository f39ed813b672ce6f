"""SLURM: workflows/submit_workflow.py on a real single-node SLURM, and [cluster.slurm].

The tests that submit jobs need ``sbatch`` on PATH and a controller that answers
``scontrol ping``; the module fixture starts one with ``.ci/slurm.sh up`` when SLURM is
installed but not running (and stops exactly those daemons afterwards). Without SLURM they
skip, saying why, unless ``AFFINITY_DIST_REQUIRE_SLURM=1`` (CI) makes that a failure.
Validation, ``--dry-run`` and the helpers need no SLURM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import ConfigError
from affinity_dist.geometry import Box
from affinity_dist.stages.sample import sample
from affinity_dist.storage import list_arrays, open_volume
from affinity_dist.workflow.config import load_workflow
from affinity_dist.workflow.slurm import _gpus, _seconds, cancel_jobs, cluster_kwargs, refusal

from .helpers import REPO, run_cli, tiny_model

SUBMIT = REPO / "workflows" / "submit_workflow.py"
SLURM_SH = REPO / ".ci" / "slurm.sh"
SHAPE = (40, 48, 56)
SLURM_OPTIONS = {"partition": '"debug"', "cores": "1", "processes": "1", "memory": '"2GB"',
                 "jobs": "2", "walltime": '"00:10:00"', "host": '"127.0.0.1"',
                 "wait_timeout": "120"}


def _controller_up() -> bool:
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30,
                          check=False)
    return ping.returncode == 0 and "UP" in ping.stdout


def _unavailable(reason: str) -> None:
    if os.environ.get("AFFINITY_DIST_REQUIRE_SLURM") == "1":
        pytest.fail(f"{reason} (AFFINITY_DIST_REQUIRE_SLURM=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """A SLURM controller that answers; started here (and stopped after) if need be."""
    if shutil.which("sbatch") is None:
        _unavailable("sbatch is not on PATH: SLURM is not installed (`.ci/slurm.sh up` "
                     "installs and starts a single-node SLURM)")
    started = False
    if not _controller_up():
        if os.geteuid() != 0:
            _unavailable("the SLURM controller does not answer `scontrol ping`, and only "
                         "root can start it here (.ci/slurm.sh up)")
        up = subprocess.run(["bash", str(SLURM_SH), "up"], capture_output=True, text=True,
                            timeout=600, check=False)
        if up.returncode or not _controller_up():
            _unavailable(f"the SLURM controller does not answer `scontrol ping` and "
                         f"`.ci/slurm.sh up` could not start it: {up.stderr[-500:]}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(SLURM_SH), "down"], capture_output=True, timeout=120,
                       check=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset (raw + labels) and a tiny model beside it."""
    root = tmp_path_factory.mktemp("slurm-data")
    sample(root / "s.zarr", shape=SHAPE, seed=3, chunks=(16, 16, 16), progress=False)
    tiny_model(root / "tiny.pt")
    return root


def _workflow(folder: Path, data: Path, scheduler: str = "slurm",
              **slurm: str) -> Path:
    """A predict + segment + evaluate workflow on a copy of ``data`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "s.zarr").exists():
        shutil.copytree(data / "s.zarr", folder / "s.zarr")
    if scheduler == "slurm":
        options = {**SLURM_OPTIONS, **slurm}
        cluster = 'scheduler = "slurm"\n[cluster.slurm]\n' + "".join(
            f"{k} = {v}\n" for k, v in options.items())
    else:
        cluster = f'scheduler = "{scheduler}"\nworkers = 2\n'
    wf = folder / "wf.toml"
    wf.write_text(f'''stages = ["predict", "segment", "evaluate"]
[input]
dataset = "s.zarr"
[predict]
model = "{data / 'tiny.pt'}"
block = [16, 32, 32]
[segment]
threshold = 0.5
block = [16, 32, 32]
[cluster]
{cluster}''')
    return wf


def _submit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SUBMIT), *map(str, args)], capture_output=True,
                          text=True, timeout=600, check=False)


def _start(wf: Path, log: Path) -> subprocess.Popen[str]:
    """submit_workflow in the background, stdout and stderr into ``log`` (a pipe could
    fill up while the test polls squeue)."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, str(SUBMIT), str(wf)], stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def _queued() -> dict[str, tuple[str, str]]:
    """Every job in squeue: id -> (name, state)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return {i: (n, t) for i, n, t in (line.split("|") for line in out.split())}


def _gone(job_ids: set[str], seconds: float = 30) -> set[str]:
    """The jobs among ``job_ids`` still in squeue after waiting up to ``seconds`` for
    cancelled jobs to finish COMPLETING."""
    deadline = time.monotonic() + seconds
    while (left := job_ids & set(_queued())) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _accounting(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """SLURM's record of finished jobs: id -> (name, state), from the accounting database
    where there is one, else from the job completion log (``sacct -c``)."""
    for flags in ([], ["-c"]):
        out = subprocess.run(["sacct", *flags, "-n", "-P", "-X", "-j", ",".join(job_ids),
                              "-o", "JobID,JobName,State"], capture_output=True, text=True,
                             timeout=30, check=False)
        rows = [line.split("|") for line in out.stdout.split("\n") if line.count("|") == 2]
        if out.returncode == 0 and rows:
            return {i: (n, s.split()[0]) for i, n, s in rows}
    return {}


def test_submit_runs_on_slurm_jobs_like_a_local_run(slurm: None, dataset: Path,
                                                    tmp_path: Path) -> None:
    wf = _workflow(tmp_path / "slurm", dataset)
    before = set(_queued())
    proc = _start(wf, tmp_path / "submit.log")
    seen: dict[str, tuple[str, set[str]]] = {}  # id -> (name, every state squeue showed)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:  # the jobs, as squeue
        for i, (n, state) in _queued().items():  # shows them
            if i not in before:
                seen.setdefault(i, (n, set()))[1].add(state)
        time.sleep(0.3)
    proc.wait(timeout=10)
    out = (tmp_path / "submit.log").read_text()
    assert proc.returncode == 0, out
    assert "dask dashboard: http://127.0.0.1:" in out
    report = json.loads((tmp_path / "slurm" / "s-report.json").read_text())
    job_ids, name = report["slurm"]["job_ids"], report["slurm"]["job_name"]
    assert len(job_ids) == 2 and report["slurm"]["jobs"] == 2
    assert {i for i, (n, _) in seen.items() if n == name} == set(job_ids)
    assert any("RUNNING" in states for n, states in seen.values() if n == name), seen
    records = _accounting(job_ids)  # SLURM itself knows the jobs, by id and name
    assert {i: n for i, (n, _) in records.items()} == dict.fromkeys(job_ids, name)
    assert {s for _, s in records.values()} <= {"CANCELLED", "COMPLETED"}
    assert not _gone(set(job_ids)), "jobs left in squeue after submit_workflow exited"
    logs = Path(report["slurm"]["log_directory"])
    assert all((logs / f"{name}-{i}.err").is_file() for i in job_ids)
    assert [s["stage"] for s in report["stages"]] == ["predict", "segment", "evaluate"]
    assert "stages in" in out and ", ".join(job_ids) in out

    local = _workflow(tmp_path / "local", dataset, scheduler="local")
    result = run_cli("-q", "run", local)
    assert result.returncode == 0, result.stderr
    box = Box((0, 0, 0), SHAPE)
    for name in ("affinities", "segmentation"):
        on_slurm = open_volume(tmp_path / "slurm" / "s.zarr", name)
        here = open_volume(tmp_path / "local" / "s.zarr", name)
        a, b = (on_slurm.read(box), here.read(box)) if name == "segmentation" else (
            on_slurm.read(Box((0, 0, 0, 0), (3, *SHAPE))),
            here.read(Box((0, 0, 0, 0), (3, *SHAPE))))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert open_volume(tmp_path / "slurm" / "s.zarr", "segmentation").read(box).max() > 1


@pytest.mark.parametrize(("option", "value"), [  # value: (in TOML, in the message)
    ("cores", ("64", "64")), ("memory", ('"999GB"', "'999GB'")),
    ("partition", ('"nope"', "'nope'")), ("gpus", ("1", "1")),
    ("job_extra_directives", ('["--constraint=fast"]', "['--constraint=fast']")),
])
def test_impossible_request_exits_2_and_submits_nothing(
        slurm: None, dataset: Path, tmp_path: Path, option: str, value: tuple[str, str]
) -> None:
    toml, shown = value
    wf = _workflow(tmp_path / "run", dataset, **{option: toml})
    before_files = sorted(p.name for p in (tmp_path / "run").iterdir())
    before_jobs = set(_queued())
    result = _submit(wf)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cluster.slurm.{option} = {shown}, expected" in lines[0], \
        result.stderr
    new = {i for i, (n, _) in _queued().items()
           if i not in before_jobs and n.startswith("affinity-dist-")}
    assert not new, f"jobs left: {new}"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before_files
    assert set(list_arrays(tmp_path / "run" / "s.zarr")) == {"raw", "labels"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_cancels_the_jobs(slurm: None, dataset: Path, tmp_path: Path,
                                    signum: signal.Signals) -> None:
    wf = _workflow(tmp_path / "run", dataset)
    before = set(_queued())
    proc = _start(wf, tmp_path / "submit.log")
    deadline, running = time.monotonic() + 120, set[str]()
    while len(running) < 2 and time.monotonic() < deadline and proc.poll() is None:
        running = {i for i, (n, s) in _queued().items()
                   if i not in before and n.startswith("affinity-dist-") and s == "RUNNING"}
        time.sleep(0.2)
    assert len(running) == 2, (tmp_path / "submit.log").read_text()
    proc.send_signal(signum)
    proc.wait(timeout=120)
    err = (tmp_path / "submit.log").read_text()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted ({signum.name})" in err
    assert not _gone(running), "jobs left in squeue after the interrupt"


def test_no_worker_in_time_exits_1_with_squeues_reason(slurm: None, dataset: Path,
                                                       tmp_path: Path) -> None:
    wf = _workflow(tmp_path / "run", dataset, wait_timeout="3",
                   job_extra_directives='["--begin=now+1hour"]')
    before = set(_queued())
    result = _submit(wf)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "cluster.slurm.wait_timeout: got 3" in last and "PENDING (BeginTime)" in last, last
    ids = {i for i, (n, _) in _queued().items() if i not in before and n.startswith(
        "affinity-dist-")}
    assert not ids, f"pending jobs left: {ids}"
    assert set(list_arrays(tmp_path / "run" / "s.zarr")) == {"raw", "labels"}


def test_cancel_jobs_by_id_and_by_the_runs_name(slurm: None, tmp_path: Path) -> None:
    name = f"affinity-dist-test-{os.getpid()}"
    ids = [subprocess.run(["sbatch", "--parsable", "-J", name, "-o", str(tmp_path / "%j.out"),
                           "-t", "00:02:00", "--mem=100M", "--begin=now+1hour",
                           "--wrap", "sleep 60"], capture_output=True, text=True, timeout=30,
                          check=True).stdout.strip() for _ in range(2)]
    assert set(ids) <= set(_queued())
    cancel_jobs(ids[:1], name)  # the second job's id unknown: found by the run's name
    assert not _gone(set(ids))


@pytest.mark.parametrize(("slurm_lines", "words"), [
    ("queue = \"debug\"\n", "unknown key cluster.slurm.queue"),
    ("cores = \"4\"\n", "cluster.slurm.cores = '4', expected int"),
    ("cores = true\n", "cluster.slurm.cores = True"),
    ("walltime = \"10:00\"\n", "cluster.slurm.walltime = '10:00', expected 'HH:MM:SS'"),
    ("memory = \"8\"\n", "cluster.slurm.memory = '8'"),
    ("cores = 2\nprocesses = 4\n", "cluster.slurm.processes = 4, expected at most cores"),
    ("jobs = 2\nadaptive_max = 4\n", "cluster.slurm.jobs = 2, expected either jobs"),
    ("adaptive_min = 3\nadaptive_max = 2\n", "cluster.slurm.adaptive_min = 3"),
    ("adaptive_min = 1\n", "with cluster.slurm.adaptive_max"),
    ("job_extra_directives = [1]\n", "cluster.slurm.job_extra_directives = [1]"),
    ("wait_timeout = 0\n", "cluster.slurm.wait_timeout = 0"),
    ("jobs = 0\n", "cluster.slurm.jobs = 0, expected an integer >= 1"),
])
def test_bad_slurm_options_are_refused(tmp_path: Path, slurm_lines: str, words: str) -> None:
    sample(tmp_path / "d.zarr", shape=(8, 8, 8), progress=False)
    wf = tmp_path / "wf.toml"
    wf.write_text(f'[input]\ndataset = "d.zarr"\n[cluster]\nscheduler = "slurm"\n'
                  f'[cluster.slurm]\n{slurm_lines}')
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_workflow(wf)


@pytest.mark.parametrize(("cluster", "words"), [
    ('scheduler = "local"\n[cluster.slurm]\njobs = 2\n', "expected scheduler = 'slurm'"),
    ('scheduler = "slurm"\nworkers = 2\n', "cluster.workers = 2 with scheduler 'slurm'"),
    ('scheduler = "slurm"\nslurm = 3\n', "cluster.slurm = 3"),
])
def test_slurm_section_needs_the_slurm_scheduler(tmp_path: Path, cluster: str,
                                                 words: str) -> None:
    sample(tmp_path / "d.zarr", shape=(8, 8, 8), progress=False)
    wf = tmp_path / "wf.toml"
    wf.write_text(f'[input]\ndataset = "d.zarr"\n[cluster]\n{cluster}')
    with pytest.raises(ConfigError, match=words):
        load_workflow(wf)


def test_bad_key_exits_2_with_one_line_and_run_refuses_slurm(tmp_path: Path) -> None:
    sample(tmp_path / "d.zarr", shape=(8, 8, 8), progress=False)
    wf = tmp_path / "wf.toml"
    wf.write_text('[input]\ndataset = "d.zarr"\n[cluster]\nscheduler = "slurm"\n'
                  '[cluster.slurm]\ncores = 1\nnodes = 2\n')
    result = _submit(wf)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster.slurm.nodes" in lines[0], result.stderr
    wf.write_text('[input]\ndataset = "d.zarr"\n[cluster]\nscheduler = "slurm"\n')
    result = run_cli("run", wf)  # affinity-dist run does not submit jobs
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "submit_workflow.py" in lines[0], result.stderr
    wf.write_text('[input]\ndataset = "d.zarr"\n[cluster]\nscheduler = "local"\n')
    result = _submit(wf)  # and submit_workflow runs only SLURM workflows
    assert result.returncode == 2 and "expected 'slurm'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr", "wf.toml"]


def test_dry_run_prints_the_job_script(dataset: Path, tmp_path: Path) -> None:
    wf = _workflow(tmp_path / "run", dataset, gpus="2", memory='"3GB"',
                   job_extra_directives='["--qos=short"]', account='"lab"')
    result = _submit(wf, "--dry-run")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for line in ("#SBATCH -p debug", "#SBATCH -t 00:10:00", "#SBATCH --mem=3G",
                 "#SBATCH --cpus-per-task=1", "#SBATCH -A lab", "#SBATCH --qos=short",
                 "#SBATCH --gres=gpu:2", "#SBATCH -J affinity-dist-"):
        assert line in script, (line, script)
    assert f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:" in script
    assert "--resources GPU=1" in script and "--nthreads 1" in script
    assert "export MALLOC_ARENA_MAX=1" in script  # before the workers start: WORKER_ENVIRON
    assert "s-slurm-logs" in script  # job logs beside the report ...
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["s.zarr", "wf.toml"]


def test_shipped_example_is_valid(tmp_path: Path) -> None:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "demo").mkdir()
    shutil.copy(REPO / "workflows" / "slurm.toml", tmp_path / "workflows")
    sample(tmp_path / "demo" / "sample.zarr", shape=(8, 8, 8), progress=False)
    workflow = load_workflow(tmp_path / "workflows" / "slurm.toml")
    assert workflow.scheduler == "slurm" and workflow.cluster["slurm"]["jobs"] == 2
    result = _submit(tmp_path / "workflows" / "slurm.toml", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "#SBATCH -t 00:30:00" in result.stdout and "#SBATCH --mem=4G" in result.stdout


def test_helpers() -> None:
    assert _seconds("00:10:00") == 600 and _seconds("1-02:00:00") == 93600
    assert _seconds("30:00") == 1800 and _seconds("infinite") is None
    assert _gpus("(null)") == 0 and _gpus("gpu:2") == 2
    assert _gpus("gpu:a100:4(S:0-1),mps:100") == 4
    options = {"gpus": 1, "cores": 4, "processes": 2, "memory": "8GB",
               "walltime": "01:00:00", "interface": "ib0"}
    kwargs = cluster_kwargs(options, "affinity-dist-x")
    assert kwargs["job_extra_directives"] == ["--gres=gpu:1"]
    assert kwargs["worker_extra_args"] == ["--resources", "GPU=1"]
    assert kwargs["scheduler_options"] == {"dashboard_address": ":0", "interface": "ib0"}
    assert kwargs["python"] == sys.executable
    err = refusal("sbatch: error: invalid partition specified: x", {"partition": "x"})
    assert "cluster.slurm.partition = 'x'" in str(err) and err.exit_code == 2
    assert "sbatch refused" in str(refusal("something else", {}))
