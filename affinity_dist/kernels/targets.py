"""Training targets: affinities from ground-truth labels, their mask and class weights.

Pure numpy. For offset ``o`` (DESIGN.md: channel c pairs voxel ``p`` with ``p + o``):

* target 1 where both voxels carry the same nonzero id, 0 where the ids differ;
* mask 0 where either voxel is label 0 ("unknown / boundary") or ``p + o`` falls outside
  the crop — those edges are left out of the loss, never taught as 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..geometry import NEAREST_OFFSETS

__all__ = ["affinity_targets", "balance_weights"]


def _shifted(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...],
                                                                 tuple[slice, ...]]:
    """Slices ``here`` and ``there`` with ``there`` = ``here`` + offset, inside the crop."""
    here, there = [], []
    for n, o in zip(shape, offset, strict=True):
        lo, hi = max(0, -o), min(n, n - o)
        here.append(slice(lo, max(hi, lo)))
        there.append(slice(lo + o, max(hi, lo) + o))
    return tuple(here), tuple(there)


def affinity_targets(labels: NDArray[np.integer[Any]],
                     offsets: Sequence[Sequence[int]] = NEAREST_OFFSETS
                     ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Affinity targets and mask of a label crop.

    Parameters
    ----------
    labels : (Z, Y, X) integer ids, 0 = unknown.
    offsets : (C, 3) offsets, nearest neighbours first.

    Returns
    -------
    target, mask : (C, Z, Y, X) float32 in {0, 1}.

    >>> t, m = affinity_targets(np.array([[[1, 1, 2, 0]]]))
    >>> t[2, 0, 0].tolist(), m[2, 0, 0].tolist()
    ([0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0])
    """
    target = np.zeros((len(offsets), *labels.shape), np.float32)
    mask = np.zeros_like(target)
    for c, offset in enumerate(offsets):
        here, there = _shifted(labels.shape, offset)
        a, b = labels[here], labels[there]
        known = (a != 0) & (b != 0)
        target[c][here] = (a == b) & known
        mask[c][here] = known
    return target, mask


def balance_weights(target: NDArray[np.float32], mask: NDArray[np.float32],
                    clip: float = 100.0) -> NDArray[np.float32]:
    """Per-channel class balancing: positive and negative edges weigh the same in total.

    Within the mask, each class gets weight ``0.5 / its fraction`` (at most ``clip``), so a
    crop that is 95 % "same neuron" does not teach the network to predict 1 everywhere.

    >>> w = balance_weights(np.array([[1, 1, 1, 0]], np.float32), np.ones((1, 4), np.float32))
    >>> [round(float(v), 3) for v in w[0]]
    [0.667, 0.667, 0.667, 2.0]
    """
    weights = np.zeros_like(target)
    for c in range(target.shape[0]):
        known = mask[c] > 0
        total = known.sum()
        if not total:
            continue
        positive = (target[c] > 0.5) & known
        for cls, fraction in ((positive, positive.sum() / total),
                              (known & ~positive, 1 - positive.sum() / total)):
            if fraction > 0:
                weights[c][cls] = min(0.5 / fraction, clip)
    return weights
