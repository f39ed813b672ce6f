"""Scale benchmark: Dask at 10^4-10^6 blocks, and the tree reduction of ``segment
--method cc`` at 10^7-10^9 synthetic fragments with the memory of its largest task.

``dask``: for each block count N, in a fresh process against a fresh scheduler and two
single-thread workers (separate processes, as on SLURM): the plan (the block list and the
reduction tree's tasks), then a recorded pass of N no-op block tasks through
``run_recorded`` (windowed submission, results fetched and handed to a counter as
they arrive, as predict sums its blocks', done markers batched); the seconds per block,
the peak RSS of the client (this process) and of the scheduler above their start (after a
warm-up pass of 1000 blocks: imports and caches; "(RSS)": the client's whole peak RSS), and
the marker files written. The peer, in the same run: bare ``client.map`` of N no-op
tasks, all submitted at once (up to 10^5: beyond, its scheduler's memory is the problem
this avoids).

Synthetic face pairs as the leaves see them: a G^3 grid of blocks, F fragments per block,
P fragment pairs across every block face (random fragments on both sides; both sides
hold the pair). Two measurements:

* ``tree``: the whole reduction in one process (every level, every task, as the Dask
  tasks run it) for grids that fit here: time, the largest residual per level (pending
  components, pairs), and the largest task's peak memory (tracemalloc: numpy reports its
  buffers) against its input;
* ``root``: for grids too large to generate whole (10^9 fragments = 100^3 blocks of
  1000), only the root task, whose input is the largest of the tree at fan-out 2: the
  pending surface of its 8 children, i.e. both sides of every pair across the three
  central planes of the grid. Its peak memory is what the largest task needs.

* ``agglomeration root`` (``--agglomerate-root 100``): the same for ``segment``'s default
  method, in a fresh process: the root's 8 children's residuals (edges across the central
  planes, owned by one side, random statistics; face rows), then the root's
  ``reduce_task``; peak RSS of the process during the task (/proc VmHWM reset before it:
  numba's buffers are invisible to tracemalloc).

* ``end to end`` (``--end-to-end 512 1536``): fib25_sample2's raw mirror-tiled to N^3
  (real texture; the synthetic ``sample`` cannot make 1536^3 here: its neurite model
  is built over the whole volume, 8.6 GB at 1024^3), then ``affinity-dist run`` of
  predict and segment (the default agglomeration) on a local cluster of 2 workers,
  256^3 blocks (``--block 512``: 512^3): seconds per stage and the run report's peak
  worker RSS, each size in a fresh cluster; the smallest size is the peer of the largest.

    .venv/bin/python benchmarks/bench_scale.py [--blocks 10000 100000 1000000]
        [--tree 20 40] [--root 100 200] [--fragments 1000] [--pairs 300]
        [--agglomerate-root 40 100] [--end-to-end 512 1536 [--block 256] [--scratch DIR]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from affinity_dist.geometry import BlockGrid, ReductionTree
from affinity_dist.kernels.cc_tree import Pending, leaf, reduce_components
from affinity_dist.kernels.fragments import LOCAL_BITS

BITS = np.uint64(LOCAL_BITS)


def face_pairs(rng: np.random.Generator, lower: np.ndarray, upper: np.ndarray,
               fragments: int, pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """P random pairs across each face ``lower[i] | upper[i]``: (lower ids, upper ids)."""
    k = lower.size * pairs
    a = (np.repeat(lower.astype(np.uint64), pairs) << BITS) | rng.integers(
        1, fragments + 1, k).astype(np.uint64)
    b = (np.repeat(upper.astype(np.uint64), pairs) << BITS) | rng.integers(
        1, fragments + 1, k).astype(np.uint64)
    return a, b


def leaves(grid: BlockGrid, fragments: int, pairs: int, seed: int = 0) -> list[Pending]:
    """Every block's leaf: the pairs across its six faces."""
    rng = np.random.default_rng(seed)
    ids = np.arange(grid.num_blocks).reshape(grid.grid_shape)
    us, vs = [], []
    for axis in range(3):
        lo = np.take(ids, np.arange(ids.shape[axis] - 1), axis=axis).ravel()
        hi = np.take(ids, np.arange(1, ids.shape[axis]), axis=axis).ravel()
        a, b = face_pairs(rng, lo, hi, fragments, pairs)
        us += [a, b]
        vs += [b, a]
    u, v = np.concatenate(us), np.concatenate(vs)
    order = np.argsort(u >> BITS, kind="stable")
    u, v = u[order], v[order]
    bounds = np.searchsorted(u >> BITS, np.arange(grid.num_blocks + 1, dtype=np.uint64))
    return [leaf(u[bounds[i]:bounds[i + 1]], v[bounds[i]:bounds[i + 1]])
            for i in range(grid.num_blocks)]


