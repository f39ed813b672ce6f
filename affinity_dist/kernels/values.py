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
            origin: Sequence[int], expected: str) -> DataError:
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
    spatial = index[-len(origin):] if origin else index
    voxel = tuple(int(o) + i for o, i in zip(origin, spatial, strict=True)) if origin \
        else spatial
    channel = f" channel {index[0]}" if data.ndim > len(voxel) else ""
    return DataError(f"{name}: {where}{channel} voxel {voxel} holds {data[index].item()!r}, "
                     f"expected {expected}")


def require_finite(name: str, data: NDArray[Any], where: str = "",
                   origin: Sequence[int] = (),
                   index: Sequence[NDArray[np.integer[Any]]] | None = None) -> None:
    """Refuse NaN or infinity in float ``data`` (integers pass). ``index``: per axis, the
    volume coordinate of each position of ``data`` (a read mirrored at the border),
    instead of ``origin``."""
    if data.dtype.kind == "f" and data.size and not np.isfinite(data).all():
        bad = ~np.isfinite(data)
        if index is not None:
            at = np.unravel_index(int(np.argmax(bad)), bad.shape)
            voxel = tuple(int(i[a]) for i, a in zip(index, at, strict=True))
            raise DataError(f"{name}: {where} voxel {voxel} holds {data[at].item()!r}, "
                            "expected finite values")
        raise _refuse(name, data, bad, where=where, origin=origin, expected="finite values")


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
