"""RMSNorm and the "add then normalise" step of Mamba-style pre-norm blocks, in plain PyTorch.

mamba_ssm fuses ``residual = residual + x; y = norm(residual)`` into one Triton kernel and keeps the residual stream in
float32 (``residual_in_fp32``). The functions here compute the same numbers: the sum and the normalisation run in
float32, the normalised output comes back in the dtype of the incoming hidden states and the residual stays float32
when asked. Plain PyTorch is fast enough here (the scan dominates) and keeps CPU, autocast and export paths simple.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

__all__ = ['RMSNorm', 'rms_norm', 'add_rms_norm']


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """RMS-normalise the last dimension in float32 and return the result in ``x``'s dtype.

    Args:
        x: (..., C) input.
        weight: optional (C,) scale.
        eps: added to the mean square before the reciprocal square root.

    Returns:
        ``x / sqrt(mean(x**2) + eps) * weight`` in ``x``'s dtype.
    """
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def add_rms_norm(
        x: torch.Tensor,
        residual: Optional[torch.Tensor],
        weight: Optional[torch.Tensor],
        eps: float = 1e-5,
        residual_in_fp32: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``residual = x + residual``; ``y = rms_norm(residual)``: mamba_ssm's ``rms_norm_fn(..., prenorm=True)``.

    Args:
        x: (..., C) new branch output (or the first hidden states when ``residual`` is None).
        residual: optional (..., C) running residual stream.
        weight: optional (C,) RMSNorm scale.
        eps: RMSNorm epsilon.
        residual_in_fp32: keep the returned residual in float32 (else in ``x``'s dtype).

    Returns:
        ``(y, residual)``: the normalised tensor in ``x``'s dtype and the updated residual stream.
    """
    summed = x.float() if residual is None else x.float() + residual.float()
    y = summed * torch.rsqrt(summed.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype), summed if residual_in_fp32 else summed.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learnable scale and no bias (mamba_ssm's ``RMSNorm``: state dict holds ``weight`` only).

    Args:
        dim: normalised (last) dimension.
        eps: epsilon added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f'{self.weight.shape[0]}, eps={self.eps}'
