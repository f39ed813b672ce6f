"""run_blocks: results in order, failures name the block, our own errors pass through."""

from __future__ import annotations

import pytest

from affinity_dist.errors import BlockFailedError, DataError
from affinity_dist.scheduling import run_blocks


def _work(block: int) -> int:
    if block == 3:
        raise ValueError("boom")
    if block == 4:
        raise DataError("affinities: block 4 holds NaN")
    return block * 10


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_failures_name_the_block(scheduler: str) -> None:
    assert run_blocks(_work, [0, 1, 2], scheduler=scheduler, progress=False) == [0, 10, 20]
    with pytest.raises(BlockFailedError,
                       match=r"demo: block 3 failed after 3 attempts: ValueError: boom"):
        run_blocks(_work, [0, 3], stage="demo", scheduler=scheduler, progress=False)
    with pytest.raises(DataError, match="block 4 holds NaN"):  # exit 2, not 1
        run_blocks(_work, [4], scheduler=scheduler, progress=False)
