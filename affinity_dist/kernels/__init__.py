"""Pure per-block algorithms: numpy in, numpy out; no I/O, no Dask, no Zarr.

:mod:`.fragments` (connected components of a block's affinity graph, global ids, face
pairs), :mod:`.merge` (union-find, lookup table, per-block statistics), :mod:`.tiles`
(a block's prediction from a forward function on a global tile grid), :mod:`.metrics`
(contingency tables, VOI, adapted Rand), :mod:`.synthetic` (the synthetic EM volume),
:mod:`.targets` (affinity training targets) and :mod:`.augment` (training augmentations).
"""
