"""LayerNorm over the channels of a (B, C, H, W) map, read once and written once in its own layout.

Channel-first VMamba-style networks normalise over C at every pixel three times per block. PyTorch has no
channel-first LayerNorm: the usual ``permute -> F.layer_norm -> permute`` copies the map to channel-last, and under
autocast computes and returns float32, so the next 1x1 convolution gets a float32 channel-last map and cuDNN converts
it back. On the H200 that pattern took more time than the selective scans in VMamba-T (2026-11-29 profile,
``benchmarks/results/README.md``).

Here one program holds all C channels of a block of pixels: in NCHW each channel's pixels are contiguous and in a
channel-last (NHWC) map each pixel's channels are, so either way every load and store is coalesced; the statistics
are reduced across the channel axis in registers (float32), and the output is written in the requested dtype and
layout (by default the input's). Channel-last networks use it too, as their LayerNorm over the last dim, and a
channel-first map can be normalised straight into a channel-last one. The backward reduces the same way and writes
per-program partial sums of the weight and bias gradients, which are added up afterwards (no atomics, deterministic).

Contents: ``layer_norm_2d_ref`` (readable float reference), the Triton forward/backward kernels, an autograd
Function, and ``layer_norm_2d``, which dispatches: Triton for CUDA tensors, PyTorch's ``F.layer_norm`` on
channel-last views otherwise. Imports without Triton and without a GPU.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._triton_utils import HAS_TRITON, CachedLaunch, backend_runs_triton, cast_to, cdiv, next_power_of_2, tl, triton

__all__ = ['layer_norm_2d', 'layer_norm_2d_ref', 'layer_norm_forward', 'layer_norm_backward']

_BACKENDS = ('auto', 'triton', 'torch')
_TILE_ELEMENTS = 4096  # (channels x pixels) per program: 16 or 32 values per thread at 4 or 8 warps
MAX_CHANNELS = 2048  # one program holds every channel of 16+ pixels in registers; more would spill
# The backward's (tile elements, warps, most pixels per program, fewest programs). Swept on the H200 at B = 128
# (2026-11-30 run 2, ``bench_layer_norm.py --backward-tiles`` at commit 14f9b05, which could also reduce per tile),
# ms for 96 / 192 / 384 / 768 channels, float32 x and bf16 dy, channel-last rows:
#   (4096, 4, 128, 1024) 0.157 / 0.094 / 0.056 / 0.031; the same reducing the weight and bias sums across the
#   program's threads once per tile instead of once per program 0.200 / 0.160 / 0.067 / 0.031; (4096, 4, 128, 1),
#   the previous tiling, 0.200 / 0.172 / 0.082 / 0.066 (49 programs at 7x7); (8192, 4, 128, 4096) 0.166 / 0.117 /
#   0.058 / 0.041; 8 warps slower throughout. Over a VMamba-T step's block norms: 3.51 against 4.97 ms.
_BWD_TILING = (4096, 4, 128, 1024)


def layer_norm_2d_ref(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      eps: float = 1e-5) -> torch.Tensor:
    """Readable reference: normalise each pixel's C values, in float32 (float64 for float64 input).

    Args:
        x: (B, C, H, W).
        weight: (C,) scale, or None.
        bias: (C,) shift, or None.
        eps: added to the variance.

    Returns:
        (B, C, H, W) in float32 (float64 for float64 input).
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(compute)
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)  # biased, as nn.LayerNorm
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(compute)[:, None, None]
    if bias is not None:
        y = y + bias.to(compute)[:, None, None]
    return y


def _layer_norm_2d_torch(x, weight, bias, eps, out_dtype):
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2)
    return y if out_dtype is None else y.to(out_dtype)