def nbytes(parts: list[Pending]) -> int:
    return sum(a.nbytes for p in parts for a in p)


def measured(children: list[Pending], grid: BlockGrid, lo: tuple[int, ...],
             hi: tuple[int, ...]) -> tuple[float, int, int]:
    """One task: seconds, tracemalloc peak above its input, input bytes."""
    size = nbytes(children)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    reduce_components(children, grid.grid_shape, lo, hi)  # empties the list
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return seconds, peak, size


def tree(g: int, fragments: int, pairs: int) -> None:
    grid = BlockGrid((g, g, g), (1, 1, 1))
    t = ReductionTree(grid.grid_shape, (2, 2, 2))
    t0 = time.perf_counter()
    pending = leaves(grid, fragments, pairs)
    print(f"\ntree: {g}^3 = {grid.num_blocks} blocks, {grid.num_blocks * fragments:.2e} "
          f"fragments, {sum(p.u.size for p in pending) // 2:.2e} face pairs "
          f"(generated in {time.perf_counter() - t0:.1f} s)")
    print(f"{'level':>5} {'tasks':>7} {'max pending':>12} {'max pairs':>11} {'seconds':>8}")
    print(f"{0:>5} {len(pending):>7} {max(np.unique(p.rep).size for p in pending):>12} "
          f"{max(p.u.size for p in pending):>11} {'':>8}")
    largest = (0.0, 0, 0)
    for level in range(1, t.num_levels):
        clock = time.perf_counter()
        up = []
        sizes = [nbytes([pending[c] for c in t.children(level, k)])
                 for k in range(t.num_tasks(level))]
        big = int(np.argmax(sizes))
        for task in range(t.num_tasks(level)):
            children = [pending[c] for c in t.children(level, task)]
            if task == big and sizes[big] > largest[2]:
                largest = measured(list(children), grid, *t.extent(level, task))
            up.append(reduce_components(children, grid.grid_shape, *t.extent(level, task))[0])
        pending = up
        print(f"{level:>5} {len(up):>7} {max(np.unique(p.rep).size for p in up):>12} "
              f"{max(p.u.size for p in up):>11} {time.perf_counter() - clock:>8.1f}")
    seconds, peak, size = largest
    print(f"largest task: input {size / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB above it, "
          f"{seconds:.1f} s")


