"""Norms and layout helpers for networks that run channel-first (NCHW) or channel-last (NHWC).

VMamba-style networks pick their activation layout once: channel-first networks keep (B, C, H, W) maps and use
``LayerNorm2d``/``BatchNorm2d`` and 1x1 projections (``Linear2d``); channel-last networks keep (B, H, W, C) maps and
use ``ChannelLastLayerNorm`` (an ``nn.LayerNorm``)/``nn.Linear``. ``get_norm_layer`` returns the norm class for a
layout. Both LayerNorms run ``vmamba_zoo.kernels.layer_norm_2d`` on CUDA.
"""
from typing import Optional, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmamba_zoo.kernels import HAS_TRITON
from vmamba_zoo.kernels.layer_norm import MAX_CHANNELS, layer_norm_2d

__all__ = ['LayerNorm2d', 'ChannelLastLayerNorm', 'Permute', 'get_norm_layer', 'to_channels_first',
           'to_channels_last']


def _autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The CUDA autocast dtype when autocast is on for x's device, else None (keep x's dtype)."""
    if x.is_cuda and torch.is_autocast_enabled('cuda'):
        return torch.get_autocast_dtype('cuda')
    return None


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map.

    A subclass of ``nn.LayerNorm`` (same ``weight``/``bias`` parameters and default ``eps=1e-5``) so that channel-last
    and channel-first checkpoints are interchangeable and ``isinstance(m, nn.LayerNorm)`` initialisation applies.

    On CUDA it runs ``vmamba_zoo.kernels.layer_norm_2d``: one read and one write in NCHW, float32 statistics. Under
    CUDA autocast its output is in the autocast dtype (as timm's ``fast_norm``), where ``nn.LayerNorm`` would return
    float32. Elsewhere it is ``F.layer_norm`` on the channel-last view.
    """

    backend = 'auto'  # layer_norm_2d's backend; tests set 'triton' to run the kernel in the interpreter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return layer_norm_2d(x, self.weight, self.bias, self.eps, out_dtype=_autocast_dtype(x), backend=self.backend)


class ChannelLastLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dim that runs ``vmamba_zoo.kernels.layer_norm_2d`` on CUDA.

    Same parameters and results as ``nn.LayerNorm`` (a subclass, so checkpoints and ``isinstance`` initialisation
    carry over). On CUDA the rows are normalised by the Triton kernel, which reads any input once and writes a
    contiguous (..., C) output, under autocast in the autocast dtype (as ``LayerNorm2d``), where ``nn.LayerNorm``
    returns float32; PyTorch's own kernel took 9.5 ms per VMamba-T inference step on the H200 (2026-11-30 profile,
    ``benchmarks/results/README.md``). A (B, C, H, W) map viewed as (B, H, W, C) is read in place. Elsewhere, and for
    a normalised shape of more than the last dim, it is ``nn.LayerNorm``.
    """

    backend = 'auto'  # layer_norm_2d's backend; tests set 'triton' to run the kernel in the interpreter

    def runs_triton(self, x: torch.Tensor) -> bool:
        """Whether ``forward`` normalises a tensor on x's device with the Triton kernel: what layers that fold this
        norm into their own autograd node run instead (``kernels.layer_norm_forward``)."""
        if len(self.normalized_shape) != 1 or x.dim() < 2 or not HAS_TRITON:
            return False
        return self.backend == 'triton' or (self.backend == 'auto' and x.is_cuda
                                            and self.normalized_shape[0] <= MAX_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.normalized_shape) != 1 or x.dim() < 2 or not (x.is_cuda or self.backend == 'triton'):
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if x.dim() == 4 and not x.is_contiguous():  # e.g. an NCHW map viewed as (B, H, W, C): read in place
            return layer_norm_2d(x.permute(0, 3, 1, 2), self.weight, self.bias, self.eps,
                                 out_dtype=_autocast_dtype(x), backend=self.backend,
                                 memory_format=torch.channels_last).permute(0, 2, 3, 1)
        return layer_norm_2d(x, self.weight, self.bias, self.eps, out_dtype=_autocast_dtype(x), backend=self.backend,
                             channel_dim=-1)


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return ', '.join(str(d) for d in self.dims)


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return x.permute(0, 3, 1, 2)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W, C)."""
    return x.permute(0, 2, 3, 1)


_NORM_TYPES = ('layernorm', 'batchnorm')


def get_norm_layer(norm_type: str = 'layernorm', channel_first: bool = False) -> Type[nn.Module]:
    """The norm class for a layout.

    Args:
        norm_type: 'layernorm' (VMamba's 'ln' / 'ln2d') or 'batchnorm' (VMamba's 'bn', channel-first only).
        channel_first: True for (B, C, H, W) activations, False for (B, H, W, C).

    Returns:
        ``LayerNorm2d``, ``ChannelLastLayerNorm`` or ``nn.BatchNorm2d``; each is called as
        ``norm_layer(num_channels)``.
    """
    norm_type = norm_type.lower()
    if norm_type not in _NORM_TYPES:
        raise ValueError(f"norm_type must be one of {_NORM_TYPES}, got '{norm_type}'")
    if norm_type == 'batchnorm':
        if not channel_first:
            raise ValueError("norm_type='batchnorm' needs channel_first=True")
        return nn.BatchNorm2d
    return LayerNorm2d if channel_first else ChannelLastLayerNorm
