"""Values checked where they enter a stage: the first bad voxel, named (pure numpy).

NaN or infinite raw, affinities outside [0, 1] and negative label ids are refused where
a block reads them, before it writes anything: one line naming the array, the block, the
voxel (in the volume's coordinates) and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError

__all__ = ["require_finite", "require_labels", "require_unit_range"]


def _refuse(name: str, data: NDArray[Any], bad: NDArray[np.bool_], *, where: str,
            origin: Sequence[int], expected: str,
            index: Sequence[NDArray[np.integer[Any]]] | None = None) -> DataError:
    """The error for the first ``bad`` voxel: its volume coordinate is ``origin`` plus its
    position (spatial axes), or, with ``index``, looked up per axis."""
    at = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    axes = len(index) if index is not None else len(origin) or data.ndim
    spatial = at[data.ndim - axes:]
    if index is not None:
        voxel = tuple(int(i[a]) for i, a in zip(index, spatial, strict=True))
    else:
        voxel = tuple(int(o) + a for o, a in zip(origin, spatial, strict=True)) if origin \
            else spatial
    channel = f" channel {at[0]}" if data.ndim > len(voxel) else ""
    return DataError(f"{name}: {where}{channel} voxel {voxel} holds {data[at].item()!r}, "
                     f"expected {expected}")


def require_finite(name: str, data: NDArray[Any], where: str = "",
                   origin: Sequence[int] = (),
                   index: Sequence[NDArray[np.integer[Any]]] | None = None) -> None:
    """Refuse NaN or infinity in float ``data`` (integers pass). ``index``: per axis, the
    volume coordinate of each position of ``data`` (a read mirrored at the border),
    instead of ``origin``."""
    if data.dtype.kind == "f" and data.size and not np.isfinite(data).all():
        raise _refuse(name, data, ~np.isfinite(data), where=where, origin=origin,
                      expected="finite values", index=index)


def require_unit_range(name: str, data: NDArray[Any], where: str = "",
                       origin: Sequence[int] = ()) -> None:
    """Refuse float values outside [0, 1] (NaN and infinity too); integers pass."""
    if data.dtype.kind == "f" and data.size:
        bad = ~((data >= 0) & (data <= 1))
        if bad.any():
            raise _refuse(name, data, bad, where=where, origin=origin,
                          expected="values in [0, 1]")


def require_labels(name: str, data: NDArray[Any], where: str = "",
                   origin: Sequence[int] = ()) -> None:
    """Refuse non-integer labels and negative ids (label 0 = background)."""
    if data.dtype.kind not in "iu":
        raise DataError(f"{name}: got dtype {data.dtype}, expected integer label ids")
    if data.dtype.kind == "i" and data.size and int(data.min()) < 0:
        raise _refuse(name, data, data < 0, where=where, origin=origin, expected="ids >= 0")