if HAS_TRITON:

    @triton.jit
    def _pixel_tile(C, P, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """Image, pixels, channels and mask of this program's [BLOCK_C, BLOCK_P] tile (all channels of BLOCK_P
        pixels)."""
        image = tl.program_id(1).to(tl.int64)
        pixels = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        channels = tl.arange(0, BLOCK_C)
        mask = (channels[:, None] < C) & (pixels[None, :] < P)
        return image, pixels, channels, mask

    @triton.jit
    def _tile_offsets(image, pixels, channels, C, P, stride_c, stride_p):
        """Offsets of the tile in a dense map whose channels are ``stride_c`` apart and pixels ``stride_p`` apart:
        (P, 1) in NCHW, (1, C) in NHWC."""
        return image * C * P + channels[:, None].to(tl.int64) * stride_c + pixels[None, :] * stride_p

    @triton.jit(do_not_specialize=['rstd_offset'])
    def _layer_norm_2d_fwd_kernel(
            x_ptr, weight_ptr, bias_ptr, y_ptr, stats_ptr, rstd_offset, C, P, eps, stride_x_c, stride_x_p, stride_y_c,
            stride_y_p, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_STATS: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        image, pixels, channels, mask = _pixel_tile(C, P, BLOCK_C, BLOCK_P)
        # float32, or float64 for float64 input. Not the statistics' dtype: without statistics to store, y stands in
        # for their buffers, and a 16-bit y would make the mean and variance 16-bit.
        compute = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
        x = tl.load(x_ptr + _tile_offsets(image, pixels, channels, C, P, stride_x_c, stride_x_p), mask=mask,
                    other=0.0).to(compute)
        mean = tl.sum(x, axis=0) / C
        centered = tl.where(mask, x - mean[None, :], 0.0)
        rstd = tl.rsqrt(tl.sum(centered * centered, axis=0) / C + eps)
        y = centered * rstd[None, :]
        if HAS_WEIGHT:
            y *= tl.load(weight_ptr + channels, mask=channels < C, other=0.0).to(compute)[:, None]
        if HAS_BIAS:
            y += tl.load(bias_ptr + channels, mask=channels < C, other=0.0).to(compute)[:, None]
        tl.store(y_ptr + _tile_offsets(image, pixels, channels, C, P, stride_y_c, stride_y_p),
                 y.to(y_ptr.dtype.element_ty), mask=mask)
        if STORE_STATS:  # the mean, and rstd_offset elements further the rstd
            tl.store(stats_ptr + image * P + pixels, mean, mask=pixels < P)
            tl.store(stats_ptr + rstd_offset + image * P + pixels, rstd, mask=pixels < P)

    @triton.jit(do_not_specialize=['rstd_offset', 'dbias_offset'])
    def _layer_norm_2d_bwd_kernel(
            x_ptr, weight_ptr, dy_ptr, dx_add_ptr, stats_ptr, rstd_offset, dx_ptr, parts_ptr, dbias_offset, C, P,
            stride_x_c, stride_x_p, stride_y_c, stride_y_p,
            HAS_WEIGHT: tl.constexpr, HAS_DX_ADD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
            PIXEL_BLOCKS: tl.constexpr,
    ):
        # PIXEL_BLOCKS consecutive [BLOCK_C, BLOCK_P] tiles per program, whose weight and bias gradients are summed
        # before one partial per program is stored: fewer partials for the sum after the kernel. The sums are kept
        # per tile element and reduced across the program's threads once, after the loop. The statistics and the
        # partials each come as one buffer (rstd and the bias partials at an offset): no per-call slicing on the host.
        image = tl.program_id(1).to(tl.int64)
        channels = tl.arange(0, BLOCK_C)
        compute = stats_ptr.dtype.element_ty
        weight = tl.load(weight_ptr + channels, mask=channels < C, other=0.0).to(compute) if HAS_WEIGHT else None
        dweight_tile = tl.zeros([BLOCK_C, BLOCK_P], dtype=compute)
        dbias_tile = tl.zeros([BLOCK_C, BLOCK_P], dtype=compute)
        for block in range(PIXEL_BLOCKS):
            pixels = (tl.program_id(0) * PIXEL_BLOCKS + block) * BLOCK_P + tl.arange(0, BLOCK_P)
            mask = (channels[:, None] < C) & (pixels[None, :] < P)
            offsets = _tile_offsets(image, pixels, channels, C, P, stride_x_c, stride_x_p)  # of x and dx
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(compute)
            dy = tl.load(dy_ptr + _tile_offsets(image, pixels, channels, C, P, stride_y_c, stride_y_p), mask=mask,
                         other=0.0).to(compute)
            mean = tl.load(stats_ptr + image * P + pixels, mask=pixels < P, other=0.0)
            rstd = tl.load(stats_ptr + rstd_offset + image * P + pixels, mask=pixels < P, other=0.0)
            x_hat = tl.where(mask, (x - mean[None, :]) * rstd[None, :], 0.0)
            g = dy * weight[:, None] if HAS_WEIGHT else dy
            # d/dx of (x - mean) * rstd, contracted with g: rstd * (g - mean_c(g) - x_hat * mean_c(g * x_hat)).
            dx = (g - tl.sum(g, axis=0)[None, :] / C - x_hat * (tl.sum(g * x_hat, axis=0)[None, :] / C)) \
                * rstd[None, :]
            if HAS_DX_ADD:  # a gradient that reaches x by another path (a residual connection), in dx's layout
                dx += tl.load(dx_add_ptr + offsets, mask=mask, other=0.0).to(compute)
            tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dweight_tile += dy * x_hat
            dbias_tile += dy
        dweight = tl.sum(dweight_tile, axis=1)
        dbias = tl.sum(dbias_tile, axis=1)
        part = (image * tl.num_programs(0) + tl.program_id(0)) * C + channels
        tl.store(parts_ptr + part, dweight, mask=channels < C)
        tl.store(parts_ptr + dbias_offset + part, dbias, mask=channels < C)

    # 96 launches per VMamba-T training step, whose host time, not the GPU, set the step's pace on the H200.
    _launch_fwd, _launch_bwd = CachedLaunch(_layer_norm_2d_fwd_kernel), CachedLaunch(_layer_norm_2d_bwd_kernel)


@functools.lru_cache(maxsize=None)
def _launch(images: int, channels: int, pixels: int) -> Tuple[Tuple[int, int], int, int, int]:
    """(grid, BLOCK_C, BLOCK_P, num_warps): every channel, and enough pixels for rows of at least 32 bytes; the grid
    runs pixel blocks on axis 0 and images on axis 1."""
    block_c = next_power_of_2(channels)
    block_p = max(16, min(128, _TILE_ELEMENTS // block_c, next_power_of_2(pixels)))
    warps = 8 if block_c * block_p > _TILE_ELEMENTS else 4
    return (cdiv(pixels, block_p), images), block_c, block_p, warps


@functools.lru_cache(maxsize=None)
def _launch_bwd_tiles(images: int, channels: int, pixels: int) -> Tuple[Tuple[int, int], int, int, int, int]:
    """(grid, BLOCK_C, BLOCK_P, PIXEL_BLOCKS, num_warps) of the backward: each program loops over PIXEL_BLOCKS tiles
    of every channel and BLOCK_P pixels (``_BWD_TILING``), as many as keep at least ``min_programs`` programs."""
    block_c = next_power_of_2(channels)
    tile, warps, pixels_per_program, min_programs = _BWD_TILING
    block_p = max(1, min(pixels_per_program, tile // block_c, next_power_of_2(pixels)))
    blocks_per_image = cdiv(pixels, block_p)
    pixel_blocks = max(1, min(pixels_per_program // block_p, blocks_per_image,
                              images * blocks_per_image // min_programs))
    return (cdiv(blocks_per_image, pixel_blocks), images), block_c, block_p, pixel_blocks, warps


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _is_channels_last(x: torch.Tensor) -> bool:
    """A dense NHWC map (and not also NCHW-contiguous, as a map with one channel or one pixel is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when it is a dense NCHW or NHWC map, else an NCHW copy."""
    return x if x.is_contiguous() or _is_channels_last(x) else x.contiguous()


def _geometry(x: torch.Tensor, rows: bool) -> Tuple[int, int, int, int, int]:
    """(images, channels, pixels, channel stride, pixel stride) of a dense NCHW or NHWC map, or of a contiguous
    (..., C) tensor taken as one image of numel / C pixels (``rows``)."""
    if rows:
        channels = x.shape[-1]
        return 1, channels, x.numel() // channels, 1, channels
    channels, pixels = x.shape[1], x.shape[2] * x.shape[3]
    return (x.shape[0], channels, pixels) + ((1, channels) if _is_channels_last(x) else (pixels, 1))


def _layer_norm_fwd(x, weight, bias, eps, y, rows, store_stats):
    """Normalise x into y (both dense, any of the layouts ``_geometry`` knows); returns the (2, images, pixels)
    mean/rstd statistics when ``store_stats``."""
    images, channels, pixels, stride_x_c, stride_x_p = _geometry(x, rows)
    grid, block_c, block_p, warps = _launch(images, channels, pixels)
    # Without statistics to keep, y stands in for their (unwritten) buffer: one allocation less per call.
    stats = torch.empty(2, images, pixels, device=x.device, dtype=_stats_dtype(x)) if store_stats else y
    _launch_fwd(
        grid, x, weight, bias, y, stats, images * pixels, channels, pixels, eps, stride_x_c, stride_x_p,
        *_geometry(y, rows)[3:], HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, STORE_STATS=store_stats,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)
    return stats


def _layer_norm_bwd(x, weight, stats, dy, rows, dx_add=None):
    images, channels, pixels, stride_x_c, stride_x_p = geometry = _geometry(x, rows)
    grid, block_c, block_p, pixel_blocks, warps = _launch_bwd_tiles(*geometry[:3])
    dx = torch.empty_like(x)  # in x's layout
    dy = dy.contiguous() if rows else _dense(dy)
    if dx_add is not None:
        dx_add = dx_add.reshape(dx.shape)  # a view where the layout allows
        if dx_add.stride() != dx.stride():  # the kernel reads it at dx's offsets
            dx_add = torch.empty_like(dx).copy_(dx_add)
    programs = grid[0] * grid[1]
    parts = torch.empty(2, programs, channels, device=x.device, dtype=stats.dtype)
    _launch_bwd(grid, x, weight, dy, dy if dx_add is None else dx_add, stats, images * pixels, dx, parts,
                programs * channels, channels, pixels, stride_x_c, stride_x_p, *_geometry(dy, rows)[3:],
                HAS_WEIGHT=weight is not None, HAS_DX_ADD=dx_add is not None, BLOCK_C=block_c, BLOCK_P=block_p,
                PIXEL_BLOCKS=pixel_blocks, num_warps=warps)
    return dx, parts.sum(dim=1)


def layer_norm_forward(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                       out_dtype: torch.dtype, channel_dim: int = -1,
                       memory_format: Optional[torch.memory_format] = None,
                       store_stats: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``layer_norm_2d``'s Triton forward without autograd, for layers that fold the norm into their own autograd
    node with the ops around it (one node instead of several: an eager VMamba-T training step was paced by the host
    issuing nodes on the H200, 2026-11-30 profiles). No checks: the caller passes what ``layer_norm_2d`` accepts.

    Args:
        x: contiguous (..., C) rows (``channel_dim=-1``), or a dense NCHW or NHWC (B, C, H, W) map (``channel_dim=1``).
        weight, bias: (C,) or None.
        eps: added to the variance.
        out_dtype: dtype of the output.
        channel_dim: -1 for rows, 1 for a map.
        memory_format: the output map's layout (None: x's); rows are written contiguous.
        store_stats: compute the statistics for the backward (else None is returned for them).

    Returns:
        The normalised tensor and the (2, images, pixels) float32 mean/rstd that ``layer_norm_backward`` takes.
    """
    rows = channel_dim == -1
    if rows:
        memory_format = torch.contiguous_format
    elif memory_format is None:
        memory_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype, memory_format=memory_format)
    stats = _layer_norm_fwd(x, weight, bias, float(eps), y, rows, store_stats)
    return y, stats if store_stats else None


def layer_norm_backward(x: torch.Tensor, weight: Optional[torch.Tensor], stats: torch.Tensor, dy: torch.Tensor,
                        channel_dim: int = -1, has_bias: bool = True, dx_add: Optional[torch.Tensor] = None):
    """Gradients of ``layer_norm_forward`` given ``dy`` (x's shape, any dense layout): dx in x's dtype and layout,
    and the weight and bias gradients in their parameters' dtype (x's when there is no weight; None when absent).

    ``dx_add`` (x's shape), a gradient that reaches x by another path, is added to dx as the kernel writes it: a
    residual block's ``x + f(norm(x))`` needs no separate sum of its two input gradients."""
    dx, (dweight, dbias) = _layer_norm_bwd(x, weight, stats, dy, channel_dim == -1, dx_add)
    dweight = None if weight is None else cast_to(dweight, weight.dtype)
    dbias = cast_to(dbias, x.dtype if weight is None else weight.dtype) if has_bias else None
    return dx, dweight, dbias


class _LayerNormFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype, memory_format, rows):
        y, stats = layer_norm_forward(x, weight, bias, eps, out_dtype, -1 if rows else 1, memory_format)
        ctx.save_for_backward(x, weight, stats)
        ctx.has_bias, ctx.rows = bias is not None, rows
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, stats = ctx.saved_tensors
        dx, dweight, dbias = layer_norm_backward(x, weight, stats, dy, -1 if ctx.rows else 1, ctx.has_bias)
        return dx, dweight, dbias, None, None, None, None


_MEMORY_FORMATS = (None, torch.contiguous_format, torch.channels_last)


def _check(x, weight, bias, eps, out_dtype, backend, memory_format, channel_dim):
    if channel_dim not in (1, -1):
        raise ValueError(f'layer_norm_2d: channel_dim must be 1 (a (B, C, H, W) map) or -1 (the last dim), got '
                         f'{channel_dim}')
    rows = channel_dim == -1
    if not isinstance(x, torch.Tensor) or (x.dim() < 1 if rows else x.dim() != 4):
        raise ValueError(f"layer_norm_2d: x must be a {'(..., C)' if rows else '(B, C, H, W)'} tensor, got "
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    if not x.is_floating_point():
        raise TypeError(f'layer_norm_2d: x must be a floating-point tensor, got {x.dtype}')
    channels = x.shape[channel_dim]
    for name, t in (('weight', weight), ('bias', bias)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != channels:  # ints, not a shape comparison: this runs on every call
            raise ValueError(f'layer_norm_2d: {name} must have shape ({channels},) (the channels of x), got '
                             f'{tuple(t.shape)}')
        if t.device != x.device:
            raise ValueError(f'layer_norm_2d: {name} is on {t.device} but x is on {x.device}')
    if eps <= 0:
        raise ValueError(f'layer_norm_2d: eps must be positive, got {eps}')
    if out_dtype is not None and not out_dtype.is_floating_point:
        raise TypeError(f'layer_norm_2d: out_dtype must be a floating-point dtype, got {out_dtype}')
    if backend not in _BACKENDS:
        raise ValueError(f'layer_norm_2d: backend must be one of {_BACKENDS}, got {backend!r}')
    if memory_format not in _MEMORY_FORMATS or (rows and memory_format is not None):
        raise ValueError(f'layer_norm_2d: memory_format must be None, torch.contiguous_format or '
                         f'torch.channels_last (None with channel_dim=-1), got {memory_format}')


def layer_norm_2d(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float = 1e-5,
                  out_dtype: Optional[torch.dtype] = None, backend: str = 'auto',
                  memory_format: Optional[torch.memory_format] = None, channel_dim: int = 1) -> torch.Tensor:
    """LayerNorm over the channels of a (B, C, H, W) map (``nn.LayerNorm(C)`` applied at every pixel), or over the
    last dim of a (..., C) tensor (``channel_dim=-1``: ``nn.LayerNorm(C)`` itself).

    Args:
        x: (B, C, H, W), or (..., C) with ``channel_dim=-1``; any float dtype.
        weight: (C,) scale, or None.
        bias: (C,) shift, or None.
        eps: added to the variance.
        out_dtype: dtype of the output (default ``x.dtype``). The arithmetic is float32 (float64 for float64 x).
        backend: 'auto' (Triton for CUDA tensors of up to ``MAX_CHANNELS`` channels, except while tracing,
            scripting or compiling, where inductor fuses PyTorch's LayerNorm itself; PyTorch otherwise), 'triton'
            (also runs in Triton's CPU interpreter) or 'torch'.
        memory_format: layout of the output map: ``torch.contiguous_format`` (NCHW), ``torch.channels_last`` (NHWC)
            or None for the input's (NCHW unless x is a dense channel-last map). None with ``channel_dim=-1``, whose
            output is contiguous.
        channel_dim: 1 for a map, -1 for the last dim of any tensor.

    Returns:
        x's shape in ``out_dtype`` (and ``memory_format``). Gradients flow to x, weight and bias.
    """
    _check(x, weight, bias, eps, out_dtype, backend, memory_format, channel_dim)
    rows = channel_dim == -1
    channels = x.shape[channel_dim]
    use_triton = backend_runs_triton(backend, x) and (backend == 'triton' or channels <= MAX_CHANNELS)
    if rows:
        x, memory_format = x.contiguous(), torch.contiguous_format
        if not use_triton:
            y = F.layer_norm(x, (channels,), weight, bias, eps)
            return y if out_dtype is None else y.to(out_dtype)
    else:
        x = _dense(x)
        memory_format = memory_format or (torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
        if not use_triton:
            return _layer_norm_2d_torch(x, weight, bias, eps, out_dtype).contiguous(memory_format=memory_format)
    if not HAS_TRITON:
        raise RuntimeError("layer_norm_2d: backend='triton' needs triton installed")
    if channels > MAX_CHANNELS:
        raise ValueError(f'layer_norm_2d: the Triton path handles up to {MAX_CHANNELS} channels, got {channels}')
    out_dtype = out_dtype or x.dtype
    if x.numel() == 0:
        return torch.empty(x.shape, device=x.device, dtype=out_dtype, memory_format=memory_format)
    if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in (weight, bias))):
        return _LayerNormFunction.apply(x, weight, bias, float(eps), out_dtype, memory_format, rows)
    # Inference: no statistics to keep, no autograd node.
    y = torch.empty(x.shape, device=x.device, dtype=out_dtype, memory_format=memory_format)
    _layer_norm_fwd(x, weight, bias, float(eps), y, rows, False)
    return y
