"""One frozen, validated options object per stage: the only place a stage's options are
listed, typed, defaulted, documented and checked.

The command line builds its sub-commands from these classes (:func:`add_arguments`) and
the options from the parsed arguments (:meth:`StageOptions.from_args`); the Python API
from keyword arguments (:meth:`StageOptions.of`); the workflow loader from its TOML
tables (:meth:`StageOptions.from_dict`, which refuses unknown keys). So a bad value is one
line naming the argument, the value and the expectation, whichever door it came in by,
and a workflow is refused before any cluster starts or any stage runs.

What needs the data (a block aligned to the chunks of an array, a tile fitting the model)
is checked by each stage's ``prepare_*``, which reads metadata but writes nothing.

The checks and the field machinery live in :mod:`affinity_dist.option_fields`.
This module imports nothing heavy (no numpy, torch or dask): ``--help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from .option_fields import (
    StageOptions,
    Vec3,
    Vec3f,
    _checkpoint,
    _choice,
    _fanout,
    _flag,
    _int,
    _name,
    _names,
    _number,
    _opt,
    _path,
    _shape,
    _thresholds,
    _vector,
    add_arguments,
)

__all__ = ["EvaluateOptions", "IngestOptions", "PredictOptions", "PyramidOptions",
           "SampleOptions", "SegmentOptions", "StageOptions", "TuneOptions", "add_arguments"]

_BLOCK_HELP = ("write block, a multiple of the chunk shape (default 256^3, 512^3 for volumes "
               "of more than 2^14 such blocks; rounded up to chunks)")
_CHUNK_HELP = "chunk shape of the arrays written"
_SHARDS = ("auto", "block", "none")
_SHARD_HELP = ("files of the arrays written: block: one Zarr v3 shard per write block (a "
               "file holding its chunks); none: one file per chunk; auto: shards where an "
               "array would have more than 16384 chunk files")


def _shards() -> Literal["auto", "block", "none"]:
    return _opt("auto", _choice(*_SHARDS), "str", "--shards", _SHARD_HELP,  # type: ignore
                choices=_SHARDS)


@dataclass(frozen=True)
class SampleOptions(StageOptions):
    """``affinity-dist sample``: the synthetic volume (deterministic for shape, seed and
    voxel size, whatever the chunks)."""

    stage: ClassVar[str] = "sample"
    shape: Vec3 = _opt((128, 128, 128), _shape, "shape", "--shape", "volume shape")
    seed: int = _opt(0, _int(0), "int", "--seed", "random seed")
    voxel_size: Vec3f = _opt((10.0, 10.0, 10.0), _vector, "vector", "--voxel-size",
                             "nm per voxel")
    chunks: Vec3 = _opt((128, 128, 128), _shape, "shape", "--chunks", _CHUNK_HELP)
    shards: Literal["auto", "block", "none"] = _shards()


@dataclass(frozen=True)
class IngestOptions(StageOptions):
    """``affinity-dist ingest`` (the workflow's ``[input]`` with ``source``)."""

    stage: ClassVar[str] = "ingest"
    raw_key: str | None = _opt(None, _name, "str", "--raw-key", "raw array inside SRC "
                               "(default: volumes/raw, then raw)", optional=True)
    labels_key: str | None = _opt(None, _name, "str", "--labels-key", "labels array inside "
                                  "SRC (default: volumes/labels/neuron_ids, then labels; none "
                                  "if absent)", optional=True)
    mask_key: str | None = _opt(None, _name, "str", "--mask-key", "labels mask inside SRC, "
                                "1 = annotated (default: volumes/labels/mask, then "
                                "labels_mask; none if absent)", optional=True)
    voxel_size: Vec3f | None = _opt(None, _vector, "vector", "--voxel-size", "nm per voxel "
                                    "(default: from SRC's resolution attribute)", optional=True)
    rescale: bool = _opt(False, _flag, "bool", "--rescale", "map a non-uint8 raw's "
                         "[min, max] onto 0-255", action="store_true")
    chunks: Vec3 = _opt((128, 128, 128), _shape, "shape", "--chunks", _CHUNK_HELP)
    shards: Literal["auto", "block", "none"] = _shards()


@dataclass(frozen=True)
class PredictOptions(StageOptions):
    """``affinity-dist predict``: raw -> affinities with a U-Net checkpoint."""

    stage: ClassVar[str] = "predict"
    model: str | None = _opt(None, _checkpoint, "str", "--model", "checkpoint (a training run's "
                             "model.pt; default: the shipped model)", optional=True,
                             path=True, metavar="CKPT")
    block: Vec3 | None = _opt(None, _shape, "shape", "--block", _BLOCK_HELP, optional=True)
    tile: Vec3 | None = _opt(None, _shape, "shape", "--tile", "network output tile, a "
                             "multiple of the model's step (default up to 64^3 on CPU, "
                             "128^3 on GPU)", optional=True)
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", _choice("auto", "cpu", "cuda"), "str",
                                                  "--device", "where the network runs",
                                                  choices=("auto", "cpu", "cuda"))
    precision: Literal["auto", "bf16", "fp32"] = _opt(
        "auto", _choice("auto", "bf16", "fp32"), "str", "--precision",
        "bf16 weights and activations or full fp32; auto: bf16 on GPUs and on CPUs with "
        "native bf16 (AVX512-BF16, AMX), else fp32", choices=("auto", "bf16", "fp32"))
    dtype: Literal["uint8", "float32"] = _opt(
        "uint8", _choice("uint8", "float32"), "str", "--float",
        "write float32 affinities instead of uint8 0-255", action="store_const",
        const="float32")
    batch: int = _opt(1, _int(1), "int", "--batch", "tiles per forward pass")
    chunks: Vec3 | None = _opt(None, _shape, "shape", "--chunks", _CHUNK_HELP +
                               " (default: raw's chunks)", optional=True)
    shards: Literal["auto", "block", "none"] = _shards()
    normalize: Literal["none", "histogram", "percentiles"] = _opt(
        "none", _choice("none", "histogram", "percentiles"), "str", "--normalize",
        "map raw's intensities onto the model's training intensities first: histogram "
        "matching, or its 1st/99th percentiles onto theirs (needs 'affinity-dist stats' "
        "on the input and a model that records its training histogram)",
        choices=("none", "histogram", "percentiles"))
    resample: bool = _opt(False, _flag, "bool", "--resample", "run the model at the voxel "
                          "size it was trained at: raw resampled to it block by block, the "
                          "affinities mapped back onto raw's grid", action="store_true")
    long_range: bool = _opt(False, _flag, "bool", "--long-range", "also write the model's "
                            "long-range affinities, after the nearest three (the offsets "
                            "attribute lists every channel's offset)", action="store_true")


