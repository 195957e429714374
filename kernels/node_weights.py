"""A fused training node's weight casts and derived SSM weights in one launch.

Under autocast an eager training step casts every weight to the autocast dtype in every forward, one kernel each,
and SS2D also derives ``A = -exp(A_logs)`` (an ``exp`` and a negation) and the block-diagonal ``dt_proj`` matrix (a
zero fill and a copy). A VMamba-T SS2D branch ran nine such kernels per training forward and an MLP four, 154 per
step, whose launches the host issues one by one; the step was paced by the host on the H200 (2026-11-30 profiles,
``benchmarks/results/README.md``). Here they are one kernel per node: program column ``s`` of the grid writes output
``s``, so no output needs the position of another.

Contents: ``weight_prep_ref`` (readable reference), the Triton kernel, ``weight_prep_launch`` (the kernel without
checks, for fused nodes) and ``weight_prep``, which checks its inputs and dispatches: Triton for CUDA tensors outside
tracing and compiling, the reference otherwise. No autograd: the nodes compute their parameters' gradients
themselves. Imports without Triton and without a GPU.
"""
from typing import Optional, Sequence, Tuple

import torch

from ._triton_utils import HAS_TRITON, CachedLaunch, backend_runs_triton, cdiv, tl, triton, triton_interpreting

__all__ = ['weight_prep', 'weight_prep_ref', 'weight_prep_launch', 'MAX_CASTS']

# Cast slots of one launch: the SS2D branch needs seven (in_proj weight and bias, conv weight and bias, x_proj,
# out_proj weight and bias).
MAX_CASTS = 8
_BLOCK = 2048
_BACKENDS = ('auto', 'triton', 'torch')

Prepared = Tuple[Tuple[Optional[torch.Tensor], ...], Optional[torch.Tensor], Optional[torch.Tensor]]


def _block_diagonal_ref(dt_projs_weight: torch.Tensor, row_width: int, dtype: torch.dtype) -> torch.Tensor:
    k_group, d_inner, rank = dt_projs_weight.shape
    blocks = dt_projs_weight.new_zeros(k_group, d_inner, k_group, row_width, dtype=dtype)
    blocks.diagonal(dim1=0, dim2=2)[:, :rank].copy_(dt_projs_weight.permute(1, 2, 0))  # block k = route k's
    return blocks.view(k_group * d_inner, k_group * row_width)


def weight_prep_ref(casts: Sequence[Optional[torch.Tensor]], dtype: torch.dtype,
                    a_logs: Optional[torch.Tensor] = None, dt_projs_weight: Optional[torch.Tensor] = None,
                    row_width: int = 0) -> Prepared:
    """Readable reference of ``weight_prep``.

    Args:
        casts: Tensors to cast to ``dtype`` (None stays None).
        dtype: The cast dtype, and the block-diagonal matrix's.
        a_logs: Optional (rows, N) ``A_logs``; gives ``A = -exp(A_logs)`` in float32.
        dt_projs_weight: Optional (K, D, R) ``dt_proj`` weights; gives the (K * D, K * row_width) matrix whose block
            k holds route k's weights in its first R columns and zeros elsewhere (SS2D's one-GEMM ``dt_proj``).
        row_width: Width J >= R of a route's block.

    Returns:
        The casts (``Tensor.to``: a tensor already in ``dtype`` as is), A (or None) and the block-diagonal matrix (or
        None).
    """
    cast = tuple(None if t is None else t.to(dtype) for t in casts)
    A = None if a_logs is None else -torch.exp(a_logs.float())
    blocks = None if dt_projs_weight is None else _block_diagonal_ref(dt_projs_weight, row_width, dtype)
    return cast, A, blocks


