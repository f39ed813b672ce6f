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

This module imports nothing heavy (no numpy, torch or dask): ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from .errors import ConfigError, InputNotFoundError, bad_value

__all__ = ["EvaluateOptions", "IngestOptions", "PredictOptions", "PyramidOptions",
           "SampleOptions", "SegmentOptions", "StageOptions", "TuneOptions", "add_arguments"]

Vec3 = tuple[int, int, int]
Vec3f = tuple[float, float, float]
S = TypeVar("S", bound="StageOptions")


class _BadValueError(Exception):
    """A value failed its check; ``expected`` says what was wanted."""

    def __init__(self, expected: str, cls: type[ConfigError] | type[InputNotFoundError]
                 = ConfigError) -> None:
        super().__init__(expected)
        self.expected, self.cls = expected, cls


# ---- checks: value -> normalised value, or _BadValueError ----------------------------


def _int(minimum: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (
                minimum is not None and v < minimum):
            raise _BadValueError("an integer" + (f" >= {minimum}" if minimum is not None else ""))
        return int(v)
    return check


def _number(lo: float, hi: float = math.inf, what: str = "") -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or not lo <= float(v) <= hi:
            raise _BadValueError(what or (f"a number in [{lo:g}, {hi:g}]" if math.isfinite(hi)
                                          else f"a finite number >= {lo:g}"))
        return float(v)
    return check


def _shape(v: Any) -> Vec3:
    """Three whole numbers >= 1 (a shape, block or chunk shape; z y x)."""
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or any(
            isinstance(x, bool) or not isinstance(x, numbers.Real) for x in v):
        raise _BadValueError("a sequence of integers")
    if any(not isinstance(x, numbers.Integral) for x in v):
        raise _BadValueError("whole numbers")
    if len(v) != 3:
        raise _BadValueError("3 values (z y x)")
    if any(x < 1 for x in v):
        raise _BadValueError("every value >= 1")
    z, y, x = (int(x) for x in v)
    return z, y, x


def _thresholds(v: Any) -> tuple[float, ...]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not v:
        raise _BadValueError("a list of thresholds in [0, 1]")
    check = _number(0.0, 1.0)
    return tuple(sorted({check(x) for x in v}))


def _fanout(v: Any) -> Vec3:
    z, y, x = _shape(v)
    if min(z, y, x) < 2:
        raise _BadValueError("3 integers >= 2 (z y x)")
    return z, y, x


def _vector(v: Any) -> Vec3f:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or len(v) != 3 or any(
            isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x)
            or x <= 0 for x in v):
        raise _BadValueError("three positive numbers (nm, z y x)")
    z, y, x = (float(x) for x in v)
    return z, y, x


def _choice(*values: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in values:
            names = [repr(c) for c in values]
            raise _BadValueError(" or ".join([", ".join(names[:-1]), names[-1]] if
                                             len(names) > 2 else names))
        return str(v)
    return check


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _BadValueError("true or false")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v or v.startswith("/"):
        raise _BadValueError("a non-empty name")
    return v


def _names(v: Any) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, Sequence) or not v:
        raise _BadValueError("a list of array names")
    return tuple(_name(x) for x in v)


def _checkpoint(v: Any) -> str:
    if not isinstance(v, str | os.PathLike) or not Path(v).is_file():
        raise _BadValueError("a checkpoint file that exists", InputNotFoundError)
    return os.fspath(v)


def _path(v: Any) -> str:
    if not isinstance(v, str | os.PathLike) or not Path(v).exists():
        raise _BadValueError("an existing dataset", InputNotFoundError)
    return os.fspath(v)


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(v: Any) -> Any:
        return None if v is None else check(v)
    return optional


# ---- declaring options ---------------------------------------------------------------------

#: What a TOML value may be, per kind of check (for the workflow's type message).
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "shape": (list,), "vector": (list,),
    "str": (str,), "bool": (bool,), "list": (list,), "floats": (list,)}


@dataclass(frozen=True)
class _Spec:
    check: Callable[[Any], Any]
    kind: str
    flag: str
    help: str
    cli: dict[str, Any]
    path: bool  # a file path: relative to the workflow file there


