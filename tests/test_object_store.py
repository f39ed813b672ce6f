"""Object stores: the whole pipeline against a real S3-compatible server (moto's server
mode on 127.0.0.1), equal bit for bit to the same run on local disk; publication by
metadata last, integrity, leases and bad inputs there."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from affinity_dist.errors import DataError, DatasetBusyError
from affinity_dist.storage import list_arrays, open_volume, staged_dataset
from affinity_dist.storage.location import PUBLISHING, as_path, move_tree

from .helpers import run_cli, tiny_model

if not os.environ.get("AFFINITY_DIST_REQUIRE_S3"):  # CI sets it: a missing server fails
    pytest.importorskip("s3fs", reason="object-store tests need s3fs (pip install '.[dev]')")
    pytest.importorskip("moto", reason="these tests need moto[server] (pip install '.[dev]')")

BUCKET = "affinity-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables point every
    process (this one, the CLI's, the cluster's workers) at it. Yields ``s3://BUCKET``."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.2)
            import s3fs

            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem().mkdir(BUCKET)
            yield f"s3://{BUCKET}"
        finally:
            server.terminate()
            server.wait(timeout=30)


def _arrays(dataset: str | Path, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        vol = open_volume(dataset, name)
        out[name] = np.asarray(vol.array[...])
    return out


def test_pipeline_on_s3_equals_local_disk(tmp_path: Path, s3: str) -> None:
    """sample, then run (predict, segment, evaluate with previews) on a LocalCluster of
    2 workers, once on local disk and once in the bucket: every array equal bit for bit,
    the scores equal, the reports beside the output in the bucket."""
    model = tiny_model(tmp_path / "tiny.pt")
    remote, local = f"{s3}/run/s.zarr", tmp_path / "s.zarr"
    for out in (remote, local):
        made = run_cli("-q", "sample", out, "--shape", "40", "48", "56", "--seed", "3",
                       "--chunks", "16", "16", "16", "--scheduler", "threads")
        assert made.returncode == 0, made.stderr
    flows = {}
    for name, out in (("remote", remote), ("local", local)):
        flows[name] = tmp_path / f"{name}.toml"
        flows[name].write_text(f'''
stages = ["predict", "segment", "evaluate"]
[input]
dataset = "{out}"
[predict]
model = "{model}"
block = [16, 32, 32]
[segment]
threshold = 0.5
block = [32, 32, 32]
[cluster]
scheduler = "local"
workers = 2
''')
        result = run_cli("-q", "run", flows[name])
        assert result.returncode == 0, result.stderr
    names = ["raw", "labels", "affinities", "fragments", "segmentation"]
    assert set(names) <= set(list_arrays(remote))
    got, want = _arrays(remote, names), _arrays(local, names)
    for name in names:
        assert got[name].dtype == want[name].dtype and np.array_equal(got[name], want[name]), name
    report = json.loads(as_path(f"{s3}/run/s-report.json").read_text())
    scores = json.loads(as_path(f"{s3}/run/s-scores.json").read_text())
    local_scores = json.loads((tmp_path / "s-scores.json").read_text())
    for key in ("voi_split", "voi_merge", "adapted_rand_error"):
        assert scores[key] == local_scores[key]
    assert as_path(f"{s3}/run/s-preview-xy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [s["stage"] for s in report["stages"]] == ["predict", "segment", "evaluate"]
    rerun = run_cli("-q", "run", flows["remote"])  # the run state in the bucket: all skipped
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(as_path(f"{s3}/run/s-report.json").read_text())
    assert all(s.get("computed", 0) == 0 for s in again["stages"]), again["stages"]
    # verify in the bucket: clean, then one chunk object deleted is named, exit 1
    assert run_cli("verify", remote, "--scheduler", "threads").returncode == 0
    as_path(f"{remote}/segmentation/c/1/1/1").unlink()
    broken = run_cli("verify", remote, "--scheduler", "threads")
    assert broken.returncode == 1 and "segmentation: chunk c/1/1/1 is missing" in broken.stdout


def test_ingest_reads_a_bucket_and_writes_one(tmp_path: Path, s3: str) -> None:
    import zarr

    data = np.random.default_rng(0).integers(0, 255, (20, 30, 40), dtype=np.uint8)
    zarr.create_array(store=f"{s3}/src.zarr", data=data, chunks=(10, 10, 10))
    result = run_cli("-q", "ingest", f"{s3}/src.zarr", f"{s3}/in.zarr", "--chunks", "8", "16",
                     "16", "--scheduler", "threads")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(open_volume(f"{s3}/in.zarr", "raw").array[...], data)
    again = run_cli("-q", "ingest", f"{s3}/src.zarr", f"{s3}/in.zarr")
    assert again.returncode == 2 and "which exists" in again.stderr


def test_a_dataset_is_published_by_its_group_metadata_last(s3: str) -> None:
    """While written, the group's metadata names its writer and readers refuse it; a
    failed write leaves nothing; a killed writer's leftovers are replaced."""
    url = f"{s3}/pub.zarr"
    with staged_dataset(url) as group:
        group.create_array("raw", shape=(4, 4, 4), dtype="u1")
        assert PUBLISHING in group.attrs
        with pytest.raises(DataError, match="has not finished writing"):
            open_volume(url, "raw")
    assert PUBLISHING not in json.loads(as_path(f"{url}/zarr.json").read_text())["attributes"]
    assert open_volume(url, "raw").shape == (4, 4, 4)
    with pytest.raises(RuntimeError, match="stop"), staged_dataset(f"{s3}/failed.zarr"):
        raise RuntimeError("stop")
    assert not as_path(f"{s3}/failed.zarr").exists()
    # a run killed mid-write: its pid is gone, the next run replaces its leftovers
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    killed = f"{s3}/killed.zarr"
    as_path(f"{killed}/zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "group", "attributes": {PUBLISHING: {
            "host": socket.gethostname().replace("-", "_"), "pid": int(dead.stdout)}}}))
    info = run_cli("info", killed)
    assert info.returncode == 2 and "has not finished writing" in info.stderr
    assert len(info.stderr.strip().splitlines()) == 1
    assert run_cli("-q", "sample", killed, "--shape", "8", "8", "8").returncode == 0
    assert open_volume(killed, "raw").shape == (8, 8, 8)


