"""affinity_dist: chunked, out-of-core, distributed affinity-based neuron segmentation.

EM volumes in chunked Zarr -> 3D U-Net affinities per block (with halos) -> per-block
connected components -> global union-find over block faces -> relabelled segmentation.

The package's folders are its layers: ``kernels/`` (pure numpy per-block algorithms),
``storage/`` (the only code that touches Zarr), ``runtime/`` (Dask clusters, block
scheduling, run state), ``nn/`` (the U-Net, checkpoints, inference), ``training/``,
``stages/`` (one module per pipeline stage), ``workflow/`` (workflow files, ``run``,
SLURM), ``viewers/`` and ``cli/``; ``options.py`` holds every stage's options.

The Python API mirrors the CLI; each stage takes arrays or paths, an optional
``distributed.Client`` and keyword options::

    import affinity_dist as ad
    ad.sample("sample.zarr", shape=(128, 128, 128), seed=1)
    ad.ingest("cremi_A.h5", "A.zarr", voxel_size=(40, 4, 4))
    ad.predict("A.zarr")                      # the shipped model unless model=...
    ad.segment("A.zarr", threshold=0.5)     # or ad.segment("A.zarr", SegmentOptions(...))

Nothing heavy is imported by ``import affinity_dist``: each API function is imported
from its stage module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AffinityDistError,
    BlockFailedError,
    ConfigError,
    DataError,
    DestinationExistsError,
    InputNotFoundError,
)
from .options import (
    EvaluateOptions,
    IngestOptions,
    PredictOptions,
    PyramidOptions,
    SampleOptions,
    SegmentOptions,
)

if TYPE_CHECKING:
    from .stages.evaluate import evaluate
    from .stages.ingest import ingest
    from .stages.predict import predict
    from .stages.pyramid import pyramid
    from .stages.sample import sample
    from .stages.segment import segment
    from .training.train import train

__version__ = "0.1.0"

#: The API functions, each imported from its module on first use (``import affinity_dist``
#: and ``affinity-dist --help`` import neither numpy, zarr, dask nor torch).
_API = {"evaluate": "stages.evaluate", "ingest": "stages.ingest", "predict": "stages.predict",
        "pyramid": "stages.pyramid", "sample": "stages.sample", "segment": "stages.segment",
        "train": "training.train"}

__all__ = [
    "AffinityDistError",
    "BlockFailedError",
    "ConfigError",
    "DataError",
    "DestinationExistsError",
    "EvaluateOptions",
    "IngestOptions",
    "InputNotFoundError",
    "PredictOptions",
    "PyramidOptions",
    "SampleOptions",
    "SegmentOptions",
    "__version__",
    "evaluate",
    "ingest",
    "predict",
    "pyramid",
    "sample",
    "segment",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        function = getattr(import_module(f".{_API[name]}", __name__), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
