"""The ``affinity-dist`` command line (also ``python -m affinity_dist``).

Exit status: 0 success; 2 bad input or configuration (one line on stderr naming the
argument, the value and what was expected, nothing written); 1 failure during a run
(the failing block named); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .errors import AffinityDistError

if TYPE_CHECKING:
    from .scheduling import LocalScheduler

__all__ = ["build_parser", "main"]

PROG = "affinity-dist"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cluster_options(p: argparse.ArgumentParser, *, outputs: bool = True) -> None:
    p.add_argument("--scheduler", metavar="ADDR", default="local",
                   help="'local' (default: a LocalCluster of worker processes on 127.0.0.1), "
                        "a scheduler address such as tcp://host:8786, or 'threads' / "
                        "'synchronous' to run in this process")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the local cluster (default: CPU count, max 8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    if outputs:
        p.add_argument("--chunks", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                       help="chunk shape of the output arrays (default 128 128 128)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Affinity-based neuron segmentation of EM volumes: "
                     "chunked Zarr, Dask, a 3D U-Net.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("sample", help="write a synthetic EM-like volume with ground truth")
    p.add_argument("out", metavar="OUT.zarr")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   default=[128, 128, 128])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   default=[10.0, 10.0, 10.0], help="nm per voxel (default 10 10 10)")
    _cluster_options(p)

    p = sub.add_parser("ingest", help="copy HDF5/TIFF/PNG/Zarr/N5 into a dataset")
    p.add_argument("src", metavar="SRC", help="HDF5 file, TIFF stack, folder of TIFF/PNG "
                   "slices, Zarr or N5")
    p.add_argument("dst", metavar="DST.zarr")
    p.add_argument("--raw-key", default=None, help="raw array inside SRC "
                   "(default: volumes/raw, then raw)")
    p.add_argument("--labels-key", default=None, help="labels array inside SRC "
                   "(default: volumes/labels/neuron_ids, then labels; none if absent)")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="nm per voxel (default: from SRC's resolution attribute)")
    p.add_argument("--rescale", action="store_true",
                   help="map a non-uint8 raw's [min, max] onto 0-255")
    _cluster_options(p)

    _predict_parser(sub)

    p = sub.add_parser("segment", help="affinities -> fragments -> merged segmentation")
    p.add_argument("--input", required=True, metavar="X.zarr",
                   help="dataset holding 'affinities' (c, z, y, x), uint8 or float")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="join voxels whose affinity is above this (default 0.5)")
    p.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="write block, a multiple of the chunk shape (default 256^3)")
    p.add_argument("--min-size", type=int, default=0, metavar="N",
                   help="segments smaller than N voxels become background 0 (default: keep)")
    p.add_argument("--no-fragments", action="store_true",
                   help="do not write the 'fragments' array (faster: segmentation only)")
    _cluster_options(p, outputs=False)

    _evaluate_parser(sub)

    p = sub.add_parser("pyramid", help="coarser levels of arrays for viewers (OME-Zarr)")
    p.add_argument("--input", required=True, metavar="X.zarr")
    p.add_argument("--arrays", nargs="+", default=None, metavar="NAME",
                   help="arrays to downsample (default: raw, labels, segmentation, "
                        "fragments, affinities where present)")
    p.add_argument("--levels", type=int, default=None,
                   help="levels below the full resolution (default: until <= 32 voxels)")
    _cluster_options(p, outputs=False)

    p = sub.add_parser("run", help="every stage of a workflow file, with a report")
    p.add_argument("workflow", metavar="WORKFLOW", help="workflow file (TOML, see workflows/)")
    p.add_argument("--scheduler", metavar="ADDR", default=None,
                   help="override the workflow's cluster.scheduler ('local', an address, "
                        "'threads', 'synchronous')")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of a local cluster (default: the workflow's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    p = sub.add_parser("train", help="train the affinity U-Net on volumes with ground truth")
    p.add_argument("--data", action="append", required=True, metavar="SRC",
                   help="HDF5/Zarr/N5 with raw and labels (repeat for several volumes)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory: checkpoints, loss.csv, loss.png, config.json; an "
                        "existing run resumes at its last checkpoint")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--config", metavar="FILE", default=None,
                   help="training configuration, TOML or JSON (keys of TrainConfig)")

    p = sub.add_parser("info", help="list the arrays of a dataset with their metadata")
    p.add_argument("dataset", metavar="X.zarr")
    _view_parser(sub)
    return parser


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser("predict", help="raw -> affinities with a U-Net, block by block")
    p.add_argument("--input", required=True, metavar="X.zarr", help="dataset holding 'raw'")
    p.add_argument("--model", metavar="CKPT", default=None,
                   help="checkpoint (a training run's model.pt; default: the shipped model)")
    p.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="write block, a multiple of the chunk shape (default 256^3)")
    p.add_argument("--tile", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="network output tile (default 64^3 on CPU, 128^3 on GPU)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16 autocast (default) or full fp32")
    p.add_argument("--float", action="store_true",
                   help="write float32 affinities instead of uint8 0-255")
    p.add_argument("--batch", type=int, default=1, help="tiles per forward pass (default 1)")
    _cluster_options(p, outputs=False)


def _view_parser(sub: Any) -> None:
    p = sub.add_parser("view", help="serve a dataset in neuroglancer (or screenshot it, or "
                       "write its webKnossos metadata)")
    p.add_argument("dataset", metavar="X.zarr")
    p.add_argument("--screenshot", metavar="PNG", default=None,
                   help="render the xy section in headless Chromium, write this PNG and exit")
    p.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=[1024, 768],
                   help="screenshot size in pixels (default 1024 768)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the screenshot (default 300)")
    p.add_argument("--port", type=int, default=0,
                   help="port of the neuroglancer server (default 0: any free port)")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address the server listens on (default 127.0.0.1: this machine only)")
    p.add_argument("--webknossos", action="store_true",
                   help="write X.zarr/datasource-properties.json for webKnossos and exit")


def _evaluate_parser(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="VOI, adapted Rand and CREMI score against truth")
    p.add_argument("--input", required=True, metavar="X.zarr",
                   help="dataset holding the segmentation")
    p.add_argument("--truth", metavar="Y.zarr", default=None,
                   help="dataset holding the ground-truth 'labels' (default: --input)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the scores here")
    p.add_argument("--segmentation", default="segmentation", help="array to score")
    p.add_argument("--labels", default="labels", help="ground-truth array")
    p.add_argument("--block", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="block read per task, a multiple of the chunks (default 256^3)")
    p.add_argument("--min-truth-size", type=int, default=0, metavar="N",
                   help="leave out truth objects smaller than N voxels (default: keep all)")
    p.add_argument("--top", type=int, default=5, help="worst objects to list (default 5)")
    p.add_argument("--boundary-tolerance", type=float, default=0.0, metavar="NM",
                   help="ignore truth voxels within NM nm of a truth boundary in their xy "
                        "section, as CREMI does (default 0: off)")
    p.add_argument("--preview", metavar="PREFIX", default=None,
                   help="also write PREFIX-xy.png and PREFIX-xz.png: central sections of "
                        "raw with the segmentation overlaid")
    _cluster_options(p, outputs=False)


def _cluster_args(args: argparse.Namespace) -> tuple[tuple[int, ...], LocalScheduler]:
    """Validated chunk shape and in-process scheduler name of a stage's arguments."""
    from .storage import DEFAULT_CHUNKS

    if args.workers is not None and args.workers < 1:
        raise _bad("--workers", args.workers, "a positive integer")
    local: LocalScheduler = "synchronous" if args.scheduler == "synchronous" else "threads"
    chunks = getattr(args, "chunks", None)
    return (tuple(chunks) if chunks else DEFAULT_CHUNKS), local


