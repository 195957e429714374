"""Stride-2 downsampling between stages, for channel-last (B, H, W, C) or channel-first (B, C, H, W) maps.

* ``PatchMerging2d`` (VMamba's ``downsample_version='v1'``, Swin-style): concatenate the four 2x2 neighbours
  (odd sizes are zero-padded), norm, linear reduction to ``out_dim``.
* ``ConvDownsample`` (VMamba's ``'v2'`` with ``kernel_size=2`` and ``'v3'`` with ``kernel_size=3``): a stride-2
  conv, then a norm.
"""
from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mlp import get_linear_layer
from .norm import get_norm_layer

__all__ = ['PatchMerging2d', 'ConvDownsample', 'create_downsample']


class PatchMerging2d(nn.Module):
    """Swin-style patch merging with VMamba's neighbour order: (0, 0), (1, 0), (0, 1), (1, 1) as (row, col) offsets.

    Args:
        dim: Input channels.
        out_dim: Output channels (default ``2 * dim``).
        norm_layer: Norm class over ``4 * dim`` channels (default from ``channel_first``).
        channel_first: (B, C, H, W) maps instead of (B, H, W, C).
    """

    def __init__(
            self,
            dim: int,
            out_dim: Optional[int] = None,
            norm_layer: Optional[Type[nn.Module]] = None,
            channel_first: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim or 2 * dim
        self.channel_first = channel_first
        norm_layer = norm_layer or get_norm_layer('layernorm', channel_first)
        self.norm = norm_layer(4 * dim)
        self.reduction = get_linear_layer(channel_first)(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            height, width = x.shape[-2:]
            if height % 2 or width % 2:
                x = F.pad(x, (0, width % 2, 0, height % 2))
            x = torch.cat([x[..., 0::2, 0::2], x[..., 1::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 1::2]], dim=1)
        else:
            height, width = x.shape[-3:-1]
            if height % 2 or width % 2:
                x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
            x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                           x[..., 1::2, 1::2, :]], dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """Stride-2 conv (``kernel_size`` 2 without padding or 3 with padding 1), then a norm.

    Args:
        dim: Input channels.
        out_dim: Output channels (default ``2 * dim``).
        kernel_size: 2 (VMamba v2 downsample) or 3 (v3).
        norm_layer: Norm class over ``out_dim`` channels (default from ``channel_first``).
        channel_first: (B, C, H, W) maps instead of (B, H, W, C).
    """

    def __init__(
            self,
            dim: int,
            out_dim: Optional[int] = None,
            kernel_size: int = 3,
            norm_layer: Optional[Type[nn.Module]] = None,
            channel_first: bool = False,
    ):
        super().__init__()
        if kernel_size not in (2, 3):
            raise ValueError(f'ConvDownsample: kernel_size must be 2 or 3, got {kernel_size}')
        self.out_dim = out_dim or 2 * dim
        self.channel_first = channel_first
        norm_layer = norm_layer or get_norm_layer('layernorm', channel_first)
        self.conv = nn.Conv2d(dim, self.out_dim, kernel_size=kernel_size, stride=2, padding=kernel_size // 2)
        self.norm = norm_layer(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_first:
            return self.norm(self.conv(x))
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


def create_downsample(downsample_type: str, dim: int, out_dim: int, **kwargs) -> nn.Module:
    """Build a downsample by name: 'merge' (``PatchMerging2d``, VMamba v1), 'conv2' (``ConvDownsample`` k=2, v2) or
    'conv3' (k=3, v3)."""
    if downsample_type == 'merge':
        return PatchMerging2d(dim, out_dim, **kwargs)
    if downsample_type in ('conv2', 'conv3'):
        return ConvDownsample(dim, out_dim, kernel_size=int(downsample_type[-1]), **kwargs)
    raise ValueError(f"downsample_type must be one of ['conv2', 'conv3', 'merge'], got '{downsample_type}'")
