"""The torch module of :class:`affinity_dist.model.UNetConfig` (imported lazily)."""

from __future__ import annotations

import torch
from torch import nn

from .config import UNetConfig

__all__ = ["UNet3D"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    return nn.Identity()


class _ConvPass(nn.Sequential):
    """Two convolutions, each followed by normalisation and ReLU."""

    def __init__(self, c_in: int, c_out: int, config: UNetConfig) -> None:
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers += [nn.Conv3d(c, c_out, config.kernel_size,
                                 padding="same" if config.padding == "same" else 0),
                       _norm(config.norm, c_out), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def _center_crop(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    offsets = [(s - t) // 2 for s, t in zip(x.shape[-3:], shape, strict=True)]
    return x[..., offsets[0]:offsets[0] + shape[0], offsets[1]:offsets[1] + shape[1],
             offsets[2]:offsets[2] + shape[2]]


class UNet3D(nn.Module):
    """3D U-Net: input (N, C_in, Z, Y, X) -> logits (N, out_channels, z, y, x): the
    affinities of every offset first, then the LSDs if the config has them."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        fmaps = [config.num_fmaps * config.fmap_inc_factor**level
                 for level in range(config.levels)]
        self.down = nn.ModuleList(
            _ConvPass(config.in_channels if level == 0 else fmaps[level - 1], fmaps[level],
                      config) for level in range(config.levels))
        self.pool = nn.ModuleList(nn.MaxPool3d(f, stride=f) for f in config.downsample_factors)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(fmaps[level + 1], fmaps[level + 1], f, stride=f)
            for level, f in enumerate(config.downsample_factors))
        self.up = nn.ModuleList(
            _ConvPass(fmaps[level] + fmaps[level + 1], fmaps[level], config)
            for level in range(config.levels - 1))
        self.head = nn.Conv3d(fmaps[0], config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self._level(x, 0))
        return logits

    def _level(self, x: torch.Tensor, level: int) -> torch.Tensor:
        left: torch.Tensor = self.down[level](x)
        if level == self.config.levels - 1:
            return left
        below = self._level(self.pool[level](left), level + 1)
        up = self.upsample[level](below)
        shape = self.config._crop_to_factor(list(up.shape[-3:]), level)
        up = _center_crop(up, shape)
        out: torch.Tensor = self.up[level](torch.cat([_center_crop(left, shape), up], dim=1))
        return out

    def extra_repr(self) -> str:
        params = sum(p.numel() for p in self.parameters())
        return f"levels={self.config.levels}, parameters={params}"
