"""SiLU of a channel-last (B, C, H, W) map, written in both layouts in one pass.

In a channel-last SS2D branch the depthwise conv's activation feeds two consumers: ``x_proj``, a GEMM over the
positions that wants channel-last rows, and the fused multi-scan, whose row walk reads each channel's positions
contiguously (NCHW). Op by op that is ``silu`` (read and write the map) and then ``contiguous()`` (read it again
and write it transposed, a strided copy); in the backward, the scan's NCHW float32 ``du`` is cast and transposed
(one strided copy), added to the GEMM's channel-last gradient (a strided add) and passed through ``silu_backward``.
On the H200 those strided copies and adds took 3.3 ms of a VMamba-T training step at batch 128 (2026-11-30 profile,
``benchmarks/results/README.md``).

Here one program holds a [pixels, channels] tile of one image: it reads the tile once, writes it channel-last and,
through Triton's layout conversion in shared memory, channel-first, so both stores are coalesced. The backward
reads x and the two outputs' gradients (either may be absent) and writes SiLU's derivative times their sum,
channel-last, in float32 arithmetic (float64 for float64 x) with one rounding.

Contents: ``silu_dual_layout_ref`` (readable reference), the Triton forward and backward kernels,
``silu_dual_layout_forward`` / ``silu_dual_layout_backward`` (the kernels without autograd, for fused nodes), an
autograd Function, and ``silu_dual_layout``, which dispatches: Triton for CUDA tensors, PyTorch otherwise. Imports
without Triton and without a GPU.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._triton_utils import HAS_TRITON, CachedLaunch, backend_runs_triton, cdiv, next_power_of_2, tl, triton

__all__ = ['silu_dual_layout', 'silu_dual_layout_ref', 'silu_dual_layout_forward', 'silu_dual_layout_backward']

_BACKENDS = ('auto', 'triton', 'torch')
# [pixels, channels] per program: 4096 elements, 32 per thread at 4 warps, the channels capped so that a program's
# channel-first store still covers 64 pixels (128 bytes of 16-bit values) per channel.
_BLOCK_P, _MAX_BLOCK_C, _WARPS = 64, 64, 4


def silu_dual_layout_ref(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Readable reference: ``y = x * sigmoid(x)`` computed in x's dtype, returned twice.

    Args:
        x: (B, C, H, W) in any layout.

    Returns:
        y with channel-last strides, and y NCHW-contiguous.
    """
    y = x * torch.sigmoid(x)
    return y.contiguous(memory_format=torch.channels_last), y.contiguous()


