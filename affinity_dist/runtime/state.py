"""Run state: which blocks of which stage are done, under which configuration.

A stage's result is decided by its *key*: a hash of its inputs' identities (the key the
upstream stage stamped on its output array, or the array's metadata), the model checksum,
the options that change the result (threshold, block, tile, ...) and the stage's code
version. The state lives beside the arrays, in ``<dataset>/_run_state/<stage>/``::

    key.json                 the key and the configuration it hashes (written first)
    done/<pass>/<block>.pkl  one file per finished block, written after the block's data,
                             holding the block's (small) result for the driver
    complete.json            written last, after a coverage check: every block is done

A rerun with the same key finds ``complete.json`` and skips the stage (0 blocks); after
an interruption it computes only the blocks without a file; a different key (new model,
threshold, ...) starts the stage afresh. Nothing is inferred from which chunk files
happen to exist. Marker files are written atomically (temporary name, then rename), so a
block killed halfway has no marker and is computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import AffinityDistError, BlockFailedError
from ..storage import write_atomic, write_json
from .scheduling import BlockCounts, run_blocks

__all__ = ["STATE_DIR", "StageState", "array_key", "digest", "recording", "run_recorded"]

log = logging.getLogger(__name__)

STATE_DIR = "_run_state"
T = TypeVar("T")
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
    meta = Path(dataset) / name / "zarr.json"
    stamp = meta.stat().st_mtime_ns if meta.exists() else 0
    return digest({"shape": list(volume.shape), "dtype": str(volume.dtype), "mtime": stamp})


@dataclass(frozen=True)
class _Recorded:
    """Run ``fn(block)`` on a worker, then record the block as done with its result."""

    fn: Callable[[Any], Any]
    folder: str

    def __call__(self, block: int) -> Any:
        result = self.fn(block)
        write_atomic(Path(self.folder) / f"{block}.pkl", pickle.dumps(result, protocol=5))
        return result


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
        return cls(str(Path(dataset) / STATE_DIR / stage), digest(full), full)

    def _read(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((Path(self.root) / name).read_text())
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
        root = Path(self.root)
        if keep and self._read("key.json").get("key") == self.key and not self.complete:
            return True
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        write_json(root / "key.json", {"key": self.key, "config": self.config})
        return False

    def discard(self) -> None:
        """Forget this stage's records (a run stopped by bad input: nothing to resume)."""
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):  # and the state folder, when it held only this
            Path(self.root).parent.rmdir()

    def folder(self, step: str) -> Path:
        path = Path(self.root) / "done" / step
        path.mkdir(parents=True, exist_ok=True)
        return path

    def done(self, step: str) -> set[int]:
        """Blocks of ``step`` recorded as done."""
        return {int(p.name[:-4]) for p in self.folder(step).iterdir()
                if p.name.endswith(".pkl") and not p.name.startswith(".")}

    def results(self, step: str, blocks: Iterable[int]) -> dict[int, Any]:
        """The recorded results of ``blocks`` of ``step``."""
        folder = self.folder(step)
        return {b: pickle.loads((folder / f"{b}.pkl").read_bytes()) for b in blocks}

    def check_coverage(self, step: str, blocks: Sequence[int]) -> None:
        """Refuse to go on while any block of ``step`` has no record."""
        missing = sorted(set(blocks) - self.done(step))
        if missing:
            raise BlockFailedError(f"{step}: {len(missing)} blocks have no done record (first: "
                                   f"block {missing[0]}); the stage is not complete")

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Mark the stage complete (after its outputs are in place) and drop the per-block
        records: a rerun with this key now skips the stage."""
        root = Path(self.root)
        write_json(root / "complete.json", {
            "key": self.key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **summary})
        shutil.rmtree(root / "done", ignore_errors=True)

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
        else:
            log.error("%s: stopped; the finished blocks are recorded in %s, a rerun with the "
                      "same options computes only the others", stage, state.root)
        raise


def run_recorded(state: StageState, step: str, fn: Callable[[int], R], blocks: Sequence[int],
                 counts: BlockCounts, *, previous: bool = True, **run: Any) -> list[R]:
    """Run ``fn`` on the blocks of ``step`` that have no done record, record each after its
    data, and return every block's result in order (recorded ones read back; with
    ``previous`` False only the results computed now)."""
    done = state.done(step) & set(blocks)
    todo = [b for b in blocks if b not in done]
    counts.skipped += len(done)
    computed = run_blocks(_Recorded(fn, str(state.folder(step))), todo, stage=step,
                          counts=counts, **run)
    state.check_coverage(step, blocks)
    if not previous:
        return computed
    results: dict[int, Any] = dict(zip(todo, computed, strict=True))
    results.update(state.results(step, done))
    return [results[b] for b in blocks]