def _cmd_sample(args: argparse.Namespace) -> None:
    from .sample import prepare_sample, run_sample
    from .scheduling import cluster

    chunks, local = _cluster_args(args)
    plan = prepare_sample(args.out, shape=args.shape, seed=args.seed,
                          voxel_size=args.voxel_size, chunks=chunks, overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        run_sample(plan, client=client, scheduler=local, progress=not args.quiet)
    print(args.out)


def _cmd_ingest(args: argparse.Namespace) -> None:
    from .ingest import prepare_ingest, run_ingest
    from .scheduling import cluster

    chunks, local = _cluster_args(args)
    # Validate everything before starting a cluster: bad input fails fast.
    plan = prepare_ingest(args.src, args.dst, raw_key=args.raw_key, labels_key=args.labels_key,
                          voxel_size=args.voxel_size, rescale=args.rescale, chunks=chunks,
                          overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        run_ingest(plan, client=client, scheduler=local, progress=not args.quiet)
    print(args.dst)


def _cmd_predict(args: argparse.Namespace) -> None:
    from .predict import prepare_predict, run_predict
    from .scheduling import cluster

    _, local = _cluster_args(args)
    on_this_machine = args.scheduler in ("local", "threads", "synchronous")
    plan = prepare_predict(args.input, model=args.model, block=args.block, tile=args.tile,
                           device=args.device, precision=args.precision,
                           dtype="float32" if args.float else "uint8", batch=args.batch,
                           overwrite=args.overwrite, local=on_this_machine)
    gpus = 0
    if args.device != "cpu" and args.scheduler == "local":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with cluster(args.scheduler, n_workers=args.workers, gpus=gpus) as client:
        stats = run_predict(plan, client=client, scheduler=local, progress=not args.quiet)
    print(f"{args.input}: affinities {stats.voxels / 1e6:.1f} Mvox in {stats.seconds:.1f} s "
          f"({stats.voxels_per_second / 1e6:.2f} Mvox/s, halo overhead "
          f"{stats.halo_overhead:.2f})")


def _cmd_segment(args: argparse.Namespace) -> None:
    from .scheduling import cluster
    from .segment import prepare_segment, run_segment

    _, local = _cluster_args(args)
    plan = prepare_segment(args.input, threshold=args.threshold, block=args.block,
                           min_size=args.min_size, keep_fragments=not args.no_fragments,
                           overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        table = run_segment(plan, client=client, scheduler=local, progress=not args.quiet)
    print(f"{args.input}: {int(table.counts.sum())} fragments -> {table.num_segments} segments")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import check_report_path, prepare_evaluate, run_evaluate, write_report
    from .scheduling import cluster

    _, local = _cluster_args(args)
    plan = prepare_evaluate(args.input, truth=args.truth, segmentation=args.segmentation,
                            labels=args.labels, block=args.block,
                            min_truth_size=args.min_truth_size, top=args.top,
                            boundary_tolerance=args.boundary_tolerance)
    if args.json is not None:
        check_report_path(args.json)
    if args.preview is not None:
        check_report_path(f"{args.preview}-xy.png", "--preview")
    with cluster(args.scheduler, n_workers=args.workers) as client:
        s = run_evaluate(plan, client=client, scheduler=local, progress=not args.quiet)
    if args.json is not None:
        write_report(args.json, plan, s)
    if args.preview is not None:
        from .preview import write_previews

        for path in write_previews(args.input, args.preview, args.segmentation):
            print(f"preview: {path}")
    print(f"{args.input}: VOI split {s.voi_split:.4f}  merge {s.voi_merge:.4f}  "
          f"sum {s.voi_sum:.4f}  adapted Rand error {s.adapted_rand_error:.4f} "
          f"(precision {s.rand_precision:.4f}, recall {s.rand_recall:.4f})  CREMI score "
          f"{s.cremi_score:.4f}  {s.segments} segments / {s.truth_objects} truth objects "
          f"over {s.voxels} voxels")
    if plan.boundary_tolerance:
        print(f"  truth voxels within {plan.boundary_tolerance:g} nm of a truth boundary "
              "ignored")
    for title, rows in (("most split truth objects", s.worst_splits),
                        ("most merged segments", s.worst_merges)):
        if rows:
            print(f"  {title}: " + ", ".join(f"{i} ({v:.3f} bits)" for i, v in rows))


def _cmd_pyramid(args: argparse.Namespace) -> None:
    from .pyramid import pyramid
    from .scheduling import cluster
    from .storage import open_dataset

    _, local = _cluster_args(args)
    open_dataset(args.input)  # a missing dataset fails before a cluster starts
    with cluster(args.scheduler, n_workers=args.workers) as client:
        done = pyramid(args.input, args.arrays, levels=args.levels, client=client,
                       scheduler=local, progress=not args.quiet)
    for name, paths in done.items():
        print(f"{name}: {len(paths)} levels ({', '.join(paths) or 'none'})")


def _cmd_run(args: argparse.Namespace) -> None:
    from .run import report_paths, run_workflow
    from .workflow import load_workflow

    if args.workers is not None and args.workers < 1:
        raise _bad("--workers", args.workers, "a positive integer")
    workflow = load_workflow(args.workflow)
    report = run_workflow(workflow, scheduler=args.scheduler, workers=args.workers,
                          overwrite=args.overwrite, progress=not args.quiet)
    print(f"{workflow.output}: {len(report['stages'])} stages in {report['seconds']:.1f} s; "
          f"report {report_paths(workflow)['report']} (summary: "
          f"{report_paths(workflow)['summary']})")


def _cmd_info(args: argparse.Namespace) -> None:
    from .storage import describe_dataset

    print(f"{args.dataset}:")
    for row in describe_dataset(args.dataset):
        ratio = row["nbytes"] / max(row["stored_bytes"], 1)
        shape = "x".join(map(str, row["shape"]))
        voxel = "x".join(f"{v:g}" for v in row["voxel_size"])
        print(f"  {row['name']:<14} {shape:<18} {row['dtype']:<8} axes {','.join(row['axes'])}"
              f"  voxel {voxel} nm  chunks {row['chunks']}  {row['stored_bytes'] / 1e6:.1f} MB"
              f" on disk ({ratio:.1f}x)")


def _cmd_view(args: argparse.Namespace) -> None:
    if args.webknossos:
        from .webknossos import write_webknossos_metadata

        print(write_webknossos_metadata(args.dataset))
        return
    from .view import view

    if args.timeout <= 0:
        raise _bad("--timeout", args.timeout, "a positive number of seconds")
    view(args.dataset, screenshot=args.screenshot, port=args.port, bind=args.bind,
         size=args.size, timeout=args.timeout)
    if args.screenshot is not None:
        print(args.screenshot)


def _cmd_train(args: argparse.Namespace) -> None:
    from .train import load_config, train

    config = load_config(args.config)
    model = train(args.data, args.out, iterations=args.iterations, config=config,
                  progress=not args.quiet)
    print(model)


COMMANDS = {"sample": _cmd_sample, "ingest": _cmd_ingest, "predict": _cmd_predict,
            "segment": _cmd_segment, "evaluate": _cmd_evaluate, "pyramid": _cmd_pyramid,
            "run": _cmd_run,
            "train": _cmd_train, "info": _cmd_info,
            "view": _cmd_view}


def _bad(argument: str, value: Any, expected: str) -> AffinityDistError:
    from .errors import bad_value

    return bad_value(argument, value, expected)


def _quiet_dask() -> None:
    """Keep distributed's INFO chatter (scheduler, nannies, workers) off the terminal."""
    import dask

    dask.config.set({"logging.distributed": "error"})
    import distributed  # noqa: F401  (configures its loggers from the config above)

    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2 and hasattr(args, "scheduler"):
        _quiet_dask()
    try:
        COMMANDS[args.command](args)
    except AffinityDistError as err:
        print(f"{PROG} {args.command}: error: {err}".replace("\n", " "), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