def root(g: int, fragments: int, pairs: int) -> None:
    """Only the root's input: its 8 children's pending pairs across the central planes."""
    grid = BlockGrid((g, g, g), (1, 1, 1))
    rng = np.random.default_rng(1)
    ids = np.arange(grid.num_blocks).reshape(grid.grid_shape)
    h = g // 2
    t0 = time.perf_counter()
    us, vs = [], []
    for axis in range(3):
        lo = np.take(ids, [h - 1], axis=axis).ravel()
        hi = np.take(ids, [h], axis=axis).ravel()
        a, b = face_pairs(rng, lo, hi, fragments, pairs)
        us += [a, b]
        vs += [b, a]
    u, v = np.concatenate(us), np.concatenate(vs)
    del us, vs
    index = (u >> BITS).astype(np.int64)
    octant = sum(((np.unravel_index(index, grid.grid_shape)[axis] >= h).astype(np.int64)
                  << (2 - axis)) for axis in range(3))
    del index
    children = []
    for k in range(8):
        mine = octant == k
        children.append(leaf(u[mine], v[mine]))
    del u, v, octant
    made = time.perf_counter() - t0
    from affinity_dist.runtime.memory import peak_memory_mb

    reduce_components(leaves(BlockGrid((2, 2, 2), (1, 1, 1)), 10, 3), (2, 2, 2), (0, 0, 0),
                      (2, 2, 2))  # numba compiled before the peak is taken
    pairs_in = sum(c.u.size for c in children)
    start = _peak_from_here()
    seconds, peak, size = measured(children, grid, (0, 0, 0), (g, g, g))  # frees the input
    rss = peak_memory_mb()
    print(f"root: {g}^3 = {grid.num_blocks:.1e} blocks, {grid.num_blocks * fragments:.1e} "
          f"fragments: input {pairs_in:.2e} pending pairs ({size / 1e9:.2f} GB), "
          f"allocated {peak / 1e9:.2f} GB at most (tracemalloc), process RSS "
          f"{start / 1e3:.2f} GB before, peak {rss / 1e3:.2f} GB, {seconds:.1f} s (input "
          f"made in {made:.0f} s)")


def _peak_from_here() -> float:
    """This process's RSS in MB, after returning freed heap to the OS and resetting its
    peak (/proc VmHWM): ``peak_memory_mb()`` then holds the peak since this call, numba's
    buffers included (tracemalloc misses them)."""
    import psutil

    from affinity_dist.runtime.memory import trim_heap

    trim_heap()
    Path("/proc/self/clear_refs").write_text("5")
    return float(psutil.Process().memory_info().rss / 1e6)


def agglomerate_root(g: int, fragments: int, pairs: int) -> dict[str, float]:
    """The agglomeration root on :func:`_root_children`'s input, in this (fresh)
    process, the kernels compiled first on a 4^3 grid: the process's RSS before the task
    and its peak during it."""
    from affinity_dist.kernels.agglomerate import reduce_task
    from affinity_dist.runtime.memory import peak_memory_mb

    small, _ = _root_children(4, 10, 3)
    reduce_task(small, (4, 4, 4), (0, 0, 0), (4, 4, 4), scale=255.0)  # compile numba
    del small
    t0 = time.perf_counter()
    children, grid = _root_children(g, fragments, pairs)
    made = time.perf_counter() - t0
    size = sum(a.nbytes for c in children for a in c)
    edges = sum(c.u.size for c in children)
    start = _peak_from_here()
    t0 = time.perf_counter()
    residual, record = reduce_task(children, grid.grid_shape, (0, 0, 0), (g, g, g),
                                   scale=255.0)
    seconds = time.perf_counter() - t0
    return {"g": g, "fragments": grid.num_blocks * fragments, "edges": edges,
            "input_gb": size / 1e9, "rss_before_gb": start / 1e3,
            "peak_gb": peak_memory_mb() / 1e3, "seconds": seconds, "made_s": made,
            "merges": int(record.a.size), "left": int(residual.u.size)}


