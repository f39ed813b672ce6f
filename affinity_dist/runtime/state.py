"""Run state: which blocks of which stage are done, under which configuration.

A stage's result is decided by its *key*: a hash of its inputs' identities (the key the
upstream stage stamped on its output array, or the array's metadata), the model checksum,
the options that change the result (threshold, block, tile, ...) and the stage's code
version. The state lives beside the arrays, in ``<dataset>/_run_state/<stage>/``::

    key.json                 the key and the configuration it hashes (written first)
    done/<pass>/<seq>-<w>.npz  the markers of the pass's finished blocks, in batches
                             written by the client as results arrive (:mod:`.donelog`),
                             each after its block's data: the block's (small) result for
                             the driver, and the files it wrote with their sizes and
                             CRC-32 (:mod:`.markers`: data, never pickle)
    complete.json            written last, after a coverage check: every block has a
                             marker whose files are on disk with the recorded sizes

A rerun with the same key finds ``complete.json`` and skips the stage (0 blocks); after
an interruption it computes only the blocks without a marker that verifies: a marker of
another key, step or block, or whose files are missing or changed (read back and their
CRC-32 compared), is not trusted and its block is computed again. Nothing is inferred
from which chunk files happen to exist. Batches are written atomically (temporary name,
then rename), so a block killed halfway, or finished in the last seconds before the
client was killed, has no marker and is computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from ..errors import AffinityDistError, BlockFailedError
from ..storage import write_json
from ..storage.journal import chunk_files, digests, journal, mismatch
from ..storage.location import (
    as_path,
    make_dirs,
    move_tree,
    mtime_ns,
    remove_empty_dir,
    remove_tree,
)
from .donelog import DoneLog
from .markers import Marker
from .scheduling import BlockCounts, run_blocks

__all__ = ["STATE_DIR", "StageState", "array_key", "digest", "recording", "run_recorded"]

log = logging.getLogger(__name__)

STATE_DIR = "_run_state"
T = TypeVar("T")
#: A task's outputs for a block: (array name in the dataset, selection) pairs.
Outputs = Callable[[int], Sequence[tuple[str, tuple[slice, ...]]]]
R = TypeVar("R")


def digest(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def array_key(dataset: str | os.PathLike[str], name: str) -> str:
    """The identity of an input array: the key of the stage that wrote it, or (for arrays
    made elsewhere, e.g. by ``sample``) its shape, dtype and metadata file's mtime."""
    from ..storage import open_volume

    volume = open_volume(dataset, name)
    key = volume.attrs.get("run_key")
    if isinstance(key, str):
        return key
    stamp = mtime_ns(as_path(dataset) / name / "zarr.json")
    return digest({"shape": list(volume.shape), "dtype": str(volume.dtype), "mtime": stamp})


@dataclass(frozen=True)
class _Recorded:
    """Run ``fn(block)`` on a worker and return the block's marker for the client to
    record: its result and the files it wrote (sizes and CRC-32, read back after the
    writes)."""

    fn: Callable[[Any], Any]
    dataset: str
    step: str
    key: str

    def __call__(self, block: int) -> Marker:
        with journal() as written:
            result = self.fn(block)
        return Marker(self.step, block, self.key, digests(written, self.dataset), result)