def _opt(default: Any, check: Callable[[Any], Any], kind: str, flag: str, help: str, *,
         optional: bool = False, path: bool = False, **cli: Any) -> Any:
    """A stage option: its default, check, kind (TOML type), CLI flag and help."""
    spec = _Spec(_optional(check) if optional else check, kind, flag, help, cli, path)
    return field(default=default, metadata={"spec": spec})


def _spec(f: Any) -> _Spec:
    spec: _Spec = f.metadata["spec"]
    return spec


@dataclass(frozen=True)
class StageOptions:
    """Base of the per-stage options: every field is checked when the object is built."""

    stage: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, self._check(f, getattr(self, f.name),
                                                         _spec(f).flag))

    @staticmethod
    def _check(f: Any, value: Any, label: str) -> Any:
        try:
            return _spec(f).check(value)
        except _BadValueError as bad:
            raise bad_value(label, value, bad.expected, bad.cls) from None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def of(cls: type[S], options: S | None = None, **kwargs: Any) -> S:
        """The API's door: ``options`` (or the defaults) with keyword overrides."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise ConfigError(f"{cls.stage}: got unknown option {unknown[0]!r}, expected one "
                              f"of {cls.names()}")
        if options is not None and not isinstance(options, cls):
            raise bad_value("options", options, f"a {cls.__name__}")
        return replace(options, **kwargs) if options is not None else cls(**kwargs)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any], *, section: str | None = None,
                  base: Path | None = None) -> S:
        """The workflow's door: a TOML table, unknown keys and bad values refused with one
        line naming ``section.key``; paths relative to ``base`` (the workflow's folder)."""
        where = section or cls.stage
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"workflow: got unknown key {where}.{key}, expected one of "
                                  f"{sorted(known)}")
            spec = _spec(f)
            types = _TOML_TYPES[spec.kind]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                expected = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"workflow: got {where}.{key} = {value!r}, expected "
                                  f"{expected}")
            given = value
            if spec.path and base is not None and not Path(str(value)).is_absolute():
                given = os.path.normpath(base / str(value))
            try:
                values[key] = spec.check(given)
            except _BadValueError as bad:
                raise bad.cls(f"workflow: got {where}.{key} = {value!r}, expected "
                              f"{bad.expected}") from None
        return cls(**values)

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace) -> S:
        """The command line's door: the arguments :func:`add_arguments` declared (those
        not given keep the defaults)."""
        return cls(**{n: getattr(args, n) for n in cls.names() if hasattr(args, n)})

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), e.g. to key a run state."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}


def add_arguments(parser: argparse.ArgumentParser, cls: type[StageOptions],
                  exclude: Sequence[str] = ()) -> None:
    """Declare ``cls``'s options (but ``exclude``) on a sub-command; absent ones keep the
    options' defaults."""
    for f in fields(cls):
        if f.name in exclude:
            continue
        spec = _spec(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": spec.help}
        if f.default is not MISSING and f.default is not None and "action" not in spec.cli:
            shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            kwargs["help"] = f"{spec.help} (default {shown})"
        if spec.kind in ("shape", "vector"):
            kwargs.update(nargs=3, metavar=("Z", "Y", "X"),
                          type=int if spec.kind == "shape" else float)
        elif spec.kind in ("int", "float"):
            kwargs["type"] = int if spec.kind == "int" else float
        elif spec.kind == "list":
            kwargs.update(nargs="+")
        elif spec.kind == "floats":
            kwargs.update(nargs="+", type=float)
        kwargs.update(spec.cli)
        parser.add_argument(spec.flag, **kwargs)


# ---- the stages ----------------------------------------------------------------------------

_BLOCK_HELP = "write block, a multiple of the chunk shape (default 256^3 rounded up to chunks)"
_CHUNK_HELP = "chunk shape of the arrays written"


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
    halo: Vec3 | None = _opt(None, _shape, "shape", "--halo", "agglomerate: context read "
                             "around each block for the watershed (default 16 voxels of the "
                             "finest axis, in nm on every axis)", optional=True)
    fanout: Vec3 = _opt((2, 2, 2), _fanout, "shape", "--fanout", "agglomerate: tasks of the "
                        "tree reduction per parent task, per axis (each >= 2)")
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

