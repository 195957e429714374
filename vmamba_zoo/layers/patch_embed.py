"""Stems that turn an image into the stride-``patch_size`` feature map of a hierarchical VMamba-style network.

* ``PatchEmbed`` (VMamba's ``patchembed_version='v1'``): one ``patch_size`` x ``patch_size`` conv with stride
  ``patch_size``, then a norm.
* ``OverlapPatchEmbed`` (VMamba's ``'v2'``): two overlapping ``(s + 1)`` x ``(s + 1)`` convs of stride
  ``s = patch_size // 2`` with norm + GELU between them, then a norm.

Both take (B, C, H, W) images and return (B, C', H / p, W / p) when ``channel_first`` or (B, H / p, W / p, C')
otherwise, and raise a clear ``ValueError`` for inputs of the wrong rank, channel count or a size the patch stride
does not divide.
"""
from typing import Optional, Type

import torch
import torch.nn as nn

from .norm import get_norm_layer

__all__ = ['PatchEmbed', 'OverlapPatchEmbed', 'check_image_input', 'create_patch_embed']


def check_image_input(x: torch.Tensor, in_chans: int, stride: int, name: str = 'input') -> None:
    """Raise a ``ValueError`` unless ``x`` is a (B, in_chans, H, W) tensor with H and W divisible by ``stride``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() != 4:
        raise ValueError(f'{name} must be a 4-D (batch, channels, height, width) tensor, got shape {tuple(x.shape)}')
    if x.shape[1] != in_chans:
        raise ValueError(f'{name} has {x.shape[1]} channels but the model expects in_chans={in_chans} '
                         f'(shape {tuple(x.shape)}; channels_last memory format is fine, NHWC-shaped tensors are not)')
    height, width = x.shape[-2:]
    if height % stride or width % stride:
        raise ValueError(f'{name} height {height} and width {width} must be divisible by the patch stride {stride}; '
                         f'resize or pad the image')


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: conv(k=p, s=p) -> norm (VMamba v1 stem).

    Args:
        in_chans: Image channels.
        embed_dim: Output channels.
        patch_size: Patch size and stride.
        patch_norm: Apply a norm after the conv.
        norm_layer: Norm class for the output layout (default from ``channel_first``).
        channel_first: Return (B, C, H, W) instead of (B, H, W, C).
    """

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 96,
            patch_size: int = 4,
            patch_norm: bool = True,
            norm_layer: Optional[Type[nn.Module]] = None,
            channel_first: bool = False,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.channel_first = channel_first
        norm_layer = norm_layer or get_norm_layer('layernorm', channel_first)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)
        self.norm = norm_layer(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, self.patch_size)
        x = self.proj(x)
        if not self.channel_first:
            x = x.permute(0, 2, 3, 1)
        return self.norm(x)


class OverlapPatchEmbed(nn.Module):
    """Overlapping two-conv stem: conv(k=s+1, s) -> norm -> GELU -> conv(k=s+1, s) -> norm, s = patch_size // 2
    (VMamba v2 stem).

    Args:
        in_chans: Image channels.
        embed_dim: Output channels (the first conv emits ``embed_dim // 2``).
        patch_size: Total stride (two convs of stride ``patch_size // 2``).
        patch_norm: Apply the two norms.
        norm_layer: Norm class for the output layout (default from ``channel_first``).
        act_layer: Activation between the convs.
        channel_first: Return (B, C, H, W) instead of (B, H, W, C).
    """

    def __init__(
            self,
            in_chans: int = 3,
            embed_dim: int = 96,
            patch_size: int = 4,
            patch_norm: bool = True,
            norm_layer: Optional[Type[nn.Module]] = None,
            act_layer: Type[nn.Module] = nn.GELU,
            channel_first: bool = False,
    ):
        super().__init__()
        if patch_size < 2 or patch_size % 2:
            raise ValueError(f'OverlapPatchEmbed: patch_size must be an even number >= 2, got {patch_size}')
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.channel_first = channel_first
        norm_layer = norm_layer or get_norm_layer('layernorm', channel_first)
        stride = patch_size // 2
        kernel_size = stride + 1
        self.conv1 = nn.Conv2d(in_chans, embed_dim // 2, kernel_size=kernel_size, stride=stride, padding=1)
        self.norm1 = norm_layer(embed_dim // 2) if patch_norm else nn.Identity()
        self.act = act_layer()
        self.conv2 = nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=kernel_size, stride=stride, padding=1)
        self.norm2 = norm_layer(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, self.patch_size)
        x = self.conv1(x)
        if self.channel_first:
            x = self.norm1(x)
        else:  # the channel-last norm runs on an NHWC view
            x = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.conv2(self.act(x))
        if not self.channel_first:
            x = x.permute(0, 2, 3, 1)
        return self.norm2(x)


_STEMS = {'patch': PatchEmbed, 'overlap': OverlapPatchEmbed}


def create_patch_embed(stem_type: str, **kwargs) -> nn.Module:
    """Build a stem by name: 'patch' (``PatchEmbed``, VMamba v1) or 'overlap' (``OverlapPatchEmbed``, VMamba v2)."""
    if stem_type not in _STEMS:
        raise ValueError(f"stem_type must be one of {sorted(_STEMS)}, got '{stem_type}'")
    return _STEMS[stem_type](**kwargs)