@dataclass(frozen=True)
class StageState:
    """The run state of one stage of one dataset under one configuration."""

    root: str
    key: str
    config: Mapping[str, Any]

    @classmethod
    def of(cls, dataset: str | os.PathLike[str], stage: str,
           config: Mapping[str, Any]) -> StageState:
        """The state of ``stage`` for ``config`` (reads nothing, writes nothing)."""
        full = {"stage": stage, **config}
        return cls(str(as_path(dataset) / STATE_DIR / stage), digest(full), full)

    def _read(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((as_path(self.root) / name).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def complete(self) -> bool:
        """Whether a run with this key finished the stage (every block recorded)."""
        return self._read("complete.json").get("key") == self.key

    def begin(self, keep: bool = True) -> bool:
        """Prepare to run: keep the blocks done under this key (returns True: resuming) or
        start afresh (a different or no key, a finished stage, or ``keep`` False because
        the caller's partial outputs are gone: earlier records are removed)."""
        root = as_path(self.root)
        if keep and self._read("key.json").get("key") == self.key and not self.complete:
            return True
        if (root / "complete.json").exists():  # the finished run whose outputs stand:
            move_tree(root, self._previous)  # kept until this one finishes
        else:
            remove_tree(root)
        make_dirs(root)
        write_json(root / "key.json", {"key": self.key, "config": self.config})
        return False

    @property
    def _previous(self) -> Path:
        return as_path(f"{self.root}.previous")

    def discard(self) -> None:
        """Forget this stage's records (a run stopped by bad input: nothing to resume); the
        record of the finished run it was to replace is put back, as its outputs are."""
        remove_tree(as_path(self.root))
        if self._previous.exists():
            move_tree(self._previous, as_path(self.root))
        remove_empty_dir(as_path(self.root).parent)  # when it held only this

    @property
    def dataset(self) -> Path:
        return as_path(self.root).parent.parent

    def folder(self, step: str) -> Path:
        return as_path(self.root) / "done" / step

    def log(self, step: str) -> DoneLog:
        """The batch files of ``step``'s markers (:mod:`.donelog`)."""
        return DoneLog(self.folder(step))

    def done(self, step: str) -> set[int]:
        """Blocks of ``step`` with a marker (not yet verified: :meth:`verified`)."""
        return set(self.log(step).read()[0])

    def _check(self, step: str, marker: Marker, content: bool, outputs: Outputs | None
               ) -> str | None:
        if (marker.step, marker.key) != (step, self.key):
            return f"it is a marker of {marker.step} under key {marker.key}"
        if outputs is not None:
            expected: set[str] = set()
            for name, selection in outputs(marker.block):
                expected |= chunk_files(self.dataset, name, selection)
            absent = sorted(expected - {entry[0] for entry in marker.files})
            if absent:
                return f"it does not list {absent[0]}, which the block writes"
        return mismatch(marker.files, self.dataset, content=content)

    def _verify(self, step: str, wanted: NDArray[np.bool_], keep: Callable[[Marker], None],
                *, content: bool, outputs: Outputs | None) -> None:
        """``keep(marker)`` for each block set in ``wanted`` (:func:`block_mask`) whose
        latest marker verifies, reading the batches one at a time (the client never holds
        every marker)."""
        unreadable: list[tuple[Path, str]] = []
        bad: list[str] = []
        with ThreadPoolExecutor(max_workers=8) as pool:  # zlib.crc32 releases the GIL
            for batch in self.log(step).latest(wanted.size, unreadable):
                mine = [m for m in batch if wanted[m.block]]
                checks = pool.map(lambda m: self._check(step, m, content, outputs), mine)
                for marker, problem in zip(mine, checks, strict=True):
                    if problem is None:
                        keep(marker)
                    else:
                        bad.append(f"block {marker.block}: {problem}")
        for path, problem in unreadable:
            bad.append(f"{path.name}: {problem}")
            path.unlink(missing_ok=True)  # nothing in it can be used
        if bad:  # a later marker of the same block, once it is computed again, supersedes
            log.warning("%s: %d done markers not trusted, their blocks are computed again "
                        "(first: %s)", step, len(bad), bad[0])

    def verified(self, step: str, blocks: Sequence[int], *, content: bool = True,
                 outputs: Outputs | None = None) -> dict[int, Any]:
        """The results of the blocks of ``step`` whose markers verify against the disk:
        every file they list is there (with ``content``, read back and its CRC-32
        compared; else its size), and they list every chunk the block must write
        (``outputs(block)``: ``(array, selection)`` pairs). A block's latest marker
        counts; blocks whose marker does not verify are left out (logged), batch files
        that cannot be read are removed."""
        good: dict[int, Any] = {}
        self._verify(step, block_mask(blocks), lambda m: good.__setitem__(m.block, m.result),
                     content=content, outputs=outputs)
        return good

    def check_coverage(self, step: str, blocks: Sequence[int], outputs: Outputs | None = None
                       ) -> None:
        """Refuse to go on while any block of ``step`` has no marker that lists what it
        must write, with those files on disk at the recorded sizes."""
        wanted = block_mask(blocks)
        self._verify(step, wanted, lambda m: wanted.__setitem__(m.block, False),
                     content=False, outputs=outputs)
        missing = np.flatnonzero(wanted)
        if missing.size:
            raise BlockFailedError(f"{step}: {missing.size} blocks have no verified done "
                                   f"record (first: block {missing[0]}); the stage is not "
                                   "complete")

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Mark the stage complete (after its outputs are in place) and drop the per-block
        records: a rerun with this key now skips the stage."""
        root = as_path(self.root)
        write_json(root / "complete.json", {
            "key": self.key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary})
        remove_tree(root / "done")
        remove_tree(self._previous)

    def summary(self) -> dict[str, Any]:
        """What the completing run recorded (blocks, ...)."""
        return self._read("complete.json")


@contextlib.contextmanager
def recording(state: StageState, stage: str, partial: Callable[[], None]) -> Iterator[None]:
    """The body of a resumable stage. Bad input found by a block (exit 2: NaN, ...)
    removes the partial outputs (``partial()``) and the records: nothing is left behind;
    any other failure keeps both, so that a rerun computes only the missing blocks."""
    try:
        yield
    except BaseException as err:
        if isinstance(err, AffinityDistError) and err.exit_code == 2:
            partial()
            state.discard()
        else:  # one line for the user: the error's own, which says so
            hint = "finished blocks are kept: a rerun with the same options resumes"
            if isinstance(err, AffinityDistError) and hint not in str(err):
                err.args = (f"{err}; {hint}",)
            log.info("%s: stopped; the finished blocks are recorded in %s", stage, state.root)
        raise


def block_mask(blocks: Sequence[int]) -> NDArray[np.bool_]:
    """One byte per block up to the largest: True for the blocks in ``blocks`` (a range,
    as the stages pass them, is set by slice: no array of 8-byte ids at 10^6 blocks)."""
    if isinstance(blocks, range) and blocks.step > 0 and blocks.start >= 0:
        mask = np.zeros(blocks[-1] + 1 if blocks else 0, bool)
        mask[blocks.start:blocks.stop:blocks.step] = True
        return mask
    ids = np.asarray(blocks, dtype=np.int64)
    mask = np.zeros(int(ids.max()) + 1 if ids.size else 0, bool)
    mask[ids] = True
    return mask


def run_recorded(state: StageState, step: str, fn: Callable[[int], R], blocks: Sequence[int],
                 counts: BlockCounts, *, previous: bool = True,
                 reduce: Callable[[int, R], None] | None = None, **run: Any) -> list[R]:
    """Run ``fn`` on the blocks of ``step`` that have no verified done record, record each
    after its data, and return every block's result in order (recorded ones read back;
    with ``previous`` False only the results computed now). With ``reduce``, each block's
    result is handed to it instead, ``reduce(block, result)`` (computed ones as they
    arrive, then the recorded ones), and nothing is returned: the client keeps nothing
    per block that ``reduce`` does not keep. A task object with an
    ``outputs(block)`` method (``(array, selection)`` pairs) has its markers checked to
    cover those chunks: a marker that claims a block without its data is not trusted."""
    outputs = getattr(fn, "outputs", None)
    done = state.verified(step, blocks, outputs=outputs)
    todo = [b for b in blocks if b not in done] if done else blocks
    counts.skipped += len(done)
    recorded = _Recorded(fn, str(state.dataset), step, state.key)
    log_ = state.log(step)

    def keep(marker: Marker) -> Any:  # on the client, as each block's result arrives
        log_.add(marker)
        if reduce is not None:
            reduce(marker.block, marker.result)
            return None
        return marker.result

    try:
        computed = run_blocks(recorded, todo, stage=step, counts=counts, collect=keep,
                              keep=reduce is None, **run)
    finally:  # the blocks finished before a failure are kept for the rerun
        log_.flush()
    state.check_coverage(step, todo, outputs)  # the others were verified just above
    if reduce is not None:
        for block, result in done.items() if previous else ():
            reduce(block, result)
        return []
    if not previous or not done:
        return computed
    results = iter(computed)
    return [done[b] if b in done else next(results) for b in blocks]
