"""A step's done markers in a few batch files instead of one file per block.

The client, the only writer of a run's markers, collects each block's marker as its
result arrives and writes them in batches to ``<folder>/<seq>-<writer>.npz`` (atomically:
a temporary name, then a rename): when :data:`BATCH` markers are waiting, when
:func:`flush_seconds` have passed since the last batch, and when the pass ends or fails.
A run of 10^6 blocks writes about 10^3 files, and a killed run loses at most the blocks
that finished in its last ``flush_seconds``: they are computed again.

A block recorded twice (computed again because its first marker was not trusted, or after
a forged one) counts its latest marker: batches are numbered in the order written, and
:meth:`DoneLog.latest` reads them newest first, one at a time, so that verifying 10^6
markers never holds them all. Nothing is rewritten: a marker that does not verify is
superseded by the block's next one. Two writers (two clients, which the stage lock
prevents) would use different writer tokens and never write the same file.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..storage import write_atomic
from ..storage.location import as_path, make_dirs
from .markers import Marker, MarkerError, decode_markers, encode_markers
from .memory import trim_heap

__all__ = ["BATCH", "DoneLog", "flush_seconds"]

log = logging.getLogger(__name__)

#: Markers per batch file at most.
BATCH = 4096
_NAME = re.compile(r"^(\d{9})-([0-9a-f]{8})\.npz$")


def flush_seconds() -> float:
    """Seconds between batches at most: ``AFFINITY_DIST_RECORD_SECONDS`` (default 30), the
    work a killed run may have to redo against the files a long run writes."""
    text = os.environ.get("AFFINITY_DIST_RECORD_SECONDS", "30")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        from ..errors import ConfigError

        raise ConfigError(f"AFFINITY_DIST_RECORD_SECONDS={text!r}: expected a number of "
                         "seconds >= 0")
    return value


class DoneLog:
    """The batch files of one step's markers in ``folder`` (created if absent)."""

    def __init__(self, folder: str | os.PathLike[str], batch: int = BATCH,
                 seconds: float | None = None) -> None:
        self.folder = as_path(folder)
        make_dirs(self.folder)
        self.batch = batch
        self.seconds = flush_seconds() if seconds is None else seconds
        self.writer = uuid.uuid4().hex[:8]
        self.waiting: list[Marker] = []
        self.last = time.monotonic()
        self.seq = 1 + max((s for s, _ in self._files()), default=0)

    def _files(self) -> list[tuple[int, Path]]:
        found = []
        try:
            paths = list(self.folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):  # an empty object-store prefix
            paths = []
        for path in paths:
            match = _NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    def files(self) -> list[Path]:
        """The batch files, oldest first."""
        return [path for _, path in self._files()]

    def add(self, marker: Marker) -> None:
        """Collect one block's marker; write a batch when one is due."""
        self.waiting.append(marker)
        if len(self.waiting) >= self.batch or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """Write the waiting markers as one batch file."""
        self.last = time.monotonic()
        if not self.waiting:
            return
        self._write(self.waiting)
        self.waiting = []
        trim_heap()  # the client's RSS stays flat over 10^6 blocks (memory.trim_heap)

    def _write(self, markers: list[Marker]) -> Path:
        path = self.folder / f"{self.seq:09d}-{self.writer}.npz"
        self.seq += 1
        write_atomic(path, encode_markers(markers))
        return path

    def _batches(self, paths: list[Path], unreadable: list[tuple[Path, str]]
                 ) -> Iterator[list[Marker]]:
        """The markers of each file in ``paths`` that decodes; the files and entries that
        do not, and why, are added to ``unreadable``."""
        for path in paths:
            try:
                batch, bad = decode_markers(path.read_bytes())
            except (OSError, MarkerError) as err:
                unreadable.append((path, str(err)))
                continue
            unreadable.extend((path, problem) for problem in bad)
            yield batch

    def read(self) -> tuple[dict[int, Marker], list[tuple[Path, str]]]:
        """Every block's latest marker, and the problems of what could not be read (a
        batch file, or an entry of one: left out; their blocks are computed again)."""
        markers: dict[int, Marker] = {}
        problems: list[tuple[Path, str]] = []
        for batch in self._batches(self.files(), problems):
            markers.update((m.block, m) for m in batch)
        return markers, problems

    def latest(self, size: int, unreadable: list[tuple[Path, str]]
               ) -> Iterator[list[Marker]]:
        """Each block's latest marker (for blocks below ``size``), one batch at a time,
        newest first; the files that cannot be read, and why, are added to
        ``unreadable``."""
        seen = np.zeros(size, bool)
        for batch in self._batches(self.files()[::-1], unreadable):
            fresh = []
            for marker in reversed(batch):
                if marker.block < size and not seen[marker.block]:
                    seen[marker.block] = True
                    fresh.append(marker)
            yield fresh
