"""Training targets: affinities from ground-truth labels, their mask and class weights.

Pure numpy. For offset ``o`` (DESIGN.md: channel c pairs voxel ``p`` with ``p + o``) the
target is 1 where both voxels carry the same nonzero id and 0 where the ids differ. What
label 0 means depends on the volume (``background``):

* ``"unknown"`` — 0 is "not annotated": an edge touching it is left out of the loss;
* ``"boundary"`` — 0 is membrane between neurons (gala, ISBI): an edge touching it is a
  "different neuron" edge, target 0 (the neurons of such volumes never touch directly, so
  masking these edges would remove every negative example).

An optional labels ``mask`` (nonzero = annotated) leaves out every edge with an end outside
it, whatever the semantics; so does an edge whose ``p + o`` falls outside the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ..errors import bad_value
from ..geometry import NEAREST_OFFSETS

__all__ = ["BACKGROUNDS", "affinity_targets", "balance_weights", "grow_boundary"]

Background = Literal["unknown", "boundary"]
BACKGROUNDS = ("unknown", "boundary")


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
                     offsets: Sequence[Sequence[int]] = NEAREST_OFFSETS, *,
                     background: Background = "unknown",
                     mask: NDArray[Any] | None = None,
                     ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Affinity targets and mask of a label crop.

    Parameters
    ----------
    labels : (Z, Y, X) integer ids.
    offsets : (C, 3) offsets, nearest neighbours first (long-range ones may follow).
    background : what label 0 means, "unknown" or "boundary" (module docstring).
    mask : optional (Z, Y, X) labels mask, nonzero where the labels are annotated.

    Returns
    -------
    target, mask : (C, Z, Y, X) float32 in {0, 1}.

    >>> t, m = affinity_targets(np.array([[[1, 1, 2, 0]]]))
    >>> t[2, 0, 0].tolist(), m[2, 0, 0].tolist()
    ([0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0])
    >>> t, m = affinity_targets(np.array([[[1, 1, 2, 0]]]), background="boundary")
    >>> t[2, 0, 0].tolist(), m[2, 0, 0].tolist()
    ([0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0])
    """
    if background not in BACKGROUNDS:
        raise bad_value("background", background, "'unknown' or 'boundary'")
    if mask is not None and mask.shape != labels.shape:
        raise bad_value("labels mask", mask.shape, f"the labels' shape {labels.shape}")
    annotated = None if mask is None else mask != 0
    target = np.zeros((len(offsets), *labels.shape), np.float32)
    known_all = np.zeros_like(target)
    for c, offset in enumerate(offsets):
        here, there = _shifted(labels.shape, offset)
        a, b = labels[here], labels[there]
        known = (a != 0) & (b != 0) if background == "unknown" else np.ones(a.shape, bool)
        if annotated is not None:
            known &= annotated[here] & annotated[there]
        target[c][here] = (a == b) & (a != 0) & known
        known_all[c][here] = known
    return target, known_all


def grow_boundary(labels: NDArray[np.integer[Any]], steps: int) -> NDArray[np.integer[Any]]:
    """Thicken the boundaries between neurons: every voxel within ``steps`` voxels (6-
    connected, inside its own segment) of a voxel of *another nonzero* id becomes 0.

    Where ground truth draws the interface between two neurons as a surface inside the
    dark membrane, the network cannot tell which membrane voxel is on which side; with the
    membrane band taught as boundary (label 0, ``background="boundary"``) the targets match
    what the image shows (gunpowder's GrowBoundary). Label 0 itself does not grow.

    >>> grow_boundary(np.array([[[1, 1, 1, 2, 2, 0, 0]]]), 1)[0, 0].tolist()
    [1, 1, 0, 0, 2, 0, 0]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise bad_value("grow_boundary", steps, "an integer >= 0")
    out = labels.copy()
    if steps == 0:
        return out
    band = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a, b = labels[tuple(lo)], labels[tuple(hi)]
        differ = (a != b) & (a != 0) & (b != 0)
        band[tuple(lo)] |= differ
        band[tuple(hi)] |= differ
    if steps > 1:
        from scipy.ndimage import binary_dilation

        band = binary_dilation(band, iterations=steps - 1, mask=labels != 0)
    out[band] = 0
    return out


def balance_weights(target: NDArray[np.float32], mask: NDArray[np.float32],
                    clip: float = 100.0, negative: float = 1.0) -> NDArray[np.float32]:
    """Per-channel class balancing: positive and negative edges weigh the same in total.

    Within the mask, each class gets weight ``0.5 / its fraction`` (at most ``clip``), so a
    crop that is 95 % "same neuron" does not teach the network to predict 1 everywhere.
    ``negative`` then scales the "different neuron" (boundary) edges: above 1 it makes a
    missed boundary, where a merge starts, cost more than a false one.

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
        for cls, fraction, scale in ((positive, positive.sum() / total, 1.0),
                                     (known & ~positive, 1 - positive.sum() / total,
                                      negative)):
            if fraction > 0:
                weights[c][cls] = min(0.5 / fraction, clip) * scale
    return weights
