"""A configurable 3D U-Net that predicts affinities, and the shape arithmetic around it.

``UNetConfig`` is a frozen, validated description (levels, per-level downsample factors
including anisotropic ones such as (1, 3, 3), feature maps and their growth, valid or same
convolutions, normalisation, affinity offsets). ``build_model`` turns it into a torch
module whose output has one channel per offset: **logits**; ``torch.sigmoid`` gives the
affinities. The first three offsets are always the DESIGN.md nearest neighbours
(-1,0,0), (0,-1,0), (0,0,-1); longer-range offsets may follow.

With ``padding="valid"`` and ``norm`` "none" or "batch" (group and instance norms use
statistics of the whole tile), the network is translation-equivariant for shifts that are
multiples of its total downsampling factor (the up path crops to that factor, as in
funlib's U-Net), so predicting a volume block by block, each block read with a halo of
``context // 2`` per side and starting at a multiple of the factor, equals predicting it
whole. :meth:`UNetConfig.output_shape` computes shapes without running the network;
:meth:`UNetConfig.valid_shapes` lists input/output shape pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..errors import ConfigError, bad_value
from ..geometry import NEAREST_OFFSETS

__all__ = ["NEAREST_OFFSETS", "UNetConfig", "build_model"]

Vec = tuple[int, int, int]


def _vec(value: Sequence[int], name: str, minimum: int) -> Vec:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise bad_value(name, value, "three integers (z, y, x)") from None
    if len(out) != 3 or any(v < minimum for v in out) or list(out) != list(value):
        raise bad_value(name, list(value), f"three integers >= {minimum} (z, y, x)")
    return out[0], out[1], out[2]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the affinity U-Net.

    Parameters
    ----------
    downsample_factors : one (z, y, x) factor per downsampling; levels = len + 1.
    num_fmaps : feature maps at the top level.
    fmap_inc_factor : feature maps grow by this factor per level.
    kernel_size : (z, y, x) kernel of the two convolutions of every level; (1, 3, 3)
        suits strongly anisotropic data at the top level.
    padding : "valid" (seamless blockwise prediction, the default) or "same".
    norm : "none", "batch", "group" or "instance".
    offsets : affinity offsets; the first three must be the nearest neighbours (longer
        ranges after them: auxiliary targets, Lee et al. 2017).
    in_channels : channels of the raw input (1 for EM).
    lsds : 10 more output channels after the affinities, the local shape descriptors
        (Sheridan et al. 2022), an auxiliary training target.
    """

    downsample_factors: tuple[Vec, ...] = ((1, 2, 2), (2, 2, 2))
    num_fmaps: int = 12
    fmap_inc_factor: int = 3
    kernel_size: Vec = (3, 3, 3)
    padding: Literal["valid", "same"] = "valid"
    norm: Literal["none", "batch", "group", "instance"] = "none"
    offsets: tuple[Vec, ...] = field(default=NEAREST_OFFSETS)
    in_channels: int = 1
    lsds: bool = False

    def __post_init__(self) -> None:
        factors = tuple(_vec(f, "downsample_factors", 1) for f in self.downsample_factors)
        object.__setattr__(self, "downsample_factors", factors)
        object.__setattr__(self, "kernel_size", _vec(self.kernel_size, "kernel_size", 1))
        offsets = tuple(_vec(o, "offsets", -(2**20)) for o in self.offsets)
        object.__setattr__(self, "offsets", offsets)
        if offsets[:3] != NEAREST_OFFSETS:
            raise bad_value("offsets", [list(o) for o in offsets],
                            "the nearest neighbours (-1,0,0), (0,-1,0), (0,0,-1) first")
        for name in ("num_fmaps", "fmap_inc_factor", "in_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_value(name, value, "an integer >= 1")
        if not isinstance(self.lsds, bool):
            raise bad_value("lsds", self.lsds, "true or false")
        if self.padding not in ("valid", "same"):
            raise bad_value("padding", self.padding, "'valid' or 'same'")
        if self.norm not in ("none", "batch", "group", "instance"):
            raise bad_value("norm", self.norm, "'none', 'batch', 'group' or 'instance'")
        if self.padding == "same" and any(k % 2 == 0 for k in self.kernel_size):
            raise bad_value("kernel_size", self.kernel_size, "odd sizes with padding 'same'")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build from a plain dict (a config file or a checkpoint), rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model: got unknown key {unknown[0]!r}, expected one of "
                              f"{sorted(known)}")
        values = dict(data)
        for key in ("downsample_factors", "offsets"):
            if key in values:
                values[key] = tuple(tuple(v) for v in values[key])
        if "kernel_size" in values:
            values["kernel_size"] = tuple(values["kernel_size"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def out_channels(self) -> int:
        """Channels of the head: one per offset, then 10 LSD channels if ``lsds``."""
        return len(self.offsets) + (10 if self.lsds else 0)

    @property
    def levels(self) -> int:
        return len(self.downsample_factors) + 1

    @property
    def step(self) -> Vec:
        """Total downsampling factor: valid shapes and block offsets move in these steps."""
        z, y, x = (math.prod(f[a] for f in self.downsample_factors) for a in range(3))
        return z, y, x

    def _conv_crop(self) -> Vec:
        k = self.kernel_size
        if self.padding == "same":
            return 0, 0, 0
        return 2 * (k[0] - 1), 2 * (k[1] - 1), 2 * (k[2] - 1)

    def output_shape(self, input_shape: Sequence[int]) -> Vec:
        """Output shape for ``input_shape``; ConfigError if the input is not valid."""
        shape = _vec(input_shape, "input shape", 1)
        out = [self._axis_output(n, axis, 0) for axis, n in enumerate(shape)]
        if any(o is None for o in out):
            raise ConfigError(f"input shape: got {list(shape)}, expected a valid U-Net input "
                              f"(see UNetConfig.valid_shapes; step {list(self.step)})")
        z, y, x = (int(o) for o in out if o is not None)
        return z, y, x

    def _axis_output(self, n: int, axis: int, level: int) -> int | None:
        """Mirror of the module's forward pass on one axis' size (axes are independent)."""
        left = n - self._conv_crop()[axis]
        if left < 1:
            return None
        if level == self.levels - 1:
            return left
        factor = self.downsample_factors[level][axis]
        if left % factor:
            return None
        below = self._axis_output(left // factor, axis, level + 1)
        if below is None:
            return None
        up = self._crop_to_factor([below * factor if a == axis else 0 for a in range(3)],
                                  level)[axis]
        out = up - self._conv_crop()[axis]
        return out if up <= left and out >= 1 else None

    def _crop_to_factor(self, shape: list[int], level: int) -> list[int]:
        """Crop an upsampled map so that every later layer sees a shape that keeps the
        network translation-equivariant for shifts of :attr:`step` (funlib's rule)."""
        if self.padding == "same":
            return shape
        factor = [math.prod(f[a] for f in self.downsample_factors[level:]) for a in range(3)]
        crop = self._conv_crop()
        return [max(s - c, 0) // f * f + c for s, f, c in zip(shape, factor, crop, strict=True)]

    @property
    def context(self) -> Vec:
        """Input minus output shape per axis (0 for 'same'): the halo of inference."""
        inp, out = self.valid_shapes(1)[0]
        return inp[0] - out[0], inp[1] - out[1], inp[2] - out[2]

    def valid_shapes(self, count: int = 5, minimum_output: Sequence[int] = (1, 1, 1)
                     ) -> list[tuple[Vec, Vec]]:
        """The ``count`` smallest (input, output) shape pairs, growing by :attr:`step`."""
        base = []
        for axis in range(3):
            n = 1
            while (out := self._axis_output(n, axis, 0)) is None or out < minimum_output[axis]:
                n += 1
                if n > 100_000:
                    raise ConfigError("model: no valid input shape below 100000 voxels")
            base.append(n)
        pairs: list[tuple[Vec, Vec]] = []
        for k in range(count):
            inp = _vec([b + k * s for b, s in zip(base, self.step, strict=True)], "input", 1)
            pairs.append((inp, self.output_shape(inp)))
        return pairs


def build_model(config: UNetConfig) -> Any:
    """The torch module for ``config`` (imports torch lazily)."""
    from .unet import UNet3D

    return UNet3D(config)
