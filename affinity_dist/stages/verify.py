"""``affinity-dist verify``: check every chunk of every array of a dataset, blockwise.

Each chunk file must exist (the project writes every chunk) and decode: its CRC-32C (on
arrays written with checksums), its compressor and its size. Tasks of about
:data:`CHUNKS_PER_TASK` chunks each run on the cluster; the result lists every bad chunk
as ``array: chunk KEY is missing`` / ``does not decode (...)``. Read-only: it takes no
writer lease and changes nothing.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import AffinityDistError
from ..runtime.scheduling import LocalScheduler, run_blocks
from ..storage.location import as_path

__all__ = ["CHUNKS_PER_TASK", "DamageFoundError", "VerifyReport", "verify"]

CHUNKS_PER_TASK = 64


class DamageFoundError(AffinityDistError):
    """``verify`` found bad chunks (listed on stdout by the command)."""

    exit_code = 1


@dataclass(frozen=True)
class VerifyReport:
    arrays: int
    chunks: int
    bad: list[str]


@dataclass(frozen=True)
class _Task:
    dataset: str

    def __call__(self, item: tuple[str, int, int]) -> list[str]:
        from ..storage import open_volume
        from ..storage.integrity import chunk_counts, verify_chunks

        name, start, stop = item
        array = open_volume(self.dataset, name).array
        counts = chunk_counts(array)
        coords = [tuple(int(i) for i in np.unravel_index(i, counts))
                  for i in range(start, stop)]
        return verify_chunks(array, name, coords)


def verify(dataset: str | os.PathLike[str], *, client: Any | None = None,
           scheduler: LocalScheduler = "threads", progress: bool = True) -> VerifyReport:
    """Check every chunk of every array under ``dataset`` (module docstring)."""
    from ..storage import list_arrays, open_dataset, open_volume
    from ..storage.integrity import chunk_counts

    open_dataset(dataset)  # one line for a path that is not a dataset
    items: list[tuple[str, int, int]] = []
    total = 0
    names = list_arrays(dataset)
    for name in names:
        n = math.prod(chunk_counts(open_volume(dataset, name).array))
        total += n
        items += [(name, a, min(a + CHUNKS_PER_TASK, n)) for a in range(0, n, CHUNKS_PER_TASK)]
    found = run_blocks(_Task(str(as_path(dataset))), items, client=client, stage="verify",
                       scheduler=scheduler, progress=progress, retries=0)
    return VerifyReport(len(names), total, [line for lines in found for line in lines])
