"""The argument parser of the ``affinity-dist`` command line (:mod:`affinity_dist.cli`
runs the commands): one sub-command per stage, usage errors as one line and exit 2."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

from .. import __version__

__all__ = ["PROG", "build_parser"]

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