if HAS_TRITON:

    @triton.jit
    def _cast_part(src_ptr, out_ptr, start, n, offsets):
        mask = offsets < n
        values = tl.load(src_ptr + offsets, mask=mask)
        tl.store(out_ptr + start + offsets, values.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _weight_prep_kernel(
            out_ptr, s0, o0, n0, s1, o1, n1, s2, o2, n2, s3, o3, n3, s4, o4, n4, s5, o5, n5, s6, o6, n6, s7, o7, n7,
            a_logs_ptr, a_ptr, n_a, dt_ptr, o_blocks, n_blocks, D, R, J, KJ, BLOCK: tl.constexpr,
    ):
        output = tl.program_id(1)
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        if output == 0:
            _cast_part(s0, out_ptr, o0, n0, offsets)
        elif output == 1:
            _cast_part(s1, out_ptr, o1, n1, offsets)
        elif output == 2:
            _cast_part(s2, out_ptr, o2, n2, offsets)
        elif output == 3:
            _cast_part(s3, out_ptr, o3, n3, offsets)
        elif output == 4:
            _cast_part(s4, out_ptr, o4, n4, offsets)
        elif output == 5:
            _cast_part(s5, out_ptr, o5, n5, offsets)
        elif output == 6:
            _cast_part(s6, out_ptr, o6, n6, offsets)
        elif output == 7:
            _cast_part(s7, out_ptr, o7, n7, offsets)
        elif output == 8:
            mask = offsets < n_a
            a_logs = tl.load(a_logs_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            tl.store(a_ptr + offsets, -tl.exp(a_logs), mask=mask)
        else:
            # Element (row, column) of the (K * D, K * J) matrix: route row // D's weight (row % D, column % J)
            # where the column falls in the same route's block and within its first R columns, else zero.
            mask = offsets < n_blocks
            row = offsets // KJ
            column = offsets - row * KJ
            route = row // D
            channel = row - route * D
            inside = mask & (column // J == route) & (column % J < R)
            weight = tl.load(dt_ptr + (route * D + channel) * R + column % J, mask=inside, other=0.0)
            tl.store(out_ptr + o_blocks + offsets, weight.to(out_ptr.dtype.element_ty), mask=mask)

    _launch = CachedLaunch(_weight_prep_kernel)


def _aligned(n: int) -> int:
    """n rounded up to 64 elements: every output view starts 128-byte aligned, as a fresh allocation would (GEMM
    libraries pick slower kernels for less aligned operands)."""
    return (n + 63) // 64 * 64


def weight_prep_launch(casts: Sequence[Optional[torch.Tensor]], dtype: torch.dtype,
                       a_logs: Optional[torch.Tensor] = None, dt_projs_weight: Optional[torch.Tensor] = None,
                       row_width: int = 0) -> Prepared:
    """``weight_prep`` on the Triton kernel, without checks, for fused nodes: tensors on one device, at most
    ``MAX_CASTS`` casts.

    A tensor already in ``dtype`` is returned as is (``Tensor.to``'s no-op), so only needed casts are written. The
    casts and the block-diagonal matrix are views of one allocation (one allocation and fewer launch arguments).
    Triton's CPU interpreter rounds to bfloat16 by truncation where the GPU and PyTorch round to nearest even, so
    there bfloat16 outputs come from the reference. ``weight_prep_launch.enabled = False`` runs the reference's
    PyTorch ops (one kernel per cast, four for the derived weights) everywhere, for timing the difference."""
    if not weight_prep_launch.enabled or (dtype == torch.bfloat16 and triton_interpreting()):
        return weight_prep_ref(casts, dtype, a_logs, dt_projs_weight, row_width)
    anchor = next((t for t in (*casts, a_logs, dt_projs_weight) if t is not None), None)
    slots, total = [], 0  # (source, start, numel) of each needed cast
    for tensor in casts:
        if tensor is not None and tensor.dtype != dtype:
            slots.append((tensor.contiguous(), total, tensor.numel()))  # the kernel indexes flat
            total += _aligned(tensor.numel())
    blocks_start, blocks_numel = total, 0
    if dt_projs_weight is not None:
        dt_projs_weight = dt_projs_weight.contiguous()
        k_group, d_inner, rank = dt_projs_weight.shape
        blocks_numel = k_group * d_inner * k_group * row_width
        total += blocks_numel
    a_numel = 0 if a_logs is None else a_logs.numel()
    if total == 0 and a_numel == 0:
        return tuple(casts), None, None
    buffer = torch.empty(total, device=anchor.device, dtype=dtype)
    A = None
    if a_logs is not None:
        a_logs = a_logs.contiguous()
        A = torch.empty(a_logs.shape, device=a_logs.device, dtype=torch.float32)
    largest = max([numel for _, _, numel in slots] + [blocks_numel, a_numel])
    # Absent slots read a present tensor and write nothing.
    filler = (slots[0][0] if slots else anchor, 0, 0)
    flat = [item for slot in slots + [filler] * (MAX_CASTS - len(slots)) for item in slot]
    d_inner, rank = dt_projs_weight.shape[1:] if dt_projs_weight is not None else (1, 1)
    width = max(1, row_width)
    _launch((cdiv(largest, _BLOCK), MAX_CASTS + 2), buffer, *flat, a_logs if A is not None else anchor,
            A if A is not None else buffer, a_numel, dt_projs_weight if blocks_numel else anchor, blocks_start,
            blocks_numel, d_inner, rank, width, (dt_projs_weight.shape[0] if blocks_numel else 1) * width,
            BLOCK=_BLOCK, num_warps=4)
    views, slot = [], iter(slots)
    for tensor in casts:
        if tensor is None or tensor.dtype == dtype:
            views.append(tensor)
        else:
            _, start, numel = next(slot)
            views.append(buffer[start:start + numel].view(tensor.shape))
    blocks = buffer[blocks_start:].view(k_group * d_inner, k_group * row_width) if blocks_numel else None
    return tuple(views), A, blocks


def weight_prep(casts: Sequence[Optional[torch.Tensor]], dtype: torch.dtype, a_logs: Optional[torch.Tensor] = None,
                dt_projs_weight: Optional[torch.Tensor] = None, row_width: int = 0,
                backend: str = 'auto') -> Prepared:
    """Cast weights to ``dtype`` and derive SS2D's ``A`` and block-diagonal ``dt_proj`` matrix, in one kernel.

    Args:
        casts: Up to ``MAX_CASTS`` tensors to cast (None stays None; one already in ``dtype`` is returned as is).
        dtype: The cast dtype (also the block-diagonal matrix's).
        a_logs: Optional ``A_logs`` (any shape); gives ``A = -exp(A_logs)`` in float32.
        dt_projs_weight: Optional (K, D, R) ``dt_proj`` weights; gives the (K * D, K * row_width) block-diagonal
            matrix (``weight_prep_ref``).
        row_width: The block width J >= R.
        backend: 'auto' (Triton for CUDA tensors, eagerly), 'triton' (also in the interpreter) or 'torch'.

    Returns:
        The casts, A (or None) and the block-diagonal matrix (or None). The Triton path's casts are contiguous.
    """
    fn = 'weight_prep'
    if backend not in _BACKENDS:
        raise ValueError(f"{fn}: backend must be one of {_BACKENDS}, got '{backend}'")
    if len(casts) > MAX_CASTS:
        raise ValueError(f'{fn}: at most {MAX_CASTS} casts per call, got {len(casts)}')
    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f'{fn}: dtype must be a floating dtype, got {dtype}')
    named = [(f'casts[{i}]', t) for i, t in enumerate(casts)]
    named += [('a_logs', a_logs), ('dt_projs_weight', dt_projs_weight)]
    present = [(name, t) for name, t in named if t is not None]
    if not present:
        raise ValueError(f'{fn}: nothing to prepare (every input is None)')
    for name, t in present:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f'{fn}: {name} must be a floating-point tensor, got '
                             f'{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}')
        if t.device != present[0][1].device:
            raise ValueError(f'{fn}: {name} is on {t.device}, {present[0][0]} on {present[0][1].device}')
    if dt_projs_weight is not None:
        if dt_projs_weight.dim() != 3:
            raise ValueError(f'{fn}: dt_projs_weight must be (K, D, R), got {tuple(dt_projs_weight.shape)}')
        if row_width < dt_projs_weight.shape[2]:
            raise ValueError(f'{fn}: row_width must be at least R={dt_projs_weight.shape[2]}, got {row_width}')
    tensors = [t for _, t in present]
    if not backend_runs_triton(backend, *tensors):
        return weight_prep_ref(casts, dtype, a_logs, dt_projs_weight, row_width)
    return weight_prep_launch(casts, dtype, a_logs, dt_projs_weight, row_width)


weight_prep_launch.enabled = True