@dataclass(frozen=True)
class SegmentOptions(StageOptions):
    """``affinity-dist segment``: affinities -> fragments -> merged segmentation."""

    stage: ClassVar[str] = "segment"
    method: Literal["agglomerate", "cc"] = _opt(
        "agglomerate", _choice("agglomerate", "cc"), "str", "--method",
        "agglomerate: watershed fragments merged by mean affinity (exact at any block "
        "shape); cc: connected components of the thresholded affinities",
        choices=("agglomerate", "cc"))
    threshold: float | None = _opt(None, _number(0.0, 1.0), "float", "--threshold",
                                   "agglomerate: merge regions whose mean contact affinity "
                                   "is above this (default 0.5); cc: join voxels whose "
                                   "affinity is above this (default 0.5)", optional=True,
                                   metavar="T")
    block: Vec3 | None = _opt(None, _shape, "shape", "--block", _BLOCK_HELP, optional=True)
    min_size: int = _opt(0, _int(0), "int", "--min-size", "segments smaller than N voxels "
                         "merge into their best neighbour (agglomerate) or become "
                         "background 0 (cc)", metavar="N")
    keep_fragments: bool = _opt(True, _flag, "bool", "--no-fragments", "do not write the "
                                "'fragments' array (cc only: agglomerate always writes it)",
                                action="store_false")
    chunks: Vec3 | None = _opt(None, _shape, "shape", "--chunks", _CHUNK_HELP +
                               " (default: the affinities' chunks)", optional=True)
    shards: Literal["auto", "block", "none"] = _shards()
    seeds: Literal["cores", "distance"] = _opt(
        "cores", _choice("cores", "distance"), "str", "--seeds", "agglomerate: watershed "
        "seeds: cores (components of affinities above the seed threshold, at least "
        "--min-seed-size voxels) or distance (maxima of the distance to boundaries)",
        choices=("cores", "distance"))
    seed_threshold: float | None = _opt(None, _number(0.0, 0.999), "float",
                                        "--seed-threshold", "agglomerate: cores: edges above "
                                        "it join a core (default 0.98); distance: voxels of "
                                        "mean affinity above it are inside (default 0.5)",
                                        optional=True, metavar="T")
    min_seed_size: int = _opt(1000, _int(1), "int", "--min-seed-size", "agglomerate: "
                              "smallest core seeding a fragment, voxels", metavar="N")
    min_seed_distance: float = _opt(10.0, _number(0.5, 1000.0), "float",
                                    "--min-seed-distance", "agglomerate: distance seeds: "
                                    "window of the maxima, in voxels of the finest axis",
                                    metavar="D")
    per_section: bool = _opt(False, _flag, "bool", "--per-section", "agglomerate: 2D "
                             "fragments, each within one z section (anisotropic data)",
                             action="store_true")
    within_sections: bool = _opt(False, _flag, "bool", "--within-sections", "agglomerate: "
                                 "segment every z section on its own (2D fragments from the "
                                 "in-plane affinities, no merge across sections): serial "
                                 "sections with 2D labels, or z affinities a model never "
                                 "learnt", action="store_true")
    halo: Vec3 | None = _opt(None, _shape, "shape", "--halo", "agglomerate: context read "
                             "around each block for the watershed (default 16 voxels of the "
                             "finest axis, in nm on every axis)", optional=True)
    fanout: Vec3 = _opt((2, 2, 2), _fanout, "shape", "--fanout", "tasks of the tree reduction "
                        "(either method) per parent task, per axis (each >= 2)")
    floor: float = _opt(0.0, _number(0.0, 1.0), "float", "--floor", "agglomerate: merges "
                        "scoring at or below this are not computed (thresholds below it need "
                        "a new merge tree)", metavar="T")


