"""SS2D: VMamba's 2D selective-scan mixer, on the shared kernel core (``vmamba_zoo.kernels.multi_scan_2d``).

Data flow (VMamba's ``forwardv2``/``forwardv0``)::

    in_proj -> [split off the gate z, z = act(z)] -> depthwise conv -> act
            -> core: x_proj / dt_proj on the map, K-route selective scan, sum of the routes -> out_norm
            -> [out_act] -> [* z] -> out_proj -> dropout

The core computes VMamba's pointwise projections directly on the (B, D, H, W) map: ``x_proj`` is one 1x1 conv with
the K routes' weights stacked and ``dt_proj`` a grouped 1x1 conv. The fused multi-scan then reads every route's
delta/B/C at the position it visits and accumulates the route outputs on the map. This is the same function as the
official ``cross_scan -> x_proj -> selective scan -> cross_merge`` without its K permuted copies.

Parameter names and shapes equal the official ``SS2D`` (``in_proj``, ``conv2d``, ``x_proj_weight`` (K, R + 2N, D),
``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K * D, N), ``Ds`` (K * D), ``out_norm``,
``out_proj``), so official checkpoints load unchanged. Variants that the official code selects by parsing
``forward_type`` strings are named arguments here:

=====================  ==============================================================================
official               here
=====================  ==============================================================================
``v0``                 ``scan_fp32=True`` (channel-last, z gate with act, LayerNorm out-norm)
``v05``                ``scan_fp32=False`` (``v01``-``v04``/``v2``/``v3`` only differ in CUDA backend)
``_noz``               ``use_z_gate=False``
``_nozact``            ``z_act=False``
``_oact``              ``out_act=True``
``_on{none,...}``      ``out_norm='none' | 'dwconv3' | 'cnorm' | 'softmax' | 'sigmoid'``
``_no32``              ``scan_fp32=False``
``ln2d``/``bn`` norm   ``channel_first=True``
scan_mode              ``pattern='cross'`` (any pattern registered in ``vmamba_zoo.kernels``)
=====================  ==============================================================================
"""
import math
from typing import NamedTuple, Optional, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmamba_zoo.kernels import (
    RasterMultiScan, cast_to, get_pattern, layer_norm_backward, layer_norm_forward, multi_scan_2d, plain_eager,
    silu_dual_layout_backward, silu_dual_layout_forward,
)

from .eager import (
    add_residual, autocast_dtype, derived_until_changed, kept_casts, node_dtype, own_parameters as _own_parameters,
    without_hooks,
)
from .mlp import _affine, bias_grad_float32, get_linear_layer, mm_float32
from .norm import ChannelLastLayerNorm, LayerNorm2d, Permute

__all__ = ['SS2D', 'dt_bias_init', 'A_log_init', 'SpatialSoftmax', 'grouped_projection']


