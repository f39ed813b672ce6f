"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT arrives; inside a
finalizer (``__del__``, e.g. a Dask future released while the client waits) the exception
is printed as "Exception ignored in ..." and dropped, and the command ran on to its end
with exit status 0 (seen under load in ``tests/test_integrity.py``). :func:`install` (the
CLI, in the main thread, where SIGINT is not ignored) records every Ctrl-C before raising
it and keeps dropped ones quiet; the block loops call :func:`check`, which raises it again,
and the CLI ends with "interrupted" (exit 130) whenever one was recorded.

Stopping a local cluster mid-run makes its in-process scheduler complain (a gather that
raced the release: "Couldn't gather keys: {...: 'forgotten'}", seen in CI under load):
the consequence of the Ctrl-C, not news. :class:`AfterInterrupt`, on the CLI's log
handler where distributed's chatter is kept quiet, drops distributed's records once a
Ctrl-C was recorded; the command's one line says what happened.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

__all__ = ["AfterInterrupt", "check", "install", "requested"]

_REQUESTED: list[bool] = []
_INSTALLED: list[bool] = []


def _on_sigint(signum: int, frame: Any) -> None:
    _REQUESTED.append(True)
    raise KeyboardInterrupt


def _quiet_hook(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return  # recorded by _on_sigint: check() raises it where it can be handled
        previous(unraisable)
    return hook


def install() -> None:
    """Record Ctrl-C (main thread only; a no-op where SIGINT is ignored, as under nohup,
    or already handled by someone else)."""
    if _INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    _INSTALLED.append(True)
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _quiet_hook(sys.unraisablehook)


def requested() -> bool:
    """Whether a Ctrl-C arrived since :func:`install`."""
    return bool(_REQUESTED)


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived (also one a finalizer dropped)."""
    if _REQUESTED:
        raise KeyboardInterrupt


class AfterInterrupt(logging.Filter):
    """A handler filter: distributed's records pass until a Ctrl-C is recorded, then none
    does (the shutdown it causes is not an error); every other logger's always pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_REQUESTED and record.name.partition(".")[0] == "distributed")
