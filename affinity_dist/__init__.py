"""affinity_dist: chunked, out-of-core, distributed affinity-based neuron segmentation.

EM volumes in chunked Zarr -> 3D U-Net affinities per block (with halos) -> per-block
connected components -> global union-find over block faces -> relabelled segmentation.

The Python API mirrors the CLI; each stage takes arrays or paths, an optional
``distributed.Client`` and keyword options::

    import affinity_dist as ad
    ad.sample("sample.zarr", shape=(128, 128, 128), seed=1)
    ad.ingest("cremi_A.h5", "A.zarr", voxel_size=(40, 4, 4))
    ad.predict("A.zarr")                      # the shipped model unless model=...
    ad.segment("A.zarr", threshold=0.5)

Nothing heavy (torch) is imported by ``import affinity_dist``; stages that need it
import it when called.
"""

from __future__ import annotations

from .errors import (
    AffinityDistError,
    BlockFailedError,
    ConfigError,
    DataError,
    DestinationExistsError,
    InputNotFoundError,
)
from .stages.evaluate import evaluate
from .stages.ingest import ingest
from .stages.predict import predict
from .stages.sample import sample
from .stages.segment import segment
from .training.train import train

__version__ = "0.1.0"

__all__ = [
    "AffinityDistError",
    "BlockFailedError",
    "ConfigError",
    "DataError",
    "DestinationExistsError",
    "InputNotFoundError",
    "__version__",
    "evaluate",
    "ingest",
    "predict",
    "sample",
    "segment",
    "train",
]