def _root_children(g: int, fragments: int, pairs: int) -> tuple[list[Any], BlockGrid]:
    """The agglomeration root's input: its 8 children's residuals at 10^9-fragment scale
    without building the tree below. Every block next to the grid's three central planes
    holds ``fragments`` fragments; ``pairs`` random contacts cross each block face of
    those planes, owned by the upper block's child (its endpoint as itself, the other as
    a raw fragment id), with random statistics; every fragment on such a face has a row
    (fragment, itself, the neighbouring block), of which a child writes only those the
    root needs (``useful_rows``: none, as no region merged below; a child's merges would
    shrink its edges and add rows that map its fragments)."""
    from affinity_dist.kernels.agglomerate import Residual, useful_rows

    grid = BlockGrid((g, g, g), (1, 1, 1))
    rng = np.random.default_rng(2)
    ids = np.arange(grid.num_blocks).reshape(grid.grid_shape)
    h = g // 2
    octant_of = np.zeros(grid.num_blocks, np.int64)
    for axis in range(3):
        octant_of |= (np.indices(grid.grid_shape)[axis].ravel() >= h).astype(np.int64) << (
            2 - axis)
    parts: list[list[np.ndarray]] = [[] for _ in range(8)]
    rows: list[list[np.ndarray]] = [[] for _ in range(8)]
    for axis in range(3):
        lo = np.take(ids, [h - 1], axis=axis).ravel()
        hi = np.take(ids, [h], axis=axis).ravel()
        a, b = face_pairs(rng, lo, hi, fragments, pairs)  # a below the plane, b above
        counts = rng.integers(1, 64, a.size)
        sums = counts * rng.integers(0, 256, a.size)
        owner = octant_of[(b >> BITS).astype(np.int64)]
        below = octant_of[(a >> BITS).astype(np.int64)]
        for k in range(8):
            mine = owner == k
            parts[k].append(np.stack([b[mine], a[mine], sums[mine].astype(np.uint64),
                                      counts[mine].astype(np.uint64)]))
            for frag, other, side in ((b, a, owner), (a, b, below)):
                face = np.unique(np.stack([frag[side == k], other[side == k] >> BITS]), axis=1)
                rows[k].append(face)
        del a, b, counts, sums, owner, below
    children = []
    for k in range(8):
        e = np.concatenate(parts[k], axis=1)
        r = np.unique(np.concatenate(rows[k], axis=1), axis=1)
        u, v = e[0], e[1]
        row = (r[0], r[0].copy(), r[1].astype(np.int64))
        keep = useful_rows(row, grid.grid_shape, (0, 0, 0), grid.grid_shape)  # as written
        children.append(Residual(u, v, e[2].astype(np.int64), e[3].astype(np.int64),
                                 np.minimum(u, v), np.maximum(u, v),
                                 *(x[keep] for x in row)))
    return children, grid


def _noop(block: int) -> None:
    return None


class _Count:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, block: int, _: None) -> None:
        self.n += 1


