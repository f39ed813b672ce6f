"""Storage layer: the only package that imports zarr.

A dataset is one Zarr v3 group (``sample.zarr/``) holding the arrays of DESIGN.md
(``raw``, ``labels``, ``affinities``, ``fragments``, ``segmentation``). Every array carries

* ``dimension_names`` (zarr v3 metadata) and, in its attributes, ``voxel_size`` and
  ``offset`` in nanometres, ``axis_names``, ``units`` and ``types`` (the keys
  funlib.persistence reads, so daisy/volara users open our arrays as they are);
* an entry in the group's OME-Zarr 0.5 ``multiscales`` list (one multiscale per array,
  named after it, its level 0 at the array's path), so NGFF viewers find voxel size and
  offset.

Outputs are written into a staging directory beside the destination and renamed into
place only when complete (:func:`staged_dataset`), so a failed run never looks finished
and an existing destination is untouched until a new one fully exists.

Modules import one way: :mod:`.metadata` (attributes, OME-Zarr multiscales) and
:mod:`.codecs` (compressors, codec threads) -> :mod:`.arrays` (one array) ->
:mod:`.datasets` (whole datasets, tables), :mod:`.records` (per-task records);
:mod:`.sources` (foreign formats, with :mod:`.n5`) reads through them.
"""

from .arrays import (
    AUTO_SHARD_FILES,
    DEFAULT_CHUNKS,
    Volume,
    check_chunk_alignment,
    create_volume,
    create_work_array,
    group_path,
    list_arrays,
    move_node,
    open_dataset,
    open_volume,
    rename_volume,
    shard_shape,
    zarr_listing,
)
from .codecs import Codec, default_codec, match_codec_threads
from .datasets import (
    check_destination,
    dataset_from_array,
    delete_node,
    describe_dataset,
    open_external,
    process_alive,
    read_table,
    read_table_slice,
    require_space,
    staged_dataset,
    write_atomic,
    write_json,
    write_table,
)
from .metadata import register_levels
from .records import read_record, record_part, write_parts, write_record

__all__ = [
    "AUTO_SHARD_FILES",
    "DEFAULT_CHUNKS",
    "Codec",
    "Volume",
    "check_chunk_alignment",
    "check_destination",
    "create_volume",
    "create_work_array",
    "dataset_from_array",
    "default_codec",
    "delete_node",
    "describe_dataset",
    "group_path",
    "list_arrays",
    "match_codec_threads",
    "move_node",
    "open_dataset",
    "open_external",
    "process_alive",
    "open_volume",
    "read_record",
    "read_table",
    "read_table_slice",
    "require_space",
    "record_part",
    "register_levels",
    "rename_volume",
    "shard_shape",
    "staged_dataset",
    "write_atomic",
    "write_json",
    "write_parts",
    "write_record",
    "write_table",
    "zarr_listing",
]
