"""A linear layer with its activation in the GEMM's epilogue, and the input gradient with the preceding activation's
derivative in its epilogue.

An eager MLP under autocast is, op by op: two weight casts and two bias casts (float32 parameters to the autocast
dtype), ``addmm``, GELU (a read and a write of the hidden map), ``addmm``; its backward runs ``gelu_backward`` (two
reads and a write of the hidden map) between two GEMMs. On the H200 a VMamba-T training step spent 2.8 ms of GPU time
in GELU and its backward at batch 128, and its host about 30 µs per launched operator while the host, not the GPU,
set the pace (2026-11-30 ``benchmarks/host_costs.py``). Here the GEMM:

* reads the weight in its own dtype (a float32 parameter) and rounds it to the activations' dtype in registers, so
  no cast kernel runs and the product equals cuBLAS's on the cast weight up to summation order;
* adds the bias (rounded to the activations' dtype first, as autocast's cast does), optionally stores that
  pre-activation (which the backward needs), and applies GELU to it as rounded to the output dtype: the composite
  path's ``gelu(addmm(...))`` with one pass over the hidden map less;
* in the input gradient ``(dy @ W) * act'(pre)``, rounds the product to the output dtype before multiplying, as
  ``gelu_backward`` does after a 16-bit GEMM.

Contents: ``linear_act_ref`` (readable reference), the Triton kernel, ``linear_act_forward`` and ``linear_input_grad``
(the kernel without autograd, for fused nodes), an autograd Function, and ``linear_act``, which dispatches: Triton
for 16-bit CUDA tensors, PyTorch otherwise. Imports without Triton and without a GPU.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ._triton_utils import HAS_TRITON, CachedLaunch, backend_runs_triton, cdiv, tl, triton, triton_interpreting

__all__ = ['linear_act', 'linear_act_ref', 'linear_act_forward', 'linear_input_grad', 'ACTIVATIONS', 'mm_float32',
           'bias_grad_float32']

ACTIVATIONS = ('none', 'gelu', 'gelu_tanh')
_BACKENDS = ('auto', 'triton', 'torch')
# The kernel's epilogue: nothing, an activation, or an activation's derivative applied to a stored pre-activation.
_FORWARD_EPILOGUE = {'none': 0, 'gelu': 1, 'gelu_tanh': 2}
_GRAD_EPILOGUE = {'none': 0, 'gelu': 3, 'gelu_tanh': 4}


def _gelu_approximate(act: str) -> str:
    return 'tanh' if act == 'gelu_tanh' else 'none'


def linear_act_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   act: str = 'none') -> torch.Tensor:
    """Readable reference: ``act(x @ weight.T + bias)`` computed in x's dtype (the weight and bias cast to it first,
    as under autocast).

    Args:
        x: (..., K) input.
        weight: (N, K) weight, any float dtype.
        bias: Optional (N,) bias.
        act: One of ``ACTIVATIONS``.

    Returns:
        (..., N) in x's dtype.
    """
    pre = F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    return pre if act == 'none' else F.gelu(pre, approximate=_gelu_approximate(act))


if HAS_TRITON:

    @triton.jit
    def _tanh(x):
        decay = tl.exp(-2.0 * tl.abs(x))  # never overflows
        magnitude = (1.0 - decay) / (1.0 + decay)
        return tl.where(x < 0, -magnitude, magnitude)

    @triton.jit
    def _gelu(x, TANH: tl.constexpr):
        """PyTorch's GELU formulas in float32."""
        if TANH:
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            return 0.5 * x * (1.0 + _tanh(inner))
        return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))

    @triton.jit
    def _gelu_grad(x, TANH: tl.constexpr):
        """PyTorch's ``gelu_backward`` derivative formulas in float32."""
        if TANH:
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            tanh_inner = _tanh(inner)
            left_derivative = 0.5 * (1.0 + tanh_inner)
            right_derivative = 0.5 * x * (1.0 - tanh_inner * tanh_inner) * 0.7978845608028654 * (
                1.0 + 3.0 * 0.044715 * x * x)
            return left_derivative + right_derivative
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327
        return cdf + x * pdf

    def _configs():
        if triton_interpreting():
            return [triton.Config({'BLOCK_M': 16, 'BLOCK_N': 16, 'BLOCK_K': 16}, num_warps=1)]
        return [triton.Config({'BLOCK_M': bm, 'BLOCK_N': bn, 'BLOCK_K': bk}, num_warps=w, num_stages=s)
                for bm, bn, bk, w, s in ((128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (128, 64, 64, 4, 3),
                                         (64, 128, 64, 4, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
                                         (64, 64, 64, 4, 4), (128, 64, 32, 4, 4))]

    def _quick_bench(fn, quantiles=None, **kwargs):
        # Autotuning runs once per new shape inside the first model step: a short measurement keeps that step short.
        return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)

    @triton.autotune(configs=_configs(), key=['N', 'K', 'EPILOGUE', 'STORE_PRE', 'HAS_BIAS'], do_bench=_quick_bench)
    @triton.jit(do_not_specialize=['M'])
    def _linear_act_kernel(x_ptr, w_ptr, b_ptr, pre_ptr, out_ptr, M, N, K, stride_xm, stride_wk, stride_wn,
                           EPILOGUE: tl.constexpr, STORE_PRE: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """out[m, n] = epilogue(sum_k x[m, k] * w[k * stride_wk + n * stride_wn]); out and pre are (M, N)
        contiguous, x's rows are K-contiguous. The program's N blocks are adjacent, so the ones that share an x tile
        run together."""
        pid = tl.program_id(0)
        n_blocks = tl.cdiv(N, BLOCK_N)
        rows = (pid // n_blocks).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = (pid % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m, mask_n = rows < M, cols < N
        dtype = x_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mask_k = ks < K
            a = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :], mask=mask_m[:, None] & mask_k[None, :],
                        other=0.0)
            b = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0).to(dtype)
            if dtype == tl.float32:
                acc = tl.dot(a, b, acc, input_precision='ieee')
            else:
                acc = tl.dot(a, b, acc)
        if HAS_BIAS:
            acc += tl.load(b_ptr + cols, mask=mask_n, other=0.0).to(dtype).to(tl.float32)[None, :]
        out_type = out_ptr.dtype.element_ty
        offsets = rows[:, None] * N + cols[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        # Rounded to the output dtype before the epilogue, as the composite path's 16-bit GEMM output is.
        acc = acc.to(out_type).to(tl.float32)
        if STORE_PRE:
            tl.store(pre_ptr + offsets, acc.to(pre_ptr.dtype.element_ty), mask=mask)
        if EPILOGUE == 1:
            acc = _gelu(acc, False)
        elif EPILOGUE == 2:
            acc = _gelu(acc, True)
        elif EPILOGUE >= 3:
            pre = tl.load(pre_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            acc = acc * _gelu_grad(pre, EPILOGUE == 4)
        tl.store(out_ptr + offsets, acc.to(out_type), mask=mask)

    _launch = CachedLaunch(_linear_act_kernel)


def _grid(meta):
    return (cdiv(meta['M'], meta['BLOCK_M']) * cdiv(meta['N'], meta['BLOCK_N']),)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (M, K) with K-contiguous rows (a view where it can be)."""
    x2d = x.reshape(-1, x.shape[-1])
    return x2d if x2d.stride(-1) == 1 else x2d.contiguous()


def linear_act_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       act: str = 'none', store_pre: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``linear_act``'s Triton forward without autograd, for layers that fold it into their own node. No checks.

    Args:
        x: (M, K) 16-bit input with K-contiguous rows.
        weight: (N, K) weight in any float dtype (rounded to x's dtype in the kernel).
        bias: Optional (N,) bias.
        act: One of ``ACTIVATIONS``.
        store_pre: Also return the pre-activation ``x @ W.T + b`` (what ``linear_input_grad`` needs).

    Returns:
        The (M, N) output in x's dtype, and the pre-activation (or None).
    """
    rows, n_out = x.shape[0], weight.shape[0]
    out = torch.empty(rows, n_out, device=x.device, dtype=x.dtype)
    pre = torch.empty_like(out) if store_pre else None
    if out.numel():
        _launch(_grid, x, weight, out if bias is None else bias, out if pre is None else pre, out, rows, n_out,
                x.shape[1], x.stride(0), weight.stride(1), weight.stride(0), EPILOGUE=_FORWARD_EPILOGUE[act],
                STORE_PRE=store_pre, HAS_BIAS=bias is not None)
    return out, pre


def linear_input_grad(grad: torch.Tensor, weight: torch.Tensor, pre: Optional[torch.Tensor] = None,
                      act: str = 'none') -> torch.Tensor:
    """``(grad @ weight) * act'(pre)``: the gradient of a linear layer's input, with the derivative of the activation
    that produced that input (the previous layer's, whose pre-activation is ``pre``) applied. No checks.

    Args:
        grad: (M, N) 16-bit gradient of the layer's output, N-contiguous rows.
        weight: (N, K) weight in any float dtype.
        pre: (M, K) pre-activation of the input, when ``act`` is not 'none'.
        act: The activation that made the layer's input, one of ``ACTIVATIONS``.

    Returns:
        (M, K) in grad's dtype.
    """
    rows, n_in = grad.shape[0], weight.shape[1]
    out = torch.empty(rows, n_in, device=grad.device, dtype=grad.dtype)
    if out.numel():
        _launch(_grid, grad, weight, out, out if pre is None else pre, out, rows, n_in, grad.shape[1],
                grad.stride(0), weight.stride(0), weight.stride(1), EPILOGUE=_GRAD_EPILOGUE[act], STORE_PRE=False,
                HAS_BIAS=False)
    return out


# cuBLAS GEMMs of 16-bit operands can write float32 (``torch.mm(..., out_dtype=...)``, CUDA only).
_MM_WRITES_FLOAT32 = hasattr(torch.ops.aten.mm, 'dtype')


def mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32, as a parameter's gradient: one GEMM writing float32 where cuBLAS can, instead of a
    16-bit GEMM and a cast (one kernel less, and no 16-bit rounding of the gradient)."""
    if _MM_WRITES_FLOAT32 and a.is_cuda and a.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b).float()


def bias_grad_float32(grad2d: torch.Tensor) -> torch.Tensor:
    """The column sums of a (rows, features) gradient in float32: a bias's gradient.

    On CUDA a 16-bit gradient is summed by one GEMV with a ones vector writing float32 (``mm_float32``), which reads
    the gradient once at full bandwidth; PyTorch's reduction over the rows of a 16-bit matrix took 1.8 ms of a
    VMamba-T training step on the H200 (2026-11-30 profile, ``benchmarks/profile_step.py``).
    """
    if _MM_WRITES_FLOAT32 and grad2d.is_cuda and grad2d.dtype in (torch.float16, torch.bfloat16):
        return torch.mm(grad2d.t(), _ones_column(grad2d.shape[0], grad2d.dtype, grad2d.device),
                        out_dtype=torch.float32).view(-1)
    return grad2d.sum(0, dtype=torch.float32)


_ONES_COLUMNS = {}


def _ones_column(rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (rows, 1) column of ones, kept per shape, dtype and device (never written): one fill kernel less per bias
    gradient, of which a VMamba-T training step has 28 (its MLPs' biases)."""
    key = (rows, dtype, device)
    ones = _ONES_COLUMNS.get(key)
    if ones is None:
        if len(_ONES_COLUMNS) >= 64:  # many batch sizes: start over rather than grow
            _ONES_COLUMNS.clear()
        ones = _ONES_COLUMNS[key] = torch.ones(rows, 1, device=device, dtype=dtype)
    return ones


class _LinearAct(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, act):
        x2d = _rows(x)
        out, pre = linear_act_forward(x2d, weight, bias, act, store_pre=act != 'none')
        ctx.save_for_backward(x2d, weight, pre)
        ctx.act, ctx.has_bias, ctx.x_shape = act, bias is not None, x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2d, weight, pre = ctx.saved_tensors
        grad2d = _rows(grad.to(x2d.dtype))
        if ctx.act != 'none':
            grad2d = torch.ops.aten.gelu_backward(grad2d, pre, approximate=_gelu_approximate(ctx.act))
        needs = ctx.needs_input_grad
        dx = linear_input_grad(grad2d, weight).view(ctx.x_shape) if needs[0] else None
        dweight = mm_float32(grad2d.t(), x2d).to(weight.dtype) if needs[1] else None
        dbias = bias_grad_float32(grad2d).to(weight.dtype) if ctx.has_bias and needs[2] else None
        return dx, dweight, dbias, None


def _check(x, weight, bias, act, backend):
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f'linear_act: x must be a floating-point (..., K) tensor, got '
                         f'{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}')
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f'linear_act: weight must be (N, {x.shape[-1]}) for x of shape {tuple(x.shape)}, got '
                         f'{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}')
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        raise ValueError(f'linear_act: bias must be ({weight.shape[0]},), got '
                         f'{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}')
    if any(t.device != x.device for t in (weight, bias) if t is not None):
        raise ValueError(f'linear_act: weight and bias must be on x\'s device ({x.device})')
    if act not in ACTIVATIONS:
        raise ValueError(f'linear_act: act must be one of {ACTIVATIONS}, got {act!r}')
    if backend not in _BACKENDS:
        raise ValueError(f'linear_act: backend must be one of {_BACKENDS}, got {backend!r}')


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = 'none',
               backend: str = 'auto') -> torch.Tensor:
    """``act(x @ weight.T + bias)`` over the last dim of x, in x's dtype, with the activation in the GEMM's epilogue.

    Args:
        x: (..., K) float tensor.
        weight: (N, K) weight in any float dtype (a float32 parameter under autocast), rounded to x's dtype.
        bias: Optional (N,) bias, rounded to x's dtype.
        act: 'none', 'gelu' or 'gelu_tanh' (``F.gelu``'s two forms).
        backend: 'auto' (Triton for float16/bfloat16 CUDA tensors outside tracing, scripting and compiling; PyTorch
            otherwise), 'triton' (also runs in Triton's CPU interpreter, for float32/float16) or 'torch'.

    Returns:
        (..., N) in x's dtype. Gradients flow to x, weight and bias (the parameters' in their dtype).
    """
    _check(x, weight, bias, act, backend)
    use_triton = backend == 'triton' or (backend == 'auto' and x.dtype in (torch.float16, torch.bfloat16)
                                         and backend_runs_triton(backend, x, weight, bias))
    if not use_triton:
        return linear_act_ref(x, weight, bias, act)
    if not HAS_TRITON:
        raise RuntimeError("linear_act: backend='triton' needs triton installed")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return _LinearAct.apply(x, weight, bias, act)
    return linear_act_forward(_rows(x), weight, bias, act)[0].view(*x.shape[:-1], weight.shape[0])