class _Sampler:
    """Peak RSS (MB) of processes, sampled every 20 ms in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.start = {name: p.memory_info().rss / 1e6 for name, p in self.procs.items()}
        self.peak = dict(self.start)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.02):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss / 1e6)

    def above(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return {name: self.peak[name] - self.start[name] for name in self.procs}


def _cluster(folder: Path) -> tuple[list[subprocess.Popen[bytes]], Any]:
    from distributed import Client

    from affinity_dist.runtime.cluster import BOUNDED

    bin_dir = Path(sys.executable).parent
    file = folder / "scheduler.json"
    env = {**os.environ, **{"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(v)
                            for key, v in BOUNDED.items()}}  # what the README advises
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(file)], **quiet)]  # type: ignore[call-overload]
    while not file.exists():
        time.sleep(0.1)
    procs.append(subprocess.Popen(
        [bin_dir / "dask", "worker", "--scheduler-file", str(file), "--nworkers", "2",
         "--nthreads", "1", "--no-dashboard", "--memory-limit", "0", "--local-directory",
         str(folder / "workers")], **quiet))  # type: ignore[call-overload]
    import dask

    dask.config.set(BOUNDED)  # as runtime.cluster sets it for every client
    client = Client(scheduler_file=str(file))
    client.wait_for_workers(2)
    return procs, client


def dask_one(n: int, peer: bool) -> dict[str, float]:
    """One block count, in this (fresh) process: see the module's docstring."""
    from affinity_dist.runtime.scheduling import BlockCounts
    from affinity_dist.runtime.state import StageState, run_recorded

    out: dict[str, float] = {"blocks": n}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        procs, client = _cluster(Path(tmp))
        try:
            g = round(n ** (1 / 3))
            shape = (n // (g * g), g, g)  # n blocks of 8^3 over a virtual volume
            state = StageState.of(tmp, "scale", {"n": n})
            state.begin()
            run_recorded(state, "warm-up", _noop, range(1000), BlockCounts(), client=client,
                         progress=False, release=False, reduce=_Count())  # imports, caches
            sampler = _Sampler({"client": os.getpid(), "scheduler": procs[0].pid})
            t0 = time.perf_counter()
            grid = BlockGrid(tuple(8 * k for k in shape), (8, 8, 8))
            blocks = grid.blocks
            tree = ReductionTree(grid.grid_shape, (2, 2, 2))
            tasks = sum(len(tree.children(level, k)) for level in range(1, tree.num_levels)
                        for k in range(tree.num_tasks(level)))
            out["plan_s"] = time.perf_counter() - t0
            out["tree_children"] = tasks
            t0 = time.perf_counter()
            arrived = _Count()
            run_recorded(state, "touch", _noop, blocks, BlockCounts(), client=client,
                         progress=False, release=False, reduce=arrived)
            out["run_s"] = time.perf_counter() - t0
            out["blocks"] = len(blocks)
            if arrived.n != len(blocks):
                raise SystemExit(f"{arrived.n} results of {len(blocks)} blocks arrived")
            out["marker_files"] = len(state.log("touch").files())
            above = sampler.above()
            out["client_mb"], out["scheduler_mb"] = above["client"], above["scheduler"]
            out["client_peak_mb"] = sampler.peak["client"]
            if peer:
                sampler = _Sampler({"client": os.getpid(), "scheduler": procs[0].pid})
                t0 = time.perf_counter()
                futures = client.map(_noop, blocks, pure=False)
                client.gather(futures)
                out["peer_s"] = time.perf_counter() - t0
                del futures
                above = sampler.above()
                out["peer_client_mb"] = above["client"]
                out["peer_scheduler_mb"] = above["scheduler"]
        finally:
            client.close()
            for proc in reversed(procs):
                proc.terminate()
                proc.wait()
    return out


def dask_table(counts: list[int]) -> None:
    print(f"\ndask: N no-op blocks on 2 single-thread workers ({os.cpu_count()} cores)")
    print(f"{'blocks':>8} {'plan s':>7} {'run s':>7} {'ms/block':>9} {'client MB':>10} "
          f"{'(RSS)':>6} "
          f"{'sched MB':>9} {'files':>6} | {'peer ms/block':>13} {'client MB':>10} "
          f"{'sched MB':>9}")
    for asked in counts:
        peer = asked <= 100_000
        line = subprocess.run([sys.executable, __file__, "--dask-one", str(asked)]
                              + (["--peer"] if peer else []), capture_output=True,
                              text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(line)
        n = int(r["blocks"])  # the grid nearest N: (N // G^2) x G x G blocks
        text = (f"{n:>8} {r['plan_s']:>7.2f} {r['run_s']:>7.1f} "
                f"{1e3 * r['run_s'] / n:>9.3f} {r['client_mb']:>10.0f} "
                f"{r['client_peak_mb']:>6.0f} "
                f"{r['scheduler_mb']:>9.0f} {r['marker_files']:>6.0f} | ")
        if peer:
            text += (f"{1e3 * r['peer_s'] / n:>13.3f} {r['peer_client_mb']:>10.0f} "
                     f"{r['peer_scheduler_mb']:>9.0f}")
        else:
            text += f"{'(not run)':>13}"
        print(text, flush=True)


def end_to_end(sizes: list[int], scratch: str | None, block: int = 256) -> None:
    """See the module's docstring."""
    from _common import fib25, tile_to

    from affinity_dist.storage import dataset_from_array

    raw = fib25()
    if raw is None:
        print("\nend to end: ../shared/data/fib25_sample2.h5 not found: not run")
        return
    print(f"\nend to end (fib25 mirror-tiled, 2 workers, {block}^3 blocks)\n{'size':>6} "
          f"{'Gvox':>6} {'write s':>8} {'predict s':>9} {'segment s':>9} {'Mvox/s':>13} "
          f"{'peak worker MB':>14}")
    cli = str(Path(sys.executable).with_name("affinity-dist"))
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=scratch, prefix="bench-e2e-") as tmp:
            dataset = Path(tmp) / f"fib25-{n}.zarr"
            clock = time.perf_counter()
            dataset_from_array(dataset, "raw", tile_to(raw, n), voxel_size=(8.0, 8.0, 8.0),
                               chunks=(128, 128, 128))
            wrote = time.perf_counter() - clock
            flow = Path(tmp) / "run.toml"
            flow.write_text(f'stages = ["predict", "segment"]\n[input]\ndataset = '
                            f'"{dataset}"\n[predict]\nblock = {[block] * 3}\n'
                            f'[segment]\nblock = {[block] * 3}\n'
                            '[cluster]\nscheduler = "local"\nworkers = 2\n')
            ran = subprocess.run([cli, "run", str(flow)], check=False, capture_output=True,
                                 text=True)
            if ran.returncode:
                raise SystemExit(f"end to end {n}^3: affinity-dist run exited {ran.returncode}:"
                                 f"\n{ran.stderr[-3000:]}")
            report = json.loads(Path(f"{dataset.with_suffix('')}-report.json").read_text())
            took = {s["stage"]: s for s in report["stages"]}
            rates = "/".join(f"{took[k]['voxels_per_second'] / 1e6:.1f}"
                             for k in ("predict", "segment"))
            print(f"{n:>6} {n**3 / 1e9:>6.2f} {wrote:>8.0f} {took['predict']['seconds']:>9.0f} "
                  f"{took['segment']['seconds']:>9.0f} {rates:>13} "
                  f"{report['peak_worker_mb']:>14.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=int, nargs="*", default=[20, 40],
                        help="grid sizes G for the whole tree in one process")
    parser.add_argument("--root", type=int, nargs="*", default=[100],
                        help="grid sizes G for the root task alone")
    parser.add_argument("--fragments", type=int, default=1000, help="per block")
    parser.add_argument("--pairs", type=int, default=300, help="per block face")
    parser.add_argument("--blocks", type=int, nargs="*", default=[10_000, 100_000, 1_000_000],
                        help="block counts N for the Dask part")
    parser.add_argument("--end-to-end", type=int, nargs="*", default=[],
                        help="volume sizes N (N^3 of tiled fib25) for predict + segment runs")
    parser.add_argument("--block", type=int, default=256,
                        help="block edge of the end-to-end runs (predict and segment)")
    parser.add_argument("--scratch", help="folder for the end-to-end datasets (default: TMPDIR)")
    parser.add_argument("--agglomerate-root", type=int, nargs="*", default=[],
                        help="grid sizes G for the agglomeration root alone (own process)")
    parser.add_argument("--aroot-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dask-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dask_one:
        print(json.dumps(dask_one(args.dask_one, args.peer)))
        return
    if args.aroot_one:
        print(json.dumps(agglomerate_root(args.aroot_one, args.fragments, args.pairs)))
        return
    dask_table(args.blocks)
    for g in args.tree:
        tree(g, args.fragments, args.pairs)
    for g in args.root:
        root(g, args.fragments, args.pairs)
    for g in args.agglomerate_root:
        line = subprocess.run([sys.executable, __file__, "--aroot-one", str(g), "--fragments",
                               str(args.fragments), "--pairs", str(args.pairs)],
                              capture_output=True, text=True, check=True).stdout
        r = json.loads(line.strip().splitlines()[-1])
        print(f"agglomeration root: {g}^3 blocks, {r['fragments']:.1e} fragments: input "
              f"{r['edges']:.2e} edges ({r['input_gb']:.2f} GB), process RSS "
              f"{r['rss_before_gb']:.2f} GB before the task, peak {r['peak_gb']:.2f} GB, "
              f"{r['seconds']:.1f} s, {r['merges']} merges", flush=True)
    if args.end_to_end:
        end_to_end(args.end_to_end, args.scratch, args.block)


if __name__ == "__main__":
    main()
