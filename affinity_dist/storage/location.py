"""Where a dataset lives: a local directory or an object-store URL, behind one path API.

A dataset path is a local path (``data/x.zarr``, ``file:///data/x.zarr``) or a store URL
(``s3://bucket/x.zarr``, ``gs://...``, any fsspec protocol whose package is installed).
:func:`as_path` gives a :class:`pathlib.Path` for the first and a
:class:`upath.UPath` (the same API over fsspec) for the second, so the storage and
run-state code reads one way for both. Credentials and endpoints come from the
environment as the store's own library reads them (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, or a profile), in
the client and in every worker alike.

Object stores have no rename, and no directories: what differs is here.

- :func:`write_object` is one PUT: an object appears whole or not at all, so no temporary
  name is needed.
- :func:`create_exclusive` is a conditional PUT (``If-None-Match: *``): the writer lease.
- :func:`move_tree` copies server-side (no data through this process), every ``zarr.json``
  after the chunks it describes and the top one last, then deletes the source: the
  moved node is readable only once it is whole.
- fsspec's listing cache is off for object stores: a worker's writes must be visible to
  the client's next listing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, cast

__all__ = ["PUBLISHING", "as_path", "create_exclusive", "is_remote", "make_dirs", "move_tree",
           "mtime_ns", "relative", "remove_empty_dir", "remove_tree", "same_place",
           "stored_bytes", "write_object"]

_LOCAL = ("", "file", "local")
#: The group attribute of a dataset on an object store that is being written (its
#: writer's host, pid and start); removed by the last write, which publishes it.
PUBLISHING = "affinity_dist_publishing"


def _scheme(path: str) -> str:
    head, sep, _ = path.partition("://")
    return head.lower() if sep and head.isidentifier() else ""


def is_remote(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an object store (a URL of a protocol other than file)."""
    return not isinstance(path, Path) and _scheme(str(path)) not in _LOCAL


def _configure() -> None:
    import fsspec.config

    for protocol in ("s3", "gs", "gcs", "abfs", "az"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def as_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a path object: :class:`Path` for local paths (``file://`` stripped),
    :class:`upath.UPath` for store URLs (typed as Path: it implements the same API for
    what this package uses: ``/``, ``exists``, ``read_bytes``, ``iterdir``, ``stat`` ...)."""
    if isinstance(path, Path):
        return path
    text = str(path)
    scheme = _scheme(text)
    if scheme in _LOCAL:
        return Path(text.split("://", 1)[1] if scheme else text)
    _configure()
    from upath import UPath

    try:
        return cast(Path, UPath(text))
    except (ValueError, ImportError) as err:  # an unknown protocol, its package missing
        from ..errors import ConfigError

        raise ConfigError(f"dataset: got {text!r}, expected a local path or a store URL "
                          f"of an installed fsspec protocol ({err})") from None


def _fs(path: Path) -> Any:
    return cast(Any, path).fs


def _key(path: Path) -> str:
    return str(cast(Any, path).path)


def relative(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``path`` relative to ``base`` (POSIX separators); ValueError when outside it."""
    if is_remote(path) or is_remote(base):
        full, root = str(path), str(base).rstrip("/") + "/"
        if not full.startswith(root):
            raise ValueError(f"{full!r} is not under {root!r}")
        return full[len(root):]
    return Path(path).absolute().relative_to(Path(base).absolute()).as_posix()


def same_place(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two dataset paths name the same place."""
    if is_remote(a) or is_remote(b):
        return str(as_path(a)).rstrip("/") == str(as_path(b)).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def mtime_ns(path: Path) -> int:
    """Modification time of a file in ns (0 when absent): an array's identity stamp."""
    try:
        if not is_remote(path):
            return path.stat().st_mtime_ns
        return int(path.stat().st_mtime * 1e9)
    except (FileNotFoundError, AttributeError):
        return 0


def stored_bytes(path: Path) -> int:
    """Bytes stored under a folder (prefix)."""
    if is_remote(path):
        return int(_fs(path).du(_key(path)))
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def make_dirs(path: Path) -> None:
    """Create a folder and its parents (object stores have none: nothing to do)."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)


def remove_tree(path: Path) -> None:
    """Remove a folder (every object under a prefix) and what it holds, if present."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        _fs(path).rm(_key(path), recursive=True)


def remove_empty_dir(path: Path) -> None:
    """Remove a local folder if it is empty (object stores: nothing to do)."""
    if not is_remote(path):
        with contextlib.suppress(OSError):
            path.rmdir()


def write_object(path: Path, data: bytes) -> None:
    """Write a whole object in one request (object stores only)."""
    _fs(path).pipe_file(_key(path), data)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists (False then), atomically: a
    conditional PUT on object stores; a hard link of a written file locally, so that a
    run killed mid-creation never leaves half a file."""
    if is_remote(path):
        try:
            _fs(path).pipe_file(_key(path), data, mode="create")
        except FileExistsError:
            return False
        return True
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(data):x}.new")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def move_tree(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst``. Locally a rename (the old ``dst``
    renamed aside first, then deleted). On an object store a server-side copy: ``dst``
    is removed, the chunks copied, then the ``zarr.json`` files deepest first (the top one
    last: readers see the node only when it is whole), then ``src`` deleted."""
    if not is_remote(src):
        if dst.exists():
            trash = dst.with_name(f"_trash_{dst.name}_{os.urandom(4).hex()}")
            dst.rename(trash)
            shutil.rmtree(trash)
        src.rename(dst)
        return
    fs, source, target = _fs(src), _key(src).rstrip("/"), _key(dst).rstrip("/")
    remove_tree(dst)
    keys = sorted(fs.find(source))
    meta = sorted((k for k in keys if k.rsplit("/", 1)[-1] == "zarr.json"),
                  key=lambda k: -k.count("/"))
    data = [k for k in keys if k.rsplit("/", 1)[-1] != "zarr.json"]
    for batch in (data, meta[:-1], meta[-1:]):
        if batch:
            fs.copy(batch, [target + k[len(source):] for k in batch])
    remove_tree(src)