def test_move_tree_copies_server_side_and_removes_the_source(s3: str) -> None:
    import zarr

    group = zarr.open_group(f"{s3}/mv.zarr", mode="w")
    group.create_array("a", data=np.arange(1000, dtype=np.uint16).reshape(10, 10, 10),
                       chunks=(5, 5, 5))
    group.create_array("b", data=np.ones((3, 3, 3), np.uint8))
    move_tree(as_path(f"{s3}/mv.zarr/a"), as_path(f"{s3}/mv.zarr/b"))
    assert not as_path(f"{s3}/mv.zarr/a").exists()
    moved = zarr.open_array(f"{s3}/mv.zarr/b", mode="r")
    assert np.array_equal(moved[...], np.arange(1000).reshape(10, 10, 10))


def test_writer_lease_in_a_bucket(s3: str) -> None:
    from affinity_dist.runtime.locks import lease_path, writer_lease

    url = f"{s3}/lease.zarr"
    with (writer_lease(url, "predict"), pytest.raises(DatasetBusyError, match="another run"),
          writer_lease(url, "predict")):
        pass
    assert not lease_path(url, "predict").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lease_path(url, "predict").write_text(json.dumps({
        "host": socket.gethostname(), "pid": int(dead.stdout), "token": "old"}))
    with writer_lease(url, "predict") as path:  # stale: taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(("args", "words"), [
    (["sample", "s3://no-such-bucket/x.zarr"], "expected a writable store location"),
    (["predict", "--input", "{s3}/missing.zarr"], "expected an existing Zarr group"),
    (["info", "{s3}/missing.zarr"], "expected an existing Zarr group"),
    (["sample", "nosuchprotocol://x/y.zarr"], "expected a local path or a store URL"),
])
def test_bad_store_inputs_exit_2_with_one_line(s3: str, args: list[str], words: str) -> None:
    result = run_cli(*(a.format(s3=s3) for a in args))
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


def test_local_file_urls_are_local_paths(tmp_path: Path) -> None:
    assert as_path(f"file://{tmp_path}") == tmp_path
    assert as_path("relative/x.zarr") == Path("relative/x.zarr")