@dataclass(frozen=True)
class EvaluateOptions(StageOptions):
    """``affinity-dist evaluate``: VOI, adapted Rand and CREMI score against truth."""

    stage: ClassVar[str] = "evaluate"
    truth: str | None = _opt(None, _path, "str", "--truth", "dataset holding the "
                             "ground-truth labels (default: the input)", optional=True,
                             path=True, metavar="Y.zarr")
    segmentation: str = _opt("segmentation", _name, "str", "--segmentation", "array to score")
    labels: str = _opt("labels", _name, "str", "--labels", "ground-truth array")
    block: Vec3 | None = _opt(None, _shape, "shape", "--block", "block read per task, a "
                              "multiple of the chunks (default 256^3)", optional=True)
    min_truth_size: int = _opt(0, _int(0), "int", "--min-truth-size", "leave out truth "
                               "objects smaller than N voxels", metavar="N")
    top: int = _opt(5, _int(0), "int", "--top", "worst objects to list")
    boundary_tolerance: float = _opt(0.0, _number(0.0, what="a finite number >= 0 (nm)"),
                                     "float", "--boundary-tolerance", "ignore truth voxels "
                                     "within NM nm of a truth boundary in their xy section, "
                                     "as CREMI does (0: off)", metavar="NM")


@dataclass(frozen=True)
class PyramidOptions(StageOptions):
    """``affinity-dist pyramid``: coarser levels of arrays for viewers (OME-Zarr)."""

    stage: ClassVar[str] = "pyramid"
    arrays: tuple[str, ...] | None = _opt(None, _names, "list", "--arrays", "arrays to "
                                          "downsample (default: raw, labels, segmentation, "
                                          "fragments, affinities where present)",
                                          optional=True, metavar="NAME")
    levels: int | None = _opt(None, _int(1), "int", "--levels", "levels below the full "
                              "resolution (default: until <= 32 voxels)", optional=True)
    block: Vec3 = _opt((256, 256, 256), _shape, "shape", "--block", "block per task at each "
                       "level (rounded down to whole chunks, at least one)")
    chunks: Vec3 | None = _opt(None, _shape, "shape", "--chunks", _CHUNK_HELP + " (default: "
                               "each array's chunks, clipped to the level's shape)",
                               optional=True)
    shards: Literal["auto", "block", "none"] = _shards()


@dataclass(frozen=True)
class TuneOptions(StageOptions):
    """``affinity-dist tune``: scores of many thresholds of one merge tree."""

    stage: ClassVar[str] = "tune"
    thresholds: tuple[float, ...] = _opt(
        tuple(round(0.2 + 0.05 * i, 2) for i in range(13)), _thresholds, "floats",
        "--thresholds", "mean-affinity thresholds to score",
        metavar="T")
    truth: str | None = _opt(None, _path, "str", "--truth", "dataset holding the ground-truth "
                             "labels (default: the input)", optional=True, path=True,
                             metavar="Y.zarr")
    labels: str = _opt("labels", _name, "str", "--labels", "ground-truth array")

