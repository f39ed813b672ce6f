"""webKnossos metadata: ``datasource-properties.json`` beside a dataset's arrays.

webKnossos reads a dataset directory through the file at its root that lists the layers
(format: the ``datasource-properties.json`` specification of webknossos-libs). Our Zarr v3
arrays are used as they are, no copy:

* ``raw`` (and any other uint8/float image) is a ``color`` layer; ``labels``,
  ``fragments`` and ``segmentation`` are ``segmentation`` layers with their
  ``largestSegmentId`` (the array's maximum, computed chunk by chunk);
* uint8 ``affinities`` (c = 3, z, y, x) is one 3-channel color layer, shown as RGB
  (-z red, -y green, -x blue); float or longer-range affinities become one layer per
  channel (``affinities_c<k>``, mags with ``channelIndex``);
* every mag carries an ``axisOrder``, since our axes are (c,) z, y, x while webKnossos
  expects ... x, y, z last: ``{"z": 0, "y": 1, "x": 2}`` (``"c": 0`` and the rest shifted
  for affinities);
* the mags are level 0 (``[1, 1, 1]``, path ``./<name>``) and the pyramid levels of the
  array's OME-Zarr multiscale (``pyramid/<name>/s<k>``, :mod:`affinity_dist.pyramid`),
  their factors from the levels' voxel sizes;
* ``scale`` is the finest voxel size in nm among the arrays (x, y, z); bounding boxes are
  in voxels of that scale, x, y, z.

An array whose voxel size is not a whole multiple of the scale cannot be a webKnossos
layer and is left out, with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..storage import Volume, list_arrays, open_dataset, open_volume, write_json, zarr_listing
from ..storage.location import as_path, is_remote

__all__ = ["FILENAME", "webknossos_properties", "write_webknossos_metadata"]

log = logging.getLogger(__name__)

FILENAME = "datasource-properties.json"
LAYER_ARRAYS = ("raw", "affinities", "labels", "fragments", "segmentation")
SEGMENTATION_ARRAYS = ("labels", "fragments", "segmentation")
ELEMENT_CLASS = {"uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
                 "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
                 "float32": "float"}
#: webKnossos handles uint64 segment ids as JavaScript numbers.
MAX_SAFE_ID = 2**53 - 1


def _xyz(values: Any) -> list[Any]:
    """(z, y, x) -> [x, y, z]."""
    return list(values)[::-1]


def _whole(ratio: np.ndarray[Any, Any]) -> list[int] | None:
    """``ratio`` as positive integers, or None when it is not whole."""
    rounded = np.rint(ratio)
    if np.any(rounded < 1) or not np.allclose(ratio, rounded, rtol=0, atol=1e-6):
        return None
    return [int(r) for r in rounded]


def _levels(group_attrs: dict[str, Any], name: str) -> list[str]:
    """Paths of the coarser levels of array ``name`` in the OME-Zarr multiscales."""
    scales = group_attrs.get("ome", {}).get("multiscales", [])
    entry = next((m for m in scales if m.get("name") == name), None)
    if entry is None:
        return []
    return [str(d["path"]) for d in entry.get("datasets", [])[1:]]


def _mags(dataset: str | os.PathLike[str], volume: Volume, paths: list[str],
          scale: np.ndarray[Any, Any], axis_order: dict[str, int]) -> list[dict[str, Any]]:
    """Mag entries of level 0 and of every pyramid level that exists with a whole factor."""
    base = _whole(np.array(volume.voxel_size) / scale)
    assert base is not None  # checked by the caller
    mags = [{"mag": _xyz(base), "path": f"./{volume.name}", "axisOrder": axis_order}]
    for path in paths:
        try:
            level = open_volume(dataset, path)
        except (DataError, FileNotFoundError):
            log.warning("webknossos: %s level %s is missing, left out", volume.name, path)
            continue
        factor = _whole(np.array(level.voxel_size) / scale)
        if factor is None:
            log.warning("webknossos: %s level %s has voxel size %s, not a whole multiple of "
                        "%s; left out", volume.name, path, level.voxel_size, tuple(scale))
            continue
        mags.append({"mag": _xyz(factor), "path": f"./{path}", "axisOrder": axis_order})
    return mags


def _largest_id(volume: Volume) -> int:
    """Maximum of a label array, chunk by chunk (Dask, in this process)."""
    import dask.array as da

    data = da.from_array(volume.array, chunks=volume.write_unit)  # type: ignore[no-untyped-call]
    largest = int(data.max().compute(scheduler="threads"))
    if largest > MAX_SAFE_ID:
        log.warning("webknossos: %s holds id %d above 2^53 - 1, which webKnossos cannot "
                    "represent exactly", volume.name, largest)
    return largest


def _layers(dataset: str | os.PathLike[str], volume: Volume, paths: list[str],
            scale: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    """The webKnossos layer(s) of one array (several for per-channel affinities)."""
    name, dtype = volume.name, str(volume.dtype)
    element = ELEMENT_CLASS.get(dtype)
    base = _whole(np.array(volume.voxel_size) / scale)
    if element is None or base is None:
        why = (f"dtype {dtype}" if element is None
               else f"voxel size {volume.voxel_size}, not a whole multiple of {tuple(scale)}")
        log.warning("webknossos: array %s left out (%s)", name, why)
        return []
    lead = len(volume.shape) - 3
    axis_order = ({"c": 0} if lead else {}) | {"z": lead, "y": lead + 1, "x": lead + 2}
    start = np.rint(np.array(volume.offset) / scale).astype(int)
    size = np.array(volume.spatial_shape) * np.array(base)  # z, y, x at mag 1
    x0, y0, z0 = _xyz(start)
    layer: dict[str, Any] = {
        "name": name,
        "category": "segmentation" if name in SEGMENTATION_ARRAYS else "color",
        "boundingBox": {"topLeft": [int(x0), int(y0), int(z0)], "width": int(size[2]),
                        "height": int(size[1]), "depth": int(size[0])},
        "elementClass": element,
        "dataFormat": "zarr3",
        "mags": _mags(dataset, volume, paths, scale, axis_order),
    }
    if layer["category"] == "segmentation":
        if volume.dtype.kind not in "iu" or lead:
            raise DataError(f"{name}: got dtype {dtype} and shape {volume.shape}, expected "
                            "integer ids (z, y, x)")
        layer["largestSegmentId"] = _largest_id(volume)
    if not lead:
        return [layer]
    channels = volume.shape[0]
    if channels == 3 and element == "uint8":
        return [{**layer, "numChannels": 3}]
    return [{**layer, "name": f"{name}_c{c}", "numChannels": 1,
             "mags": [{**m, "channelIndex": c} for m in layer["mags"]]}
            for c in range(channels)]


def webknossos_properties(dataset: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``datasource-properties.json`` content for ``dataset`` (see the module doc)."""
    group = open_dataset(dataset)
    attrs: dict[str, Any] = dict(group.attrs)
    with zarr_listing(dataset):
        names = [n for n in LAYER_ARRAYS if n in group]
    if not names:
        arrays = list_arrays(dataset, top_level=True)
        raise DataError(f"dataset: got {str(dataset)!r} with arrays {arrays}, "
                        f"expected at least one of {', '.join(LAYER_ARRAYS)}")
    volumes = [open_volume(dataset, n) for n in names]
    for vol in volumes:
        if len(vol.shape) != (4 if vol.name == "affinities" else 3):
            raise DataError(f"{vol.name}: got shape {vol.shape}, expected "
                            f"{'(c, z, y, x)' if vol.name == 'affinities' else '(z, y, x)'}")
    scale = np.min([vol.voxel_size for vol in volumes], axis=0)
    layers = [layer for vol in volumes
              for layer in _layers(dataset, vol, _levels(attrs, vol.name), scale)]
    box = layers[0]["boundingBox"]
    centre = [box["topLeft"][i] + box[k] // 2 for i, k in enumerate(("width", "height",
                                                                     "depth"))]
    where = as_path(dataset)
    name = (where if is_remote(where) else where.absolute()).name.removesuffix(".zarr")
    return {
        "version": 1,
        "id": {"name": name, "team": ""},
        "scale": {"factor": _xyz(float(v) for v in scale), "unit": "nanometer"},
        "dataLayers": layers,
        "defaultViewConfiguration": {"position": centre},
    }


def write_webknossos_metadata(dataset: str | os.PathLike[str]) -> Path:
    """Write ``<dataset>/datasource-properties.json`` (replacing an older one) so that the
    dataset can be added to webKnossos as it is; returns the file's path."""
    properties = webknossos_properties(dataset)  # every check before anything is written
    path = as_path(dataset) / FILENAME
    write_json(path, properties)
    return path