def dt_bias_init(
        num: int,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
) -> torch.Tensor:
    """Mamba's delta bias: ``softplus(bias)`` is log-uniform in [dt_min, dt_max] (floored at ``dt_init_floor``).

    Returns:
        (num,) float32 tensor, the inverse softplus of the sampled step sizes.
    """
    dt = torch.exp(torch.rand(num) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


def A_log_init(d_state: int, rows: int) -> torch.Tensor:
    """S4D-real init: row ``r`` of ``A_log`` is ``log(1..d_state)``; returns a (rows, d_state) float32 tensor."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(rows, 1).contiguous()


class _GroupedProjection(torch.autograd.Function):
    """``out[k] = weight[k] @ x[k]`` for K groups, (K, O, I) x (K, I, P) -> (K, O, P), with P large and O, I small.

    Forward and input gradient are batched GEMMs. The weight gradient is a reduction over P with a tiny result per
    group, for which cuBLAS's batched kernel took 17.8 ms of a 100 ms VMamba-T training step on the H200 (2026-11-30,
    run 1); it runs as one GEMM over all groups, (K * O, P) x (P, K * I), whose diagonal blocks are the groups'
    gradients, and drops out of the top kernels of the next run's profile.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight, x)
        return torch.bmm(weight, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, x = ctx.saved_tensors
        dx = torch.bmm(weight.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
        dweight = _grouped_weight_grad(grad, x) if ctx.needs_input_grad[0] else None
        return dweight, dx


def grouped_projection(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(weight, x)``, (K, O, I) x (K, I, P) -> (K, O, P), with a faster weight gradient for large P.

    While tracing (fvcore) and without gradients it is the plain ``torch.bmm``, which the tracer records and FLOP
    counters know.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting() or not (
            torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
        return torch.bmm(weight, x)
    return _GroupedProjection.apply(weight, x)


def _grouped_weight_grad(grad: torch.Tensor, x: torch.Tensor, mm=torch.mm) -> torch.Tensor:
    """The (K, O, I) weight gradient of ``bmm(weight, x)``, grad (K, O, P) and x (K, I, P), as one GEMM (``mm``) over
    all groups whose diagonal blocks are the groups' gradients (see ``_GroupedProjection``). Where x is a column
    slice of wider rows (``_rows_holding``) the GEMM reads the rows in place, and the blocks' extra columns are
    dropped."""
    groups, out_features, in_features = grad.shape[0], grad.shape[1], x.shape[1]
    operand, width = _rows_holding(x), in_features
    if operand is None:
        operand = x.reshape(groups * in_features, -1).t()  # a copy unless x is (K * I, P)-contiguous
    else:
        width = operand.shape[1] // groups
    every_pair = mm(grad.reshape(groups * out_features, -1), operand)
    blocks = every_pair.view(groups, out_features, groups, width).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
    return blocks[..., :in_features]


def _rows_holding(x: torch.Tensor) -> Optional[torch.Tensor]:
    """For x (K, I, P) laid out as the first I of J columns of each group in (P, K, J) rows (``dt_in``, a slice of
    ``x_proj``'s output): those rows as a (P, K * J) view, whose extra columns the caller drops, so that a GEMM reads
    them in place instead of x's (K * I, P) copy. None for other layouts, and while compiling (which does not trace
    storage queries) or tracing."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    groups, in_features, positions = x.shape
    row_width = x.stride(0)
    if x.stride(1) != 1 or row_width < in_features or x.stride(2) != groups * row_width:
        return None
    if x.storage_offset() + positions * groups * row_width > x.untyped_storage().nbytes() // x.element_size():
        return None
    return x.as_strided((positions, groups * row_width), (groups * row_width, 1))


def _derive_ssm_weights(A_logs: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
                        dtype: torch.dtype, block_diagonal: bool = False):
    """A = -exp(A_logs) in float32, the stacked x_proj weight (K * (R + 2N), D) and the dt_proj weights in
    ``dtype``: (K, D, R), or with ``block_diagonal`` the (K * D, K * (R + 2N)) matrix that maps a position's whole
    ``x_proj`` output to its K routes' deltas (``_block_diagonal_dt_proj``)."""
    w_dt = _block_diagonal_dt_proj(dt_projs_weight, x_proj_weight.shape[1], dtype) if block_diagonal else \
        dt_projs_weight.to(dtype)
    return -cast_to(A_logs, torch.float32).exp(), x_proj_weight.reshape(-1, x_proj_weight.shape[-1]).to(dtype), w_dt


def _block_diagonal_dt_proj(dt_projs_weight: torch.Tensor, row_width: int, dtype: torch.dtype) -> torch.Tensor:
    """The K routes' dt_proj weights (K, D, R) as one (K * D, K * J) matrix in ``dtype``, J = R + 2N the width of a
    route's ``x_proj`` output: block k holds route k's weights in its first R columns and zeros elsewhere.

    With it the routes' dt_proj is one GEMM over ``x_proj``'s output rows as they lie, instead of a batched GEMM over
    their strided R-column slices. Those slices start every J elements (28, 52 or 100 bytes at VMamba-T's stages 1-3)
    and the weights' rows are R elements long (12 bytes at stage 0), so cuBLAS ran that batched GEMM on its kernels
    for 4-byte aligned operands. The GEMM does K * J / R times the multiply-adds (4.2-5.3x at VMamba-T's stages),
    which stay below the time its output takes to write. VMamba-T on the H200 at batch 128 (2026-11-30,
    ``benchmarks/profile_step.py``): dt_proj took 0.59 ms per bf16 inference step at stages 0-2 against 1.74 ms, and
    the step's kernels 12.73 against 13.95 ms (training: 40.83 against 42.44 ms).
    """
    k_group, d_inner, rank = dt_projs_weight.shape
    blocks = dt_projs_weight.new_zeros(k_group, d_inner, k_group, row_width, dtype=dtype)
    blocks.diagonal(dim1=0, dim2=2)[:, :rank].copy_(dt_projs_weight.permute(1, 2, 0))
    return blocks.view(k_group * d_inner, k_group * row_width)


def _dt_proj_as_one_gemm(x: torch.Tensor) -> bool:
    """Whether SS2D's composite path runs dt_proj on x as one GEMM with the block-diagonal weight
    (``_block_diagonal_dt_proj``): on CUDA, in eager mode and while compiling. Tracers and FLOP counters (dispatch
    modes) see the routes' own batched GEMM, whose multiply-adds are the model's. A CPU runs the batched GEMM too: it
    would pay for the extra multiply-adds."""
    return x.is_cuda and (plain_eager() or torch.compiler.is_compiling())


def _project_channel_last(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor, rank: int,
                          d_state: int):
    """``x_proj`` and ``dt_proj`` of a channel-last (B, D, H, W) map as GEMMs over its positions.

    ``x_proj`` is one GEMM. ``dt_proj`` is one batched GEMM per route for (K, D, R) weights, or one GEMM over
    ``x_proj``'s output rows in place for the block-diagonal (K * D, K * (R + 2N)) weight. Its output, (K, D,
    B * H * W) in memory, has each channel's positions adjacent, as the fused scan reads them; B and C are laid out by
    one copy.

    Returns:
        ``delta`` (B, K, D, H, W) before bias/softplus, ``B`` and ``C`` (B, K, N, H, W) contiguous, and dt_proj's
        input (K, R, B * H * W), a view of ``x_proj``'s output.
    """
    batch, d_inner, height, width = x.shape
    k_group = x_proj_weight.shape[0] // (rank + 2 * d_state)
    x_dbl = F.linear(x.permute(0, 2, 3, 1), x_proj_weight)
    # One split, whose backward is one concatenation (two slices would each scatter into a zeroed copy).
    dt_in, bc = x_dbl.view(-1, k_group, rank + 2 * d_state).split([rank, 2 * d_state], -1)
    dt_in = dt_in.permute(1, 2, 0)
    if dt_projs_weight.dim() == 2:
        dts = torch.mm(dt_projs_weight, x_dbl.view(-1, x_proj_weight.shape[0]).t())
    else:
        dts = grouped_projection(dt_projs_weight, dt_in)
    dts = dts.view(k_group, d_inner, batch, height, width).permute(2, 0, 1, 3, 4)
    return (dts,) + _routes_b_and_c(bc, batch, height, width) + (dt_in,)


def _routes_b_and_c(bc: torch.Tensor, batch: int, height: int, width: int):
    """B and C (B, K, N, H, W), each contiguous, from the (B * H * W, K, 2N) columns of ``x_proj``'s output that hold
    them: one copy (and one stack in the backward)."""
    k_group, d_state = bc.shape[1], bc.shape[2] // 2
    return bc.view(batch, height, width, k_group, 2, d_state).permute(4, 0, 3, 5, 1, 2).contiguous().unbind(0)


def _scan_core_forward(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, scan: RasterMultiScan,
                       rank: int, d_state: int, derived=None, u=None):
    """SS2D's core on a channel-last (B, D, H, W) map without autograd: ``x_proj``, ``dt_proj``, the B/C layout,
    ``A = -exp(A_logs)`` and the fused multi-scan.

    ``derived`` may hand in ``_derive_ssm_weights``'s result with ``block_diagonal`` (kept between inference calls),
    and ``u`` x's NCHW-contiguous copy, which the scan reads (made here when None). dt_proj runs as one GEMM
    (``_block_diagonal_dt_proj``): the fused nodes that call this serve eager calls on the Triton kernels, never a
    tracer or FLOP counter.

    Returns:
        The float32 (B, D, H, W) sum of the routes (NCHW-contiguous) and the tensors ``_scan_core_backward`` takes.
    """
    d_inner, k_group = x.shape[1], dt_projs_weight.shape[0]
    A, w_x, w_dt = derived or _derive_ssm_weights(A_logs, x_proj_weight, dt_projs_weight, x.dtype,
                                                  block_diagonal=True)
    dts, Bs, Cs, dt_in = _project_channel_last(x, w_x, w_dt, rank, d_state)
    if u is None:
        u = x.contiguous()
    D, delta_bias = cast_to(Ds, torch.float32).view(k_group, d_inner), cast_to(dt_projs_bias, torch.float32)
    y, entering = scan.forward(u, dts, A.view(k_group, d_inner, d_state), Bs, Cs, D, delta_bias, True)
    return y, (x, u, dt_in, dts, Bs, Cs, A, D, delta_bias, entering, w_x, w_dt)


def _stacked(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``torch.stack((first, second))``, as a view where ``second`` directly follows ``first`` in memory (the scan's
    eager backward carves dB and dC from one buffer): one copy kernel less per call."""
    if first.shape == second.shape and first.dtype == second.dtype and first.is_contiguous() \
            and second.is_contiguous() and second.data_ptr() == first.data_ptr() + first.numel() * first.element_size():
        return first.as_strided((2,) + tuple(first.shape), (first.numel(),) + first.stride())
    return torch.stack((first, second))


def _scan_core_backward(saved, dy, scan: RasterMultiScan, d_state: int, needs_dx: bool, needs_dx_proj: bool,
                        needs_dt_proj: bool, split_dx: bool = False):
    """Gradients of ``_scan_core_forward`` given ``dy`` (B, D, H, W), in the composite path's dtypes (activations' in
    x's dtype, the parameters' in float32; on CUDA the projection weights' written in float32 by their GEMMs,
    ``mm_float32``).

    Returns:
        dx (channel-last strides, like x), or with ``split_dx`` its two parts unsummed: the projections' (x's dtype
        and strides) and the scan's (float32, NCHW-contiguous); and the gradients of x_proj_weight, dt_projs_weight,
        dt_projs_bias, A_logs and Ds (None where not needed).
    """
    x, u, dt_in, dts, Bs, Cs, A, D, delta_bias, entering, w_x, w_dt = saved
    batch, d_inner, height, width = x.shape
    k_group = dts.shape[1]
    du, ddelta, dA, dB, dC, dD, dbias = scan.backward(
        u, dts, A.view(k_group, d_inner, d_state), Bs, Cs, D, delta_bias, True, entering, dy)
    ddts = ddelta.permute(1, 2, 0, 3).reshape(k_group, d_inner, -1)  # a view: ddelta has dts's layout
    # The gradient of x_proj's output rows: dt_proj's through its block-diagonal matrix, which leaves zeros in the B
    # and C columns; B's and C's are written there, cast and transposed in one copy.
    d_x_dbl = torch.mm(ddts.view(k_group * d_inner, -1).t(), w_dt)
    d_bc = _stacked(dB, dC).view(2, batch, k_group, d_state, height, width)
    rank = d_x_dbl.shape[1] // k_group - 2 * d_state
    d_x_dbl.view(batch, height, width, k_group, -1)[..., rank:].view(batch, height, width, k_group, 2, d_state) \
        .copy_(d_bc.permute(1, 4, 5, 2, 0, 3))
    x_rows = x.permute(0, 2, 3, 1).reshape(-1, d_inner)
    dx = None
    if needs_dx:
        dx = torch.mm(d_x_dbl, w_x).view(batch, height, width, d_inner)
        du = du.view(batch, d_inner, height, width)
        if split_dx:
            dx = dx.permute(0, 3, 1, 2), du
        else:
            # du rounded to x's dtype before the sum, as autograd sums the composite path's two gradients of x.
            dx = dx.add_(du.permute(0, 2, 3, 1).to(x.dtype)).permute(0, 3, 1, 2)
    d_x_proj = mm_float32(d_x_dbl.t(), x_rows).view(k_group, -1, d_inner) if needs_dx_proj else None
    d_dt_proj = _grouped_weight_grad(ddts, dt_in, mm_float32) if needs_dt_proj else None
    return dx, d_x_proj, d_dt_proj, dbias, dA.view(-1, d_state) * A, dD.view(-1)


class _SS2DScanCore(torch.autograd.Function):
    """SS2D's ``x_proj``, ``dt_proj``, B/C layout, ``A = -exp(A_logs)`` and fused multi-scan of a channel-last map as
    one autograd node, for eager training on the Triton raster kernels.

    The framework ops of that span record about 25 autograd nodes per block and two Python Functions; an eager
    VMamba-T training step was bound by the host issuing them on the H200 (2026-11-30 profiles: 73 ms per step for
    56 ms of kernels). Forward and backward run the same kernels in the same dtypes as the composite path
    (``SS2D.fused_scan_node = False``), which the tests compare it with, except that on CUDA the projection weights'
    gradients are written in float32 by their GEMMs (``mm_float32``). ``_SS2DBranch`` folds the rest of the layer
    around it where it can.
    """

    @staticmethod
    def forward(ctx, x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, scan: RasterMultiScan,
                rank: int, d_state: int):
        # No gradients are recorded in here: grouped_projection is a plain bmm, and nothing is kept between calls.
        y, saved = _scan_core_forward(x, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, scan, rank,
                                      d_state)
        ctx.save_for_backward(*saved)
        ctx.scan, ctx.d_state = scan, d_state
        return y

    @staticmethod
    def backward(ctx, dy):
        grads = _scan_core_backward(ctx.saved_tensors, dy, ctx.scan, ctx.d_state, *ctx.needs_input_grad[:3])
        return grads + (None, None, None)


class _BranchSpec(NamedTuple):
    """What ``_SS2DBranch`` runs besides its tensors."""
    dtype: torch.dtype  # of the activations: autocast's, or the input's
    norm_eps: float
    out_norm_eps: float
    padding: int  # of the depthwise conv
    z_gate: bool
    z_act: bool
    scan: RasterMultiScan
    rank: int
    d_state: int
    residual: bool = False  # the node returns x + branch, and its backward adds the output's gradient to x's


def _branch_forward(x, spec: _BranchSpec, params, derived=None, keep: bool = False, scale=None):
    """``_SS2DBranch``'s forward without autograd: ``out_proj(out_norm(core(silu(conv(in_proj(norm(x)))))))`` (with the
    z gate), on a contiguous (B, H, W, C) map, in ``spec.dtype``; plus x with ``spec.residual`` (the branch times
    ``scale``, a drop-path's per-sample factor, when given).

    Args:
        x: The block's input map.
        spec: What runs besides the tensors.
        params: norm weight and bias, in_proj weight and bias, conv weight and bias, x_proj_weight, dt_projs_weight,
            dt_projs_bias, A_logs, Ds, out_norm weight and bias, out_proj weight and bias (absent biases None).
        derived: ``_derive_ssm_weights``'s result, when kept between inference calls.
        keep: Also return the tensors the backward needs (else None, and no norm statistics are stored).

    Returns:
        The (B, H, W, C) output and the kept tensors.
    """
    norm_w, norm_b, in_w, in_b, conv_w, conv_b, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, on_w, \
        on_b, out_w, out_b = params
    dtype = spec.dtype
    batch, height, width, channels = x.shape
    xn, norm_stats = layer_norm_forward(x, norm_w, norm_b, spec.norm_eps, dtype, store_stats=keep)
    w_in = in_w.to(dtype)
    h = _affine(xn.view(-1, channels), w_in, in_b, dtype).view(batch, height, width, -1)
    xin, z = h.chunk(2, -1) if spec.z_gate else (h, None)
    d_inner = xin.shape[-1]
    xin = xin.permute(0, 3, 1, 2)
    w_conv = conv_w.to(dtype)
    conv = F.conv2d(xin, w_conv, None if conv_b is None else conv_b.to(dtype), padding=spec.padding, groups=d_inner)
    # SiLU written channel-last for x_proj and NCHW for the scan, in one pass over the map.
    xa, u = silu_dual_layout_forward(conv.contiguous(memory_format=torch.channels_last))
    y, core = _scan_core_forward(xa, x_proj_weight, dt_projs_weight, dt_projs_bias, A_logs, Ds, spec.scan, spec.rank,
                                 spec.d_state, derived, u)
    # The out-norm reads the NCHW float32 sum and writes channel-last rows in the activation dtype.
    yn, out_norm_stats = layer_norm_forward(y, on_w, on_b, spec.out_norm_eps, dtype, 1, torch.channels_last, keep)
    yn = yn.permute(0, 2, 3, 1)
    gate = None
    if spec.z_gate:
        gate = F.silu(z) if spec.z_act else z
        gated = yn * gate
    else:
        gated = yn
    w_out = out_w.to(dtype)
    out = _affine(gated.reshape(-1, d_inner), w_out, out_b, dtype).view(batch, height, width, -1)
    if spec.residual:
        out = add_residual(x, out, scale, overwrite=True)
    if not keep:
        return out, None
    return out, (x, norm_w, norm_stats, xn, w_in, xin, w_conv, conv, y, on_w, out_norm_stats, yn, z, gate, gated,
                 w_out) + core


class _SS2DBranch(torch.autograd.Function):
    """A channel-last SS2D branch as one autograd node for eager training: the block's pre-norm, ``in_proj``, the
    optional z gate, the depthwise conv, SiLU, the core (``_scan_core_forward``), ``out_norm`` and ``out_proj``.

    Op by op the branch records 17-28 autograd nodes per block (views, permutes, the norms' and the conv's, and
    under autocast the weight casts) and issues its ops from Python module calls; an eager VMamba-T training step on
    the H200 took 63-71 ms for 48.6 ms of kernels (2026-11-30 run 3), bound by the host. The node runs the same
    kernels in the same dtypes as the composite path, which the tests compare it with, except: SiLU and its gradient
    run as the two-layout kernel (``silu_dual_layout_forward``/``_backward``, which also makes the scan's NCHW input
    and sums the scan's float32 gradient without first rounding it to the activation dtype); on CUDA the Linear
    weights' gradients are written in float32 by their GEMMs (``mm_float32``) and the bias gradients summed in
    float32 (``bias_grad_float32``).
    """

    @staticmethod
    def forward(ctx, x, spec: _BranchSpec, *params_and_scale):
        # The last input is the residual branch's drop-path factor (B, 1, 1, 1), or None.
        params, scale = params_and_scale[:-1], params_and_scale[-1]
        out, saved = _branch_forward(x, spec, params, keep=True, scale=scale)
        ctx.save_for_backward(*saved, scale)
        ctx.spec = spec
        ctx.has_bias = tuple(params[i] is not None for i in (1, 3, 5, 12, 14))  # norm, in_proj, conv, out_norm, out
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors  # once: activation checkpointing unpacks each saved tensor only once
        x, norm_w, norm_stats, xn, w_in, xin, w_conv, conv, y, on_w, out_norm_stats, yn, z, gate, gated, w_out = \
            saved[:16]
        core, scale = saved[16:-1], saved[-1]
        spec, needs = ctx.spec, ctx.needs_input_grad
        batch, height, width, channels = x.shape
        d_inner = conv.shape[1]
        branch_grad = grad if scale is None else grad * scale.to(grad.dtype)
        grad2d = cast_to(branch_grad.reshape(-1, grad.shape[-1]), spec.dtype)
        d_out_w = mm_float32(grad2d.t(), gated.reshape(-1, d_inner)) if needs[15] else None
        d_out_b = bias_grad_float32(grad2d) if ctx.has_bias[4] and needs[16] else None
        d_gated = grad2d.mm(w_out).view(yn.shape)
        d_z = None
        if spec.z_gate:
            d_yn = d_gated * gate
            d_gate = d_gated * yn
            d_z = torch.ops.aten.silu_backward(d_gate, z) if spec.z_act else d_gate
        else:
            d_yn = d_gated
        dy, d_on_w, d_on_b = layer_norm_backward(y, on_w, out_norm_stats, d_yn.permute(0, 3, 1, 2), 1,
                                                 ctx.has_bias[3])
        (d_xa, d_u), d_x_proj, d_dt_proj, d_dt_bias, d_A_logs, d_Ds = _scan_core_backward(
            core, dy, spec.scan, spec.d_state, True, needs[8], needs[9], split_dx=True)
        d_conv = silu_dual_layout_backward(conv, d_xa, d_u)
        d_xin, d_conv_w, d_conv_b = torch.ops.aten.convolution_backward(
            d_conv, xin, w_conv, [d_inner] if ctx.has_bias[2] else None, [1, 1], [spec.padding] * 2, [1, 1], False,
            [0, 0], d_inner, [True, needs[6], ctx.has_bias[2] and needs[7]])
        d_xin = d_xin.permute(0, 2, 3, 1)
        d_h = torch.cat((d_xin, d_z), -1) if spec.z_gate else d_xin
        d_h2d = d_h.reshape(-1, d_h.shape[-1])
        d_in_w = mm_float32(d_h2d.t(), xn.view(-1, channels)) if needs[4] else None
        d_in_b = bias_grad_float32(d_h2d) if ctx.has_bias[1] and needs[5] else None
        d_xn = d_h2d.mm(w_in).view(batch, height, width, channels)
        # With the residual, x's gradient through the identity is added as the norm's backward writes dx.
        dx, d_norm_w, d_norm_b = layer_norm_backward(x, norm_w, norm_stats, d_xn, -1, ctx.has_bias[0],
                                                     grad if spec.residual else None)
        # The conv's gradients come in the activation dtype; autograd casts them to the parameters' dtype, as it
        # does on the composite path (there through the weight cast's node).
        return (dx, None, d_norm_w, d_norm_b, d_in_w, d_in_b, d_conv_w, d_conv_b, d_x_proj, d_dt_proj, d_dt_bias,
                d_A_logs, d_Ds, d_on_w, d_on_b, d_out_w, d_out_b, None)


class SpatialSoftmax(nn.Module):
    """Softmax of every channel over the spatial positions (VMamba's ``_onsoftmax`` out-norm)."""

    def __init__(self, channel_first: bool = True):
        super().__init__()
        self.channel_first = channel_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial_dims = (2, 3) if self.channel_first else (1, 2)
        flat = x.flatten(spatial_dims[0], spatial_dims[1])
        return flat.softmax(dim=spatial_dims[0]).view_as(x)


def _make_out_norm(kind: str, d_inner: int, channel_first: bool) -> nn.Module:
    # Sequential indices follow the official get_outnorm so the checkpoint keys (out_norm.1.weight, ...) match.
    to_cf = nn.Identity() if channel_first else Permute(0, 3, 1, 2)
    to_cl = nn.Identity() if channel_first else Permute(0, 2, 3, 1)
    layer_norm = LayerNorm2d if channel_first else ChannelLastLayerNorm
    if kind == 'layernorm':
        return layer_norm(d_inner)
    if kind == 'none':
        return nn.Identity()
    if kind == 'sigmoid':
        return nn.Sigmoid()
    if kind == 'softmax':
        return SpatialSoftmax(channel_first)
    if kind == 'dwconv3':
        return nn.Sequential(to_cf, nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=False), to_cl)
    if kind == 'cnorm':
        return nn.Sequential(layer_norm(d_inner), to_cf,
                             nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=False), to_cl)
    raise ValueError(f"out_norm must be one of 'layernorm', 'none', 'sigmoid', 'softmax', 'dwconv3', 'cnorm'; "
                     f"got '{kind}'")


class SS2D(nn.Module):
    """VMamba's 2D selective-scan mixer on the fused multi-scan core.

    Args:
        d_model: Input/output channels.
        d_state: SSM state size N (``ssm_d_state``).
        ssm_ratio: Inner channels D = ``int(ssm_ratio * d_model)``.
        dt_rank: Rank R of the delta projection; 'auto' = ``ceil(d_model / 16)``.
        act_layer: Activation after the depthwise conv (and on z when ``z_act``).
        d_conv: Depthwise conv kernel size; < 2 disables the conv.
        conv_bias: Bias in the depthwise conv.
        dropout: Dropout after ``out_proj``.
        bias: Bias in ``in_proj``/``out_proj``.
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        dt_init: 'random' (uniform) or 'constant' init of ``dt_projs_weight``.
        dt_scale: Scale of the ``dt_projs_weight`` init bound ``dt_rank ** -0.5 * dt_scale``.
        dt_init_floor: Floor of the initial step sizes.
        initialize: SSM parameter init: 'mamba' (official 'v0': S4D-real A, D = 1, Mamba dt init), 'random'
            (official 'v1': randn A_logs, 0.1 * randn dt) or 'zero' (official 'v2': A_logs = 0, 0.1 * rand dt).
        use_z_gate: Multiply the output by the gate branch z of ``in_proj`` (official: not ``_noz``).
        z_act: Apply ``act_layer`` to z (official: not ``_nozact``).
        out_act: GELU before the gate (official ``_oact``).
        out_norm: 'layernorm' (default), 'none', 'sigmoid', 'softmax', 'dwconv3' or 'cnorm'.
        scan_fp32: Cast the scan inputs to float32 (official ``v0``); else they keep the activation dtype.
        pattern: Scan pattern name from ``vmamba_zoo.kernels`` ('cross' = VMamba's four routes).
        num_routes: Number of routes K; inferred from ``pattern`` when None.
        fused: Use the fused multi-scan (True) or the plain permute/scan/merge path (same result).
        channel_first: (B, C, H, W) input/output with 1x1 projections; else (B, H, W, C) with Linear.
        backend: Kernel backend ('auto', 'triton', 'torch').
    """

    # A channel-last map of at least this many positions is copied to NCHW for the scan: every map. B=128 bf16 on
    # the H200 (2026-11-30 run 5, bench_raster, u and delta both channel-last), NCHW vs NHWC input: 56x56 forward
    # 0.99 vs 1.20 ms, forward + backward 4.18 vs 6.37 ms; 28x28 0.40 vs 0.56 and 2.04 vs 2.98 ms; 14x14 0.25 vs
    # 0.24 and 2.10 vs 1.67 ms. But in the model delta is (K, D, B, H, W) in memory, and scanning the 14x14 maps
    # channel-last took the row-walk forward from 4.69 to 6.34 ms per VMamba-T step and its backward from 13.0 to
    # 15.9 ms (run 7).
    nchw_scan_min_positions = 1
    # Eager training of a channel-last SS2D given its block's pre-norm (``forward(x, norm)``) runs the norm and the
    # whole layer as one autograd node (``_SS2DBranch``) where it can, and inference the same ops without module
    # calls; False keeps the norm and the Linear, conv and norm layers as modules around the core.
    fused_branch_node = True
    # Eager training of a channel-last map on the Triton raster kernels runs the projections and the scan as one
    # autograd node (``_SS2DScanCore``), and eager calls without gradients run the raster scan directly; False keeps
    # the composite path through ``multi_scan_2d`` (the same kernels; about 25 autograd nodes per block in training).
    fused_scan_node = True

    def __init__(
            self,
            d_model: int = 96,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            act_layer: Type[nn.Module] = nn.SiLU,
            d_conv: int = 3,
            conv_bias: bool = True,
            dropout: float = 0.,
            bias: bool = False,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init: str = 'random',
            dt_scale: float = 1.0,
            dt_init_floor: float = 1e-4,
            initialize: str = 'mamba',
            use_z_gate: bool = True,
            z_act: bool = True,
            out_act: bool = False,
            out_norm: str = 'layernorm',
            scan_fp32: bool = False,
            pattern: str = 'cross',
            num_routes: Optional[int] = None,
            fused: bool = True,
            channel_first: bool = False,
            backend: str = 'auto',
    ):
        super().__init__()
        self.d_model = int(d_model)
        self.d_state = int(d_state)
        self.d_inner = int(ssm_ratio * d_model)
        self.dt_rank = int(math.ceil(self.d_model / 16) if dt_rank == 'auto' else dt_rank)
        self.k_group = int(num_routes) if num_routes is not None else get_pattern(pattern, 4, 4).num_routes
        self.pattern = pattern
        self.fused = fused
        self.backend = backend
        self.channel_first = channel_first
        self.use_z_gate = use_z_gate
        self.z_act = z_act
        self.scan_fp32 = scan_fp32
        linear = get_linear_layer(channel_first)
        d_inner, k_group = self.d_inner, self.k_group

        self.in_proj = linear(self.d_model, d_inner * 2 if use_z_gate else d_inner, bias=bias)
        self.act = act_layer()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias,
        ) if d_conv > 1 else nn.Identity()
        self.x_proj_weight = nn.Parameter(torch.empty(k_group, self.dt_rank + 2 * self.d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k_group, d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k_group, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k_group * d_inner, self.d_state))
        self.Ds = nn.Parameter(torch.empty(k_group * d_inner))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = _make_out_norm(out_norm, d_inner, channel_first)
        self.out_act = nn.GELU() if out_act else nn.Identity()
        self.out_proj = linear(d_inner, self.d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0. else nn.Identity()

        self._dt_init = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                             dt_init_floor=dt_init_floor)
        self.reset_ssm_parameters(initialize)

    @torch.no_grad()
    def reset_ssm_parameters(self, initialize: str = 'mamba') -> None:
        """(Re)initialise ``x_proj_weight``, ``dt_projs_*``, ``A_logs`` and ``Ds`` as the official code does.

        ``x_proj_weight`` gets ``nn.Linear``'s default init (uniform in +-1/sqrt(d_inner)), as the official stacks
        freshly built Linear layers. The Linear/conv layers are left to the model's init.
        """
        k_group, d_inner, d_state, dt_rank = self.k_group, self.d_inner, self.d_state, self.dt_rank
        bound = 1.0 / math.sqrt(d_inner)
        self.x_proj_weight.uniform_(-bound, bound)
        if initialize == 'mamba':
            cfg = self._dt_init
            dt_init_std = dt_rank ** -0.5 * cfg['dt_scale']
            if cfg['dt_init'] == 'constant':
                self.dt_projs_weight.fill_(dt_init_std)
            elif cfg['dt_init'] == 'random':
                self.dt_projs_weight.uniform_(-dt_init_std, dt_init_std)
            else:
                raise ValueError(f"dt_init must be 'random' or 'constant', got '{cfg['dt_init']}'")
            self.dt_projs_bias.copy_(torch.stack([
                dt_bias_init(d_inner, cfg['dt_min'], cfg['dt_max'], cfg['dt_init_floor']) for _ in range(k_group)]))
            self.A_logs.copy_(A_log_init(d_state, k_group * d_inner))
        elif initialize == 'random':
            self.A_logs.normal_()
            self.dt_projs_weight.normal_().mul_(0.1)
            self.dt_projs_bias.normal_().mul_(0.1)
        elif initialize == 'zero':
            self.A_logs.zero_()
            self.dt_projs_weight.uniform_().mul_(0.1)
            self.dt_projs_bias.uniform_().mul_(0.1)
        else:
            raise ValueError(f"initialize must be 'mamba', 'random' or 'zero', got '{initialize}'")
        self.Ds.fill_(1.0)

    def _ssm_weights(self, dtype: torch.dtype, block_diagonal: bool = False):
        """A = -exp(A_logs) in float32, the stacked x_proj weight (K * (R + 2N), D) and the dt_proj weights (K, D, R)
        in ``dtype``, or with ``block_diagonal`` as one (K * D, K * (R + 2N)) matrix (``_derive_ssm_weights``).

        Without gradients they are kept until a parameter changes (``derived_until_changed``): four kernels less per
        block and inference step.
        """
        params = (self.A_logs, self.x_proj_weight, self.dt_projs_weight)
        return derived_until_changed(self, '_ssm_weights_cache', params, (dtype, block_diagonal),
                                     lambda: _derive_ssm_weights(*params, dtype, block_diagonal))

    def project_routes(self, x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor):
        """Per-route delta, B and C of a (B, D, H, W) map, in spatial layout.

        A channel-last map (channels adjacent in memory) is projected with GEMMs over its positions
        (``_project_channel_last``). A contiguous map goes through 1x1 convolutions.

        Args:
            x: (B, D, H, W) map.
            x_proj_weight: (K * (R + 2N), D) stacked ``x_proj`` weight in x's dtype.
            dt_projs_weight: (K, D, R) ``dt_proj`` weights in x's dtype, or for a channel-last map their
                (K * D, K * (R + 2N)) block-diagonal matrix (``_ssm_weights(..., block_diagonal=True)``).

        Returns:
            ``delta`` (B, K, D, H, W) before bias/softplus, ``B`` and ``C`` (B, K, N, H, W).
        """
        batch, _, height, width = x.shape
        k_group, d_inner, rank, d_state = self.k_group, self.d_inner, self.dt_rank, self.d_state
        if self._channel_last(x):
            return _project_channel_last(x, x_proj_weight, dt_projs_weight, rank, d_state)[:3]
        x_dbl = F.conv2d(x, x_proj_weight.view(-1, d_inner, 1, 1))
        x_dbl = x_dbl.view(batch, k_group, rank + 2 * d_state, height, width)
        dts, Bs, Cs = torch.split(x_dbl, [rank, d_state, d_state], dim=2)
        dts = F.conv2d(dts.reshape(batch, k_group * rank, height, width),
                       dt_projs_weight.reshape(k_group * d_inner, rank, 1, 1), groups=k_group)
        return dts.view(batch, k_group, d_inner, height, width), Bs.contiguous(), Cs.contiguous()

    def _channel_last(self, x: torch.Tensor) -> bool:
        """Whether a (B, D, H, W) map holds its channels adjacent in memory (one channel does not count): the maps
        ``project_routes`` projects with GEMMs over their positions, the only ones the scan node and the one-GEMM
        dt_proj serve."""
        return x.stride(1) == 1 and self.d_inner > 1

    def _scan_node(self, x: torch.Tensor) -> Optional[RasterMultiScan]:
        """The raster scan that ``_SS2DScanCore`` runs for this call, or None to take the composite path: it serves
        eager training of a channel-last map on the Triton raster kernels."""
        if not (self.fused_scan_node and self.fused and not self.scan_fp32 and self._channel_last(x)
                and x.shape[2] * x.shape[3] >= self.nchw_scan_min_positions and torch.is_grad_enabled()
                and (x.requires_grad or self.x_proj_weight.requires_grad)):
            return None
        # The node computes in x's dtype, which autocast would otherwise change for the projections.
        if autocast_dtype(x) not in (None, x.dtype):
            return None
        return self._raster_scan(x)

    def _branch_spec(self, x: torch.Tensor, norm: nn.Module, residual: bool = False) -> Optional[_BranchSpec]:
        """What ``_SS2DBranch`` (or ``_branch_forward`` in inference) runs for ``self(norm(x))`` (plus x with
        ``residual``), or None to call the modules: it serves eager calls on a contiguous channel-last map, the default
        layers (Linear projections, a conv, SiLU, a LayerNorm out-norm, no out-act or dropout) and a LayerNorm
        pre-norm, all on the Triton kernels, and nothing hooked on them.

        Runs on every call, so the submodules come from ``_modules`` directly: through ``nn.Module.__getattr__``
        this check took 35.6 instead of 14.9 us per call on the CPU (``benchmarks/host_microcosts.py``, 2026-11-30)."""
        modules = self._modules
        in_proj, conv, out_norm, out_proj = modules['in_proj'], modules['conv2d'], modules['out_norm'], \
            modules['out_proj']
        if not (self.fused_branch_node and self.fused_scan_node and self.fused and not self.scan_fp32
                and not self.channel_first and self.d_inner > 1 and x.dim() == 4 and x.is_contiguous()
                and type(norm) is ChannelLastLayerNorm and type(out_norm) is ChannelLastLayerNorm
                and type(in_proj) is nn.Linear and type(out_proj) is nn.Linear and type(conv) is nn.Conv2d
                and type(modules['act']) is nn.SiLU and type(modules['out_act']) is nn.Identity
                and type(modules['dropout']) is nn.Identity and norm.runs_triton(x) and out_norm.runs_triton(x)
                and without_hooks(norm, in_proj, modules['act'], conv, out_norm, out_proj)):
            return None
        dtype = node_dtype(x, *(p for p in (norm._parameters['weight'], in_proj._parameters['weight'],
                                            conv._parameters['weight'], out_proj._parameters['weight'])
                                if p is not None))
        scan = RasterMultiScan.plan(x.permute(0, 3, 1, 2), self.d_state, self.pattern, self.backend, dim=self.d_inner)
        if dtype is None or scan is None or scan.pattern.num_routes != self.k_group:
            return None
        return _BranchSpec(dtype, norm.eps, out_norm.eps, conv.padding[0], self.use_z_gate, self.z_act, scan,
                           self.dt_rank, self.d_state, residual)

    def _branch_params(self, norm: nn.Module) -> tuple:
        """The parameters ``_branch_forward`` takes (see there), for a call that ``_branch_spec`` admitted (which
        checked the submodules' types, whose parameter dicts are read directly: 1.7 us per call on the CPU, where one
        parameter read through ``nn.Module.__getattr__`` took 1.7 us; ``benchmarks/host_microcosts.py``, 2026-11-30)."""
        modules = self._modules
        in_proj, conv = modules['in_proj']._parameters, modules['conv2d']._parameters
        out_norm, out_proj = modules['out_norm']._parameters, modules['out_proj']._parameters
        own = _own_parameters(self, ('x_proj_weight', 'dt_projs_weight', 'dt_projs_bias', 'A_logs', 'Ds'))
        return (norm._parameters['weight'], norm._parameters['bias'], in_proj['weight'], in_proj['bias'],
                conv['weight'], conv['bias'], *own, out_norm['weight'], out_norm['bias'], out_proj['weight'],
                out_proj['bias'])

    def _raster_scan(self, x: torch.Tensor) -> Optional[RasterMultiScan]:
        scan = RasterMultiScan.plan(x, self.d_state, self.pattern, self.backend)
        return scan if scan is not None and scan.pattern.num_routes == self.k_group else None

    def _direct_scan(self, x: torch.Tensor) -> Optional[RasterMultiScan]:
        """The raster scan that runs an eager call without gradients directly, without ``multi_scan_2d``'s checks of
        the inputs this layer builds itself (host time that set the pace of bf16 inference on the H200), or None."""
        if not self.fused_scan_node or not self.fused or (torch.is_grad_enabled() and any(
                t.requires_grad for t in (x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias,
                                          self.A_logs, self.Ds))):
            return None
        return self._raster_scan(x)

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """Scan a (B, D, H, W) map along the pattern's routes and apply ``out_norm``.

        Returns:
            The normalised output in ``x``'s dtype, (B, D, H, W) if ``channel_first`` else (B, H, W, D).
        """
        scan = self._scan_node(x)
        if scan is not None:
            y = _SS2DScanCore.apply(x, self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias, self.A_logs,
                                    self.Ds, scan, self.dt_rank, self.d_state)
        else:
            block_diagonal = self._channel_last(x) and _dt_proj_as_one_gemm(x)
            A, x_proj_weight, dt_projs_weight = self._ssm_weights(x.dtype, block_diagonal)
            dts, Bs, Cs = self.project_routes(x, x_proj_weight, dt_projs_weight)
            xs = x.contiguous() if x.shape[2] * x.shape[3] >= self.nchw_scan_min_positions else x
            if self.scan_fp32:
                xs, dts, Bs, Cs = xs.float(), dts.float(), Bs.float(), Cs.float()
            scan = self._direct_scan(x)
            if scan is not None:
                y = scan.forward(xs, dts, A.view(self.k_group, self.d_inner, self.d_state), Bs, Cs,
                                 self.Ds.float().view(self.k_group, self.d_inner), self.dt_projs_bias.float(), True)[0]
            else:
                y = multi_scan_2d(
                    xs, dts, A, Bs, Cs, self.Ds.float(), delta_bias=self.dt_projs_bias.float(),
                    delta_softplus=True, pattern=self.pattern, fused=self.fused, out_dtype=torch.float32,
                    backend=self.backend)
        if not self.channel_first:
            y = y.permute(0, 2, 3, 1)
        return self.out_norm(y).to(x.dtype)

    def forward(self, x: torch.Tensor, norm: Optional[nn.Module] = None, residual: bool = False,
                branch_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) if ``channel_first``, else (B, H, W, C) -> (B, H, W, C).

        Args:
            x: The input map.
            norm: A norm applied to x first (a block's pre-norm): ``self(x, norm)`` is ``self(norm(x))``, which eager
                training can then run as one autograd node (``fused_branch_node``).
            residual: Return ``x + self(norm(x))``, a pre-norm block's residual branch. The fused node then adds the
                residual's gradient as its norm's backward writes x's gradient, instead of autograd summing the two
                gradients of x in a separate kernel.
            branch_scale: With ``residual``, a per-sample factor (B, 1, 1, 1) of the branch, a drop-path's
                (``drop_path_scale``): ``x + self(norm(x)) * branch_scale``.
        """
        if branch_scale is not None and not residual:
            raise ValueError('SS2D: branch_scale scales the residual branch; it needs residual=True')
        if norm is not None:
            spec = self._branch_spec(x, norm, residual)
            if spec is not None:
                params = self._branch_params(norm)
                if torch.is_grad_enabled() and (x.requires_grad or any(p is not None and p.requires_grad
                                                                       for p in params)):
                    return _SS2DBranch.apply(x, spec, *params, branch_scale)
                # Inference: the same ops without a node, with the derived SSM weights and the Linear and conv
                # weights' casts kept between calls.
                casts = kept_casts(self, '_branch_casts', params[2:6] + params[13:], spec.dtype)
                params = params[:2] + casts[:4] + params[6:13] + casts[4:]
                return _branch_forward(x, spec, params, self._ssm_weights(spec.dtype, block_diagonal=True),
                                       scale=branch_scale)[0]
        identity = x
        if norm is not None:
            x = norm(x)
        x = self.in_proj(x)
        z = None
        if self.use_z_gate:
            x, z = x.chunk(2, dim=1 if self.channel_first else -1)
            if self.z_act:
                z = self.act(z)
        if not self.channel_first:
            x = x.permute(0, 3, 1, 2)
        x = self.act(self.conv2d(x))
        y = self.out_act(self.forward_core(x))
        if z is not None:
            y = y * z
        out = self.dropout(self.out_proj(y))
        return add_residual(identity, out, branch_scale) if residual else out

    def extra_repr(self) -> str:
        return (f'd_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, '
                f'k_group={self.k_group}, pattern={self.pattern}, channel_first={self.channel_first}')