if HAS_TRITON:

    @triton.jit
    def _tile(C, P, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's image, the channel-last and channel-first offsets of its [BLOCK_P, BLOCK_C] tile within
        the image, and the tile's mask."""
        image = tl.program_id(2).to(tl.int64)
        pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (pixels[:, None] < P) & (channels[None, :] < C)
        base = image * C * P
        return base + pixels[:, None] * C + channels[None, :], base + channels[None, :] * P + pixels[:, None], mask

    @triton.jit
    def _silu_dual_layout_fwd_kernel(x_ptr, y_ptr, y_cf_ptr, C, P, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        channel_last, channel_first, mask = _tile(C, P, BLOCK_P, BLOCK_C)
        compute = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
        x = tl.load(x_ptr + channel_last, mask=mask, other=0.0).to(compute)
        y = (x / (1.0 + tl.exp(-x))).to(y_ptr.dtype.element_ty)  # PyTorch's formula for silu
        tl.store(y_ptr + channel_last, y, mask=mask)
        tl.store(y_cf_ptr + channel_first, y.to(y_cf_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _silu_dual_layout_bwd_kernel(x_ptr, dy_ptr, dy_cf_ptr, dx_ptr, C, P, HAS_DY: tl.constexpr,
                                     HAS_DY_CF: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        channel_last, channel_first, mask = _tile(C, P, BLOCK_P, BLOCK_C)
        compute = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
        x = tl.load(x_ptr + channel_last, mask=mask, other=0.0).to(compute)
        grad = tl.zeros_like(x)
        if HAS_DY:
            grad += tl.load(dy_ptr + channel_last, mask=mask, other=0.0).to(compute)
        if HAS_DY_CF:
            grad += tl.load(dy_cf_ptr + channel_first, mask=mask, other=0.0).to(compute)
        sigmoid = 1.0 / (1.0 + tl.exp(-x))
        dx = grad * sigmoid * (1.0 + x * (1.0 - sigmoid))  # PyTorch's formula for silu_backward
        tl.store(dx_ptr + channel_last, dx.to(dx_ptr.dtype.element_ty), mask=mask)

    _launch_fwd = CachedLaunch(_silu_dual_layout_fwd_kernel)
    _launch_bwd = CachedLaunch(_silu_dual_layout_bwd_kernel)


def _grid(x: torch.Tensor) -> Tuple[Tuple[int, int, int], int, int, int]:
    """(grid, C, P, BLOCK_C) of a (B, C, H, W) map: pixel blocks, channel blocks, images."""
    batch, channels, height, width = x.shape
    pixels = height * width
    block_c = min(_MAX_BLOCK_C, next_power_of_2(channels))
    return (cdiv(pixels, _BLOCK_P), cdiv(channels, block_c), batch), channels, pixels, block_c


def silu_dual_layout_forward(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``silu_dual_layout``'s Triton forward without autograd, for layers that fold it into their own autograd node.
    No checks: x must be a dense channel-last (B, C, H, W) map.

    Returns:
        SiLU(x) with x's channel-last strides, and the same values NCHW-contiguous, both in x's dtype.
    """
    y = torch.empty_like(x, memory_format=torch.channels_last)
    y_cf = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if x.numel():
        grid, channels, pixels, block_c = _grid(x)
        _launch_fwd(grid, x, y, y_cf, channels, pixels, BLOCK_P=_BLOCK_P, BLOCK_C=block_c, num_warps=_WARPS)
    return y, y_cf


def silu_dual_layout_backward(x: torch.Tensor, dy: Optional[torch.Tensor],
                              dy_cf: Optional[torch.Tensor]) -> torch.Tensor:
    """The gradient of ``silu_dual_layout_forward`` given its outputs' gradients: ``dy`` with x's channel-last strides
    and ``dy_cf`` NCHW-contiguous, of any float dtypes, either None (no gradient). No checks.

    Returns:
        SiLU'(x) * (dy + dy_cf), channel-last, in x's dtype, summed and differentiated in float32.
    """
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    if x.numel():
        grid, channels, pixels, block_c = _grid(x)
        # An absent gradient's pointer is x's: the kernel does not read it.
        _launch_bwd(grid, x, x if dy is None else dy, x if dy_cf is None else dy_cf, dx, channels, pixels,
                    HAS_DY=dy is not None, HAS_DY_CF=dy_cf is not None, BLOCK_P=_BLOCK_P, BLOCK_C=block_c,
                    num_warps=_WARPS)
    return dx


class _SiLUDualLayout(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x)
        return silu_dual_layout_forward(x)

    @staticmethod
    def backward(ctx, dy, dy_cf):
        x, = ctx.saved_tensors
        if dy is None and dy_cf is None:
            return None
        dy = None if dy is None else dy.contiguous(memory_format=torch.channels_last)
        return silu_dual_layout_backward(x, dy, None if dy_cf is None else dy_cf.contiguous())


def _check(x, backend):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f'silu_dual_layout: x must be a (B, C, H, W) tensor, got '
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'silu_dual_layout: x must be a floating-point tensor, got {x.dtype}')
    if backend not in _BACKENDS:
        raise ValueError(f'silu_dual_layout: backend must be one of {_BACKENDS}, got {backend!r}')


def silu_dual_layout(x: torch.Tensor, backend: str = 'auto') -> Tuple[torch.Tensor, torch.Tensor]:
    """SiLU of a (B, C, H, W) map, returned channel-last and channel-first (NCHW) from one read of x.

    Args:
        x: (B, C, H, W) float tensor; a map that is not densely channel-last is first copied to channel-last.
        backend: 'auto' (Triton for CUDA tensors, except while tracing, scripting or compiling; PyTorch
            otherwise), 'triton' (also runs in Triton's CPU interpreter) or 'torch'.

    Returns:
        ``(y, y_channel_first)``: SiLU(x) in x's dtype with channel-last strides, and the same values
        NCHW-contiguous. Gradients of both flow to x.
    """
    _check(x, backend)
    if not backend_runs_triton(backend, x):
        y = F.silu(x)
        return y.contiguous(memory_format=torch.channels_last), y.contiguous()
    if not HAS_TRITON:
        raise RuntimeError("silu_dual_layout: backend='triton' needs triton installed")
    x = x.contiguous(memory_format=torch.channels_last)  # no copy when it is already
    if torch.is_grad_enabled() and x.requires_grad:
        return _SiLUDualLayout.apply(x)
    return silu_dual_layout_forward(x)
