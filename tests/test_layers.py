"""The layers of the package, read from its imports (DESIGN.md, "Shape of the code").

Every ``import`` and ``from ... import`` of every module counts, wherever it stands (inside
functions and ``TYPE_CHECKING`` blocks too); relative imports are resolved to absolute
module names. ``from pkg import name`` counts as importing ``pkg`` and ``pkg.name``
(``name`` may be a submodule).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "affinity_dist"
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> list[str]:
    """The package a module's relative imports start from."""
    name = _module_name(path).split(".")
    return name if path.name == "__init__.py" else name[:-1]


@cache
def _imports(path: Path) -> tuple[tuple[int, str], ...]:
    """(line, absolute module name) of every import in the module at ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                up = node.level - 1
                if up >= len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import above "
                                         "the top-level package")
                base = ".".join(package[:len(package) - up]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if alias.name != "*"]
    return tuple(sorted(set(found)))


def _modules(under: str = "") -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py"))


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offending(paths: list[Path], *prefixes: str) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {name}"
            for path in paths for line, name in _imports(path) if _within(name, *prefixes)]


def test_the_walker_resolves_relative_and_nested_imports() -> None:
    names = {name for _, name in _imports(PACKAGE / "storage" / "sources.py")}
    # ``from ..errors import DataError`` at the top, ``from .n5 import N5Array`` in a function
    assert {"affinity_dist.errors", "affinity_dist.storage.n5",
            "affinity_dist.storage.n5.N5Array"} <= names
    assert _package_of(PACKAGE / "storage" / "__init__.py") == ["affinity_dist", "storage"]
    assert _package_of(PACKAGE / "storage" / "arrays.py") == ["affinity_dist", "storage"]


def test_only_the_storage_layer_imports_zarr() -> None:
    outside = [p for p in _modules() if not _within(_module_name(p), "affinity_dist.storage")]
    assert outside and not _offending(outside, "zarr")


def test_storage_modules_import_one_way() -> None:
    """metadata, codecs -> arrays -> datasets: nothing imports a module above it (nor the
    storage package, whose ``__init__`` imports them all)."""
    storage = PACKAGE / "storage"
    package = "affinity_dist.storage"
    above_all = (package + ".arrays", package + ".datasets")
    for bottom in ("metadata.py", "codecs.py"):
        assert not _offending([storage / bottom], *above_all)
    assert not _offending([storage / "arrays.py"], package + ".datasets")
    for path in _modules("storage"):
        if path.name != "__init__.py":  # ``from . import x`` resolves to the package
            assert not [f"{path.name}:{line}" for line, name in _imports(path)
                        if name == package], f"{path.name} imports the storage package"


def test_kernels_import_no_layer_above_them() -> None:
    """Pure kernels: numpy in, numpy out; no storage, runtime, stages, workflow, CLI or
    viewers, and no Dask or Zarr."""
    above = [f"affinity_dist.{layer}"
             for layer in ("storage", "runtime", "stages", "workflow", "cli", "viewers")]
    kernels = _modules("kernels")
    assert kernels
    assert not _offending(kernels, *above, "dask", "zarr", "distributed")


def test_kernels_import_only_errors_geometry_and_each_other() -> None:
    allowed = ("affinity_dist.errors", "affinity_dist.geometry", "affinity_dist.kernels")
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for path in _modules("kernels") for line, name in _imports(path)
           if _within(name, "affinity_dist") and not _within(name, *allowed)]
    assert not bad, bad
