"""Metadata of a dataset's arrays: their physical attributes and the group's OME-Zarr 0.5
(NGFF) multiscales.

The bottom of the storage layer: it builds and edits attribute dictionaries only, and
imports neither :mod:`.arrays` nor :mod:`.datasets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputNotFoundError

if TYPE_CHECKING:
    import zarr

__all__ = [
    "NGFF_VERSION",
    "SPATIAL_AXES",
    "array_attributes",
    "register_levels",
    "register_multiscale",
    "unregister_multiscale",
]

SPATIAL_AXES = ("z", "y", "x")
NGFF_VERSION = "0.5"


def array_attributes(axes: Sequence[str], voxel: Sequence[float],
                     offset: Sequence[float]) -> dict[str, Any]:
    """An array's physical attributes: the keys funlib.persistence reads (``voxel_size``
    and ``offset`` in nm for the spatial axes, ``axis_names``, ``units``, ``types``)."""
    return {
        "voxel_size": list(voxel), "offset": list(offset), "axis_names": list(axes),
        "units": ["" if a == "c" else "nm" for a in axes],
        "types": ["channel" if a == "c" else "space" for a in axes],
    }


def _ome(group: zarr.Group) -> dict[str, Any]:
    attrs: dict[str, Any] = dict(group.attrs)
    return dict(attrs.get("ome", {}))


def register_multiscale(group: zarr.Group, name: str, axes: Sequence[str],
                        voxel: Sequence[float], offset: Sequence[float]) -> None:
    """Add (or replace) the OME-Zarr 0.5 multiscale entry for array ``name``."""
    lead = len(axes) - 3
    entry: dict[str, Any] = {
        "name": name,
        "axes": [{"name": a, "type": "channel"} if a == "c"
                 else {"name": a, "type": "space", "unit": "nanometer"} for a in axes],
        "datasets": [{
            "path": name,
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] * lead + list(voxel)},
                {"type": "translation", "translation": [0.0] * lead + list(offset)},
            ],
        }],
    }
    ome = _ome(group)
    scales = [m for m in ome.get("multiscales", []) if m.get("name") != name]
    group.attrs["ome"] = {**ome, "version": NGFF_VERSION, "multiscales": [*scales, entry]}


def unregister_multiscale(group: zarr.Group, name: str) -> None:
    """Drop array ``name``'s multiscale entry (if any) from the group's OME-Zarr list."""
    ome = _ome(group)
    ome["multiscales"] = [m for m in ome.get("multiscales", []) if m.get("name") != name]
    group.attrs["ome"] = ome


def register_levels(group: zarr.Group, name: str,
                    levels: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> None:
    """Make array ``name``'s OME-Zarr multiscale its level 0 followed by ``levels``:
    ``(path, voxel_size, offset)`` each, coarser and coarser (NGFF viewers pick a level
    per zoom)."""
    ome = _ome(group)
    scales = list(ome.get("multiscales", []))
    entry = next((m for m in scales if m.get("name") == name), None)
    if entry is None:
        raise InputNotFoundError(f"multiscale: got {name!r}, expected an array registered "
                                 "in the dataset's OME-Zarr metadata")
    lead = len(entry["axes"]) - 3
    datasets = [entry["datasets"][0]] + [{
        "path": path,
        "coordinateTransformations": [
            {"type": "scale", "scale": [1.0] * lead + [float(v) for v in voxel]},
            {"type": "translation", "translation": [0.0] * lead + [float(o) for o in off]},
        ],
    } for path, voxel, off in levels]
    entry = {**entry, "datasets": datasets}
    group.attrs["ome"] = {**ome, "multiscales": [entry if m.get("name") == name else m
                                                 for m in scales]}
