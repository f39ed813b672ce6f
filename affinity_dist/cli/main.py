"""The ``affinity-dist`` command line (also ``python -m affinity_dist``).

Exit status: 0 success; 2 bad input or configuration (one line on stderr naming the
argument, the value and what was expected, nothing written); 1 failure during a run
(the failing block named); 130 interrupted.

Every command validates its options (one options object per stage, built from the
arguments) and its inputs before any cluster starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..errors import AffinityDistError
from .args import PROG, build_parser

if TYPE_CHECKING:
    from ..runtime.scheduling import LocalScheduler

__all__ = ["build_parser", "main"]


def _local(args: argparse.Namespace) -> LocalScheduler:
    """The in-process scheduler of a stage's arguments (after checking ``--workers``)."""
    if args.workers is not None and args.workers < 1:
        raise _bad("--workers", args.workers, "a positive integer")
    return "synchronous" if args.scheduler == "synchronous" else "threads"


def _run(args: argparse.Namespace) -> dict[str, Any]:
    return {"scheduler": _local(args), "progress": not args.quiet}


def _cmd_sample(args: argparse.Namespace) -> None:
    from ..options import SampleOptions
    from ..runtime.cluster import cluster
    from ..stages.sample import prepare_sample, run_sample

    run = _run(args)
    plan = prepare_sample(args.out, SampleOptions.from_args(args), overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        run_sample(plan, client=client, **run)
    print(args.out)


def _cmd_ingest(args: argparse.Namespace) -> None:
    from ..options import IngestOptions
    from ..runtime.cluster import cluster
    from ..stages.ingest import prepare_ingest, run_ingest

    run = _run(args)
    plan = prepare_ingest(args.src, args.dst, IngestOptions.from_args(args),
                          overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        run_ingest(plan, client=client, **run)
    print(args.dst)


def _cmd_predict(args: argparse.Namespace) -> None:
    from ..options import PredictOptions
    from ..runtime.cluster import cluster
    from ..stages.predict import prepare_predict, run_predict

    run = _run(args)
    options = PredictOptions.from_args(args)
    on_this_machine = args.scheduler in ("local", "threads", "synchronous")
    plan = prepare_predict(args.input, options, overwrite=args.overwrite, local=on_this_machine)
    gpus: int | Literal["auto"] = "auto" if options.device != "cpu" else 0
    with cluster(args.scheduler, n_workers=args.workers, gpus=gpus) as client:
        stats = run_predict(plan, client=client, **run)
    print(f"{args.input}: affinities {stats.voxels / 1e6:.1f} Mvox in {stats.seconds:.1f} s "
          f"({stats.voxels_per_second / 1e6:.2f} Mvox/s, halo overhead "
          f"{stats.halo_overhead:.2f})")


def _cmd_segment(args: argparse.Namespace) -> None:
    from ..options import SegmentOptions
    from ..runtime.cluster import cluster
    from ..stages.segment import prepare_segment, run_segment

    run = _run(args)
    plan = prepare_segment(args.input, SegmentOptions.from_args(args), overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        summary = run_segment(plan, client=client, **run)
    print(f"{args.input}: {summary.num_fragments} fragments -> {summary.num_segments} segments")
    for level, s in enumerate(summary.levels):  # either method: the tree reduction
        print(f"  tree level {level}: {s['tasks']} tasks, {s['merges']} merges, largest "
              f"residual {s['regions']} regions / {s['edges']} edges")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from ..options import EvaluateOptions
    from ..runtime.cluster import cluster
    from ..stages.evaluate import check_report_path, prepare_evaluate, run_evaluate, write_report

    run = _run(args)
    plan = prepare_evaluate(args.input, EvaluateOptions.from_args(args))
    if args.json is not None:
        check_report_path(args.json, overwrite=args.overwrite)
    if args.preview is not None:
        for suffix in ("xy", "xz"):
            check_report_path(f"{args.preview}-{suffix}.png", "--preview",
                              overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        s = run_evaluate(plan, client=client, **run)
    if args.json is not None:
        write_report(args.json, plan, s)
    if args.preview is not None:
        from ..viewers.preview import write_previews

        for path in write_previews(args.input, args.preview, plan.segmentation,
                                   truth=plan.truth, labels=plan.labels,
                                   merged=[i for i, _ in s.worst_merges],
                                   split=[i for i, _ in s.worst_splits]):
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


def _cmd_tune(args: argparse.Namespace) -> None:
    from ..options import SegmentOptions, TuneOptions
    from ..runtime.cluster import cluster
    from ..stages.tune import tune

    run = _run(args)
    options, segment = TuneOptions.from_args(args), SegmentOptions.from_args(args)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        table = tune(args.input, options, segment, json_path=args.json, plot_path=args.plot,
                     overwrite=args.overwrite, client=client, **run)
    print(f"{'threshold':>10}{'VOI split':>11}{'merge':>9}{'sum':>9}{'ARand':>9}"
          f"{'segments':>10}")
    for r in table["rows"]:
        print(f"{r['threshold']:>10.3f}{r['voi_split']:>11.4f}{r['voi_merge']:>9.4f}"
              f"{r['voi_sum']:>9.4f}{r['adapted_rand_error']:>9.4f}{r['segments']:>10}")
    best = table["best"]
    print(f"best threshold {best['threshold']:g} (VOI sum {best['voi_sum']:.4f}); its "
          f"segmentation is in {args.input}; table {table['json']}, plot {table['plot']}")


def _cmd_pyramid(args: argparse.Namespace) -> None:
    from ..options import PyramidOptions
    from ..runtime.cluster import cluster
    from ..stages.pyramid import prepare_pyramid, run_pyramid

    run = _run(args)
    plan = prepare_pyramid(args.input, PyramidOptions.from_args(args), overwrite=args.overwrite)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        done = run_pyramid(plan, client=client, **run)
    for name, paths in done.items():
        print(f"{name}: {len(paths)} levels ({', '.join(paths) or 'none'})")


def _cmd_run(args: argparse.Namespace) -> None:
    from ..workflow.config import load_workflow
    from ..workflow.run import report_paths, run_workflow

    if args.workers is not None and args.workers < 1:
        raise _bad("--workers", args.workers, "a positive integer")
    workflow = load_workflow(args.workflow)
    report = run_workflow(workflow, scheduler=args.scheduler, workers=args.workers,
                          overwrite=args.overwrite, progress=not args.quiet)
    print(f"{workflow.output}: {len(report['stages'])} stages in {report['seconds']:.1f} s; "
          f"report {report_paths(workflow)['report']} (summary: "
          f"{report_paths(workflow)['summary']})")


def _cmd_info(args: argparse.Namespace) -> None:
    from ..storage import describe_dataset

    print(f"{args.dataset}:")
    for row in describe_dataset(args.dataset):
        ratio = row["nbytes"] / max(row["stored_bytes"], 1)
        shape = "x".join(map(str, row["shape"]))
        voxel = "x".join(f"{v:g}" for v in row["voxel_size"])
        print(f"  {row['name']:<14} {shape:<18} {row['dtype']:<8} axes {','.join(row['axes'])}"
              f"  voxel {voxel} nm  chunks {row['chunks']}"
              + (f" in shards {row['shards']}" if row["shards"] else "")
              + f"  {row['stored_bytes'] / 1e6:.1f} MB on disk ({ratio:.1f}x)")


def _cmd_verify(args: argparse.Namespace) -> None:
    from ..runtime.cluster import cluster
    from ..stages.verify import DamageFoundError, verify

    run = _run(args)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        report = verify(args.dataset, client=client, **run)
    for line in report.bad:
        print(line)
    summary = (f"{args.dataset}: {report.chunks} chunks of {report.arrays} arrays checked "
               f"(a shard counts as one), {len(report.bad)} bad")
    if report.bad:
        raise DamageFoundError(summary)
    print(summary)


def _cmd_stats(args: argparse.Namespace) -> None:
    from ..runtime.cluster import cluster
    from ..stages.stats import stats

    run = _run(args)
    with cluster(args.scheduler, n_workers=args.workers) as client:
        attrs = stats(args.input, client=client, **run)
    p = attrs["percentiles"]
    print(f"{args.input}: intensity histogram of {attrs['voxels']} voxels stored; "
          f"percentiles 1/50/99: {p['1']:g} / {p['50']:g} / {p['99']:g}")


def _cmd_view(args: argparse.Namespace) -> None:
    if args.webknossos:
        from ..viewers.webknossos import write_webknossos_metadata

        print(write_webknossos_metadata(args.dataset))
        return
    from ..viewers.neuroglancer import view

    if args.timeout <= 0:
        raise _bad("--timeout", args.timeout, "a positive number of seconds")
    view(args.dataset, screenshot=args.screenshot, port=args.port, bind=args.bind,
         size=args.size, timeout=args.timeout)
    if args.screenshot is not None:
        print(args.screenshot)


def _cmd_train(args: argparse.Namespace) -> None:
    from ..training.train import load_config, train

    config = load_config(args.config)
    model = train(args.data, args.out, iterations=args.iterations, config=config,
                  progress=not args.quiet, init=args.init)
    print(model)


COMMANDS = {"sample": _cmd_sample, "ingest": _cmd_ingest, "predict": _cmd_predict,
            "segment": _cmd_segment, "evaluate": _cmd_evaluate, "pyramid": _cmd_pyramid,
            "tune": _cmd_tune,
            "run": _cmd_run, "train": _cmd_train, "info": _cmd_info, "verify": _cmd_verify,
            "stats": _cmd_stats,
            "view": _cmd_view}


def _bad(argument: str, value: Any, expected: str) -> AffinityDistError:
    from ..errors import bad_value

    return bad_value(argument, value, expected)


def _quiet_dask() -> None:
    """Keep distributed's INFO chatter (scheduler, nannies, workers) off the terminal: set
    in the environment, which Dask's configuration reads when a stage first imports it
    (importing dask here would cost every command, ``--help`` included, ~0.5 s)."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _os_error(err: OSError) -> str:
    """One line for an error of the operating system (or of a file's format, as h5py
    reports a truncated HDF5 file): what failed, on which path."""
    where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    what = err.strerror or str(err) or type(err).__name__
    return f"{what}: {where}" if where and where not in what else what.replace("\n", " ")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from ..runtime import interrupt

    if args.verbose < 2 and hasattr(args, "scheduler"):
        _quiet_dask()
        for handler in logging.getLogger().handlers:
            handler.addFilter(interrupt.AfterInterrupt())
    interrupt.install()
    try:
        COMMANDS[args.command](args)
        interrupt.check()  # a Ctrl-C that a finalizer dropped: the run did not end cleanly
    except AffinityDistError as err:
        print(f"{PROG} {args.command}: error: {err}".replace("\n", " "), file=sys.stderr)
        return err.exit_code
    except OSError as err:  # permission, read-only, not a directory, disk full, truncated
        print(f"{PROG} {args.command}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
