"""The machinery behind :mod:`affinity_dist.options`: value checks, the field spec that
ties one option to its CLI flag, type and help, and :class:`StageOptions` (from keyword
arguments, parsed arguments or a workflow table, with one-line errors).

This module imports nothing heavy (no numpy, torch or dask): ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError, InputNotFoundError, bad_value

__all__ = ["StageOptions", "add_arguments"]

Vec3 = tuple[int, int, int]
Vec3f = tuple[float, float, float]
S = TypeVar("S", bound="StageOptions")


class _BadValueError(Exception):
    """A value failed its check; ``expected`` says what was wanted."""

    def __init__(self, expected: str, cls: type[ConfigError] | type[InputNotFoundError]
                 = ConfigError) -> None:
        super().__init__(expected)
        self.expected, self.cls = expected, cls


# ---- checks: value -> normalised value, or _BadValueError ----------------------------


def _int(minimum: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (
                minimum is not None and v < minimum):
            raise _BadValueError("an integer" + (f" >= {minimum}" if minimum is not None else ""))
        return int(v)
    return check


def _number(lo: float, hi: float = math.inf, what: str = "") -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                or not lo <= float(v) <= hi:
            raise _BadValueError(what or (f"a number in [{lo:g}, {hi:g}]" if math.isfinite(hi)
                                          else f"a finite number >= {lo:g}"))
        return float(v)
    return check


def _shape(v: Any) -> Vec3:
    """Three whole numbers >= 1 (a shape, block or chunk shape; z y x)."""
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or any(
            isinstance(x, bool) or not isinstance(x, numbers.Real) for x in v):
        raise _BadValueError("a sequence of integers")
    if any(not isinstance(x, numbers.Integral) for x in v):
        raise _BadValueError("whole numbers")
    if len(v) != 3:
        raise _BadValueError("3 values (z y x)")
    if any(x < 1 for x in v):
        raise _BadValueError("every value >= 1")
    z, y, x = (int(x) for x in v)
    return z, y, x


def _thresholds(v: Any) -> tuple[float, ...]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not v:
        raise _BadValueError("a list of thresholds in [0, 1]")
    check = _number(0.0, 1.0)
    return tuple(sorted({check(x) for x in v}))


def _fanout(v: Any) -> Vec3:
    z, y, x = _shape(v)
    if min(z, y, x) < 2:
        raise _BadValueError("3 integers >= 2 (z y x)")
    return z, y, x


def _vector(v: Any) -> Vec3f:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or len(v) != 3 or any(
            isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x)
            or x <= 0 for x in v):
        raise _BadValueError("three positive numbers (nm, z y x)")
    z, y, x = (float(x) for x in v)
    return z, y, x


def _choice(*values: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in values:
            names = [repr(c) for c in values]
            raise _BadValueError(" or ".join([", ".join(names[:-1]), names[-1]] if
                                             len(names) > 2 else names))
        return str(v)
    return check


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _BadValueError("true or false")
    return v


def _name(v: Any) -> str:
    if not isinstance(v, str) or not v or v.startswith("/"):
        raise _BadValueError("a non-empty name")
    return v


def _names(v: Any) -> tuple[str, ...]:
    if isinstance(v, str) or not isinstance(v, Sequence) or not v:
        raise _BadValueError("a list of array names")
    return tuple(_name(x) for x in v)


def _checkpoint(v: Any) -> str:
    if not isinstance(v, str | os.PathLike) or not Path(v).is_file():
        raise _BadValueError("a checkpoint file that exists", InputNotFoundError)
    return os.fspath(v)


def _path(v: Any) -> str:
    if not isinstance(v, str | os.PathLike) or not Path(v).exists():
        raise _BadValueError("an existing dataset", InputNotFoundError)
    return os.fspath(v)


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def optional(v: Any) -> Any:
        return None if v is None else check(v)
    return optional


# ---- declaring options ---------------------------------------------------------------------

#: What a TOML value may be, per kind of check (for the workflow's type message).
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "shape": (list,), "vector": (list,),
    "str": (str,), "bool": (bool,), "list": (list,), "floats": (list,)}


@dataclass(frozen=True)
class _Spec:
    check: Callable[[Any], Any]
    kind: str
    flag: str
    help: str
    cli: dict[str, Any]
    path: bool  # a file path: relative to the workflow file there


def _opt(default: Any, check: Callable[[Any], Any], kind: str, flag: str, help: str, *,
         optional: bool = False, path: bool = False, **cli: Any) -> Any:
    """A stage option: its default, check, kind (TOML type), CLI flag and help."""
    spec = _Spec(_optional(check) if optional else check, kind, flag, help, cli, path)
    return field(default=default, metadata={"spec": spec})


def _spec(f: Any) -> _Spec:
    spec: _Spec = f.metadata["spec"]
    return spec


@dataclass(frozen=True)
class StageOptions:
    """Base of the per-stage options: every field is checked when the object is built."""

    stage: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, self._check(f, getattr(self, f.name),
                                                         _spec(f).flag))

    @staticmethod
    def _check(f: Any, value: Any, label: str) -> Any:
        try:
            return _spec(f).check(value)
        except _BadValueError as bad:
            raise bad_value(label, value, bad.expected, bad.cls) from None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def of(cls: type[S], options: S | None = None, **kwargs: Any) -> S:
        """The API's door: ``options`` (or the defaults) with keyword overrides."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise ConfigError(f"{cls.stage}: got unknown option {unknown[0]!r}, expected one "
                              f"of {cls.names()}")
        if options is not None and not isinstance(options, cls):
            raise bad_value("options", options, f"a {cls.__name__}")
        return replace(options, **kwargs) if options is not None else cls(**kwargs)

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any], *, section: str | None = None,
                  base: Path | None = None) -> S:
        """The workflow's door: a TOML table, unknown keys and bad values refused with one
        line naming ``section.key``; paths relative to ``base`` (the workflow's folder)."""
        where = section or cls.stage
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            f = known.get(key)
            if f is None:
                raise ConfigError(f"workflow: got unknown key {where}.{key}, expected one of "
                                  f"{sorted(known)}")
            spec = _spec(f)
            types = _TOML_TYPES[spec.kind]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                expected = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"workflow: got {where}.{key} = {value!r}, expected "
                                  f"{expected}")
            given = value
            if spec.path and base is not None and not Path(str(value)).is_absolute():
                given = os.path.normpath(base / str(value))
            try:
                values[key] = spec.check(given)
            except _BadValueError as bad:
                raise bad.cls(f"workflow: got {where}.{key} = {value!r}, expected "
                              f"{bad.expected}") from None
        return cls(**values)

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace) -> S:
        """The command line's door: the arguments :func:`add_arguments` declared (those
        not given keep the defaults)."""
        return cls(**{n: getattr(args, n) for n in cls.names() if hasattr(args, n)})

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), e.g. to key a run state."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}


def add_arguments(parser: argparse.ArgumentParser, cls: type[StageOptions],
                  exclude: Sequence[str] = ()) -> None:
    """Declare ``cls``'s options (but ``exclude``) on a sub-command; absent ones keep the
    options' defaults."""
    for f in fields(cls):
        if f.name in exclude:
            continue
        spec = _spec(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                  "help": spec.help}
        if f.default is not MISSING and f.default is not None and "action" not in spec.cli:
            shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            kwargs["help"] = f"{spec.help} (default {shown})"
        if spec.kind in ("shape", "vector"):
            kwargs.update(nargs=3, metavar=("Z", "Y", "X"),
                          type=int if spec.kind == "shape" else float)
        elif spec.kind in ("int", "float"):
            kwargs["type"] = int if spec.kind == "int" else float
        elif spec.kind == "list":
            kwargs.update(nargs="+")
        elif spec.kind == "floats":
            kwargs.update(nargs="+", type=float)
        kwargs.update(spec.cli)
        parser.add_argument(spec.flag, **kwargs)


# ---- the stages ----------------------------------------------------------------------------
