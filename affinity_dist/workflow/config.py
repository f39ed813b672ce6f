"""Workflow files: one validated, frozen description of a whole run (TOML).

::

    output = "run.zarr"                  # the dataset the run writes
    stages = ["ingest", "predict", "segment", "evaluate"]

    [input]
    source = "cremi_A.h5"                # ingested into `output`; or
    # dataset = "sample.zarr"            # an existing dataset (then output = it)
    voxel_size = [40, 4, 4]              # with source: the fields of IngestOptions

    [predict]                            # the fields of PredictOptions
    model = "models/fib25/model.pt"
    [segment]                            # SegmentOptions
    threshold = 0.5
    [evaluate]                           # EvaluateOptions, and preview (default true)
    [cluster]                            # scheduler ("local", an address, "threads",
    scheduler = "local"                  # "slurm"), workers
    # [cluster.slurm]                    # with scheduler = "slurm": see
    # jobs = 4                           # affinity_dist.workflow.slurm

Every table is validated by the stage's options object (:mod:`affinity_dist.options`):
unknown keys, wrong types and bad values are refused with one line naming the key
(exit 2) when the file is loaded, before any cluster starts or any stage runs. Relative
paths are relative to the workflow file. :func:`load_workflow` reads and validates;
nothing else touches the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputNotFoundError
from ..options import EvaluateOptions, IngestOptions, PredictOptions, SegmentOptions
from ..storage.location import as_path, is_remote, same_place

__all__ = ["STAGES", "Workflow", "load_workflow"]

STAGES = ("ingest", "predict", "segment", "evaluate")
_CLUSTER: dict[str, tuple[type, ...]] = {"scheduler": (str,), "workers": (int,),
                                         "slurm": (dict,)}
_SECTIONS = ("input", "predict", "segment", "evaluate", "cluster")


@dataclass(frozen=True)
class Workflow:
    """A validated workflow: what to run, on what, with which options."""

    file: str
    output: str
    stages: tuple[str, ...]
    source: str | None = None  # to ingest into ``output``; else ``output`` exists already
    ingest: IngestOptions = field(default_factory=IngestOptions)
    predict: PredictOptions = field(default_factory=PredictOptions)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    evaluate: EvaluateOptions = field(default_factory=EvaluateOptions)
    preview: bool = True
    cluster: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scheduler(self) -> str:
        return str(self.cluster.get("scheduler", "local"))


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    values = data.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"workflow: got {name} = {values!r}, expected a table [{name}]")
    return dict(values)


def _pop_path(table: dict[str, Any], key: str, base: Path) -> str | None:
    value = table.pop(key, None)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"workflow: got input.{key} = {value!r}, expected str")
    return None if value is None else _resolve(base, value)


def _check_cluster(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Keys and types; ``workers`` >= 1; ``[cluster.slurm]`` validated (defaults filled in)
    exactly when the scheduler is ``"slurm"``, which takes its size from there rather
    than ``workers``."""
    for key, value in values.items():
        types = _CLUSTER.get(key)
        if types is None:
            raise ConfigError(f"workflow: got unknown key cluster.{key}, expected one of "
                              f"{sorted(_CLUSTER)}")
        if not isinstance(value, types) or isinstance(value, bool):
            expected = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"workflow: got cluster.{key} = {value!r}, expected {expected}")
    workers, scheduler = values.get("workers"), values.get("scheduler", "local")
    if workers is not None and workers < 1:
        raise ConfigError(f"workflow: got cluster.workers = {workers}, expected >= 1")
    if scheduler != "slurm" and "slurm" in values:
        raise ConfigError(f"workflow: got [cluster.slurm] with cluster.scheduler = "
                          f"{scheduler!r}, expected scheduler = 'slurm'")
    if scheduler == "slurm":
        from .slurm import check_options

        if workers is not None:
            raise ConfigError(f"workflow: got cluster.workers = {workers} with scheduler "
                              "'slurm', expected cluster.slurm.jobs and processes instead")
        values["slurm"] = check_options(values.get("slurm", {}), base)
    return values


def _resolve(base: Path, path: str) -> str:
    """A path of the workflow file, relative to the file's folder unless absolute or a
    store URL."""
    if is_remote(path) or Path(path).is_absolute():
        return path
    return os.path.normpath(base / path)


def _stages(data: Mapping[str, Any]) -> list[str]:
    stages = data.get("stages", list(STAGES))
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise ConfigError(f"workflow: got stages = {stages!r}, expected a list of "
                          f"{list(STAGES)}")
    return [s for s in STAGES if s in stages]  # always in pipeline order


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file (TOML): every option of every stage."""
    file = Path(path)
    if not file.is_file():
        raise InputNotFoundError(f"WORKFLOW: got {str(path)!r}, expected an existing file")
    try:
        data = tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"WORKFLOW: got {str(path)!r}, expected valid TOML ({err})") from None
    base = file.resolve().parent
    allowed = {"output", "stages", *_SECTIONS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"workflow: got unknown key {unknown[0]!r}, expected one of "
                          f"{sorted(allowed)}")
    inp = _table(data, "input")
    source, dataset = _pop_path(inp, "source", base), _pop_path(inp, "dataset", base)
    ingest = IngestOptions.from_dict(inp, section="input", base=base)
    predict = PredictOptions.from_dict(_table(data, "predict"), base=base)
    segment = SegmentOptions.from_dict(_table(data, "segment"), base=base)
    evaluate = _table(data, "evaluate")
    preview = evaluate.pop("preview", True)
    if not isinstance(preview, bool):
        raise ConfigError(f"workflow: got evaluate.preview = {preview!r}, expected bool")
    evaluation = EvaluateOptions.from_dict(evaluate, base=base)
    stages = _stages(data)
    if (source is None) == (dataset is None):
        raise ConfigError("workflow: got input with "
                          f"{'both' if source else 'neither'} source and dataset, expected "
                          "exactly one of input.source (to ingest) or input.dataset")
    if source is not None and not as_path(source).exists():
        raise InputNotFoundError(f"workflow: got input.source = {source!r}, expected an "
                                 "existing file or directory")
    if dataset is not None and not as_path(dataset).exists():
        raise InputNotFoundError(f"workflow: got input.dataset = {dataset!r}, expected an "
                                 "existing dataset")
    output = data.get("output")
    if dataset is not None:
        if "ingest" in stages and "stages" in data:
            raise ConfigError("workflow: got stage 'ingest' with input.dataset, expected "
                              "input.source to ingest (or no ingest stage)")
        if inp:
            raise ConfigError(f"workflow: got input.{sorted(inp)[0]} with input.dataset, "
                              "expected ingest options only with input.source")
        stages = [s for s in stages if s != "ingest"]
        output = output if output is not None else dataset
    if not isinstance(output, str):
        raise ConfigError(f"workflow: got output = {output!r}, expected the path of the "
                          "dataset to write")
    output = _resolve(base, output)
    if dataset is not None and not same_place(output, dataset):
        raise ConfigError(f"workflow: got output = {output!r} with input.dataset = "
                          f"{dataset!r}, expected the same path (the run adds its arrays)")
    cluster = _check_cluster(_table(data, "cluster"), base)
    return Workflow(str(file), output, tuple(stages), source, ingest, predict, segment,
                    evaluation, preview, cluster)
