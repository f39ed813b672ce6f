"""Exception hierarchy.

Every error raised on purpose by affinity_dist derives from :class:`AffinityDistError`.
The leaves also subclass the matching builtin, so ``except ValueError`` keeps working
for callers that do not know this package. The CLI maps ``exit_code`` to the process
exit status: 2 for bad input or configuration, 1 for a failure during a run.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AffinityDistError",
    "BlockFailedError",
    "ConfigError",
    "DatasetBusyError",
    "DataError",
    "DestinationExistsError",
    "InputNotFoundError",
    "bad_value",
]


class AffinityDistError(Exception):
    """Base class of every error affinity_dist raises on purpose."""

    exit_code: int = 1


class ConfigError(AffinityDistError, ValueError):
    """An argument or configuration value is invalid."""

    exit_code = 2


class DataError(AffinityDistError, ValueError):
    """Input data has the wrong shape, dtype, content or metadata."""

    exit_code = 2


class InputNotFoundError(AffinityDistError, FileNotFoundError):
    """An input path, file, key or array does not exist."""

    exit_code = 2


class DestinationExistsError(AffinityDistError, FileExistsError):
    """An output exists already and overwriting was not requested."""

    exit_code = 2


class DatasetBusyError(AffinityDistError, BlockingIOError):
    """Another run holds the writer lease of the stage's outputs in this dataset."""

    exit_code = 2


class BlockFailedError(AffinityDistError, RuntimeError):
    """A block of a stage failed during the run; the message names the block."""

    exit_code = 1


def bad_value(argument: str, value: Any, expected: str, cls: type[AffinityDistError] = ConfigError
              ) -> AffinityDistError:
    """Build the one-line error used everywhere: argument, value, expectation.

    >>> str(bad_value("--threshold", 1.5, "a number in [0, 1]"))
    '--threshold: got 1.5, expected a number in [0, 1]'
    """
    return cls(f"{argument}: got {value!r}, expected {expected}")
