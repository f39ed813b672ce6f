"""The argument parser of the ``affinity-dist`` command line (:mod:`affinity_dist.cli.main`
runs the commands): one sub-command per stage, usage errors as one line and exit 2.

Stage options are declared once, in :mod:`affinity_dist.options`; this module adds them
to each sub-command with the arguments that are not options (paths, cluster, outputs).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from .. import __version__
from ..options import (
    EvaluateOptions,
    IngestOptions,
    PredictOptions,
    PyramidOptions,
    SampleOptions,
    SegmentOptions,
    TuneOptions,
    add_arguments,
)

__all__ = ["PROG", "build_parser"]

PROG = "affinity-dist"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cluster_options(p: argparse.ArgumentParser, overwrite: bool = True) -> None:
    p.add_argument("--scheduler", metavar="ADDR", default="local",
                   help="'local' (default: a LocalCluster of worker processes on 127.0.0.1), "
                        "a scheduler address such as tcp://host:8786, or 'threads' / "
                        "'synchronous' to run in this process")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the local cluster (default: CPU count, max 8)")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


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
    add_arguments(p, SampleOptions)
    _cluster_options(p)

    p = sub.add_parser("ingest", help="copy HDF5/TIFF/PNG/Zarr/N5 into a dataset")
    p.add_argument("src", metavar="SRC", help="HDF5 file, TIFF stack, folder of TIFF/PNG "
                   "slices, Zarr or N5")
    p.add_argument("dst", metavar="DST.zarr")
    add_arguments(p, IngestOptions)
    _cluster_options(p)

    p = sub.add_parser("predict", help="raw -> affinities with a U-Net, block by block")
    p.add_argument("--input", required=True, metavar="X.zarr", help="dataset holding 'raw'")
    add_arguments(p, PredictOptions)
    _cluster_options(p)

    p = sub.add_parser("segment", help="affinities -> fragments -> merged segmentation")
    p.add_argument("--input", required=True, metavar="X.zarr",
                   help="dataset holding 'affinities' (c, z, y, x), uint8 or float")
    add_arguments(p, SegmentOptions)
    _cluster_options(p)

    p = sub.add_parser("evaluate", help="VOI, adapted Rand and CREMI score against truth")
    p.add_argument("--input", required=True, metavar="X.zarr",
                   help="dataset holding the segmentation")
    add_arguments(p, EvaluateOptions)
    p.add_argument("--json", metavar="OUT", default=None, help="also write the scores here")
    p.add_argument("--preview", metavar="PREFIX", default=None,
                   help="also write PREFIX-xy.png and PREFIX-xz.png: central sections of "
                        "raw with the segmentation overlaid")
    _cluster_options(p)

    _tune_parser(sub)

    p = sub.add_parser("pyramid", help="coarser levels of arrays for viewers (OME-Zarr)")
    p.add_argument("--input", required=True, metavar="X.zarr")
    add_arguments(p, PyramidOptions)
    _cluster_options(p)

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
    p.add_argument("--init", metavar="MODEL.pt", default=None,
                   help="start from this checkpoint's weights (fine-tuning; same "
                        "architecture as the config's model)")

    _dataset_parsers(sub)
    _view_parser(sub)
    return parser


def _dataset_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The commands about a dataset itself: info, verify, stats."""
    p = sub.add_parser("info", help="list the arrays of a dataset with their metadata")
    p.add_argument("dataset", metavar="X.zarr")
    p = sub.add_parser("verify", help="check that every chunk of every array of a dataset "
                       "is present and decodes (checksums); list the bad ones")
    p.add_argument("dataset", metavar="X.zarr")
    _cluster_options(p, overwrite=False)
    p = sub.add_parser("stats", help="count raw's intensities blockwise and store the "
                       "histogram beside the arrays (for predict --normalize)")
    p.add_argument("--input", required=True, metavar="X.zarr", help="dataset holding 'raw'")
    _cluster_options(p, overwrite=False)


def _tune_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("tune", help="score many segment thresholds of one merge tree "
                       "against truth; keep the best")
    p.add_argument("--input", required=True, metavar="X.zarr",
                   help="dataset holding 'affinities' (and 'labels' unless --truth)")
    add_arguments(p, TuneOptions)
    add_arguments(p, SegmentOptions, exclude=("threshold", "method", "min_size",
                                              "keep_fragments"))
    p.add_argument("--json", metavar="OUT", default=None,
                   help="the table (default: X-tune.json beside the dataset)")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="VOI split vs merge over the thresholds (default: X-tune.png)")
    _cluster_options(p)


def _view_parser(sub: argparse._SubParsersAction[_Parser]) -> None:
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
