"""Workflow files: one validated, frozen description of a whole run (TOML).

::

    output = "run.zarr"                  # the dataset the run writes
    stages = ["ingest", "predict", "segment", "evaluate"]

    [input]
    source = "cremi_A.h5"                # ingested into `output`; or
    # dataset = "sample.zarr"            # an existing dataset (then output = it)
    voxel_size = [40, 4, 4]              # ingest options: raw_key, labels_key, rescale, chunks

    [predict]                            # model (default: the shipped one), block, tile,
    model = "models/fib25/model.pt"      # device, precision
    [segment]                            # threshold, block, min_size, keep_fragments
    threshold = 0.5
    [evaluate]                           # min_truth_size, top, preview (default true)
    [cluster]                            # scheduler ("local", an address, "threads",
    scheduler = "local"                  # "slurm"), workers
    # [cluster.slurm]                    # with scheduler = "slurm": partition, cores, memory,
    # jobs = 4                           # walltime, ... (see affinity_dist.slurm)

Unknown keys and wrong types are refused with one line naming the key (exit 2); relative
paths are relative to the workflow file. :func:`load_workflow` reads and validates;
nothing else touches the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputNotFoundError

__all__ = ["STAGES", "Workflow", "load_workflow"]

STAGES = ("ingest", "predict", "segment", "evaluate")
_SECTIONS: dict[str, dict[str, tuple[type, ...]]] = {
    "input": {"source": (str,), "dataset": (str,), "raw_key": (str,), "labels_key": (str,),
              "voxel_size": (list,), "rescale": (bool,), "chunks": (list,)},
    "predict": {"model": (str,), "block": (list,), "tile": (list,), "device": (str,),
                "precision": (str,), "dtype": (str,), "batch": (int,)},
    "segment": {"threshold": (float, int), "block": (list,), "min_size": (int,),
                "keep_fragments": (bool,)},
    "evaluate": {"min_truth_size": (int,), "top": (int,), "preview": (bool,),
                 "block": (list,), "boundary_tolerance": (float, int)},
    "cluster": {"scheduler": (str,), "workers": (int,), "slurm": (dict,)},
}
_PATHS = {("input", "source"), ("input", "dataset"), ("predict", "model")}


@dataclass(frozen=True)
class Workflow:
    """A validated workflow: what to run, on what, with which options."""

    file: str
    output: str
    stages: tuple[str, ...]
    input: Mapping[str, Any] = field(default_factory=dict)
    predict: Mapping[str, Any] = field(default_factory=dict)
    segment: Mapping[str, Any] = field(default_factory=dict)
    evaluate: Mapping[str, Any] = field(default_factory=dict)
    cluster: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scheduler(self) -> str:
        return str(self.cluster.get("scheduler", "local"))


def _check_section(name: str, values: Any, base: Path) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"workflow: got {name} = {values!r}, expected a table [{name}]")
    known = _SECTIONS[name]
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"workflow: got unknown key {name}.{key}, expected one of "
                              f"{sorted(known)}")
        types = known[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"workflow: got {name}.{key} = {value!r}, expected {expected}")
        out[key] = _resolve(base, str(value)) if (name, key) in _PATHS else value
    return out


def _check_cluster(cluster: dict[str, Any], base: Path) -> None:
    """``workers`` >= 1; ``[cluster.slurm]`` validated (defaults filled in) exactly when the
    scheduler is ``"slurm"``, which takes its size from there rather than ``workers``."""
    workers, scheduler = cluster.get("workers"), cluster.get("scheduler", "local")
    if workers is not None and workers < 1:
        raise ConfigError(f"workflow: got cluster.workers = {workers}, expected >= 1")
    if scheduler != "slurm" and "slurm" in cluster:
        raise ConfigError(f"workflow: got [cluster.slurm] with cluster.scheduler = "
                          f"{scheduler!r}, expected scheduler = 'slurm'")
    if scheduler == "slurm":
        from .slurm import check_options

        if workers is not None:
            raise ConfigError(f"workflow: got cluster.workers = {workers} with scheduler "
                              "'slurm', expected cluster.slurm.jobs and processes instead")
        cluster["slurm"] = check_options(cluster.get("slurm", {}), base)


def _resolve(base: Path, path: str) -> str:
    """A path of the workflow file, relative to the file's folder unless absolute."""
    return path if Path(path).is_absolute() else os.path.normpath(base / path)


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file (TOML)."""
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
    sections = {name: _check_section(name, data.get(name, {}), base) for name in _SECTIONS}
    stages = data.get("stages", list(STAGES))
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise ConfigError(f"workflow: got stages = {stages!r}, expected a list of "
                          f"{list(STAGES)}")
    stages = [s for s in STAGES if s in stages]  # always in pipeline order
    source, dataset = sections["input"].get("source"), sections["input"].get("dataset")
    if (source is None) == (dataset is None):
        raise ConfigError("workflow: got input with "
                          f"{'both' if source else 'neither'} source and dataset, expected "
                          "exactly one of input.source (to ingest) or input.dataset")
    if source is not None and not Path(source).exists():
        raise InputNotFoundError(f"workflow: got input.source = {source!r}, expected an "
                                 "existing file or directory")
    if dataset is not None and not Path(dataset).exists():
        raise InputNotFoundError(f"workflow: got input.dataset = {dataset!r}, expected an "
                                 "existing dataset")
    output = data.get("output")
    if dataset is not None:
        if "ingest" in stages and "stages" in data:
            raise ConfigError("workflow: got stage 'ingest' with input.dataset, expected "
                              "input.source to ingest (or no ingest stage)")
        stages = [s for s in stages if s != "ingest"]
        output = output if output is not None else dataset
    if not isinstance(output, str):
        raise ConfigError(f"workflow: got output = {output!r}, expected the path of the "
                          "dataset to write")
    output = _resolve(base, output)
    if dataset is not None and Path(output).resolve() != Path(dataset).resolve():
        raise ConfigError(f"workflow: got output = {output!r} with input.dataset = "
                          f"{dataset!r}, expected the same path (the run adds its arrays)")
    _check_cluster(sections["cluster"], base)
    return Workflow(str(file), output, tuple(stages),
                    **{f.name: sections[f.name] for f in fields(Workflow) if f.name in sections})
