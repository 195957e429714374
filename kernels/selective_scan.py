"""Selective scan (Mamba-1 S6) over routes: sequential reference, chunked PyTorch path, Triton kernels, dispatch.

One op serves the plain 1D scan with mamba_ssm's semantics and the fused 2D multi-scan:

* ``u`` (B, Ku, D, P) with Ku in {1, K}: Ku == 1 shares one input map between all K routes (the fused 2D case).
* ``delta`` (B, K, D, P), ``B``/``C`` (B, K, N, P): one set per route, in spatial layout.
* ``A`` (K, D, N), optional ``D`` skip and ``delta_bias`` (K, D).
* ``routes`` (K, L) int32 positions in [0, P), or None for the identity (L == P).

Route k walks positions ``routes[k, 0..L)`` and runs ``h_l = exp(delta_l A) h_{l-1} + delta_l B_l u_l``,
``y_l = <C_l, h_l> + D u_l`` with every operand read at that position. With ``accumulate`` the route outputs are
summed into one (B, D, P) map (the cross-merge happens in the kernel); otherwise each route keeps its own output.
Below ``ROUTE_ORDERED_MIN_STATE_DIM`` nothing is permuted or copied in memory: at ``d_state=1`` those copies, not the
recurrence, dominate the bytes. From it (d_state 16: VMamba v0, Vim) the recurrence dominates, and the chunked path
copies the routed operands into route order for a call (in batch slices), because its kernels run twice as fast on
contiguous steps (see ``_route_gather_kernel``).

Dispatch: Triton on CUDA tensors; the chunked PyTorch path on CPU; the Triton interpreter on CPU when asked for with
``backend='triton'`` (and ``TRITON_INTERPRET=1``). On the Triton side, routes that are raster walks (``route_kinds``:
rows and columns, forward or reversed; the identity route of a plain 1D scan) run kernels without a route table:
the whole-map kernels on small maps, the row walks on larger ones (at d_state 1 on NCHW maps their vectorised
forms, several lanes of a row per thread). Other routes,
and d_state > 8, run the chunk-parallel kernels over the route table, or, from ``ROUTE_ORDERED_MIN_STATE_DIM``, on
route-ordered copies. Every path goes through the custom op
``vmamba_zoo::scan_routes_fwd`` whenever a graph is recorded, traced or compiled or a dispatch mode watches: that op
is what fvcore and ``torch.utils.flop_counter`` see, so the FLOP count does not depend on the path. Plain eager
calls of the raster kernels skip the op's dispatch (less host time per call): inference launches them directly,
training through an ``autograd.Function`` with the op's forward and backward bodies.
"""
import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ._triton_utils import (HAS_TRITON, CachedLaunch, ConfigGrid, cast_to, cdiv, next_power_of_2, plain_eager, tl,
                            triton, triton_interpreting, use_triton_for)

__all__ = [
    'selective_scan_fn', 'selective_scan_ref', 'scan_routes', 'scan_routes_ref', 'selective_scan_flops',
    'fvcore_op_handles', 'SCAN_OP_NAMES',
]

_BACKENDS = ('auto', 'triton', 'torch')
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# Readable sequential reference with mamba_ssm's semantics.
# ---------------------------------------------------------------------------------------------------------------------
def selective_scan_ref(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor] = None,
        z: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None,
        delta_softplus: bool = False,
        return_last_state: bool = False,
):
    """Sequential selective scan, one position at a time, in float32 (float64 if ``u`` is float64).

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) step sizes.
        A: (dim, N) real state matrix (diagonal per channel).
        B: (batch, N, L) or (batch, G, N, L) input projections; channel d uses group ``d // (dim // G)``.
        C: same shapes as ``B``, output projections.
        D: optional (dim,) skip weight.
        z: optional (batch, dim, L) gate; the output is multiplied by ``silu(z)``.
        delta_bias: optional (dim,) added to ``delta``.
        delta_softplus: apply softplus to ``delta`` (after the bias).
        return_last_state: also return the final state (batch, dim, N).

    Returns:
        ``out`` (batch, dim, L) in ``u``'s dtype, and the float32 last state if ``return_last_state``.
    """
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(compute), delta.to(compute), A.to(compute)
    B, C = B.to(compute), C.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    groups = B.shape[1]
    B = B.repeat_interleave(dim // groups, dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // groups, dim=1)
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, :, :, t]
        ys.append((state * C[:, :, :, t]).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + u * D.to(compute)[None, :, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype_in)
    return (out, state.float() if compute == torch.float32 else state) if return_last_state else out


def scan_routes_ref(u, delta, A, B, C, D=None, delta_bias=None, routes=None, delta_softplus=False,
                    accumulate=True):
    """Sequential reference of the routed scan, built from ``selective_scan_ref`` one route at a time.

    Shapes are those of the module docstring. Returns the float32 (float64 for float64 input) output: (B, D, P) with
    ``accumulate``, else (B, K, D, P).
    """
    batch, _, dim, positions = u.shape
    num_routes = delta.shape[1]
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    out = u.new_zeros(batch, 1 if accumulate else num_routes, dim, positions, dtype=compute)
    for k in range(num_routes):
        route = torch.arange(positions, device=u.device) if routes is None else routes[k].long()
        u_k = u[:, k if u.shape[1] > 1 else 0][:, :, route]
        y = selective_scan_ref(
            u_k.to(compute), delta[:, k][:, :, route], A[k], B[:, k][:, :, route], C[:, k][:, :, route],
            D=None if D is None else D[k], delta_bias=None if delta_bias is None else delta_bias[k],
            delta_softplus=delta_softplus)
        out[:, 0 if accumulate else k].index_add_(2, route, y)
    return out[:, 0] if accumulate else out


# ---------------------------------------------------------------------------------------------------------------------
# Vectorised PyTorch path (CPU): chunked parallel scan.
# ---------------------------------------------------------------------------------------------------------------------
_BLOCK = 256  # steps scanned at once; the blocks run one after another with the state carried between them


def _gather_routes(t: torch.Tensor, routes: Optional[torch.Tensor], num_routes: int) -> torch.Tensor:
    """(B, Kt, C, P) -> (B, K, C, L) following each route; Kt == 1 shares one map between the routes."""
    if routes is None:
        return t
    routes = routes.long()
    index = routes[None, :, None, :].expand(t.shape[0], num_routes, t.shape[2], routes.shape[1])
    # A shared map is gathered through a broadcast view: on CPU gather took 0.38 ms where advanced indexing took
    # 2.3 ms (a VMamba-T stage-1 input, two cores).
    return torch.gather(t.expand(t.shape[0], num_routes, *t.shape[2:]), 3, index)


_GROUP = 16  # steps composed together at each level of ``_compose_block``


def _hillis_steele(decay: torch.Tensor, drive: torch.Tensor):
    """Inclusive Hillis-Steele scan of the maps h -> decay * h + drive along dim -2 of (..., T, N) tensors: step t
    becomes the composition of steps 0..t, in log2(T) vectorised steps (every decay factor stays <= 1)."""
    shift = 1
    while shift < decay.shape[-2]:
        # Compose each step with the one `shift` earlier (identity before the block start).
        drive = drive + decay * F.pad(drive[..., :-shift, :], (0, 0, shift, 0))
        decay = decay * F.pad(decay[..., :-shift, :], (0, 0, shift, 0), value=1.0)
        shift *= 2
    return decay, drive


def _compose_block(decay: torch.Tensor, drive: torch.Tensor):
    """``_hillis_steele``'s result, in two levels: each group of ``_GROUP`` steps is scanned (all groups at once),
    then the groups' totals (recursively), and every step is composed with the groups before its own. That reads
    and writes the full-size tensors log2(_GROUP) + 1 times instead of log2(T) times (4 + 1 against 8 for T = 256),
    which took most of the scan's time on CPU. With ``_softplus_torch``, a VMamba-T stage-1 scan (batch 1, 96
    channels, 56x56, 4 routes) went from 24.1 to 20.7 ms on two cores, stage 2 from 10.5 to 8.9 ms (best of 6
    interleaved rounds, 2026-11-30)."""
    steps = decay.shape[-2]
    if steps <= _GROUP:
        return _hillis_steele(decay, drive)
    padding = -steps % _GROUP  # identity steps after the end
    if padding:
        decay = F.pad(decay, (0, 0, 0, padding), value=1.0)
        drive = F.pad(drive, (0, 0, 0, padding))
    grouped = decay.shape[:-2] + (decay.shape[-2] // _GROUP, _GROUP, decay.shape[-1])
    decay, drive = _hillis_steele(decay.reshape(grouped), drive.reshape(grouped))  # (..., G, _GROUP, N)
    total_decay, total_drive = _compose_block(decay[..., -1, :], drive[..., -1, :])  # (..., G, N), inclusive
    # What the groups before each group compose to (identity before the first).
    before_decay = F.pad(total_decay[..., :-1, :], (0, 0, 1, 0), value=1.0).unsqueeze(-2)
    before_drive = F.pad(total_drive[..., :-1, :], (0, 0, 1, 0)).unsqueeze(-2)
    drive = drive + decay * before_drive
    decay = decay * before_decay
    flat = decay.shape[:-3] + (-1, decay.shape[-1])
    return decay.reshape(flat)[..., :steps, :], drive.reshape(flat)[..., :steps, :]


def _softplus_torch(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus`` (threshold 15) as log(1 + exp(x)) for float32 and narrower: PyTorch's CPU ``log1p`` is not
    vectorised, and this takes a third of its time (2.0 against 6.4 ms for a stage-1 VMamba-T scan input on two
    cores). The absolute error stays that of ``F.softplus`` (5e-7); only values below about 1e-7 lose their relative
    accuracy, which the scan cannot see next to its other terms. float64 keeps ``F.softplus``."""
    if x.dtype == torch.float64:
        return F.softplus(x)
    return torch.where(x > 15.0, x, torch.log(torch.exp(x.clamp(max=15.0)).add_(1.0)))


def _scan_routes_torch(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate, return_states):
    """Blocked scan: inside a block of steps, ``_compose_block`` composes the maps h -> a h + b in vectorised
    steps (every decay factor stays <= 1, as in the recurrence); blocks run in order with the state carried between
    them. Returns (y, last_state, states) like the op.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, _, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    u_r = _gather_routes(u.to(compute), routes, num_routes)
    delta_r = _gather_routes(delta.to(compute), routes, num_routes)
    B_r = _gather_routes(B.to(compute), routes, num_routes).transpose(2, 3)  # (B, K, L, N)
    C_r = _gather_routes(C.to(compute), routes, num_routes).transpose(2, 3)
    if delta_bias is not None:
        delta_r = delta_r + delta_bias.to(compute)[None, :, :, None]
    if delta_softplus:
        delta_r = _softplus_torch(delta_r)
    length = delta_r.shape[-1]
    A_r = A.to(compute)[None, :, :, None, :]
    state = u_r.new_zeros(batch, num_routes, dim, state_dim)
    ys, hs = [], []
    for start in range(0, length, _BLOCK):
        stop = min(length, start + _BLOCK)
        decay, drive = _compose_block(
            torch.exp(delta_r[:, :, :, start:stop, None] * A_r),  # (B, K, D, T, N)
            (delta_r[:, :, :, start:stop] * u_r[:, :, :, start:stop])[..., None] * B_r[:, :, None, start:stop])
        h = decay * state[:, :, :, None] + drive
        ys.append(torch.einsum('bkdtn,bktn->bkdt', h, C_r[:, :, start:stop]))
        if return_states:
            hs.append(h)
        state = h[:, :, :, -1]
    y = torch.cat(ys, dim=3)
    if D is not None:
        y = y + u_r * D.to(compute)[None, :, :, None]
    states = torch.cat(hs, dim=3).transpose(3, 4) if return_states else None  # (B, K, D, N, L)
    if routes is None:
        y_out = y.sum(1) if accumulate else y
    else:
        index = routes.long()
        if accumulate:
            y_out = y.new_zeros(batch, dim, positions).index_add(
                2, index.reshape(-1), y.permute(0, 2, 1, 3).reshape(batch, dim, -1))
        else:
            y_out = y.new_zeros(batch, num_routes, dim, positions).scatter(
                3, index[None, :, None, :].expand_as(y), y)
        if return_states:
            states = states.new_zeros(*states.shape[:4], positions).scatter(
                4, index[None, :, None, None, :].expand_as(states), states)
    return y_out, state, states


def _linear_scan(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """Every state of h_t = decay_t * h_{t-1} + drive_t from h_{-1} = 0, along dim -2 of (..., T, N) tensors, in
    blocks of ``_BLOCK`` steps as ``_scan_routes_torch`` runs them."""
    length = decay.shape[-2]
    state = drive.new_zeros(*drive.shape[:-2], drive.shape[-1])
    out = []
    for start in range(0, length, _BLOCK):
        block = slice(start, start + _BLOCK)
        block_decay, block_drive = _compose_block(decay[..., block, :], drive[..., block, :])
        h = block_decay * state[..., None, :] + block_drive
        out.append(h)
        state = h[..., -1, :]
    return torch.cat(out, dim=-2)


def _scatter_routes(t: torch.Tensor, routes: Optional[torch.Tensor], positions: int) -> torch.Tensor:
    """Inverse of ``_gather_routes`` for gradients: (B, K, C, L) per-route values added back to their map positions,
    (B, K, C, P); a route that visits a position twice adds both."""
    if routes is None:
        return t
    index = routes.long()[None, :, None, :].expand_as(t)
    return t.new_zeros(*t.shape[:3], positions).scatter_add_(3, index, t)


def _scan_routes_torch_bwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, dy, dlast, dstates):
    """Gradients of ``_scan_routes_torch`` (u, delta, A, B, C, D, delta_bias; None where an input is None), written
    out: the states are recomputed, the adjoint dh_l = g_l + decay_{l+1} dh_{l+1} runs as the same blocked scan on
    the reversed routes, and each gradient is a sum over the states. Plain tensor code, so it runs below autograd and
    under any dispatch mode (FLOP counters), where ``torch.func`` cannot."""
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, k_u, dim, positions = u.shape
    num_routes = delta.shape[1]
    accumulate = dy.dim() == 3
    u_r = _gather_routes(u.to(compute), routes, num_routes)
    if u_r.shape[1] != num_routes:  # no routes and one shared input
        u_r = u_r.expand(batch, num_routes, dim, u_r.shape[-1])
    raw = _gather_routes(delta.to(compute), routes, num_routes)
    if delta_bias is not None:
        raw = raw + delta_bias.to(compute)[None, :, :, None]
    dt = _softplus_torch(raw) if delta_softplus else raw
    B_r = _gather_routes(B.to(compute), routes, num_routes).transpose(2, 3)  # (B, K, L, N)
    C_r = _gather_routes(C.to(compute), routes, num_routes).transpose(2, 3)
    A_c = A.to(compute)[None, :, :, None, :]  # (1, K, D, 1, N)
    decay = torch.exp(dt[..., None] * A_c)  # (B, K, D, L, N)
    drive = (dt * u_r)[..., None] * B_r[:, :, None]
    h = _linear_scan(decay, drive)
    h_prev = F.pad(h[..., :-1, :], (0, 0, 1, 0))
    dy_c = dy.to(compute)
    dy_r = _gather_routes(dy_c[:, None] if accumulate else dy_c, routes, num_routes)
    if dy_r.shape[1] != num_routes:
        dy_r = dy_r.expand(batch, num_routes, dim, dy_r.shape[-1])
    g = dy_r[..., None] * C_r[:, :, None]
    if dstates is not None:
        index = None if routes is None else routes.long()[None, :, None, None, :].expand(*dstates.shape[:4], -1)
        dstates_r = dstates.to(compute) if index is None else torch.gather(dstates.to(compute), 4, index)
        g = g + dstates_r.transpose(3, 4)
    if dlast is not None:
        g = g.clone()
        g[..., -1, :] += dlast.to(compute)
    # Reversed, the adjoint's decay at step j is the forward decay one step later on the route.
    decay_next = F.pad(decay[..., 1:, :], (0, 0, 0, 1))
    dh = _linear_scan(decay_next.flip(-2), g.flip(-2)).flip(-2)
    dh_decay = dh * decay * h_prev  # d/d(dt A) of each step's decay term
    grads_r = dict(
        u=(dh * dt[..., None] * B_r[:, :, None]).sum(-1) + (0 if D is None else dy_r * D.to(compute)[None, :, :, None]),
        dt=(dh * u_r[..., None] * B_r[:, :, None]).sum(-1) + (dh_decay * A_c).sum(-1),
        B=(dh * (dt * u_r)[..., None]).sum(2).transpose(2, 3),
        C=(dy_r[..., None] * h).sum(2).transpose(2, 3))
    draw = grads_r['dt'] * torch.sigmoid(raw) if delta_softplus else grads_r['dt']
    du = _scatter_routes(grads_r['u'], routes, positions)
    if k_u == 1:
        du = du.sum(1, keepdim=True)
    dA = (dh_decay * dt[..., None]).sum(dim=(0, 3))
    dD = None if D is None else (dy_r * u_r).sum(dim=(0, 3))
    dbias = None if delta_bias is None else draw.sum(dim=(0, 3))
    return [du, _scatter_routes(draw, routes, positions), dA, _scatter_routes(grads_r['B'], routes, positions),
            _scatter_routes(grads_r['C'], routes, positions), dD, dbias]


# ---------------------------------------------------------------------------------------------------------------------
# Triton kernels: chunk-parallel scan.
#
# A route of L steps is cut into chunks of CHUNK steps and every chunk runs in its own program, so the GPU sees
# B * K * D / BLOCK_D * L / CHUNK independent programs instead of a sequential walk per channel block.
#   forward : (1) per-chunk summaries (total decay, state reached from zero)    - parallel over chunks
#             (2) state passing: the state entering every chunk                   - sequential over chunks, tiny
#             (3) per-chunk outputs from the entering state                       - parallel over chunks
#   backward: (1) per-chunk summaries of the reverse (adjoint) recurrence        - parallel over chunks
#             (2) reverse state passing: the adjoint entering every chunk         - sequential over chunks, tiny
#             (3) per-chunk gradients from the entering state and adjoint         - parallel over chunks
# The entering states of (2) are kept for the backward pass, so nothing is recomputed sequentially.
# ---------------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _linear_recurrence_combine(a_left, b_left, a_right, b_right):
        # (a, b) represents h -> a * h + b; composing left then right.
        return a_left * a_right, b_left * a_right + b_right

    _REVERSE_SEGMENT = tl.constexpr(8)  # steps per lane segment of _reverse_linear_scan (16-byte bf16 loads)

    @triton.jit
    def _reverse_linear_scan(a, b, ROWS: tl.constexpr, CHUNK: tl.constexpr, SEGMENT: tl.constexpr):
        """``tl.associative_scan((a, b), 1, _linear_recurrence_combine, reverse=True)`` of [ROWS, CHUNK] tiles whose
        lanes hold SEGMENT consecutive steps each. Triton lowers ``reverse=True`` as lane permutations around a
        forward scan; here the flips stay inside the lanes, and only the segments' totals cross lanes (sm_90: a bare
        [8, 64] fp32 tile in 4-step segments, 120 shuffles against 360; the chunked backward twin in 8-step
        segments, 56 against 336)."""
        GROUPS: tl.constexpr = CHUNK // SEGMENT
        a3 = tl.reshape(a, [ROWS, GROUPS, SEGMENT])
        b3 = tl.reshape(b, [ROWS, GROUPS, SEGMENT])
        seg_a, seg_b = tl.associative_scan((tl.flip(a3, 2), tl.flip(b3, 2)), 2, _linear_recurrence_combine)
        seg_a, seg_b = tl.flip(seg_a, 2), tl.flip(seg_b, 2)  # each step's suffix within its segment
        first = tl.arange(0, SEGMENT)[None, None, :] == 0
        total_a = tl.sum(tl.where(first, seg_a, 0.0), axis=2)
        total_b = tl.sum(tl.where(first, seg_b, 0.0), axis=2)
        after_a, after_b = tl.associative_scan((total_a, total_b), 1, _linear_recurrence_combine, reverse=True)
        # What enters a segment from its right: the suffix of the next segment's start (identity for the last).
        group = tl.arange(0, GROUPS)[None, :] + tl.zeros_like(total_a).to(tl.int32)
        has_next = group + 1 < GROUPS
        next_group = tl.minimum(group + 1, GROUPS - 1)
        enter_a = tl.where(has_next, tl.gather(after_a, next_group, 1), 1.0)
        enter_b = tl.where(has_next, tl.gather(after_b, next_group, 1), 0.0)
        return (tl.reshape(enter_a[:, :, None] * seg_a, [ROWS, CHUNK]),
                tl.reshape(enter_b[:, :, None] * seg_a + seg_b, [ROWS, CHUNK]))

    if triton_interpreting():  # the interpreter runs no PTX
        @triton.jit
        def _exp2(x):
            return tl.exp2(x)

        @triton.jit
        def _log2(x):
            return tl.log2(x)
    else:
        # The scans are bound by instruction issue, not by memory. ex2/lg2.approx.ftz are one MUFU op each, where
        # tl.exp wraps ex2 in a denormal rescale and tl.log inlines libdevice's logf (a polynomial of ~20 FMAs). Their
        # 2-ulp error is far below bf16/fp32 input noise; a decay that would be denormal flushes to 0.
        @triton.jit
        def _exp2(x):
            return tl.inline_asm_elementwise('ex2.approx.ftz.f32 $0, $1;', '=f,f', [x], dtype=tl.float32,
                                             is_pure=True, pack=1)

        @triton.jit
        def _log2(x):
            return tl.inline_asm_elementwise('lg2.approx.ftz.f32 $0, $1;', '=f,f', [x], dtype=tl.float32,
                                             is_pure=True, pack=1)

    @triton.jit
    def _exp(x):
        return _exp2(x * 1.4426950408889634)

    @triton.jit
    def _softplus(x):
        return tl.where(x <= 20.0, _log2(1.0 + _exp(x)) * 0.6931471805599453, x)

    @triton.jit
    def _step_size(delta_ptrs, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, load_mask=None):
        """Step sizes at ``delta_ptrs``: raw (with the bias) and final (softplus applied, 0 where masked). Loads
        under ``load_mask`` where given (a wider mask of the same memory, so that the load may be vectorised)."""
        if load_mask is None:
            load_mask = mask
        dt_raw = tl.load(delta_ptrs, mask=load_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw += bias
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        else:
            dt = dt_raw
        return dt_raw, tl.where(mask, dt, 0.0)

    @triton.jit
    def _program_coordinates(D, BLOCK_D: tl.constexpr):
        """(chunk, batch, channels, route) of this program and its channel mask / flattened (K * D) parameter rows.

        Chunks vary fastest in launch order: neighbouring chunks of a column route share memory sectors, so they
        should run together and hit in L2.
        """
        chunk = tl.program_id(0)
        num_dblocks = tl.cdiv(D, BLOCK_D)
        b = (tl.program_id(1) // num_dblocks).to(tl.int64)
        d = (tl.program_id(1) % num_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)
        k = tl.program_id(2).to(tl.int64)
        return chunk, b, d, k, tl.num_programs(2), d < D, k * D + d

    @triton.jit
    def _load_chunk(u_ptr, delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, chunk, D, P, L,
                    stride_u_b, stride_u_k, num_routes, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    IDENTITY: tl.constexpr, CHUNK: tl.constexpr):
        """Positions, input and step sizes of one chunk; steps past L get delta = 0 (an identity step).

        Also the masks for memory: ``mask_pos`` over steps and ``mem`` over (channel, step). Routed operands: those of
        the steps. Route-ordered ones (IDENTITY) are rows of P >= L steps, the steps past L padding that the
        recurrence ignores; masked by P, a multiple of 16, their loads and stores can be vectorised.
        """
        steps = chunk * CHUNK + tl.arange(0, CHUNK)
        mask_l = steps < L
        if IDENTITY:
            pos = steps.to(tl.int64)
            mask_pos = steps < P
        else:
            pos = tl.load(routes_ptr + k * L + steps, mask=mask_l, other=0).to(tl.int64)
            mask_pos = mask_l
        mask = mask_d[:, None] & mask_l[None, :]
        mem = mask_d[:, None] & mask_pos[None, :]
        u = tl.load(u_ptr + b * stride_u_b + k * stride_u_k + d[:, None].to(tl.int64) * P + pos[None, :], mask=mem,
                    other=0.0).to(tl.float32)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0)[:, None]
        dt_raw, dt = _step_size(delta_ptr + ((b * num_routes + k) * D + d[:, None]) * P + pos[None, :], bias, mask,
                                HAS_BIAS, SOFTPLUS, load_mask=mem)
        return steps, mask_l, pos, mask, u, dt_raw, dt, mask_pos, mem

    # One-warp programs keep the lane scans and the channel reductions inside a warp. At d_state 16 (H200, bf16,
    # B=128, 2026-12-01) the autotuner picked BLOCK_D 8 on one warp for the backward at every VMamba-T stage and
    # forward + backward at 56x56 took 27.5 ms, against 36.0 ms with the earlier (16-64 channels, 2-8 warps) list.
    _CHUNK_CONFIGS = ((4, 1), (8, 1), (16, 1), (16, 2), (32, 2), (32, 4))

    def _configs():
        if triton_interpreting():
            return [triton.Config({'BLOCK_D': 8}, num_warps=1)]
        return [triton.Config({'BLOCK_D': bd}, num_warps=w) for bd, w in _CHUNK_CONFIGS]

    def _quick_bench(fn, quantiles=None, **kwargs):
        # Autotuning runs once per new shape inside the first model step: a short measurement keeps that step short.
        return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)

    def _chunk_size() -> int:
        return 16 if triton_interpreting() else 64

    def _chunk_kernel_pair(fn, key, reset_to_zero=None):
        """Two autotuned kernels of one chunked program: for routed operands, read through the route table, with the
        map size (P, L) left unspecialised, which gathers gain nothing from (sm_90: a few more instructions) and which
        would compile anew per map size; and for route-ordered (contiguous) operands, with P and L specialised, so that
        Triton may vectorise the loads when they are 16-element multiples and a lane holds consecutive steps (sm_90,
        d_state 16: the backward's state loop 1,874 -> 844 instructions with ``_reverse_linear_scan``, the forward
        lane scan's shuffles 224 -> 16; ``benchmarks/sass_counts.py --chunked [--contiguous]``)."""
        tune = dict(configs=_configs(), key=key, do_bench=_quick_bench, reset_to_zero=reset_to_zero)
        return (triton.autotune(**tune)(triton.jit(do_not_specialize=['P', 'L'])(fn)),
                triton.autotune(**tune)(triton.jit(fn)))

    def _chunk_summary_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, routes_ptr, total_decay_ptr, chunk_end_ptr,
            D, P, L, N, NUM_CHUNKS, stride_u_b, stride_u_k,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
            CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        chunk, b, d, k, num_routes, mask_d, kd = _program_coordinates(D, BLOCK_D)
        steps, mask_l, pos, mask, u, dt_raw, dt, mask_pos, mem = _load_chunk(
            u_ptr, delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, chunk, D, P, L, stride_u_b, stride_u_k,
            num_routes, HAS_BIAS, SOFTPLUS, IDENTITY, CHUNK)
        cum_dt = tl.cumsum(dt, axis=1)
        total_dt = tl.sum(dt, axis=1)
        dt_u = dt * u
        out_rows = (((b * num_routes + k) * D + d) * NUM_CHUNKS + chunk) * N
        bc_base = (b * num_routes + k) * N * P
        for n in range(0, N):
            A_n = tl.load(A_ptr + kd * N + n, mask=mask_d, other=0.0)
            B_n = tl.load(B_ptr + bc_base + n * P + pos, mask=mask_pos, other=0.0).to(tl.float32)
            # State reached at the chunk end from a zero start: sum_j exp(A (S_end - S_j)) dt_j u_j B_j (factors <= 1).
            weights = _exp(A_n[:, None] * (total_dt[:, None] - cum_dt))
            tl.store(chunk_end_ptr + out_rows + n, tl.sum(weights * dt_u * B_n[None, :], axis=1), mask=mask_d)
            tl.store(total_decay_ptr + out_rows + n, _exp(A_n * total_dt), mask=mask_d)

    _chunk_summary_fwd_kernel, _chunk_summary_fwd_contiguous_kernel = _chunk_kernel_pair(
        _chunk_summary_fwd_kernel, ['D', 'L', 'N'])

    @triton.jit
    def _chunk_state_passing_kernel(decay_ptr, drive_ptr, entering_ptr, final_ptr, ROWS, NUM_CHUNKS, N,
                                    REVERSE: tl.constexpr, BLOCK_R: tl.constexpr):
        """h_{c+1} = decay_c h_c + drive_c over the chunks of every (b, k, d, n) row; stores the state entering each
        chunk (and the final state). REVERSE walks the chunks from the last, for the adjoint recurrence."""
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        mask = rows < ROWS
        base = (rows // N) * NUM_CHUNKS * N + rows % N
        h = tl.zeros([BLOCK_R], dtype=tl.float32)
        for i in range(0, NUM_CHUNKS):
            if REVERSE:
                chunk = NUM_CHUNKS - 1 - i
            else:
                chunk = i
            offsets = base + chunk * N
            tl.store(entering_ptr + offsets, h, mask=mask)
            h = tl.load(decay_ptr + offsets, mask=mask, other=0.0) * h + tl.load(drive_ptr + offsets, mask=mask,
                                                                                 other=0.0)
        if final_ptr is not None:
            tl.store(final_ptr + rows, h, mask=mask)

    def _scan_chunk_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, routes_ptr, entering_ptr,
            y_ptr, states_ptr,
            D, P, L, N, NUM_CHUNKS, stride_u_b, stride_u_k, stride_y_b, stride_y_k,
            HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
            ACCUMULATE: tl.constexpr, STORE_STATES: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        chunk, b, d, k, num_routes, mask_d, kd = _program_coordinates(D, BLOCK_D)
        steps, mask_l, pos, mask, u, dt_raw, dt, mask_pos, mem = _load_chunk(
            u_ptr, delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, chunk, D, P, L, stride_u_b, stride_u_k,
            num_routes, HAS_BIAS, SOFTPLUS, IDENTITY, CHUNK)
        dt_u = dt * u
        entering_rows = (((b * num_routes + k) * D + d) * NUM_CHUNKS + chunk) * N
        bc_base = (b * num_routes + k) * N * P
        y = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        for n in range(0, N):
            A_n = tl.load(A_ptr + kd * N + n, mask=mask_d, other=0.0)
            B_n = tl.load(B_ptr + bc_base + n * P + pos, mask=mask_pos, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc_base + n * P + pos, mask=mask_pos, other=0.0).to(tl.float32)
            decay_cum, drive_cum = tl.associative_scan((_exp(dt * A_n[:, None]), dt_u * B_n[None, :]), 1,
                                                       _linear_recurrence_combine)
            h_start = tl.load(entering_ptr + entering_rows + n, mask=mask_d, other=0.0)
            h = decay_cum * h_start[:, None] + drive_cum
            y += h * C_n[None, :]
            if STORE_STATES:
                state_rows = states_ptr + (((b * num_routes + k) * D + d[:, None]) * N + n) * P
                tl.store(state_rows + pos[None, :], h, mask=mask)
        if HAS_D:
            y += tl.load(Dskip_ptr + kd, mask=mask_d, other=0.0)[:, None] * u
        y_ptrs = y_ptr + b * stride_y_b + k * stride_y_k + d[:, None].to(tl.int64) * P + pos[None, :]
        if ACCUMULATE:
            tl.atomic_add(y_ptrs, y, mask=mask, sem='relaxed')
        else:
            tl.store(y_ptrs, y, mask=mem)

    _scan_chunk_fwd_kernel, _scan_chunk_fwd_contiguous_kernel = _chunk_kernel_pair(
        _scan_chunk_fwd_kernel, ['D', 'L', 'N', 'P'], reset_to_zero=['y_ptr'])

    @triton.jit
    def _load_next_dt(delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, steps, D, P, L, num_routes,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr):
        """Step size at the route step after each step (0 past the end), for the adjoint recurrence."""
        mask_next = (steps + 1) < L
        if IDENTITY:
            pos_next = (steps + 1).to(tl.int64)
        else:
            pos_next = tl.load(routes_ptr + k * L + steps + 1, mask=mask_next, other=0).to(tl.int64)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0)[:, None]
        unused_raw, dt_next = _step_size(delta_ptr + ((b * num_routes + k) * D + d[:, None]) * P + pos_next[None, :],
                                         bias, mask_d[:, None] & mask_next[None, :], HAS_BIAS, SOFTPLUS)
        return mask_next, dt_next

    @triton.jit
    def _adjoint_drive(dy, C_n, dstates_ptr, dlast_ptr, b, k, d, n, N, P, L, pos, mask, steps, num_routes, D,
                       HAS_DSTATES: tl.constexpr, HAS_DLAST: tl.constexpr):
        """g_l: what position l's outputs send into the adjoint of its state."""
        g = dy * C_n[None, :]
        if HAS_DSTATES:
            dstate_rows = dstates_ptr + (((b * num_routes + k) * D + d[:, None]) * N + n) * P
            g += tl.load(dstate_rows + pos[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_DLAST:
            dlast = tl.load(dlast_ptr + ((b * num_routes + k) * D + d) * N + n, mask=d < D, other=0.0)
            g += tl.where(steps[None, :] == L - 1, dlast[:, None], 0.0)
        return tl.where(mask, g, 0.0)

    def _chunk_summary_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, C_ptr, bias_ptr, routes_ptr, dy_ptr, dstates_ptr, dlast_ptr,
            total_decay_ptr, chunk_start_ptr,
            D, P, L, N, NUM_CHUNKS, stride_u_b, stride_u_k, stride_y_b, stride_y_k,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr, HAS_DSTATES: tl.constexpr,
            HAS_DLAST: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        chunk, b, d, k, num_routes, mask_d, kd = _program_coordinates(D, BLOCK_D)
        steps, mask_l, pos, mask, u, dt_raw, dt, mask_pos, mem = _load_chunk(
            u_ptr, delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, chunk, D, P, L, stride_u_b, stride_u_k,
            num_routes, HAS_BIAS, SOFTPLUS, IDENTITY, CHUNK)
        mask_next, dt_next = _load_next_dt(delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, steps, D, P, L,
                                           num_routes, HAS_BIAS, SOFTPLUS, IDENTITY)
        dy = tl.load(dy_ptr + b * stride_y_b + k * stride_y_k + d[:, None].to(tl.int64) * P + pos[None, :],
                     mask=mem, other=0.0).to(tl.float32)
        dy = tl.where(mask, dy, 0.0)
        # The adjoint at the chunk start is sum_l exp(A (S_l - dt_start)) g_l plus exp(A sum dt_next) times the
        # adjoint entering from the right; the last chunk has no right neighbour.
        cum_dt = tl.cumsum(dt, axis=1)
        first_dt = tl.sum(tl.where(tl.arange(0, CHUNK)[None, :] == 0, dt, 0.0), axis=1)
        total_next = tl.sum(tl.where(mask_d[:, None] & mask_next[None, :], dt_next, 0.0), axis=1)
        ends_route = (chunk + 1) * CHUNK >= L
        out_rows = (((b * num_routes + k) * D + d) * NUM_CHUNKS + chunk) * N
        bc_base = (b * num_routes + k) * N * P
        for n in range(0, N):
            A_n = tl.load(A_ptr + kd * N + n, mask=mask_d, other=0.0)
            C_n = tl.load(C_ptr + bc_base + n * P + pos, mask=mask_pos, other=0.0).to(tl.float32)
            g = _adjoint_drive(dy, C_n, dstates_ptr, dlast_ptr, b, k, d, n, N, P, L, pos, mask, steps, num_routes,
                               D, HAS_DSTATES, HAS_DLAST)
            weights = _exp(A_n[:, None] * (cum_dt - first_dt[:, None]))
            tl.store(chunk_start_ptr + out_rows + n, tl.sum(weights * g, axis=1), mask=mask_d)
            total = tl.where(ends_route, 0.0, _exp(A_n * total_next))
            tl.store(total_decay_ptr + out_rows + n, total, mask=mask_d)

    _chunk_summary_bwd_kernel, _chunk_summary_bwd_contiguous_kernel = _chunk_kernel_pair(
        _chunk_summary_bwd_kernel, ['D', 'L', 'N'])

    def _scan_chunk_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, routes_ptr,
            dy_ptr, entering_ptr, dentering_ptr, dstates_ptr, dlast_ptr,
            du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dDskip_ptr, dbias_ptr,
            D, P, L, N, NUM_CHUNKS, stride_u_b, stride_u_k, stride_y_b, stride_y_k,
            HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, IDENTITY: tl.constexpr,
            HAS_DSTATES: tl.constexpr, HAS_DLAST: tl.constexpr, SCATTER_ATOMIC: tl.constexpr,
            CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        chunk, b, d, k, num_routes, mask_d, kd = _program_coordinates(D, BLOCK_D)
        steps, mask_l, pos, mask, u, dt_raw, dt, mask_pos, mem = _load_chunk(
            u_ptr, delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, chunk, D, P, L, stride_u_b, stride_u_k,
            num_routes, HAS_BIAS, SOFTPLUS, IDENTITY, CHUNK)
        mask_next, dt_next = _load_next_dt(delta_ptr, bias_ptr, routes_ptr, b, k, d, mask_d, kd, steps, D, P, L,
                                           num_routes, HAS_BIAS, SOFTPLUS, IDENTITY)
        dy = tl.load(dy_ptr + b * stride_y_b + k * stride_y_k + d[:, None].to(tl.int64) * P + pos[None, :],
                     mask=mem, other=0.0).to(tl.float32)
        dy = tl.where(mask, dy, 0.0)
        dt_u = dt * u
        du = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        ddt = tl.zeros([BLOCK_D, CHUNK], dtype=tl.float32)
        if HAS_D:
            Dskip = tl.load(Dskip_ptr + kd, mask=mask_d, other=0.0)
            du += Dskip[:, None] * dy
            tl.atomic_add(dDskip_ptr + kd, tl.sum(u * dy, axis=1), mask=mask_d, sem='relaxed')
        entering_rows = (((b * num_routes + k) * D + d) * NUM_CHUNKS + chunk) * N
        bc_base = (b * num_routes + k) * N * P
        for n in range(0, N):
            A_n = tl.load(A_ptr + kd * N + n, mask=mask_d, other=0.0)
            B_n = tl.load(B_ptr + bc_base + n * P + pos, mask=mask_pos, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc_base + n * P + pos, mask=mask_pos, other=0.0).to(tl.float32)
            drive = dt_u * B_n[None, :]
            decay_cum, drive_cum = tl.associative_scan((_exp(dt * A_n[:, None]), drive), 1,
                                                       _linear_recurrence_combine)
            h = decay_cum * tl.load(entering_ptr + entering_rows + n, mask=mask_d, other=0.0)[:, None] + drive_cum
            # Adjoint: dh_l = g_l + decay_{l+1} dh_{l+1}, a reverse linear recurrence.
            g = _adjoint_drive(dy, C_n, dstates_ptr, dlast_ptr, b, k, d, n, N, P, L, pos, mask, steps, num_routes,
                               D, HAS_DSTATES, HAS_DLAST)
            decay_next = tl.where(mask_next[None, :], _exp(dt_next * A_n[:, None]), 0.0)
            if IDENTITY:  # route-ordered operands: vectorised loads, so a lane holds consecutive steps
                decay_rcum, g_rcum = _reverse_linear_scan(decay_next, g, BLOCK_D, CHUNK, _REVERSE_SEGMENT)
            else:
                decay_rcum, g_rcum = tl.associative_scan((decay_next, g), 1, _linear_recurrence_combine, reverse=True)
            dh_entering = tl.load(dentering_ptr + entering_rows + n, mask=mask_d, other=0.0)
            dh = tl.where(mask, g_rcum + decay_rcum * dh_entering[:, None], 0.0)
            # decay_l * h_{l-1} == h_l - drive_l, so the decay gradient needs no division.
            dh_decay = dh * (h - drive)
            tl.atomic_add(dC_ptr + bc_base + n * P + pos, tl.sum(dy * h, axis=0), mask=mask_pos, sem='relaxed')
            tl.atomic_add(dB_ptr + bc_base + n * P + pos, tl.sum(dh * dt_u, axis=0), mask=mask_pos, sem='relaxed')
            du += dh * dt * B_n[None, :]
            ddt += dh * u * B_n[None, :] + dh_decay * A_n[:, None]
            tl.atomic_add(dA_ptr + kd * N + n, tl.sum(dh_decay * dt, axis=1), mask=mask_d, sem='relaxed')
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask, ddt, 0.0)
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + kd, tl.sum(ddt, axis=1), mask=mask_d, sem='relaxed')
        ddelta_ptrs = ddelta_ptr + ((b * num_routes + k) * D + d[:, None]) * P + pos[None, :]
        du_ptrs = du_ptr + b * stride_u_b + k * stride_u_k + d[:, None].to(tl.int64) * P + pos[None, :]
        if SCATTER_ATOMIC:
            tl.atomic_add(ddelta_ptrs, ddt, mask=mask, sem='relaxed')
            tl.atomic_add(du_ptrs, du, mask=mask, sem='relaxed')
        else:
            tl.store(ddelta_ptrs, ddt, mask=mem)
            tl.store(du_ptrs, du, mask=mem)

    _scan_chunk_bwd_kernel, _scan_chunk_bwd_contiguous_kernel = _chunk_kernel_pair(
        _scan_chunk_bwd_kernel, ['D', 'L', 'N', 'P'],
        reset_to_zero=['du_ptr', 'ddelta_ptr', 'dA_ptr', 'dB_ptr', 'dC_ptr', 'dDskip_ptr', 'dbias_ptr'])

    # Route-ordered copies for the chunked kernels' twins (d_state >= ROUTE_ORDERED_MIN_STATE_DIM). The twins read
    # each route's steps contiguously, so a lane holds consecutive steps and the lane scans need few shuffles; reading
    # through the route table, the same kernels lay a chunk over the lanes step by step (H200, d_state 16, 56x56:
    # backward kernel 8.2 against 17.1 ms). Copying costs a read and a write of each operand, once per pass.
    @triton.jit
    def _route_steps(routes_ptr, block, k, L, BLOCK_L: tl.constexpr):
        """Block ``block`` of BLOCK_L steps of route k: the steps, their mask and the positions they visit."""
        steps = block * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_l = steps < L
        return steps, mask_l, tl.load(routes_ptr + k * L + steps, mask=mask_l, other=0).to(tl.int64)

    @triton.jit
    def _route_gather_kernel(src_ptr, routes_ptr, dst_ptr, C, P, L, LP, stride_src_b, stride_src_k,
                             BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        """dst[b, k, c, l] = src[b, k (or 0), c, routes[k, l]] for l < L, 0 up to the padded length LP."""
        block, b, c, k, num_routes, mask_c, unused_rows = _program_coordinates(C, BLOCK_C)
        steps, mask_l, pos = _route_steps(routes_ptr, block, k, L, BLOCK_L)
        rows = c[:, None].to(tl.int64)
        values = tl.load(src_ptr + b * stride_src_b + k * stride_src_k + rows * P + pos[None, :],
                         mask=mask_c[:, None] & mask_l[None, :], other=0.0)
        dst_rows = ((b * num_routes + k) * C + rows) * LP
        tl.store(dst_ptr + dst_rows + steps[None, :], values, mask=mask_c[:, None] & (steps < LP)[None, :])

    @triton.jit
    def _route_merge_kernel(src_ptr, inverse_ptr, dst_ptr, C, P, LP, SUM_ROUTES: tl.constexpr, NUM_ROUTES,
                            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
        """dst[b, k (or 0), c, p] = sum over route k (or over all routes) of src[b, k, c, inverse[k, p]], 0 where
        inverse[k, p] < 0 (k never visits p): the adjoint of _route_gather_kernel for routes that visit a position at
        most once. It writes every element, so dst needs no zeroing, and it adds no atomics."""
        block, b, c, out_route, out_routes, mask_c, unused_rows = _program_coordinates(C, BLOCK_C)
        p = block * BLOCK_P + tl.arange(0, BLOCK_P)
        rows = c[:, None].to(tl.int64)
        mask_p = p < P
        total = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        if SUM_ROUTES:
            first, last = 0, NUM_ROUTES
        else:
            first = out_route
            last = first + 1
        for k in range(first, last):
            step = tl.load(inverse_ptr + k * P + p, mask=mask_p, other=-1)
            visited = mask_c[:, None] & (step >= 0)[None, :]
            total += tl.load(src_ptr + ((b * NUM_ROUTES + k) * C + rows) * LP + step[None, :], mask=visited,
                             other=0.0)
        dst_rows = ((b * out_routes + out_route) * C + rows) * P
        tl.store(dst_ptr + dst_rows + p[None, :], total, mask=mask_c[:, None] & mask_p[None, :])

    @triton.jit
    def _route_scatter_kernel(src_ptr, routes_ptr, dst_ptr, C, P, L, LP, SUM_ROUTES: tl.constexpr,
                              BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        """dst[b, k (or 0), c, routes[k, l]] += src[b, k, c, l] for l < L: the adjoint of _route_gather_kernel for
        routes that revisit positions (atomic)."""
        block, b, c, k, num_routes, mask_c, unused_rows = _program_coordinates(C, BLOCK_C)
        steps, mask_l, pos = _route_steps(routes_ptr, block, k, L, BLOCK_L)
        mask = mask_c[:, None] & mask_l[None, :]
        rows = c[:, None].to(tl.int64)
        values = tl.load(src_ptr + ((b * num_routes + k) * C + rows) * LP + steps[None, :], mask=mask, other=0.0)
        if SUM_ROUTES:
            dst_rows = (b * C + rows) * P
        else:
            dst_rows = ((b * num_routes + k) * C + rows) * P
        tl.atomic_add(dst_ptr + dst_rows + pos[None, :], values, mask=mask, sem='relaxed')


# ---------------------------------------------------------------------------------------------------------------------
# Triton kernels: raster routes. Small maps: the whole map in one program (here); larger maps: the row walk (below).
#
# Rows and columns walked forward or backward (VMamba's cross, Vim's bidirectional, a plain 1D scan) need no route
# table and no chunking. Whole map: one program holds a channel block's whole (H, W) map as a [BLOCK_D, HP, WP]
# tile, so it reads every input once, sums the K route outputs in registers and writes y once, with no atomics and
# no state passing.
# A route is scanned in two levels: an associative scan along each line (row or column), then a scan over the lines'
# totals that yields the state entering each line. Padding (to powers of two) is made of identity steps.
#   route kind 0: row-major, 1: column-major, 2: row-major reversed, 3: column-major reversed.
# The backward recomputes the states and runs the adjoint recurrence as the mirrored route, with the decay of each
# step's successor (loaded from the successor's position), so it too reads everything once per program.
# ---------------------------------------------------------------------------------------------------------------------
# Map sizes (padded H * W) up to which the whole-map kernels run. On the H200 (B=128, N=1, bf16, 2026-11-29) the
# row walk now wins or ties everywhere: forward 0.23 vs 0.41 ms at 14x14 and 0.17 vs 0.18 ms at 7x7, forward+backward
# 1.8 vs 2.0 ms and 1.5 vs 1.9 ms. So no map runs them by default; they stay selectable here and tested.
WHOLE_MAP_FWD_MAX_TILE = 0
WHOLE_MAP_BWD_MAX_TILE = 0
# Above WHOLE_MAP_BWD_MAX_TILE the row-walk backward runs; against the chunked backward, forward+backward took 4.96 vs
# 11.35 ms at 56x56 and 2.90 vs 4.85 ms at 28x28 (H200, 2026-11-29, bench_raster.py). False keeps the chunked one.
ROW_WALK_BACKWARD = True
# Registers per thread of the row-walk backward's programs (None: the compiler's choice); _row_walk_bwd_programs says
# why 80.
ROW_WALK_BWD_MAX_REGISTERS = 80
RASTER_MAX_WIDTH = 1024  # lanes of the row-walk kernel


_ROW_WALK_BLOCK_DS = (1, 2, 4, 8, 16, 32, 64)  # channel blocks the row-walk programs may take (interpreter: 2)


def _raster_tile(height: int, width: int, route_kinds) -> Optional[Tuple[int, int, int, int]]:
    """(H, W, HP, WP) the raster kernels use for these routes over P = height * width positions, or None when a row
    is too wide. Row-only routes reinterpret the positions as rows of up to 64, whatever the map's shape."""
    positions = height * width
    if all(kind % 2 == 0 for kind in route_kinds):
        width = min(64, next_power_of_2(positions))
        height = -(-positions // width)
    tile_h, tile_w = next_power_of_2(height), next_power_of_2(width)
    return None if tile_w > RASTER_MAX_WIDTH else (height, width, tile_h, tile_w)


def _whole_map(plan, backward: bool = False) -> bool:
    return plan[2] * plan[3] <= (WHOLE_MAP_BWD_MAX_TILE if backward else WHOLE_MAP_FWD_MAX_TILE)


def _backward_reads_routes(plan) -> bool:
    """Whether the backward of a raster forward run with ``plan`` falls back to the chunked kernels, the only ones
    that read the route table (the raster kernels walk the routes from their kinds): a map too large for the
    whole-map backward, without the row walk's backward (switched off, or no entering states kept because the
    forward ran on the whole map). ``_scan_routes_bwd`` takes the same branches."""
    return not _whole_map(plan, backward=True) and not (ROW_WALK_BACKWARD and not _whole_map(plan))


if HAS_TRITON:

    @triton.jit
    def _combine_keeping_exclusive(a, b, a_excl, b_excl, a2, b2, a2_excl, b2_excl):
        # A segment is summarised by its composed map (a, b) and the map of all but its last element (a_excl, b_excl),
        # so the inclusive scan also delivers the exclusive one: the state entering each line.
        return a * a2, b * a2 + b2, a * a2_excl, b * a2_excl + b2_excl

    @triton.jit
    def _raster_route(decay, drive, rows, cols, KIND: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
        """States of route KIND from a zero start on a [BLOCK_D, HP, WP] tile, and each channel's state at the end."""
        # Row routes scan along axis 2 and chain the HP rows; column routes scan along axis 1 and chain the WP columns.
        by_column: tl.constexpr = KIND % 2
        line_length: tl.constexpr = WP * (1 - by_column) + HP * by_column
        num_lines: tl.constexpr = HP * (1 - by_column) + WP * by_column
        reverse: tl.constexpr = KIND // 2
        if by_column:
            a_line, b_line = tl.associative_scan((decay, drive), 1, _linear_recurrence_combine, reverse=reverse)
            line_end = rows == (line_length - 1) * (1 - reverse)
            a_total = tl.sum(tl.where(line_end, a_line, 0.0), axis=1)  # [BLOCK_D, num_lines]
            b_total = tl.sum(tl.where(line_end, b_line, 0.0), axis=1)
        else:
            a_line, b_line = tl.associative_scan((decay, drive), 2, _linear_recurrence_combine, reverse=reverse)
            line_end = cols == (line_length - 1) * (1 - reverse)
            a_total = tl.sum(tl.where(line_end, a_line, 0.0), axis=2)
            b_total = tl.sum(tl.where(line_end, b_line, 0.0), axis=2)
        _, b_all, _, b_entering = tl.associative_scan(
            (a_total, b_total, tl.full(a_total.shape, 1.0, tl.float32), tl.zeros(a_total.shape, tl.float32)), 1,
            _combine_keeping_exclusive, reverse=reverse)
        if by_column:
            h = b_line + a_line * b_entering[:, None, :]
        else:
            h = b_line + a_line * b_entering[:, :, None]
        lines = tl.arange(0, num_lines)[None, :]
        end_state = tl.sum(tl.where(lines == (num_lines - 1) * (1 - reverse), b_all, 0.0), axis=1)
        return h, end_state

    @triton.jit
    def _raster_successor(rows, cols, flat, H, W, P, KIND: tl.constexpr):
        """Flat position of the step after (row, col) along route KIND, and whether there is one."""
        if KIND == 0:
            return flat + 1, flat + 1 < P
        elif KIND == 2:
            return flat - 1, flat >= 1
        elif KIND == 1:
            down = rows < H - 1
            return tl.where(down, flat + W, cols + 1), down | (cols + 1 < W)
        else:
            up = rows > 0
            return tl.where(up, flat - W, (H - 1) * W + cols - 1), up | (cols >= 1)

    @triton.jit
    def _image_and_channels(D, BLOCK_D: tl.constexpr):
        """Image b and channel block d of a raster program (grid: images x channel blocks)."""
        num_dblocks = tl.cdiv(D, BLOCK_D)
        b = (tl.program_id(0) // num_dblocks).to(tl.int64)
        return b, (tl.program_id(0) % num_dblocks) * BLOCK_D + tl.arange(0, BLOCK_D)

    @triton.jit
    def _raster_coordinates(D, P, H, W, HP: tl.constexpr, WP: tl.constexpr, BLOCK_D: tl.constexpr):
        b, d = _image_and_channels(D, BLOCK_D)
        rows = tl.arange(0, HP)[None, :, None]
        cols = tl.arange(0, WP)[None, None, :]
        flat = rows * W + cols
        mask_pos = (rows < H) & (cols < W) & (flat < P)
        mask = (d[:, None, None] < D) & mask_pos
        offsets = d[:, None, None] * P + flat  # int32 inside one (batch, route) slab: fewer registers
        return b, d, rows, cols, flat, mask_pos, mask, offsets

    def _raster_configs():
        if triton_interpreting():
            return [triton.Config({'BLOCK_D': 2}, num_warps=1)]
        return [triton.Config({'BLOCK_D': bd}, num_warps=w) for bd in (1, 2, 4, 8, 16, 32, 64) for w in (2, 4, 8, 16)]

    def _prune_raster_configs(configs, named_args, **kwargs):
        """Programs of 512 or 1024 elements (or one channel of a larger map), at 4 or 8 elements per thread: the
        scans keep about a dozen values per element live, so more per thread spills registers."""
        if triton_interpreting():
            return configs
        named_args = {**named_args, **kwargs}  # Triton versions differ in where the constexpr arguments go
        tile = named_args['HP'] * named_args['WP']
        widest = next_power_of_2(named_args['D'])
        wanted = set()
        for elements in (512, 1024):
            block_d = max(1, min(widest, elements // tile))
            for per_thread in (4, 8):
                wanted.add((block_d, max(2, min(16, block_d * tile // (32 * per_thread)))))
        return [c for c in configs if (c.kwargs['BLOCK_D'], c.num_warps) in wanted] or configs[:1]

    @triton.autotune(configs=_raster_configs(), key=['D', 'H', 'W', 'N', 'HP', 'WP'], do_bench=_quick_bench,
                     prune_configs_by={'early_config_prune': _prune_raster_configs})
    @triton.jit(do_not_specialize=['P'])
    def _raster_scan_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, y_ptr, last_ptr, states_ptr,
            D, P, H, W, N, stride_u_b, stride_u_k, stride_y_b, stride_y_k,
            KINDS: tl.constexpr, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_D: tl.constexpr,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, STORE_STATES: tl.constexpr,
            HP: tl.constexpr, WP: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b, d, rows, cols, flat, mask_pos, mask, offsets = _raster_coordinates(D, P, H, W, HP, WP, BLOCK_D)
        mask_d = d < D
        if U_SHARED:
            u = tl.load((u_ptr + b * stride_u_b) + offsets, mask=mask, other=0.0).to(tl.float32)
        y = tl.zeros([BLOCK_D, HP, WP], dtype=tl.float32)
        for k in tl.static_range(NUM_ROUTES):
            if not U_SHARED:
                u = tl.load((u_ptr + b * stride_u_b + k * stride_u_k) + offsets, mask=mask, other=0.0).to(tl.float32)
            kd = k * D + d
            bias = 0.0
            if HAS_BIAS:
                bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0)[:, None, None]
            route = b * NUM_ROUTES + k
            unused_raw, dt = _step_size((delta_ptr + route * D * P) + offsets, bias, mask, HAS_BIAS, SOFTPLUS)
            dt_u = dt * u
            y_k = tl.zeros([BLOCK_D, HP, WP], dtype=tl.float32)
            for n in range(0, N):
                A_n = tl.load(A_ptr + kd * N + n, mask=mask_d, other=0.0)[:, None, None]
                bc_base = (route * N + n) * P
                B_n = tl.load((B_ptr + bc_base) + flat, mask=mask_pos, other=0.0).to(tl.float32)
                C_n = tl.load((C_ptr + bc_base) + flat, mask=mask_pos, other=0.0).to(tl.float32)
                h, end_state = _raster_route(_exp(dt * A_n), dt_u * B_n, rows, cols, (KINDS >> (2 * k)) & 3, HP, WP)
                y_k += h * C_n
                tl.store(last_ptr + (route * D + d) * N + n, end_state, mask=mask_d)
                if STORE_STATES:
                    state_base = (route * D * N + n) * P
                    state_rows = d[:, None, None] * (N * P) + flat
                    tl.store((states_ptr + state_base) + state_rows, h, mask=mask)
            if HAS_D:
                y_k += tl.load(Dskip_ptr + kd, mask=mask_d, other=0.0)[:, None, None] * u
            if ACCUMULATE:
                y += y_k
            else:
                tl.store((y_ptr + b * stride_y_b + k * stride_y_k) + offsets, y_k, mask=mask)
        if ACCUMULATE:
            tl.store((y_ptr + b * stride_y_b) + offsets, y, mask=mask)

    @triton.autotune(configs=_raster_configs(), key=['D', 'H', 'W', 'N', 'HP', 'WP'], do_bench=_quick_bench,
                     prune_configs_by={'early_config_prune': _prune_raster_configs},
                     reset_to_zero=['dA_ptr', 'dB_ptr', 'dC_ptr', 'dDskip_ptr', 'dbias_ptr'])
    @triton.jit(do_not_specialize=['P'])
    def _raster_scan_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, dy_ptr, dstates_ptr, dlast_ptr,
            du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dDskip_ptr, dbias_ptr,
            D, P, H, W, N, stride_u_b, stride_u_k, stride_y_b, stride_y_k,
            KINDS: tl.constexpr, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_D: tl.constexpr,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, HAS_DSTATES: tl.constexpr,
            HAS_DLAST: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        b, d, rows, cols, flat, mask_pos, mask, offsets = _raster_coordinates(D, P, H, W, HP, WP, BLOCK_D)
        mask_d = d < D
        flat_2d = tl.arange(0, HP)[:, None] * W + tl.arange(0, WP)[None, :]
        mask_2d = (tl.arange(0, HP)[:, None] < H) & (tl.arange(0, WP)[None, :] < W) & (flat_2d < P)
        if U_SHARED:
            u = tl.load((u_ptr + b * stride_u_b) + offsets, mask=mask, other=0.0).to(tl.float32)
            du = tl.zeros([BLOCK_D, HP, WP], dtype=tl.float32)
        if ACCUMULATE:
            dy = tl.load((dy_ptr + b * stride_y_b) + offsets, mask=mask, other=0.0).to(tl.float32)
        for k in tl.static_range(NUM_ROUTES):
            if not U_SHARED:
                u = tl.load((u_ptr + b * stride_u_b + k * stride_u_k) + offsets, mask=mask, other=0.0).to(tl.float32)
                du = tl.zeros([BLOCK_D, HP, WP], dtype=tl.float32)
            if not ACCUMULATE:
                dy = tl.load((dy_ptr + b * stride_y_b + k * stride_y_k) + offsets, mask=mask, other=0.0).to(tl.float32)
            kd = k * D + d
            bias = 0.0
            if HAS_BIAS:
                bias = tl.load(bias_ptr + kd, mask=mask_d, other=0.0)[:, None, None]
            route = b * NUM_ROUTES + k
            delta_ptrs = (delta_ptr + route * D * P) + d[:, None, None] * P
            dt_raw, dt = _step_size(delta_ptrs + flat, bias, mask, HAS_BIAS, SOFTPLUS)
            successor, has_successor = _raster_successor(rows, cols, flat, H, W, P, (KINDS >> (2 * k)) & 3)
            unused_raw_next, dt_next = _step_size(delta_ptrs + successor, bias, mask & has_successor, HAS_BIAS,
                                                  SOFTPLUS)
            dt_u = dt * u
            ddt = tl.zeros([BLOCK_D, HP, WP], dtype=tl.float32)
            if HAS_DLAST:
                if (KINDS >> (2 * k)) & 2:  # reversed routes end at position 0
                    route_end = flat == 0
                else:
                    route_end = flat == P - 1
            for n in range(0, N):
                A_n = tl.load(A_ptr + kd * N + n, mask=mask_d, other=0.0)[:, None, None]
                bc_base = (route * N + n) * P
                B_n = tl.load((B_ptr + bc_base) + flat, mask=mask_pos, other=0.0).to(tl.float32)
                C_n = tl.load((C_ptr + bc_base) + flat, mask=mask_pos, other=0.0).to(tl.float32)
                drive = dt_u * B_n
                h, unused_end = _raster_route(_exp(dt * A_n), drive, rows, cols, (KINDS >> (2 * k)) & 3, HP, WP)
                # Adjoint: dh_l = g_l + decay_{next(l)} dh_{next(l)}: the mirrored route, padding left as identity.
                g = dy * C_n
                if HAS_DSTATES:
                    state_base = (route * D * N + n) * P
                    state_rows = d[:, None, None] * (N * P) + flat
                    g += tl.load((dstates_ptr + state_base) + state_rows, mask=mask, other=0.0)
                if HAS_DLAST:
                    dlast = tl.load(dlast_ptr + (route * D + d) * N + n, mask=mask_d, other=0.0)[:, None, None]
                    g += tl.where(route_end, dlast, 0.0)
                g = tl.where(mask, g, 0.0)
                decay_next = tl.where(mask, tl.where(has_successor, _exp(dt_next * A_n), 0.0), 1.0)
                dh, unused_start = _raster_route(decay_next, g, rows, cols, ((KINDS >> (2 * k)) & 3) ^ 2, HP, WP)
                # decay_l * h_{l-1} == h_l - drive_l, so the decay gradient needs no division.
                dh_decay = tl.where(mask, dh * (h - drive), 0.0)
                tl.atomic_add((dC_ptr + bc_base) + flat_2d, tl.sum(tl.where(mask, dy * h, 0.0), axis=0),
                              mask=mask_2d, sem='relaxed')
                tl.atomic_add((dB_ptr + bc_base) + flat_2d, tl.sum(tl.where(mask, dh * dt_u, 0.0), axis=0),
                              mask=mask_2d, sem='relaxed')
                tl.atomic_add(dA_ptr + kd * N + n, tl.sum(tl.sum(dh_decay * dt, axis=2), axis=1), mask=mask_d,
                              sem='relaxed')
                du += dh * dt * B_n
                ddt += dh * u * B_n + dh_decay * A_n
            if HAS_D:
                du += tl.load(Dskip_ptr + kd, mask=mask_d, other=0.0)[:, None, None] * dy
                tl.atomic_add(dDskip_ptr + kd, tl.sum(tl.sum(u * dy, axis=2), axis=1), mask=mask_d, sem='relaxed')
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            ddt = tl.where(mask, ddt, 0.0)
            if HAS_BIAS:
                tl.atomic_add(dbias_ptr + kd, tl.sum(tl.sum(ddt, axis=2), axis=1), mask=mask_d, sem='relaxed')
            tl.store((ddelta_ptr + route * D * P) + offsets, ddt, mask=mask)
            if not U_SHARED:
                tl.store((du_ptr + b * stride_u_b + k * stride_u_k) + offsets, du, mask=mask)
        if U_SHARED:
            tl.store((du_ptr + b * stride_u_b) + offsets, du, mask=mask)

    def _raster_rows_configs():
        if triton_interpreting():
            return [triton.Config({'BLOCK_D': 2, 'NUM_STAGES': 1}, num_warps=1)]
        return [triton.Config({'BLOCK_D': bd, 'NUM_STAGES': stages}, num_warps=w)
                for bd in _ROW_WALK_BLOCK_DS for w in (1, 2, 4, 8) for stages in (1, 3)]

    def _row_walk_fwd_program(lanes):
        """The forward's program, (elements, warps), by lanes per row: the 2026-11-30 H200 sweep's winner at every
        VMamba stage, fixed because the autotuner's quick benchmarks picked slower ones from run to run."""
        return ((128, 2),) if lanes <= 8 else ((max(32, lanes), 1),)

    def _row_walk_fwd_channel_last_program(lanes):
        """The forward's program on a channel-last map, (channels, warps): 512 elements, the sweep's winner."""
        return ((max(8, min(32, 512 // lanes)), 8 if lanes <= 8 else 4),)

    def _row_walk_bwd_programs(lanes):
        """The backward's program, (elements, warps, register cap), by lanes per row: 128 elements on one warp for
        rows of 32 lanes and more, 64 on one warp below, at most 80 registers per thread.

        In VMamba-T's training step on the H200 (2026-11-30, ``benchmarks/autotune_picks.py``) these programs beat
        the other two former candidates at every stage by 6 % or more: 2.24 vs 2.49 / 2.55 ms at 56x56, 1.15 vs
        1.22 / 1.71 at 28x28, 0.57 vs 0.67 / 0.82 at 14x14 and 0.28 vs 0.37 / 0.40 at 7x7. Fixed, because autotuning
        the three compiled and timed them for 10-12 s per stage, 44 s of the model's 70 s first training step on a
        fresh machine.

        The cap (``ROW_WALK_BWD_MAX_REGISTERS``, read when a shape is first pruned): the compiler gives the programs
        96 / 105 / 80 / 80 registers at the four stages, so at most 21 / 19 / 25 / 25 of them reside on an SM, and
        their serial chains' latency is what bounds them. Capped at 80 (which spills 56 / 40 / 0 / 0 bytes) they
        took 2.149 / 1.083 / 0.531 / 0.248 ms against 2.345 / 1.159 / 0.537 / 0.250 ms, 11.21 against 11.81 ms per
        training step; capped at 64 (spilling 360 / 260 / 28 / 24 bytes), 2.74 / 1.29 / 0.52 / 0.25 ms (H200,
        2026-11-30, ``benchmarks/bench_maxnreg.py``)."""
        cap = ROW_WALK_BWD_MAX_REGISTERS
        return ((128, 1, cap),) if lanes >= 32 else ((64, 1, cap),)

    def _row_walk_bwd_channel_last_programs(lanes):
        """The backward's candidates on a channel-last map, (channels, warps), from the 2026-11-30 sweep."""
        return (4, 1), (4, 2), (8, 2)

    def _with_cap(program):
        """A program list's entry as (size, warps, register cap): entries without a cap leave it to the compiler."""
        return tuple(program) + (None,) * (3 - len(program))

    def _capped(config, cap):
        """``config`` with at most ``cap`` registers per thread (Triton's ``maxnreg``); itself when cap is None."""
        if cap is None:
            return config
        return triton.Config(dict(config.kwargs), num_warps=config.num_warps, num_stages=config.num_stages,
                             maxnreg=cap)

    def _row_walk_pruner(programs, channel_last_programs):
        """Pruning to the (elements per program, warps) pairs in ``programs``, or on a channel-last input to the
        (channels per program, warps) pairs in ``channel_last_programs``, without software pipelining. Both are
        functions of the lanes per row (the map's width rounded up to a power of two) that give the pairs; one pair
        means no autotuning at all. A pair may carry a third entry, a cap on the program's registers per thread.

        H200 sweeps (2026-11-29 and 11-30, ``benchmarks/results/README.md``): the walks are bound by instruction
        issue and latency, so many small resident programs win. The forward is fastest with one warp of 32 to 64
        elements per program on maps down to 14x14 and 128 on two warps at 7x7; the backward, which keeps more
        values per element, with 64 to 128 on one warp. Each list has one clear winner per stage.
        Pipelining the row loads (NUM_STAGES=3) won in none of the fastest configurations, and Triton's autotuner
        picked a 2x slower configuration out of a wider set of close ones.

        On a channel-last map a program must span several channels for its loads to be coalesced (and vectorised):
        a program of one channel would read one element per 32-byte sector.
        """
        def prune(configs, named_args, **kwargs):
            if triton_interpreting():
                return configs
            named_args = {**named_args, **kwargs}  # Triton versions differ in where the constexpr arguments go
            row = named_args['NP'] * named_args['LANES']
            widest = next_power_of_2(named_args['D'])
            lanes = named_args['LANES']
            if named_args['stride_u_d'] == 1 and named_args['D'] > 1:
                wanted = {(min(widest, channels), warps): cap
                          for channels, warps, cap in map(_with_cap, channel_last_programs(lanes))}
            else:
                wanted = {(max(1, min(widest, elements // row)), warps): cap
                          for elements, warps, cap in map(_with_cap, programs(lanes))}
            return [_capped(c, wanted[c.kwargs['BLOCK_D'], c.num_warps]) for c in configs
                    if (c.kwargs['BLOCK_D'], c.num_warps) in wanted
                    and c.kwargs['NUM_STAGES'] == 1] or configs[:1]
        return prune

    # -----------------------------------------------------------------------------------------------------------------
    # Forward for large maps: rows of the map in the lanes, walked top to bottom and back.
    #
    # Every load is a row of the map, so every access is coalesced. Column routes run one sequential recurrence per
    # lane (one column per lane) and row routes one associative scan along the lanes per row, with the state carried
    # from row to row. A column route's state also crosses from the bottom of one column to the top of the next:
    # a first walk totals each column (its decay product and the state it reaches from zero), and an exclusive scan
    # of those totals along the lanes gives the state entering each column. The second walk (top to bottom) runs the
    # forward routes and writes y, the third (bottom to top) runs the reversed routes and adds to y in the same lanes.
    # -----------------------------------------------------------------------------------------------------------------
    @triton.jit
    def _row_walk_program(D, BLOCK_D: tl.constexpr, NP: tl.constexpr, LANES: tl.constexpr):
        """Image and channel block of this program; channel, state and lane indices as [BLOCK_D, NP, LANES] axes."""
        b, d = _image_and_channels(D, BLOCK_D)
        return b, d, d[:, None, None], tl.arange(0, NP)[None, :, None], tl.arange(0, LANES)[None, None, :]

    @triton.jit
    def _route_parameters(k, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, D, N, HAS_BIAS: tl.constexpr,
                          HAS_D: tl.constexpr):
        """A [BLOCK_D, NP, 1], delta bias and skip D [BLOCK_D, 1, 1] of route k, loaded once before the walks: the
        compiler cannot hoist them out of a loop that stores through other pointers."""
        kd = k * D + d
        A = tl.load(A_ptr + kd[:, None, None] * N + nn, mask=(dd < D) & (nn < N), other=0.0)
        bias = tl.zeros([d.shape[0], 1, 1], tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + kd, mask=d < D, other=0.0)[:, None, None]
        skip = tl.zeros([d.shape[0], 1, 1], tl.float32)
        if HAS_D:
            skip = tl.load(Dskip_ptr + kd, mask=d < D, other=0.0)[:, None, None]
        return A, bias, skip

    @triton.jit
    def _walk_columns(lanes, W, KIND: tl.constexpr):
        """Map column of each lane. Reversed routes (kinds 2 and 3) walk the row right to left so that their scans
        run forward along the lanes (a reversed Triton scan flips its operands through shuffles); padding lanes get
        column W."""
        if KIND >= 2:
            return tl.where(lanes < W, W - 1 - lanes, W)
        return lanes

    @triton.jit
    def _row_inputs(r, k, u_ptr, delta_ptr, B_ptr, A, bias, b, dd, nn, cols, D, P, W, N, stride_u_b, stride_u_k,
                    stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p,
                    NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """Row r of route k at the map columns ``cols`` (W on padding lanes): input, step sizes (raw and final) and B
        per (channel, state, lane), with offsets and masks."""
        flat = r * W + cols
        on_map = (cols < W) & (flat < P)
        mask = (dd < D) & on_map
        offsets = dd * stride_u_d + flat * stride_u_p
        if U_SHARED:
            u = tl.load((u_ptr + b * stride_u_b) + offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            u = tl.load((u_ptr + b * stride_u_b + k * stride_u_k) + offsets, mask=mask, other=0.0).to(tl.float32)
        route = b * NUM_ROUTES + k
        dt_offsets = dd * stride_dt_d + flat * stride_dt_p
        dt_raw, dt = _step_size((delta_ptr + b * stride_dt_b + k * stride_dt_k) + dt_offsets, bias, mask, HAS_BIAS,
                                SOFTPLUS)
        bc_offsets = (route * N * P) + nn * P + flat
        B_row = tl.load(B_ptr + bc_offsets, mask=(nn < N) & on_map, other=0.0).to(tl.float32)
        return flat, on_map, mask, offsets, dt_offsets, bc_offsets, u, route, dt_raw, dt, B_row

    @triton.jit
    def _row_step(state, r, k, u_ptr, delta_ptr, B_ptr, C_ptr, A, bias, skip, y_ptr, states_ptr, entering_ptr, b,
                  dd, nn, lanes, cols, D, P, W, N, MAX_LINES, stride_u_b, stride_u_k, stride_u_d, stride_u_p,
                  stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                  NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                  SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, STORE_STATES: tl.constexpr, KIND: tl.constexpr,
                  LANES: tl.constexpr):
        """Route k (of KIND) on row r, its lanes at map columns ``cols``: the new carried state and the route's output
        on the row, [BLOCK_D, 1, LANES], which is stored here when the routes keep separate outputs."""
        flat, on_map, mask, unused_offsets, unused_dt_offsets, bc_offsets, u, route, unused_raw, dt, B_row = \
            _row_inputs(r, k, u_ptr, delta_ptr, B_ptr, A, bias, b, dd, nn, cols, D, P, W, N, stride_u_b, stride_u_k,
                        stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES,
                        U_SHARED, HAS_BIAS, SOFTPLUS)
        decay = _exp(dt * A)
        drive = (dt * u) * B_row
        C_row = tl.load(C_ptr + bc_offsets, mask=(nn < N) & on_map, other=0.0).to(tl.float32)
        if KIND % 2 == 1:  # one column per lane: a plain recurrence
            h = decay * state + drive
            new_state = h
        else:
            # The backward rebuilds the row from the state entering it (the same in every lane).
            tl.store(entering_ptr + ((route * D + dd) * N + nn) * MAX_LINES + r + 0 * lanes, state,
                     mask=(dd < D) & (nn < N) & (lanes == 0))
            decay_cum, drive_cum = tl.associative_scan((decay, drive), 2, _linear_recurrence_combine)
            h = drive_cum + decay_cum * state
            # Padding lanes come last and are identity steps: the last lane holds the row's end state.
            end = tl.sum(tl.where(lanes == LANES - 1, h, 0.0), axis=2, keep_dims=True)
            new_state = tl.broadcast_to(end, h.shape)
        if STORE_STATES:
            tl.store((states_ptr + route * D * N * P) + (dd * N + nn) * P + flat, h, mask=mask & (nn < N))
        y = tl.sum(h * C_row, axis=1, keep_dims=True)
        if HAS_D:
            y += skip * u
        if not ACCUMULATE:
            tl.store((y_ptr + b * stride_y_b + k * stride_y_k) + dd * stride_y_d + flat * stride_y_p, y, mask=mask)
        return new_state, y

    @triton.jit
    def _column_totals(total_decay, total_drive, r, k, u_ptr, delta_ptr, B_ptr, A, bias, b, dd, nn, cols, D, P, W,
                       N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d,
                       stride_dt_p, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, KIND: tl.constexpr):
        """Adds row r to the totals of column route k (lanes at map columns ``cols``): the decay product and the state
        reached from zero, which a reversed (bottom-to-top) route accumulates here top to bottom as
        sum_r (prod_{r' < r} decay_r') drive_r."""
        unused_flat, unused_on_map, unused_mask, unused_offsets, unused_dt_offsets, unused_bc, u, unused_route, \
            unused_raw, dt, B_row = \
            _row_inputs(r, k, u_ptr, delta_ptr, B_ptr, A, bias, b, dd, nn, cols, D, P, W, N, stride_u_b, stride_u_k,
                        stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p,
                        NUM_ROUTES, U_SHARED, HAS_BIAS, SOFTPLUS)
        decay = _exp(dt * A)
        drive = (dt * u) * B_row
        if KIND == 1:
            return total_decay * decay, decay * total_drive + drive
        else:
            return total_decay * decay, total_drive + total_decay * drive

    @triton.jit
    def _column_entering(total_decay, total_drive, KIND: tl.constexpr):
        """State entering each column (lane) of a column route: the exclusive composition of the columns before it."""
        unused_a, unused_b, unused_a_excl, entering = tl.associative_scan(
            (total_decay, total_drive, tl.full(total_decay.shape, 1.0, tl.float32),
             tl.zeros(total_decay.shape, tl.float32)), 2, _combine_keeping_exclusive, reverse=KIND == 3)
        return entering

    @triton.jit
    def _kept_column_entering(total_decay, total_drive, entering_ptr, route, D, N, W, MAX_LINES, dd, nn, cols):
        """``_column_entering`` of a column route whose lanes run in route order (at map columns ``cols``), also kept
        in ``entering_ptr`` by map column for the backward."""
        entering = _column_entering(total_decay, total_drive, 1)
        tl.store(entering_ptr + ((route * D + dd) * N + nn) * MAX_LINES + cols, entering,
                 mask=(dd < D) & (nn < N) & (cols < W))
        return entering

    @triton.jit
    def _route_setup(k: tl.constexpr, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, lanes, D, W, N, NUM_ROUTES: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, KIND: tl.constexpr):
        """Route k's parameters (``_route_parameters``) and the map column of each lane (``_walk_columns``); zeros,
        which nothing reads, for a route beyond NUM_ROUTES."""
        A = tl.zeros([d.shape[0], nn.shape[1], 1], tl.float32)
        bias = tl.zeros([d.shape[0], 1, 1], tl.float32)
        skip = tl.zeros([d.shape[0], 1, 1], tl.float32)
        if k < NUM_ROUTES:
            A, bias, skip = _route_parameters(k, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, D, N, HAS_BIAS, HAS_D)
        return A, bias, skip, _walk_columns(lanes, W, KIND)

    @triton.jit
    def _route_column_totals(total_decay, total_drive, r, k: tl.constexpr, u_ptr, delta_ptr, B_ptr, A, bias, b, dd,
                             nn, cols, D, P, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b,
                             stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES: tl.constexpr,
                             U_SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                             KIND: tl.constexpr):
        """``_column_totals`` for a column route k < NUM_ROUTES; the totals unchanged for any other route."""
        if k < NUM_ROUTES:
            if KIND % 2 == 1:
                total_decay, total_drive = _column_totals(
                    total_decay, total_drive, r, k, u_ptr, delta_ptr, B_ptr, A, bias, b, dd, nn, cols, D, P, W, N,
                    stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p,
                    NUM_ROUTES, U_SHARED, HAS_BIAS, SOFTPLUS, KIND)
        return total_decay, total_drive

    @triton.jit
    def _route_start(zeros, total_decay, total_drive, k: tl.constexpr, entering_ptr, b, D, N, W, MAX_LINES, dd, nn,
                     cols, NUM_ROUTES: tl.constexpr, KIND: tl.constexpr):
        """The state route k starts its walk with: for a column route the state entering each column
        (``_kept_column_entering``), for a row route (or a route beyond NUM_ROUTES) zeros."""
        state = zeros
        if k < NUM_ROUTES:
            if KIND % 2 == 1:
                state = _kept_column_entering(total_decay, total_drive, entering_ptr, b * NUM_ROUTES + k, D, N, W,
                                              MAX_LINES, dd, nn, cols)
        return state

    @triton.jit
    def _route_row(state, y, walk: tl.constexpr, r, k: tl.constexpr, u_ptr, delta_ptr, B_ptr, C_ptr, A, bias, skip,
                   y_ptr, states_ptr, entering_ptr, b, dd, nn, lanes, cols, D, P, W, N, MAX_LINES, stride_u_b,
                   stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, stride_y_b,
                   stride_y_k, stride_y_d, stride_y_p, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr,
                   STORE_STATES: tl.constexpr, KIND: tl.constexpr, LANES: tl.constexpr):
        """``_row_step`` of route k on row r when this walk is the route's (walk 0 forward, 1 reversed), its output
        added to the row's y; state and y unchanged otherwise."""
        if k < NUM_ROUTES:
            if (KIND >> 1) == walk:
                state, y_route = _row_step(state, r, k, u_ptr, delta_ptr, B_ptr, C_ptr, A, bias, skip, y_ptr,
                                           states_ptr, entering_ptr, b, dd, nn, lanes, cols, D, P, W, N, MAX_LINES,
                                           stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
                                           stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                                           NUM_ROUTES, U_SHARED,
                                           HAS_D, HAS_BIAS, SOFTPLUS, ACCUMULATE, STORE_STATES, KIND, LANES)
                y += y_route
        return state, y

    @triton.jit
    def _store_last_state(state, k: tl.constexpr, last_ptr, b, D, N, W, dd, nn, lanes, NUM_ROUTES: tl.constexpr):
        """Route k's final state: row routes carry one value in every lane; a column route ends in its last lane
        (the map's last column, or its first for a reversed route)."""
        if k < NUM_ROUTES:
            tl.store(last_ptr + (((b * NUM_ROUTES + k) * D + dd) * N + nn), _last_state(state, lanes, W),
                     mask=(dd < D) & (nn < N))

    @triton.autotune(configs=_raster_rows_configs(), key=['D', 'H', 'W', 'N', 'LANES', 'stride_u_d'],
                     do_bench=_quick_bench, prune_configs_by={'early_config_prune': _row_walk_pruner(
                         _row_walk_fwd_program, _row_walk_fwd_channel_last_program)})
    @triton.jit(do_not_specialize=['P'])
    def _raster_rows_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, y_ptr, last_ptr, states_ptr, entering_ptr,
            D, P, H, W, N, MAX_LINES, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
            stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
            KINDS: tl.constexpr, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_D: tl.constexpr,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, STORE_STATES: tl.constexpr,
            HAS_FORWARD_ROUTES: tl.constexpr, LANES: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
            NUM_STAGES: tl.constexpr,
    ):
        b, d, dd, nn, lanes = _row_walk_program(D, BLOCK_D, NP, LANES)
        ones = tl.full([BLOCK_D, NP, LANES], 1.0, tl.float32)
        zeros = tl.zeros([BLOCK_D, NP, LANES], tl.float32)
        # Routes 0..3 unrolled (each route's carried state is its own loop variable); the per-route helpers do
        # nothing for a route beyond NUM_ROUTES or one that another walk handles.
        K0: tl.constexpr = KINDS & 3
        K1: tl.constexpr = (KINDS >> 2) & 3
        K2: tl.constexpr = (KINDS >> 4) & 3
        K3: tl.constexpr = (KINDS >> 6) & 3
        A0, bias0, skip0, cols0 = _route_setup(0, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, lanes, D, W, N, NUM_ROUTES,
                                               HAS_BIAS, HAS_D, K0)
        A1, bias1, skip1, cols1 = _route_setup(1, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, lanes, D, W, N, NUM_ROUTES,
                                               HAS_BIAS, HAS_D, K1)
        A2, bias2, skip2, cols2 = _route_setup(2, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, lanes, D, W, N, NUM_ROUTES,
                                               HAS_BIAS, HAS_D, K2)
        A3, bias3, skip3, cols3 = _route_setup(3, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, lanes, D, W, N, NUM_ROUTES,
                                               HAS_BIAS, HAS_D, K3)
        # Walk 1: column totals of the column routes.
        a0, b0, a1, b1, a2, b2, a3, b3 = ones, zeros, ones, zeros, ones, zeros, ones, zeros
        if (KINDS & 0x55) != 0:
            for r in tl.range(0, H, num_stages=NUM_STAGES):
                a0, b0 = _route_column_totals(a0, b0, r, 0, u_ptr, delta_ptr, B_ptr, A0, bias0, b, dd, nn, cols0, D,
                                              P, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b,
                                              stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES, U_SHARED, HAS_BIAS,
                                              SOFTPLUS, K0)
                a1, b1 = _route_column_totals(a1, b1, r, 1, u_ptr, delta_ptr, B_ptr, A1, bias1, b, dd, nn, cols1, D,
                                              P, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b,
                                              stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES, U_SHARED, HAS_BIAS,
                                              SOFTPLUS, K1)
                a2, b2 = _route_column_totals(a2, b2, r, 2, u_ptr, delta_ptr, B_ptr, A2, bias2, b, dd, nn, cols2, D,
                                              P, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b,
                                              stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES, U_SHARED, HAS_BIAS,
                                              SOFTPLUS, K2)
                a3, b3 = _route_column_totals(a3, b3, r, 3, u_ptr, delta_ptr, B_ptr, A3, bias3, b, dd, nn, cols3, D,
                                              P, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b,
                                              stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES, U_SHARED, HAS_BIAS,
                                              SOFTPLUS, K3)
        s0 = _route_start(zeros, a0, b0, 0, entering_ptr, b, D, N, W, MAX_LINES, dd, nn, cols0, NUM_ROUTES, K0)
        s1 = _route_start(zeros, a1, b1, 1, entering_ptr, b, D, N, W, MAX_LINES, dd, nn, cols1, NUM_ROUTES, K1)
        s2 = _route_start(zeros, a2, b2, 2, entering_ptr, b, D, N, W, MAX_LINES, dd, nn, cols2, NUM_ROUTES, K2)
        s3 = _route_start(zeros, a3, b3, 3, entering_ptr, b, D, N, W, MAX_LINES, dd, nn, cols3, NUM_ROUTES, K3)
        # Walks 2 and 3: forward routes top to bottom, reversed routes bottom to top (their lanes right to left);
        # walk 3 adds to walk 2's y.
        for walk in tl.static_range(2):
            tl.debug_barrier()  # walk 3 reads y written by other threads of the program
            cols = _walk_columns(lanes, W, 2 * walk)
            for i in tl.range(0, H, num_stages=NUM_STAGES):
                if walk == 0:
                    r = i
                else:
                    r = H - 1 - i
                flat = r * W + cols
                mask = (dd < D) & (cols < W) & (flat < P)
                y = tl.zeros([BLOCK_D, 1, LANES], tl.float32)
                s0, y = _route_row(s0, y, walk, r, 0, u_ptr, delta_ptr, B_ptr, C_ptr, A0, bias0, skip0, y_ptr,
                                   states_ptr, entering_ptr, b, dd, nn, lanes, cols, D, P, W, N, MAX_LINES,
                                   stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
                                   stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                                   NUM_ROUTES, U_SHARED, HAS_D, HAS_BIAS, SOFTPLUS, ACCUMULATE, STORE_STATES, K0,
                                   LANES)
                s1, y = _route_row(s1, y, walk, r, 1, u_ptr, delta_ptr, B_ptr, C_ptr, A1, bias1, skip1, y_ptr,
                                   states_ptr, entering_ptr, b, dd, nn, lanes, cols, D, P, W, N, MAX_LINES,
                                   stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
                                   stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                                   NUM_ROUTES, U_SHARED, HAS_D, HAS_BIAS, SOFTPLUS, ACCUMULATE, STORE_STATES, K1,
                                   LANES)
                s2, y = _route_row(s2, y, walk, r, 2, u_ptr, delta_ptr, B_ptr, C_ptr, A2, bias2, skip2, y_ptr,
                                   states_ptr, entering_ptr, b, dd, nn, lanes, cols, D, P, W, N, MAX_LINES,
                                   stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
                                   stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                                   NUM_ROUTES, U_SHARED, HAS_D, HAS_BIAS, SOFTPLUS, ACCUMULATE, STORE_STATES, K2,
                                   LANES)
                s3, y = _route_row(s3, y, walk, r, 3, u_ptr, delta_ptr, B_ptr, C_ptr, A3, bias3, skip3, y_ptr,
                                   states_ptr, entering_ptr, b, dd, nn, lanes, cols, D, P, W, N, MAX_LINES,
                                   stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
                                   stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                                   NUM_ROUTES, U_SHARED, HAS_D, HAS_BIAS, SOFTPLUS, ACCUMULATE, STORE_STATES, K3,
                                   LANES)
                if ACCUMULATE:
                    y_row = (y_ptr + b * stride_y_b) + dd * stride_y_d + flat * stride_y_p
                    if walk == 1:
                        if HAS_FORWARD_ROUTES:  # the first walk wrote y in these very positions
                            y += tl.load(y_row, mask=mask, other=0.0)
                    tl.store(y_row, y, mask=mask)
        _store_last_state(s0, 0, last_ptr, b, D, N, W, dd, nn, lanes, NUM_ROUTES)
        _store_last_state(s1, 1, last_ptr, b, D, N, W, dd, nn, lanes, NUM_ROUTES)
        _store_last_state(s2, 2, last_ptr, b, D, N, W, dd, nn, lanes, NUM_ROUTES)
        _store_last_state(s3, 3, last_ptr, b, D, N, W, dd, nn, lanes, NUM_ROUTES)

    # -----------------------------------------------------------------------------------------------------------------
    # Forward at d_state 1, vectorised: the row walk with V consecutive lanes of a row in each thread.
    #
    # The row walk above gives every thread one lane of a row (Triton cannot prove its rows aligned, so its loads are
    # scalar and its layout has one element per thread): each row scan is five levels of shuffles and every operand a
    # 16-bit load. Here the map width is W = WV * V with V a power of two (V <= 16 bytes / element size), so Triton
    # proves every row start a multiple of V and loads V lanes per thread in one vector: the tiles are
    # [BLOCK_D, T, V], T threads per row, and a row scan runs V steps inside the thread before log2(T) levels of
    # shuffles over the threads' totals. Column routes need no shuffles at all. Reversed row routes flip their lanes
    # inside the thread (register renaming) rather than through a reversed Triton scan, which permutes through
    # shuffles. Same walks, same kept states as the row walk, so its backward runs unchanged.
    # -----------------------------------------------------------------------------------------------------------------
    @triton.jit
    def _vector_route_parameters(k: tl.constexpr, A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
        """Route k's A (times log2(e), for exp2), delta bias and skip D as [BLOCK_D, 1, 1] (the row walk's
        ``_route_parameters`` at d_state 1); zeros beyond NUM_ROUTES."""
        A = tl.zeros([d.shape[0], 1, 1], tl.float32)
        bias = tl.zeros([d.shape[0], 1, 1], tl.float32)
        skip = tl.zeros([d.shape[0], 1, 1], tl.float32)
        if k < NUM_ROUTES:
            only_state = tl.zeros([1, 1, 1], tl.int32)
            A, bias, skip = _route_parameters(k, A_ptr, bias_ptr, Dskip_ptr, d, d[:, None, None], only_state, D, 1,
                                              HAS_BIAS, HAS_D)
            A = A * 1.4426950408889634
        return A, bias, skip

    @triton.jit
    def _vector_program(D, H, WV, T: tl.constexpr, V: tl.constexpr, BLOCK_D: tl.constexpr):
        """A vectorised walk's program: the map width W = WV * V (a multiple of V that Triton can see, so that every
        row starts V-aligned) and size P, image b, channels d (and as [BLOCK_D, 1, 1]), the [1, T, V] lanes, the
        tile's mask and the offsets of its channels' row 0 in an NCHW map."""
        W = WV * V
        P = H * W
        b, d = _image_and_channels(D, BLOCK_D)
        dd = d[:, None, None]
        lanes = tl.arange(0, T)[None, :, None] * V + tl.arange(0, V)[None, None, :]
        return W, P, b, d, dd, lanes, (dd < D) & (lanes < W), (b * D + dd) * P + lanes

    @triton.jit
    def _vector_parameters(A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES: tl.constexpr, HAS_BIAS: tl.constexpr,
                           HAS_D: tl.constexpr):
        """``_vector_route_parameters`` of routes 0 to 3."""
        A0, bias0, skip0 = _vector_route_parameters(0, A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES, HAS_BIAS, HAS_D)
        A1, bias1, skip1 = _vector_route_parameters(1, A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES, HAS_BIAS, HAS_D)
        A2, bias2, skip2 = _vector_route_parameters(2, A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES, HAS_BIAS, HAS_D)
        A3, bias3, skip3 = _vector_route_parameters(3, A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES, HAS_BIAS, HAS_D)
        return A0, bias0, skip0, A1, bias1, skip1, A2, bias2, skip2, A3, bias3, skip3

    @triton.jit
    def _vector_loads(row, k: tl.constexpr, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES: tl.constexpr,
                      sdt_b, sdt_k, sdt_d, ACTIVE: tl.constexpr, WITH_C: tl.constexpr):
        """Route k's delta, B and (WITH_C) C on the row starting at flat position ``row``, as stored: the loads a walk
        issues a row ahead. Zeros where the route is not ACTIVE (not this walk's)."""
        dt_stored = tl.zeros(mask.shape, tl.float32)
        B_stored = tl.zeros(mask.shape, tl.float32)
        C_stored = tl.zeros(mask.shape, tl.float32)
        if k < NUM_ROUTES:
            if ACTIVE:
                dt_stored = tl.load(delta_ptr + (b * sdt_b + k * sdt_k + dd * sdt_d) * P + row + lanes, mask=mask,
                                    other=0.0)
                # B and C are shared by the channels: their pointers are broadcast over them so that the loads take
                # the tile's layout.
                bc_offsets = (b * NUM_ROUTES + k) * P + row + lanes + dd * 0
                B_stored = tl.load(B_ptr + bc_offsets, mask=mask, other=0.0)
                if WITH_C:
                    C_stored = tl.load(C_ptr + bc_offsets, mask=mask, other=0.0)
        return dt_stored, B_stored, C_stored

    @triton.jit
    def _walk_rows(i, H, DOWN: tl.constexpr):
        """Row i steps into a walk over H rows, top to bottom (DOWN) or bottom to top, and the walk's next row, which
        is loaded ahead (after the last row, the last row again: loaded twice rather than past the map)."""
        if DOWN:
            return i, tl.minimum(i + 1, H - 1)
        else:
            return H - 1 - i, tl.maximum(H - 2 - i, 0)

    @triton.jit
    def _vector_row_loads(row, u_lanes, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES: tl.constexpr, sdt_b,
                          sdt_k, sdt_d, ACTIVE0: tl.constexpr, ACTIVE1: tl.constexpr, ACTIVE2: tl.constexpr,
                          ACTIVE3: tl.constexpr, WITH_C: tl.constexpr):
        """u and every ACTIVE route's ``_vector_loads`` on the row at ``row``, as stored: what a forward walk loads a
        row ahead."""
        u = tl.load(u_lanes + row, mask=mask, other=0.0)
        dt0, B0, C0 = _vector_loads(row, 0, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k,
                                    sdt_d, ACTIVE0, WITH_C)
        dt1, B1, C1 = _vector_loads(row, 1, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k,
                                    sdt_d, ACTIVE1, WITH_C)
        dt2, B2, C2 = _vector_loads(row, 2, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k,
                                    sdt_d, ACTIVE2, WITH_C)
        dt3, B3, C3 = _vector_loads(row, 3, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k,
                                    sdt_d, ACTIVE3, WITH_C)
        return u, dt0, B0, C0, dt1, B1, C1, dt2, B2, C2, dt3, B3, C3

    @triton.jit
    def _vector_step_values(dt_stored, B_stored, u, A_log2, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                            IDENTITY_PADDING: tl.constexpr):
        """Decay and drive of a route's row from its loaded delta and B, with the raw (biased) and final step sizes
        and B. ``IDENTITY_PADDING``: lanes past the row's end are identity steps (a row scan runs through them); a
        column route's padding lanes are columns of their own, which nothing reads. Unlike the row walk's
        ``_step_size`` it leaves the padding's step sizes unmasked: u is 0 there, and so is the drive."""
        dt_raw = dt_stored.to(tl.float32)
        if HAS_BIAS:
            dt_raw += bias
        dt = dt_raw
        if SOFTPLUS:
            dt = _softplus(dt_raw)
        decay = _exp2(dt * A_log2)
        B_row = B_stored.to(tl.float32)
        drive = (dt * u) * B_row
        if IDENTITY_PADDING:
            decay = tl.where(mask, decay, 1.0)
        return decay, drive, dt_raw, dt, B_row

    @triton.jit
    def _vector_column_totals(total_decay, total_drive, k: tl.constexpr, u, dt_stored, B_stored, A_log2, bias, mask,
                              NUM_ROUTES: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                              KIND: tl.constexpr):
        """``_column_totals`` of the vectorised walk: a row (its loaded delta and B) added to column route k's
        totals."""
        if k < NUM_ROUTES:
            if KIND % 2 == 1:
                decay, drive, unused_raw, unused_dt, unused_B = _vector_step_values(
                    dt_stored, B_stored, u, A_log2, bias, mask, HAS_BIAS, SOFTPLUS, False)
                if KIND == 1:
                    total_decay, total_drive = total_decay * decay, decay * total_drive + drive
                else:
                    total_decay, total_drive = total_decay * decay, total_drive + total_decay * drive
        return total_decay, total_drive

    @triton.jit
    def _vector_column_entering(total_decay, total_drive, REVERSE: tl.constexpr):
        """What enters each column (lane) of a [BLOCK_D, T, V] tile from a zero start: the exclusive composition of
        the columns' maps (``total_decay`` h + ``total_drive``) before it, in lane order or, REVERSE, against it."""
        shape: tl.constexpr = total_decay.shape
        row_shape: tl.constexpr = [shape[0], 1, shape[1] * shape[2]]
        entering = _column_entering(tl.reshape(total_decay, row_shape), tl.reshape(total_drive, row_shape),
                                    1 + 2 * REVERSE)  # the row walk's kinds: 1 forward, 3 reversed
        return tl.reshape(entering, shape)

    @triton.jit
    def _vector_column_start(total_decay, total_drive, k: tl.constexpr, entering_ptr, b, dd, lanes, D, W, MAX_LINES,
                             NUM_ROUTES: tl.constexpr, KIND: tl.constexpr):
        """A column route's state entering each column (an exclusive scan of the column totals in route order, once
        per program), kept by map column for the backward; zeros for a row route."""
        state = tl.zeros(total_decay.shape, tl.float32)
        if k < NUM_ROUTES:
            if KIND % 2 == 1:
                state = _vector_column_entering(total_decay, total_drive, KIND == 3)
                tl.store(entering_ptr + ((b * NUM_ROUTES + k) * D + dd) * MAX_LINES + lanes, state,
                         mask=(dd < D) & (lanes < W))
        return state

    @triton.jit
    def _vector_across_threads(lane_decay, lane_drive, entering, REVERSE: tl.constexpr):
        """The second level of a lane scan of [BLOCK_D, T, V] rows whose V steps per thread are scanned already
        (``lane_decay``, ``lane_drive``: inclusive, in the scan's direction): what enters each thread's steps, [BLOCK_D,
        T], and what leaves the row, [BLOCK_D, 1, 1], for a row entered with ``entering`` [BLOCK_D, 1, 1]."""
        V: tl.constexpr = lane_decay.shape[2]
        T: tl.constexpr = lane_decay.shape[1]
        thread_end = tl.arange(0, V)[None, None, :] == (V - 1) * (1 - REVERSE)  # in-thread: the compiler picks it
        total_decay = tl.sum(tl.where(thread_end, lane_decay, 0.0), axis=2)
        total_drive = tl.sum(tl.where(thread_end, lane_drive, 0.0), axis=2)
        all_decay, all_drive, before_decay, before_drive = tl.associative_scan(
            (total_decay, total_drive, tl.full(total_decay.shape, 1.0, tl.float32),
             tl.zeros(total_decay.shape, tl.float32)), 1, _combine_keeping_exclusive, reverse=REVERSE)
        row_entering = tl.reshape(entering, [entering.shape[0], 1])
        thread_entering = before_drive + before_decay * row_entering
        last_thread = tl.arange(0, T)[None, :] == (T - 1) * (1 - REVERSE)
        leaving = tl.sum(tl.where(last_thread, all_drive + all_decay * row_entering, 0.0), axis=1)
        return thread_entering, leaving[:, None, None]

    @triton.jit
    def _vector_row_scan(decay, drive, state, REVERSE: tl.constexpr):
        """States of a row route along the lanes of a [BLOCK_D, T, V] row entered with ``state`` [BLOCK_D, 1, 1], and
        the state leaving the row: V steps in each thread, then the threads' totals across the T threads."""
        if REVERSE:  # flipping inside a thread is register renaming; a reversed Triton scan permutes through shuffles
            lane_decay, lane_drive = tl.associative_scan((tl.flip(decay, 2), tl.flip(drive, 2)), 2,
                                                         _linear_recurrence_combine)
            lane_decay, lane_drive = tl.flip(lane_decay, 2), tl.flip(lane_drive, 2)
        else:
            lane_decay, lane_drive = tl.associative_scan((decay, drive), 2, _linear_recurrence_combine)
        thread_entering, leaving = _vector_across_threads(lane_decay, lane_drive, state, REVERSE)
        return lane_drive + lane_decay * thread_entering[:, :, None], leaving

    @triton.jit
    def _vector_route_row(state, y, walk: tl.constexpr, r, k: tl.constexpr, u, dt_stored, B_stored, C_stored, A_log2,
                          bias, entering_ptr, b, dd, mask, D, MAX_LINES, NUM_ROUTES: tl.constexpr,
                          HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, KIND: tl.constexpr):
        """Route k on row r (its loaded delta, B and C) when this walk is the route's: its new state, and its output
        added to y."""
        if k < NUM_ROUTES:
            if (KIND >> 1) == walk:
                decay, drive, unused_raw, unused_dt, unused_B = _vector_step_values(
                    dt_stored, B_stored, u, A_log2, bias, mask, HAS_BIAS, SOFTPLUS, KIND % 2 == 0)
                if KIND % 2 == 1:
                    h = decay * state + drive
                    state = h
                else:
                    # The backward rebuilds the row from the state entering it.
                    tl.store(entering_ptr + ((b * NUM_ROUTES + k) * D + dd) * MAX_LINES + r, state, mask=dd < D)
                    h, state = _vector_row_scan(decay, drive, state, KIND == 2)
                y += h * C_stored.to(tl.float32)
        return state, y

    @triton.jit
    def _vector_store_last(state, k: tl.constexpr, last_ptr, b, d, lanes, D, W, NUM_ROUTES: tl.constexpr,
                           KIND: tl.constexpr):
        """Route k's final state: a row route's carried state, or a column route's in its last column (the map's last
        for a forward route, its first for a reversed one)."""
        if k < NUM_ROUTES:
            if KIND % 2 == 1:
                last_lane = (W - 1) * (KIND == 1)
                last = tl.sum(tl.sum(tl.where(lanes == last_lane, state, 0.0), axis=2), axis=1)
            else:
                last = tl.sum(tl.sum(state, axis=2), axis=1)
            tl.store(last_ptr + (b * NUM_ROUTES + k) * D + d, last, mask=d < D)

    @triton.jit
    def _vector_row_out(y, y_row, lanes, mask, channel_ok, W, ADD: tl.constexpr):
        """Stores a float32 [BLOCK_D, T, V] row tile of y at ``y_row`` + ``lanes`` under ``mask`` (``channel_ok``
        [BLOCK_D, 1, 1] and lanes < W), adding what is there when ADD.
        More than four lanes per thread are stored as two halves, each a 16-byte store in the tile's own layout:
        stored whole, the tile would be re-laid out across the threads for stores of four."""
        shape: tl.constexpr = y.shape
        if shape[2] > 4:
            half: tl.constexpr = shape[2] // 2
            first, second = tl.split(tl.permute(tl.reshape(y, [shape[0], shape[1], 2, half]), (0, 1, 3, 2)))
            first_lanes = tl.arange(0, shape[1])[None, :, None] * shape[2] + tl.arange(0, half)[None, None, :]
            first_mask = channel_ok & (first_lanes < W)
            if ADD:
                first += tl.load(y_row + first_lanes, mask=first_mask, other=0.0)
                second += tl.load(y_row + half + first_lanes, mask=first_mask, other=0.0)
            tl.store(y_row + first_lanes, first, mask=first_mask)
            tl.store(y_row + half + first_lanes, second, mask=first_mask)
        else:
            if ADD:
                y += tl.load(y_row + lanes, mask=mask, other=0.0)
            tl.store(y_row + lanes, y, mask=mask)

    @triton.jit(do_not_specialize=['H'])
    def _vector_rows_fwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, y_ptr, last_ptr, entering_ptr,
            D, H, WV, MAX_LINES, sdt_b, sdt_k, sdt_d,
            KINDS: tl.constexpr, NUM_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
            SOFTPLUS: tl.constexpr, WALKS: tl.constexpr, T: tl.constexpr, V: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """The row walk's forward at d_state 1 on a shared NCHW input and a merged float32 output, V lanes per thread.
        The map is (H, WV * V); delta's batch, route and channel strides are given in units of H * W. ``WALKS`` (see
        ``_walk_groups``): bit 0 set if a route is walked top to bottom (kinds 0 and 1), bit 1 if one bottom to top
        (kinds 2 and 3); an output walk without routes is skipped."""
        W, P, b, d, dd, lanes, mask, map_offsets = _vector_program(D, H, WV, T, V, BLOCK_D)
        u_lanes = u_ptr + map_offsets
        y_rows = y_ptr + (b * D + dd) * P
        K0: tl.constexpr = KINDS & 3
        K1: tl.constexpr = (KINDS >> 2) & 3
        K2: tl.constexpr = (KINDS >> 4) & 3
        K3: tl.constexpr = (KINDS >> 6) & 3
        A0, bias0, skip0, A1, bias1, skip1, A2, bias2, skip2, A3, bias3, skip3 = _vector_parameters(
            A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES, HAS_BIAS, HAS_D)
        skip = skip0 + skip1 + skip2 + skip3  # every route reads the same u
        ones = tl.full([BLOCK_D, T, V], 1.0, tl.float32)
        zeros = tl.zeros([BLOCK_D, T, V], tl.float32)
        # Every walk loads the next row's operands before working on the current one, so that its loads are in flight
        # while the row is computed: the walks are bound by load latency (Nsight Compute, H200: 8.5 of 13 cycles
        # between a warp's instructions stalled on a load), and the compiler cannot move a load above the previous
        # row's stores, which it cannot prove to go elsewhere.
        # Walk 1: column totals of the column routes.
        a0, b0, a1, b1, a2, b2, a3, b3 = ones, zeros, ones, zeros, ones, zeros, ones, zeros
        if (KINDS & 0x55) != 0:
            u_next, dt0_next, B0_next, unused_C, dt1_next, B1_next, unused_C, dt2_next, B2_next, unused_C, dt3_next, \
                B3_next, unused_C = _vector_row_loads(0, u_lanes, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P,
                                                      NUM_ROUTES, sdt_b, sdt_k, sdt_d, K0 % 2 == 1, K1 % 2 == 1,
                                                      K2 % 2 == 1, K3 % 2 == 1, False)
            for r in range(0, H):
                u = u_next.to(tl.float32)
                dt0, B0, dt1, B1, dt2, B2, dt3, B3 = dt0_next, B0_next, dt1_next, B1_next, dt2_next, B2_next, \
                    dt3_next, B3_next
                unused_r, ahead = _walk_rows(r, H, True)
                ahead *= W
                u_next, dt0_next, B0_next, unused_C, dt1_next, B1_next, unused_C, dt2_next, B2_next, unused_C, \
                    dt3_next, B3_next, unused_C = _vector_row_loads(
                        ahead, u_lanes, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k,
                        sdt_d, K0 % 2 == 1, K1 % 2 == 1, K2 % 2 == 1, K3 % 2 == 1, False)
                a0, b0 = _vector_column_totals(a0, b0, 0, u, dt0, B0, A0, bias0, mask, NUM_ROUTES, HAS_BIAS, SOFTPLUS,
                                               K0)
                a1, b1 = _vector_column_totals(a1, b1, 1, u, dt1, B1, A1, bias1, mask, NUM_ROUTES, HAS_BIAS, SOFTPLUS,
                                               K1)
                a2, b2 = _vector_column_totals(a2, b2, 2, u, dt2, B2, A2, bias2, mask, NUM_ROUTES, HAS_BIAS, SOFTPLUS,
                                               K2)
                a3, b3 = _vector_column_totals(a3, b3, 3, u, dt3, B3, A3, bias3, mask, NUM_ROUTES, HAS_BIAS, SOFTPLUS,
                                               K3)
        s0 = _vector_column_start(a0, b0, 0, entering_ptr, b, dd, lanes, D, W, MAX_LINES, NUM_ROUTES, K0)
        s1 = _vector_column_start(a1, b1, 1, entering_ptr, b, dd, lanes, D, W, MAX_LINES, NUM_ROUTES, K1)
        s2 = _vector_column_start(a2, b2, 2, entering_ptr, b, dd, lanes, D, W, MAX_LINES, NUM_ROUTES, K2)
        s3 = _vector_column_start(a3, b3, 3, entering_ptr, b, dd, lanes, D, W, MAX_LINES, NUM_ROUTES, K3)
        if K0 % 2 == 0:  # a row route carries one state per channel
            s0 = tl.zeros([BLOCK_D, 1, 1], tl.float32)
        if K1 % 2 == 0:
            s1 = tl.zeros([BLOCK_D, 1, 1], tl.float32)
        if K2 % 2 == 0:
            s2 = tl.zeros([BLOCK_D, 1, 1], tl.float32)
        if K3 % 2 == 0:
            s3 = tl.zeros([BLOCK_D, 1, 1], tl.float32)
        # Walks 2 and 3: forward routes top to bottom, reversed routes bottom to top; each thread adds walk 3's
        # outputs to the lanes it stored in walk 2. The first output walk that runs adds the skip term.
        FIRST_WALK: tl.constexpr = 1 - (WALKS & 1)
        for walk in tl.static_range(FIRST_WALK, 1 + (WALKS >> 1)):
            u_next, dt0_next, B0_next, C0_next, dt1_next, B1_next, C1_next, dt2_next, B2_next, C2_next, dt3_next, \
                B3_next, C3_next = _vector_row_loads((H - 1) * walk * W, u_lanes, delta_ptr, B_ptr, C_ptr, b, dd,
                                                     lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k, sdt_d,
                                                     (K0 >> 1) == walk, (K1 >> 1) == walk, (K2 >> 1) == walk,
                                                     (K3 >> 1) == walk, True)
            for i in range(0, H):
                r, ahead = _walk_rows(i, H, walk == 0)
                ahead *= W
                u = u_next.to(tl.float32)
                dt0, B0, C0, dt1, B1, C1 = dt0_next, B0_next, C0_next, dt1_next, B1_next, C1_next
                dt2, B2, C2, dt3, B3, C3 = dt2_next, B2_next, C2_next, dt3_next, B3_next, C3_next
                u_next, dt0_next, B0_next, C0_next, dt1_next, B1_next, C1_next, dt2_next, B2_next, C2_next, \
                    dt3_next, B3_next, C3_next = _vector_row_loads(
                        ahead, u_lanes, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P, NUM_ROUTES, sdt_b, sdt_k,
                        sdt_d, (K0 >> 1) == walk, (K1 >> 1) == walk, (K2 >> 1) == walk, (K3 >> 1) == walk, True)
                if walk == FIRST_WALK:
                    y = skip * u
                else:
                    y = zeros
                s0, y = _vector_route_row(s0, y, walk, r, 0, u, dt0, B0, C0, A0, bias0, entering_ptr, b, dd, mask, D,
                                          MAX_LINES, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K0)
                s1, y = _vector_route_row(s1, y, walk, r, 1, u, dt1, B1, C1, A1, bias1, entering_ptr, b, dd, mask, D,
                                          MAX_LINES, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K1)
                s2, y = _vector_route_row(s2, y, walk, r, 2, u, dt2, B2, C2, A2, bias2, entering_ptr, b, dd, mask, D,
                                          MAX_LINES, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K2)
                s3, y = _vector_route_row(s3, y, walk, r, 3, u, dt3, B3, C3, A3, bias3, entering_ptr, b, dd, mask, D,
                                          MAX_LINES, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K3)
                _vector_row_out(y, y_rows + r * W, lanes, mask, dd < D, W, walk != FIRST_WALK)
        _vector_store_last(s0, 0, last_ptr, b, d, lanes, D, W, NUM_ROUTES, K0)
        _vector_store_last(s1, 1, last_ptr, b, d, lanes, D, W, NUM_ROUTES, K1)
        _vector_store_last(s2, 2, last_ptr, b, d, lanes, D, W, NUM_ROUTES, K2)
        _vector_store_last(s3, 3, last_ptr, b, d, lanes, D, W, NUM_ROUTES, K3)

    # -----------------------------------------------------------------------------------------------------------------
    # Backward at d_state 1, vectorised: the row-walk backward's walks on the forward's [BLOCK_D, T, V] tiles.
    #
    # The adjoint runs against each route. It is carried as e_l = decay_l * dh_l, the part of dh_l that reaches the
    # state before step l: e_l = decay_l * (g_l + e_succ(l)) is a recurrence over the same positions as the route's
    # own (no successor's step size to read and recompute), and dh_l = g_l + e_succ(l) is its exclusive value, which
    # the keeping-exclusive scan delivers with the inclusive one. Column routes rebuild their states along the route
    # into a per-program scratch slab and total each column's adjoint map, then run the adjoint one column per lane.
    # The adjoints of all routes crossing the rows in one direction share one walk (VMamba's cross: routes 0 and 1
    # bottom to top, then 2 and 3 top to bottom), which reads u and dy and stores du once per row for both: 8 % less
    # time than one walk per route at 56x56 and 28x28 on the H200 (fifteenth session); the forward's two walks,
    # merged the same way, took 27 % more (96 instead of 72 registers).
    # -----------------------------------------------------------------------------------------------------------------
    @triton.jit
    def _vector_row_adjoint(decay, g, entering, REVERSE: tl.constexpr):
        """dh of a row route on a [BLOCK_D, T, V] row, its adjoint walking the lanes backwards (REVERSE) or forwards,
        entered with ``entering`` [BLOCK_D, 1, 1] (the e of the step after the row's last on the adjoint's walk);
        and the e leaving the row (at its last step on the adjoint's walk)."""
        drive = decay * g
        ones = tl.full(decay.shape, 1.0, tl.float32)
        zeros = tl.zeros(decay.shape, tl.float32)
        if REVERSE:
            all_a, all_b, before_a, before_b = tl.associative_scan(
                (tl.flip(decay, 2), tl.flip(drive, 2), ones, zeros), 2, _combine_keeping_exclusive)
            all_a, all_b = tl.flip(all_a, 2), tl.flip(all_b, 2)
            before_a, before_b = tl.flip(before_a, 2), tl.flip(before_b, 2)
        else:
            all_a, all_b, before_a, before_b = tl.associative_scan((decay, drive, ones, zeros), 2,
                                                                   _combine_keeping_exclusive)
        thread_e, leaving = _vector_across_threads(all_a, all_b, entering, REVERSE)
        return g + before_b + before_a * thread_e[:, :, None], leaving

    @triton.jit
    def _vector_row_gradients(dh, h, row, k: tl.constexpr, u, dt_raw, dt, drive, B_row, dy, A_log2, b, dd, lanes,
                              mask, dB_ptr, dC_ptr, ddelta_ptr, W, P, NUM_ROUTES: tl.constexpr, sdt_b, sdt_k, sdt_d,
                              SOFTPLUS: tl.constexpr):
        """Stores route k's ddelta and adds its dB and dC on one row, given the row's states h and adjoint dh;
        returns the row's du term (without D's) and its dA and ddelta_bias terms summed over each thread's lanes."""
        dh = tl.where(mask, dh, 0.0)
        dh_decay = dh * (h - drive)  # decay_l * h_{l-1} == h_l - drive_l: no division
        # B and C are shared by the channels: one sum over the program's channels, one atomic per position.
        bc_offsets = (b * NUM_ROUTES + k) * P + row + lanes
        tl.atomic_add(dC_ptr + bc_offsets, tl.sum(dy * h, axis=0, keep_dims=True), mask=lanes < W, sem='relaxed')
        tl.atomic_add(dB_ptr + bc_offsets, tl.sum(dh * (dt * u), axis=0, keep_dims=True), mask=lanes < W,
                      sem='relaxed')
        ddt = dh * u * B_row + dh_decay * (A_log2 * 0.6931471805599453)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask, ddt, 0.0)
        tl.store(ddelta_ptr + (b * sdt_b + k * sdt_k + dd * sdt_d) * P + row + lanes, ddt, mask=mask)
        # Summed inside each thread (no shuffles) so that the accumulators take one register per thread, not V.
        return dh * dt * B_row, tl.sum(dh_decay * dt, axis=2), tl.sum(ddt, axis=2)

    @triton.jit
    def _vector_adjoint_start(k: tl.constexpr, walk: tl.constexpr, u_ptr, delta_ptr, B_ptr, C_ptr, dy_ptr, A_log2,
                              bias, entering_ptr, scratch, b, dd, lanes, mask, map_offsets, D, H, W, P, MAX_LINES,
                              sdt_b, sdt_k, sdt_d, NUM_ROUTES: tl.constexpr, HAS_BIAS: tl.constexpr,
                              SOFTPLUS: tl.constexpr, KIND: tl.constexpr):
        """The adjoint e entering route k's first row on adjoint walk ``walk``, if the route is that walk's: zeros for
        a row route, [BLOCK_D, 1, 1] (its rows chain through one state). A column route first walks along itself,
        rebuilding its states into its ``scratch`` rows and totalling each column's adjoint map
        e_first = total_drive + total_decay * e_entering in route order; each column's e then comes from an
        exclusive scan of those maps against the route, [BLOCK_D, T, V]. Like the forward's walks, it loads each row
        a row ahead."""
        e = tl.zeros([dd.shape[0], 1, 1], tl.float32)
        if k < NUM_ROUTES:
            if KIND % 2 == 1 and (KIND >> 1) == walk:
                tile: tl.constexpr = [dd.shape[0], lanes.shape[1], lanes.shape[2]]
                h = tl.load(entering_ptr + ((b * NUM_ROUTES + k) * D + dd) * MAX_LINES + lanes, mask=mask, other=0.0)
                total_decay = tl.full(tile, 1.0, tl.float32)
                total_drive = tl.zeros(tile, tl.float32)
                first = (H - 1) * (KIND == 3) * W
                u_next = tl.load(u_ptr + map_offsets + first, mask=mask, other=0.0)
                dy_next = tl.load(dy_ptr + map_offsets + first, mask=mask, other=0.0)
                dt_next, B_next, C_next = _vector_loads(first, k, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P,
                                                        NUM_ROUTES, sdt_b, sdt_k, sdt_d, True, True)
                for i in range(0, H):
                    r, ahead = _walk_rows(i, H, KIND == 1)
                    ahead *= W
                    u = u_next.to(tl.float32)
                    dy = dy_next
                    dt_stored, B_stored, C_stored = dt_next, B_next, C_next
                    u_next = tl.load(u_ptr + map_offsets + ahead, mask=mask, other=0.0)
                    dy_next = tl.load(dy_ptr + map_offsets + ahead, mask=mask, other=0.0)
                    dt_next, B_next, C_next = _vector_loads(ahead, k, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P,
                                                            NUM_ROUTES, sdt_b, sdt_k, sdt_d, True, True)
                    decay, drive, unused_raw, unused_dt, unused_B = _vector_step_values(
                        dt_stored, B_stored, u, A_log2, bias, mask, HAS_BIAS, SOFTPLUS, True)
                    h = decay * h + drive
                    tl.store(scratch + r * (tile[0] * tile[1] * tile[2]), h)
                    total_decay *= decay
                    total_drive += total_decay * (dy * C_stored.to(tl.float32))
                # The adjoint enters a column from the next column on the route: a scan against the route's order.
                e = _vector_column_entering(total_decay, total_drive, KIND == 1)
        return e

    @triton.jit
    def _vector_adjoint_loads(r, k: tl.constexpr, walk: tl.constexpr, delta_ptr, B_ptr, C_ptr, entering_ptr, scratch,
                              b, dd, lanes, mask, D, P, W, MAX_LINES, NUM_ROUTES: tl.constexpr, sdt_b, sdt_k, sdt_d,
                              KIND: tl.constexpr):
        """What route k's adjoint reads on row r, loaded a row ahead: delta, B and C as stored, and the kept state (a
        column route's rebuilt states of the row, [BLOCK_D, T, V]; the state entering a row route's row,
        [BLOCK_D, 1, 1]); zeros where the walk is not the route's."""
        ACTIVE: tl.constexpr = (KIND >> 1) == walk
        dt_stored, B_stored, C_stored = _vector_loads(r * W, k, delta_ptr, B_ptr, C_ptr, b, dd, lanes, mask, P,
                                                      NUM_ROUTES, sdt_b, sdt_k, sdt_d, ACTIVE, True)
        kept = tl.zeros([dd.shape[0], 1, 1], tl.float32)
        if k < NUM_ROUTES:
            if ACTIVE:
                if KIND % 2 == 1:
                    kept = tl.load(scratch + r * (dd.shape[0] * lanes.shape[1] * lanes.shape[2]))
                else:
                    kept = tl.load(entering_ptr + ((b * NUM_ROUTES + k) * D + dd) * MAX_LINES + r, mask=dd < D,
                                   other=0.0)
        return dt_stored, B_stored, C_stored, kept

    @triton.jit
    def _vector_walk_loads(r, walk: tl.constexpr, u_ptr, dy_ptr, du_first_ptr, delta_ptr, B_ptr, C_ptr, entering_ptr,
                           scratch0, scratch1, scratch2, scratch3, map_offsets, b, dd, lanes, mask, D, P, W, MAX_LINES,
                           NUM_ROUTES: tl.constexpr, sdt_b, sdt_k, sdt_d, WALKS: tl.constexpr, K0: tl.constexpr,
                           K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr):
        """Everything adjoint walk ``walk`` reads on row r, loaded a row ahead: u and dy as stored, du of the first
        walk (float32, at ``du_first_ptr``) when this is the second (else zeros), and each route's
        ``_vector_adjoint_loads``."""
        u = tl.load(u_ptr + map_offsets + r * W, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + map_offsets + r * W, mask=mask, other=0.0)
        du = tl.zeros(mask.shape, tl.float32)
        if walk == 1 and (WALKS & 1):  # du of the first walk, whose lanes this thread stored
            du = tl.load(du_first_ptr + map_offsets + r * W, mask=mask, other=0.0)
        dt0, B0, C0, kept0 = _vector_adjoint_loads(r, 0, walk, delta_ptr, B_ptr, C_ptr, entering_ptr, scratch0, b, dd,
                                                   lanes, mask, D, P, W, MAX_LINES, NUM_ROUTES, sdt_b, sdt_k, sdt_d, K0)
        dt1, B1, C1, kept1 = _vector_adjoint_loads(r, 1, walk, delta_ptr, B_ptr, C_ptr, entering_ptr, scratch1, b, dd,
                                                   lanes, mask, D, P, W, MAX_LINES, NUM_ROUTES, sdt_b, sdt_k, sdt_d, K1)
        dt2, B2, C2, kept2 = _vector_adjoint_loads(r, 2, walk, delta_ptr, B_ptr, C_ptr, entering_ptr, scratch2, b, dd,
                                                   lanes, mask, D, P, W, MAX_LINES, NUM_ROUTES, sdt_b, sdt_k, sdt_d, K2)
        dt3, B3, C3, kept3 = _vector_adjoint_loads(r, 3, walk, delta_ptr, B_ptr, C_ptr, entering_ptr, scratch3, b, dd,
                                                   lanes, mask, D, P, W, MAX_LINES, NUM_ROUTES, sdt_b, sdt_k, sdt_d, K3)
        return u, dy, du, dt0, B0, C0, kept0, dt1, B1, C1, kept1, dt2, B2, C2, kept2, dt3, B3, C3, kept3

    @triton.jit
    def _vector_adjoint_row(e, dA, dbias, du, walk: tl.constexpr, row, k: tl.constexpr, u, dy, dt_stored, B_stored,
                            C_stored, kept, A_log2, bias, dB_ptr, dC_ptr, ddelta_ptr, b, dd, lanes, mask, W, P,
                            NUM_ROUTES: tl.constexpr, sdt_b, sdt_k, sdt_d, HAS_BIAS: tl.constexpr,
                            SOFTPLUS: tl.constexpr, KIND: tl.constexpr):
        """Route k on the row at flat position ``row`` of adjoint walk ``walk`` (``_vector_adjoint_loads``' values)
        when the walk is the route's: its adjoint e carried to the next row, its dA and ddelta_bias accumulators, and
        its du term added to du."""
        if k < NUM_ROUTES:
            if (KIND >> 1) == walk:
                decay, drive, dt_raw, dt, B_row = _vector_step_values(dt_stored, B_stored, u, A_log2, bias, mask,
                                                                      HAS_BIAS, SOFTPLUS, True)
                g = dy * C_stored.to(tl.float32)
                if KIND % 2 == 1:
                    h = kept
                    dh = g + e
                    e = decay * dh
                else:
                    h, unused_leaving = _vector_row_scan(decay, drive, kept, KIND == 2)
                    dh, e = _vector_row_adjoint(decay, g, e, KIND == 0)
                du_row, dA_row, dbias_row = _vector_row_gradients(
                    dh, h, row, k, u, dt_raw, dt, drive, B_row, dy, A_log2, b, dd, lanes, mask, dB_ptr, dC_ptr,
                    ddelta_ptr, W, P, NUM_ROUTES, sdt_b, sdt_k, sdt_d, SOFTPLUS)
                du += du_row
                dA += dA_row
                dbias += dbias_row
        return e, dA, dbias, du

    @triton.jit
    def _vector_flush_route(dA, dD, dbias, walk: tl.constexpr, k: tl.constexpr, d, D, dA_ptr, dDskip_ptr, dbias_ptr,
                            NUM_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                            KIND: tl.constexpr):
        """Adds route k's parameter gradients, summed over the program's rows and lanes, after its adjoint walk."""
        if k < NUM_ROUTES:
            if (KIND >> 1) == walk:
                kd = k * D + d
                tl.atomic_add(dA_ptr + kd, tl.sum(dA, axis=1), mask=d < D, sem='relaxed')
                if HAS_D:
                    tl.atomic_add(dDskip_ptr + kd, tl.sum(dD, axis=1), mask=d < D, sem='relaxed')
                if HAS_BIAS:
                    tl.atomic_add(dbias_ptr + kd, tl.sum(dbias, axis=1), mask=d < D, sem='relaxed')

    @triton.jit(do_not_specialize=['H'])
    def _vector_rows_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, entering_ptr, dy_ptr, scratch_ptr, du_ptr,
            ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dDskip_ptr, dbias_ptr, du_first_ptr, D, H, WV, MAX_LINES, sdt_b, sdt_k,
            sdt_d,
            KINDS: tl.constexpr, WALKS: tl.constexpr, SLABS: tl.constexpr, NUM_SLABS: tl.constexpr,
            NUM_ROUTES: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
            T: tl.constexpr, V: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """The row-walk backward at d_state 1 for ``_vector_rows_fwd_kernel``'s calls (float32 NCHW dy, no upstream
        gradient of the states): gradients of every route, from the states the forward kept.

        The routes whose adjoints run bottom to top (kinds 0 and 1) share one walk over the rows, and those running
        top to bottom (kinds 2 and 3) another: each walk loads u and dy once per row for its routes, and du is stored
        once and then added to once, rather than once per route: with both walks, the first stores its float32 sum at
        ``du_first_ptr`` and the second stores the total at ``du_ptr``, in du's dtype (rounded once); ``du_first_ptr``
        may be ``du_ptr`` when du is float32. ``WALKS``: bit 0 set if some route's adjoint runs
        bottom to top, bit 1 if one runs top to bottom. A column route first walks along itself into scratch slab
        ``(SLABS >> 2k) & 3`` of the program's NUM_SLABS."""
        W, P, b, d, dd, lanes, mask, map_offsets = _vector_program(D, H, WV, T, V, BLOCK_D)
        K0: tl.constexpr = KINDS & 3
        K1: tl.constexpr = (KINDS >> 2) & 3
        K2: tl.constexpr = (KINDS >> 4) & 3
        K3: tl.constexpr = (KINDS >> 6) & 3
        A0, bias0, skip0, A1, bias1, skip1, A2, bias2, skip2, A3, bias3, skip3 = _vector_parameters(
            A_ptr, bias_ptr, Dskip_ptr, d, D, NUM_ROUTES, HAS_BIAS, HAS_D)
        # This program's scratch slabs for column routes' rebuilt states, each [H, BLOCK_D, T * V].
        slab: tl.constexpr = BLOCK_D * T * V
        scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * NUM_SLABS * H * slab \
            + (tl.arange(0, BLOCK_D)[:, None, None] * (T * V) + lanes)
        scratch0 = scratch + (SLABS & 3) * H * slab
        scratch1 = scratch + ((SLABS >> 2) & 3) * H * slab
        scratch2 = scratch + ((SLABS >> 4) & 3) * H * slab
        scratch3 = scratch + ((SLABS >> 6) & 3) * H * slab
        for walk in tl.static_range(2):
            if (WALKS >> walk) & 1:
                e0 = _vector_adjoint_start(0, walk, u_ptr, delta_ptr, B_ptr, C_ptr, dy_ptr, A0, bias0, entering_ptr,
                                           scratch0, b, dd, lanes, mask, map_offsets, D, H, W, P, MAX_LINES, sdt_b,
                                           sdt_k, sdt_d, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K0)
                e1 = _vector_adjoint_start(1, walk, u_ptr, delta_ptr, B_ptr, C_ptr, dy_ptr, A1, bias1, entering_ptr,
                                           scratch1, b, dd, lanes, mask, map_offsets, D, H, W, P, MAX_LINES, sdt_b,
                                           sdt_k, sdt_d, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K1)
                e2 = _vector_adjoint_start(2, walk, u_ptr, delta_ptr, B_ptr, C_ptr, dy_ptr, A2, bias2, entering_ptr,
                                           scratch2, b, dd, lanes, mask, map_offsets, D, H, W, P, MAX_LINES, sdt_b,
                                           sdt_k, sdt_d, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K2)
                e3 = _vector_adjoint_start(3, walk, u_ptr, delta_ptr, B_ptr, C_ptr, dy_ptr, A3, bias3, entering_ptr,
                                           scratch3, b, dd, lanes, mask, map_offsets, D, H, W, P, MAX_LINES, sdt_b,
                                           sdt_k, sdt_d, NUM_ROUTES, HAS_BIAS, SOFTPLUS, K3)
                accumulators = tl.zeros([BLOCK_D, T], tl.float32)
                dA0, dA1, dA2, dA3 = accumulators, accumulators, accumulators, accumulators
                db0, db1, db2, db3 = accumulators, accumulators, accumulators, accumulators
                dD = accumulators  # u * dy: the same for every route, which all read one u
                skip = tl.zeros([BLOCK_D, 1, 1], tl.float32)
                if (K0 >> 1) == walk:
                    skip += skip0
                if NUM_ROUTES > 1 and (K1 >> 1) == walk:
                    skip += skip1
                if NUM_ROUTES > 2 and (K2 >> 1) == walk:
                    skip += skip2
                if NUM_ROUTES > 3 and (K3 >> 1) == walk:
                    skip += skip3
                # Operands of the walk's first row; every row then loads the next one's before its own work.
                u_next, dy_next, du_next, dt0_next, B0_next, C0_next, kept0_next, dt1_next, B1_next, C1_next, \
                    kept1_next, dt2_next, B2_next, C2_next, kept2_next, dt3_next, B3_next, C3_next, kept3_next = \
                    _vector_walk_loads((H - 1) * (1 - walk), walk, u_ptr, dy_ptr, du_first_ptr, delta_ptr, B_ptr, C_ptr,
                                       entering_ptr, scratch0, scratch1, scratch2, scratch3, map_offsets, b, dd, lanes,
                                       mask, D, P, W, MAX_LINES, NUM_ROUTES, sdt_b, sdt_k, sdt_d, WALKS, K0, K1, K2,
                                       K3)
                for i in range(0, H):
                    r, r_next = _walk_rows(i, H, walk == 1)
                    row = r * W
                    u = u_next.to(tl.float32)
                    dy = dy_next
                    du = du_next
                    dt0, B0, C0, kept0 = dt0_next, B0_next, C0_next, kept0_next
                    dt1, B1, C1, kept1 = dt1_next, B1_next, C1_next, kept1_next
                    dt2, B2, C2, kept2 = dt2_next, B2_next, C2_next, kept2_next
                    dt3, B3, C3, kept3 = dt3_next, B3_next, C3_next, kept3_next
                    u_next, dy_next, du_next, dt0_next, B0_next, C0_next, kept0_next, dt1_next, B1_next, C1_next, \
                        kept1_next, dt2_next, B2_next, C2_next, kept2_next, dt3_next, B3_next, C3_next, kept3_next = \
                        _vector_walk_loads(r_next, walk, u_ptr, dy_ptr, du_first_ptr, delta_ptr, B_ptr, C_ptr,
                                           entering_ptr, scratch0, scratch1, scratch2, scratch3, map_offsets, b, dd,
                                           lanes, mask, D, P, W, MAX_LINES, NUM_ROUTES, sdt_b, sdt_k, sdt_d, WALKS, K0,
                                           K1, K2, K3)
                    du += skip * dy
                    e0, dA0, db0, du = _vector_adjoint_row(
                        e0, dA0, db0, du, walk, row, 0, u, dy, dt0, B0, C0, kept0, A0, bias0, dB_ptr, dC_ptr,
                        ddelta_ptr, b, dd, lanes, mask, W, P, NUM_ROUTES, sdt_b, sdt_k, sdt_d, HAS_BIAS, SOFTPLUS, K0)
                    e1, dA1, db1, du = _vector_adjoint_row(
                        e1, dA1, db1, du, walk, row, 1, u, dy, dt1, B1, C1, kept1, A1, bias1, dB_ptr, dC_ptr,
                        ddelta_ptr, b, dd, lanes, mask, W, P, NUM_ROUTES, sdt_b, sdt_k, sdt_d, HAS_BIAS, SOFTPLUS, K1)
                    e2, dA2, db2, du = _vector_adjoint_row(
                        e2, dA2, db2, du, walk, row, 2, u, dy, dt2, B2, C2, kept2, A2, bias2, dB_ptr, dC_ptr,
                        ddelta_ptr, b, dd, lanes, mask, W, P, NUM_ROUTES, sdt_b, sdt_k, sdt_d, HAS_BIAS, SOFTPLUS, K2)
                    e3, dA3, db3, du = _vector_adjoint_row(
                        e3, dA3, db3, du, walk, row, 3, u, dy, dt3, B3, C3, kept3, A3, bias3, dB_ptr, dC_ptr,
                        ddelta_ptr, b, dd, lanes, mask, W, P, NUM_ROUTES, sdt_b, sdt_k, sdt_d, HAS_BIAS, SOFTPLUS, K3)
                    dD += tl.sum(u * dy, axis=2)
                    if walk == 0 and WALKS == 3:
                        tl.store(du_first_ptr + map_offsets + row, du, mask=mask)
                    else:
                        tl.store(du_ptr + map_offsets + row, du, mask=mask)
                _vector_flush_route(dA0, dD, db0, walk, 0, d, D, dA_ptr, dDskip_ptr, dbias_ptr, NUM_ROUTES, HAS_D,
                                    HAS_BIAS, K0)
                _vector_flush_route(dA1, dD, db1, walk, 1, d, D, dA_ptr, dDskip_ptr, dbias_ptr, NUM_ROUTES, HAS_D,
                                    HAS_BIAS, K1)
                _vector_flush_route(dA2, dD, db2, walk, 2, d, D, dA_ptr, dDskip_ptr, dbias_ptr, NUM_ROUTES, HAS_D,
                                    HAS_BIAS, K2)
                _vector_flush_route(dA3, dD, db3, walk, 3, d, D, dA_ptr, dDskip_ptr, dbias_ptr, NUM_ROUTES, HAS_D,
                                    HAS_BIAS, K3)

    # -----------------------------------------------------------------------------------------------------------------
    # Backward for large maps, in the row walk's form. Each route is walked against its own direction: row routes in
    # one walk (the state entering each row, kept by the forward, rebuilds the row's states with a lane scan; the
    # adjoint runs as the mirrored lane scan with its state carried from row to row); column routes in two walks, the
    # first along the route rebuilding the states into a per-program scratch buffer and totalling each column's
    # adjoint map, the second against the route running the adjoint one lane per column from the state an exclusive
    # scan of those totals hands each column. The adjoint of step l uses the decay of the step after it (its
    # successor on the route), read from the successor's position.
    # -----------------------------------------------------------------------------------------------------------------
    @triton.jit
    def _row_adjoint_inputs(r, k, u_ptr, delta_ptr, B_ptr, C_ptr, A, bias, dy_ptr, dstates_ptr, dlast_ptr,
                            b, dd, nn, lanes, D, P, H, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p,
                            stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d,
                            stride_y_p, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_BIAS: tl.constexpr,
                            SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, HAS_DSTATES: tl.constexpr,
                            HAS_DLAST: tl.constexpr, KIND: tl.constexpr):
        """Row r of route k for the backward: the forward's inputs, dy and the adjoint's drive g (its decay is
        ``_successor_decay``'s)."""
        flat, on_map, mask, offsets, dt_offsets, bc_offsets, u, route, dt_raw, dt, B_row = _row_inputs(
            r, k, u_ptr, delta_ptr, B_ptr, A, bias, b, dd, nn, lanes, D, P, W, N, stride_u_b, stride_u_k, stride_u_d,
            stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, NUM_ROUTES,
            U_SHARED, HAS_BIAS, SOFTPLUS)
        C_row = tl.load(C_ptr + bc_offsets, mask=(nn < N) & on_map, other=0.0).to(tl.float32)
        if ACCUMULATE:
            dy_row = dy_ptr + b * stride_y_b
        else:
            dy_row = dy_ptr + b * stride_y_b + k * stride_y_k
        dy = tl.load(dy_row + dd * stride_y_d + flat * stride_y_p, mask=mask, other=0.0).to(tl.float32)
        g = dy * C_row
        if HAS_DSTATES:
            g += tl.load((dstates_ptr + route * D * N * P) + (dd * N + nn) * P + flat, mask=mask & (nn < N),
                         other=0.0)
        if HAS_DLAST:
            if KIND >= 2:
                route_end = flat == 0
            else:
                route_end = flat == P - 1
            dlast = tl.load(dlast_ptr + (route * D + dd) * N + nn, mask=(dd < D) & (nn < N), other=0.0)
            g += tl.where(route_end, dlast, 0.0)
        g = tl.where(mask & (nn < N), g, 0.0)
        return flat, on_map, mask, offsets, dt_offsets, bc_offsets, u, dt_raw, dt, B_row, dy, g

    @triton.jit
    def _successor_decay(r, k, delta_ptr, A, bias, b, dd, lanes, D, P, H, W, stride_dt_b, stride_dt_k, stride_dt_d,
                         stride_dt_p, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, KIND: tl.constexpr):
        """The decay of the step after each step of row r on route k (KIND), which the adjoint of that step is
        multiplied by: read at the successor's position, 1 on padding, 0 past the route's end."""
        flat = r * W + lanes
        mask = (dd < D) & (lanes < W) & (flat < P)
        successor, has_successor = _raster_successor(r + 0 * lanes, lanes, flat, H, W, P, KIND)
        unused_raw, dt_next = _step_size((delta_ptr + b * stride_dt_b + k * stride_dt_k) + dd * stride_dt_d
                                         + successor * stride_dt_p, bias,
                                         mask & has_successor, HAS_BIAS, SOFTPLUS)
        return tl.where(mask, tl.where(has_successor, _exp(dt_next * A), 0.0), 1.0)

    @triton.jit
    def _row_gradients(dh, h, dy, u, dt, dt_raw, A, B_row, bc_offsets, on_map, mask, nn, N, dB_ptr, dC_ptr,
                       SOFTPLUS: tl.constexpr):
        """Gradients of one row given its states h and adjoint dh: dB and dC are added here; returns du (without
        the D term), ddelta, and the row's dA, dD and ddelta_bias contributions."""
        drive = (dt * u) * B_row
        dh = tl.where(mask & (nn < N), dh, 0.0)
        # decay_l * h_{l-1} == h_l - drive_l, so the decay gradient needs no division.
        dh_decay = dh * (h - drive)
        tl.atomic_add(dC_ptr + bc_offsets, tl.sum(tl.where(mask, dy * h, 0.0), axis=0, keep_dims=True),
                      mask=(nn < N) & on_map, sem='relaxed')
        tl.atomic_add(dB_ptr + bc_offsets, tl.sum(dh * (dt * u), axis=0, keep_dims=True), mask=(nn < N) & on_map,
                      sem='relaxed')
        du = tl.sum(dh * dt * B_row, axis=1, keep_dims=True)
        ddt = tl.sum(dh * u * B_row + dh_decay * A, axis=1, keep_dims=True)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask, ddt, 0.0)
        return du, ddt, tl.sum(dh_decay * dt, axis=2), tl.sum(tl.sum(u * dy, axis=2), axis=1), \
            tl.sum(tl.sum(ddt, axis=2), axis=1)

    @triton.jit
    def _row_walk_route_bwd(
            k, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, entering_ptr, dy_ptr, dstates_ptr,
            dlast_ptr, scratch_ptr, du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dDskip_ptr, dbias_ptr,
            b, d, dd, nn, lanes, D, P, H, W, N, MAX_LINES, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b,
            stride_dt_k, stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
            NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
            SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, HAS_DSTATES: tl.constexpr, HAS_DLAST: tl.constexpr,
            KIND: tl.constexpr, FIRST_ROUTE: tl.constexpr, LANES: tl.constexpr, NP: tl.constexpr,
            BLOCK_D: tl.constexpr):
        """Gradients of route k (of KIND); du is stored by the first route and accumulated by the others."""
        route = b * NUM_ROUTES + k
        A, bias, skip = _route_parameters(k, A_ptr, bias_ptr, Dskip_ptr, d, dd, nn, D, N, HAS_BIAS, HAS_D)
        entering_rows = entering_ptr + ((route * D + dd) * N + nn) * MAX_LINES
        if U_SHARED:
            du_base = du_ptr + b * stride_u_b
        else:
            du_base = du_ptr + b * stride_u_b + k * stride_u_k
        dA = tl.zeros([BLOCK_D, NP], tl.float32)
        dD = tl.zeros([BLOCK_D], tl.float32)
        dbias = tl.zeros([BLOCK_D], tl.float32)
        # Scratch rows of this program: the rebuilt states of a column route, [H, BLOCK_D, NP, LANES].
        scratch = scratch_ptr + tl.program_id(0).to(tl.int64) * H * (BLOCK_D * NP * LANES) \
            + ((tl.arange(0, BLOCK_D)[:, None, None] * NP + nn) * LANES + lanes)
        adjoint = tl.zeros([BLOCK_D, NP, LANES], tl.float32)
        if KIND % 2 == 1:
            # A column route's successor of a step is the step of the same lane in the row handled just before
            # (walk 2) or just after (walk 1), whose decay is computed there anyway; only the route's last row of each
            # column steps into another column, and its successors' decays are read from memory, once.
            if KIND == 1:
                last_row = H - 1
            else:
                last_row = 0
            last_successor_decay = _successor_decay(last_row, k, delta_ptr, A, bias, b, dd, lanes, D, P, H, W,
                                                    stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, HAS_BIAS,
                                                    SOFTPLUS, KIND)
            # Walk 1, along the route: states into the scratch rows, and each column's adjoint map
            # dh_first = total_drive + total_decay * dh_entering, accumulated in route order: step i's drive is
            # scaled by the decays of steps 1..i.
            h = tl.load(entering_rows + lanes, mask=(dd < D) & (nn < N) & (lanes < W), other=0.0)
            total_decay = tl.full([BLOCK_D, NP, LANES], 1.0, tl.float32)
            total_drive = tl.zeros([BLOCK_D, NP, LANES], tl.float32)
            for i in range(0, H):
                if KIND == 1:
                    r = i
                else:
                    r = H - 1 - i
                flat, on_map, mask, offsets, dt_offsets, bc_offsets, u, dt_raw, dt, B_row, dy, g = \
                    _row_adjoint_inputs(r, k, u_ptr, delta_ptr, B_ptr, C_ptr, A, bias, dy_ptr, dstates_ptr, dlast_ptr,
                                        b, dd, nn, lanes, D, P, H, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p,
                                        stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, stride_y_b,
                                        stride_y_k, stride_y_d, stride_y_p, NUM_ROUTES, U_SHARED, HAS_BIAS, SOFTPLUS,
                                        ACCUMULATE, HAS_DSTATES, HAS_DLAST, KIND)
                decay = _exp(dt * A)
                h = decay * h + (dt * u) * B_row
                tl.store(scratch + r * (BLOCK_D * NP * LANES), h)
                total_decay *= tl.where(mask & (i > 0), decay, 1.0)
                total_drive += total_decay * g
            total_decay *= last_successor_decay
            # The adjoint enters a column from the next column on the route (to the right, or to the left).
            adjoint = _column_entering(total_decay, total_drive, 4 - KIND)
            successor_decay = last_successor_decay
        tl.debug_barrier()  # the scratch rows are read back by other threads of the program
        for i in range(0, H):  # against the route
            if KIND == 0 or KIND == 1:
                r = H - 1 - i
            else:
                r = i
            flat, on_map, mask, offsets, dt_offsets, bc_offsets, u, dt_raw, dt, B_row, dy, g = \
                _row_adjoint_inputs(
                    r, k, u_ptr, delta_ptr, B_ptr, C_ptr, A, bias, dy_ptr, dstates_ptr, dlast_ptr, b, dd, nn, lanes, D,
                    P, H, W, N, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k, stride_dt_d,
                    stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p, NUM_ROUTES, U_SHARED, HAS_BIAS,
                    SOFTPLUS, ACCUMULATE, HAS_DSTATES, HAS_DLAST, KIND)
            if KIND % 2 == 1:
                h = tl.load(scratch + r * (BLOCK_D * NP * LANES))
                dh = g + successor_decay * adjoint
                adjoint = dh
                successor_decay = tl.where(mask, _exp(dt * A), 1.0)  # the next row handled is this one's predecessor
            else:
                entering = tl.load(entering_rows + r, mask=(dd < D) & (nn < N), other=0.0)
                decay_next = _successor_decay(r, k, delta_ptr, A, bias, b, dd, lanes, D, P, H, W, stride_dt_b,
                                              stride_dt_k, stride_dt_d, stride_dt_p, HAS_BIAS, SOFTPLUS, KIND)
                decay_cum, drive_cum = tl.associative_scan((_exp(dt * A), (dt * u) * B_row), 2,
                                                           _linear_recurrence_combine, reverse=KIND == 2)
                h = drive_cum + decay_cum * entering
                adj_decay, adj_drive = tl.associative_scan((decay_next, g), 2, _linear_recurrence_combine,
                                                           reverse=KIND == 0)
                dh = adj_drive + adj_decay * adjoint
                # The adjoint entering the next row handled is the one at this row's first step on the route.
                first = tl.sum(tl.where(lanes == (LANES - 1) * (KIND == 2), dh, 0.0), axis=2, keep_dims=True)
                adjoint = tl.broadcast_to(first, dh.shape)
            du, ddt, dA_row, dD_row, dbias_row = _row_gradients(dh, h, dy, u, dt, dt_raw, A, B_row, bc_offsets,
                                                                on_map, mask, nn, N, dB_ptr, dC_ptr, SOFTPLUS)
            dA += dA_row
            dD += dD_row
            dbias += dbias_row
            if HAS_D:
                du += skip * dy
            tl.store((ddelta_ptr + b * stride_dt_b + k * stride_dt_k) + dt_offsets, ddt, mask=mask)
            if U_SHARED:
                if not FIRST_ROUTE:  # every raster route visits every position: the first one initialises du
                    du += tl.load(du_base + offsets, mask=mask, other=0.0)
            tl.store(du_base + offsets, du, mask=mask)
        tl.atomic_add(dA_ptr + (k * D + dd) * N + nn, dA[:, :, None], mask=(dd < D) & (nn < N), sem='relaxed')
        if HAS_D:
            tl.atomic_add(dDskip_ptr + k * D + d, dD, mask=d < D, sem='relaxed')
        if HAS_BIAS:
            tl.atomic_add(dbias_ptr + k * D + d, dbias, mask=d < D, sem='relaxed')
        tl.debug_barrier()  # the next route reads du back through other threads

    @triton.autotune(configs=_raster_rows_configs(), key=['D', 'H', 'WV', 'N', 'LANES', 'stride_u_d', 'V'],
                     do_bench=_quick_bench, prune_configs_by={'early_config_prune': _row_walk_pruner(
                         _row_walk_bwd_programs, _row_walk_bwd_channel_last_programs)},
                     reset_to_zero=['dA_ptr', 'dB_ptr', 'dC_ptr', 'dDskip_ptr', 'dbias_ptr'])
    @triton.jit(do_not_specialize=['P'])
    def _raster_rows_bwd_kernel(
            u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, entering_ptr, dy_ptr, dstates_ptr, dlast_ptr,
            scratch_ptr, du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dDskip_ptr, dbias_ptr,
            D, P, H, WV, N, MAX_LINES, stride_u_b, stride_u_k, stride_u_d, stride_u_p, stride_dt_b, stride_dt_k,
            stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
            KINDS: tl.constexpr, NUM_ROUTES: tl.constexpr, U_SHARED: tl.constexpr, HAS_D: tl.constexpr,
            HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACCUMULATE: tl.constexpr, HAS_DSTATES: tl.constexpr,
            HAS_DLAST: tl.constexpr, LANES: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr,
            NUM_STAGES: tl.constexpr, V: tl.constexpr,
    ):
        # V > 1 (``_row_walk_alignment``): the map is (H, WV * V), every stride but the positions' (1) is given in
        # units of V, and P = H * W. Triton then sees every row start V-aligned, loads V lanes per thread as one
        # vector and scans them inside the thread before shuffling.
        W = WV * V
        if V > 1:
            P = H * W
            stride_u_b, stride_u_k, stride_u_d = stride_u_b * V, stride_u_k * V, stride_u_d * V
            stride_dt_b, stride_dt_k, stride_dt_d = stride_dt_b * V, stride_dt_k * V, stride_dt_d * V
            stride_y_b, stride_y_k, stride_y_d = stride_y_b * V, stride_y_k * V, stride_y_d * V
        b, d, dd, nn, lanes = _row_walk_program(D, BLOCK_D, NP, LANES)
        for k in tl.static_range(NUM_ROUTES):
            _row_walk_route_bwd(
                k, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, Dskip_ptr, bias_ptr, entering_ptr, dy_ptr, dstates_ptr,
                dlast_ptr, scratch_ptr, du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dDskip_ptr, dbias_ptr,
                b, d, dd, nn, lanes, D, P, H, W, N, MAX_LINES, stride_u_b, stride_u_k, stride_u_d, stride_u_p,
                stride_dt_b, stride_dt_k, stride_dt_d, stride_dt_p, stride_y_b, stride_y_k, stride_y_d, stride_y_p,
                NUM_ROUTES, U_SHARED, HAS_D, HAS_BIAS, SOFTPLUS, ACCUMULATE, HAS_DSTATES, HAS_DLAST,
                (KINDS >> (2 * k)) & 3, k == 0, LANES, NP, BLOCK_D)

    @triton.jit
    def _last_state(state, lanes, W):
        return tl.sum(tl.where(lanes == W - 1, state, 0.0), axis=2, keep_dims=True)


# The raster kernels keep every state of a row in registers; measured on the H200 at stage 1 (D=192, 28x28) they beat
# the chunked kernels at N=1 (0.84 vs 1.37 ms forward) and lose at N=16 (5.66 vs 4.82 ms). Between, unmeasured.
RASTER_MAX_STATE_DIM = 8


# The raster kernels launch through their compiled handles once a specialization repeats: Triton's per-call binding
# cost more host time than some of these kernels run at the small stages (2026-11-30 H200 host profile).
_LAUNCH = {name: CachedLaunch(globals()[name]) for name in (
    '_raster_scan_fwd_kernel', '_raster_rows_fwd_kernel', '_raster_scan_bwd_kernel', '_raster_rows_bwd_kernel',
    '_vector_rows_fwd_kernel', '_vector_rows_bwd_kernel')
} if HAS_TRITON else {}


def _raster_plan(dim, positions, route_kinds, map_hw, state_dim):
    """Tile of the raster kernels for a scan of ``dim`` channels over ``positions``, or None to run the chunked
    kernels."""
    if route_kinds is None or map_hw is None or state_dim > RASTER_MAX_STATE_DIM:
        return None
    if dim * state_dim * positions >= 2 ** 31:  # offsets inside one (batch, route) slab are int32
        return None
    tile = _raster_tile(map_hw[0], map_hw[1], route_kinds)
    return None if tile is None else (*tile, sum(kind << (2 * k) for k, kind in enumerate(route_kinds)))


def _row_walk_reads(u, delta, plan) -> bool:
    """Whether the row-walk kernels run this call and read ``u`` and ``delta`` through their strides (any layout
    whose offsets inside one image fit in int32); every other kernel needs them contiguous."""
    if plan is None or _whole_map(plan):
        return False
    return _by_layout(_offsets_fit, u) and _by_layout(_offsets_fit, delta)


def _offsets_fit(shape, strides) -> bool:
    """Whether the offsets inside one (batch, route) slab of a tensor of ``shape`` and ``strides`` fit in int32."""
    return sum((size - 1) * abs(stride) for size, stride in zip(shape[2:], strides[2:])) < 2 ** 31


@functools.lru_cache(maxsize=4096)
def _kept_layout_answer(question, shape, strides) -> bool:
    return question(shape, strides)


def _by_layout(question, t: torch.Tensor) -> bool:
    """``question(t.shape, t.stride())``, kept per layout: the eager training path asks about the same few layouts
    several times per scan call. Compiled code (dynamo would trace into the cache), and symbolic sizes, which do not
    hash, are answered afresh."""
    shape, strides = t.shape, t.stride()
    if torch.compiler.is_compiling():
        return question(shape, strides)
    try:
        return _kept_layout_answer(question, shape, strides)
    except TypeError:  # unhashable (symbolic) sizes
        return question(shape, strides)


def _channels_contiguous(u: torch.Tensor) -> bool:
    """Whether a (batch, Ku, dim, P) input keeps its channels adjacent in memory: a channel-last (NHWC) map."""
    return u.shape[2] > 1 and u.stride(2) == 1


def _is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s strides are a permutation of a contiguous layout (no gaps, no overlap, no broadcast)."""
    return _by_layout(_layout_is_dense, t)


def _layout_is_dense(shape, strides) -> bool:
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(shape, strides) if s > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _scan_output(u: torch.Tensor, num_routes: int, accumulate: bool, row_walk: bool) -> torch.Tensor:
    """The float32 output of a raster scan. A merged output of the row walk on a channel-last input is channel-last
    too, (batch, dim, P) with the channels adjacent, so that the channel-last ops after the scan read it as is."""
    batch, _, dim, positions = u.shape
    if accumulate and row_walk and _channels_contiguous(u):
        return torch.empty(batch, positions, dim, device=u.device, dtype=torch.float32).transpose(1, 2)
    return torch.empty(batch, *(() if accumulate else (num_routes,)), dim, positions, device=u.device,
                       dtype=torch.float32)


def _raster_fwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, accumulate, return_states,
                distinct_outputs=True):
    """The raster forward: (y, last state, the row walk's entering states for its backward, states).

    The row walk always writes the entering and last states: an H200 run (2026-11-30) of a variant that skipped
    them when no backward follows took 6.1 instead of 4.6 ms per VMamba-T step (ptxas gave it 72 instead of 55
    registers at 28x28). Only ``states`` is skipped when not requested. The custom op and the eager autograd
    Function need ``distinct_outputs`` (outputs must not alias); for plain inference y stands in for the unwritten
    buffer.
    """
    batch, k_u, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    height, width, tile_h, tile_w, kinds = plan
    row_walk = _row_walk_reads(u, delta, plan)
    if not row_walk:
        u, delta = u.contiguous(), delta.contiguous()
    y = _scan_output(u, num_routes, accumulate, row_walk)
    last_state = torch.empty(batch, num_routes, dim, state_dim, device=u.device, dtype=torch.float32)
    states = torch.empty(batch, num_routes, dim, state_dim, positions if return_states else 0, device=u.device,
                         dtype=torch.float32) if return_states or distinct_outputs else y
    grid = ConfigGrid(lambda meta: (batch * cdiv(dim, meta['BLOCK_D']),))
    common = (dim, positions, height, width, state_dim, u.stride(0), u.stride(1) if k_u > 1 else 0,
              y.stride(0), 0 if accumulate else y.stride(1))
    flags = dict(KINDS=kinds, NUM_ROUTES=num_routes, U_SHARED=k_u == 1, HAS_D=D is not None,
                 HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, ACCUMULATE=accumulate,
                 STORE_STATES=return_states)
    if _whole_map(plan):
        _LAUNCH['_raster_scan_fwd_kernel'](grid, u, delta, A, B, C, D, delta_bias, y, last_state, states, *common,
                                           **flags, HP=tile_h, WP=tile_w)
        return y, last_state, u.new_empty(0, dtype=torch.float32), states
    entering_shape = _row_walk_entering_shape(u, delta, A, plan)
    # Row routes fill H of the max(H, W) lines and column routes W: on a non-square map the rest is zeroed, so that
    # the op's outputs are defined everywhere (torch.compile's checks compare them whole).
    entering = (torch.empty if height == width else torch.zeros)(entering_shape, device=u.device, dtype=torch.float32)
    vector = _vector_walk(u, delta, B, C, y, plan, state_dim, accumulate, return_states) if VECTOR_ROW_WALK else None
    if vector is not None:
        threads, lanes_per_thread, block_d, delta_strides = vector
        _LAUNCH['_vector_rows_fwd_kernel'](
            (batch * cdiv(dim, block_d),), u, delta, A, B, C, D, delta_bias, y, last_state, entering, dim, height,
            width // lanes_per_thread, entering_shape[-1], *delta_strides, KINDS=kinds, NUM_ROUTES=num_routes,
            HAS_D=D is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            WALKS=_walk_groups(kinds, num_routes)[0], T=threads, V=lanes_per_thread, BLOCK_D=block_d,
            num_warps=max(1, threads * block_d // 32),
            **_register_cap(VECTOR_ROW_WALK_FWD_MAX_REGISTERS, lanes_per_thread))
        return y, last_state, entering, states
    _LAUNCH['_raster_rows_fwd_kernel'](
        grid, u, delta, A, B, C, D, delta_bias, y, last_state, states, entering, *common[:5], entering_shape[-1],
        *_row_walk_strides(u, delta, y, accumulate), **flags,
        HAS_FORWARD_ROUTES=bool(_walk_groups(kinds, num_routes)[0] & 1), LANES=tile_w,
        NP=next_power_of_2(state_dim))
    return y, last_state, entering, states


# The vectorised row walk (``_vector_rows_fwd_kernel``) runs the forward where it applies; False keeps the row walk.
VECTOR_ROW_WALK = True
# Channels per program of the vectorised row walk; None: one warp's worth (32 threads over T threads per row).
VECTOR_WALK_CHANNELS = None
# A cap on the vectorised forward's registers per thread (Triton's ``maxnreg``) where it runs several lanes per thread;
# None leaves it to the compiler. Loading each row a row ahead took the compiler to 96 registers at 56x56 and 28x28;
# capped at 80 (20 bytes of spills) the forward took 0.466 / 0.249 / 0.135 ms at VMamba-T's first three stages
# against 0.507 / 0.266 / 0.135 uncapped and 0.625 / 0.286 / 0.156 before the loads ahead (H200, fifteenth session,
# kernel time under the profiler, bf16). One lane per thread (7x7) stays uncapped: the compiler gives it 64
# registers, and with the cap it took 0.096 against 0.089 ms.
VECTOR_ROW_WALK_FWD_MAX_REGISTERS = 80
# At most this many lanes per thread (a power of two, also at most 16 bytes of the widest operand). Four won at the
# two large VMamba-T stages in bf16 and fp32 (H200 sweep of 2026-12-01, ``benchmarks/results/README.md``): at 56x56
# bf16 0.577 ms against 0.692 with eight lanes and 0.806 with two, one warp per program each.
VECTOR_WALK_LANES = 4


def _register_cap(cap: Optional[int], lanes_per_thread: int) -> dict:
    """The launch option that caps a vectorised walk's registers: none at one lane per thread, where the compiler
    keeps the walks at 64 registers and a cap only made them slower."""
    return {} if cap is None or lanes_per_thread == 1 else {'maxnreg': cap}


def _lanes_per_thread(width: int, widest: int, max_lanes: int) -> int:
    """Lanes of a row per thread in the vectorised and aligned row walks: the largest power of two dividing the
    width, at most ``max_lanes`` (``VECTOR_WALK_LANES``) and 16 bytes of the widest operand (one vector load)."""
    return min(max_lanes, 16 // widest, width & -width)


def _vector_walk(u, delta, B, C, y, plan, state_dim, accumulate, return_states):
    """(threads per row, lanes per thread, channels per program, delta's strides in map units) of the vectorised row
    walk for this forward, or None where it does not apply: it runs d_state 1 with one input map shared by the
    routes, NCHW-contiguous, a merged output, delta's positions adjacent and its other strides whole maps, and rows
    that fill the map (a row-only pattern's rows of 64 may leave the last one short). The answer is kept per layout:
    eager training asks twice per scan layer and step, with the same few layouts."""
    if state_dim != 1 or u.shape[1] != 1 or not accumulate or return_states:
        return None
    return _vector_walk_by_layout(
        u.shape, u.stride(), delta.stride(), max(t.element_size() for t in (u, delta, B, C)),
        B.is_contiguous() and C.is_contiguous() and y.is_contiguous(), plan, VECTOR_WALK_LANES, VECTOR_WALK_CHANNELS,
        triton_interpreting())


@functools.lru_cache(maxsize=1024)
def _vector_walk_by_layout(u_shape, u_strides, delta_strides, widest, dense_operands, plan, max_lanes, channels,
                           interpreting):
    batch, k_u, dim, positions = u_shape
    height, width, tile_h, tile_w, kinds = plan
    if height * width != positions or not dense_operands:
        return None
    if u_strides[2:] != (positions, 1) or u_strides[0] != dim * positions:
        return None
    if delta_strides[3] != 1 or any(stride % positions for stride in delta_strides[:3]) or min(delta_strides) < 0:
        return None
    lanes_per_thread = _lanes_per_thread(width, widest, max_lanes)
    threads = tile_w // lanes_per_thread
    block_d = 2 if interpreting else channels or max(1, 32 // threads)
    return threads, lanes_per_thread, block_d, tuple(stride // positions for stride in delta_strides[:3])


# The row-walk backward is told its rows start V-aligned (V > 1) where the layout allows; False keeps V = 1.
ROW_WALK_BWD_ALIGNED = True
# The vectorised backward (``_vector_rows_bwd_kernel``) runs where the vectorised forward would, for the backward of
# a merged output without upstream gradients of the states; False runs the row-walk backward there.
VECTOR_ROW_WALK_BWD = True
# A cap on the vectorised backward's registers per thread (Triton's ``maxnreg``) where it runs several lanes per
# thread; None leaves it to the compiler. Its adjoint walks carry two routes' operands of the next row (delta, B, C and
# the kept states) besides u, dy and du. H200, fifteenth session (kernel time under the profiler, bf16, VMamba-T's
# stages): 1.302 / 0.676 / 0.336 ms at 56x56 / 28x28 / 14x14 capped at 128, against 1.573 / 0.797 / 0.334 uncapped,
# 1.983 / 1.116 / 0.388 at 96 and 2.930 / 1.748 / 0.475 at 80 (824 bytes of spills at 56x56); before the loads
# ahead, 1.448 / 0.781 / 0.450 at 80. At one lane per thread (7x7) uncapped: 0.211 ms, 0.231 at 128.
VECTOR_ROW_WALK_BWD_MAX_REGISTERS = 128


def _row_walk_alignment(strides, positions, height, width, widest) -> int:
    """V for the row-walk backward: the largest power of two up to ``VECTOR_WALK_LANES`` lanes (and 16 bytes of the
    widest operand) that divides the width and every stride but the positions' (which must be 1: NCHW maps), on a
    map that its rows fill; 1 where that fails (channel-last maps, a row-only pattern's short last row)."""
    if not ROW_WALK_BWD_ALIGNED or height * width != positions or any(stride != 1 for stride in strides[3::4]):
        return 1
    alignment = _lanes_per_thread(width, widest, VECTOR_WALK_LANES)
    while alignment > 1 and (any(stride % alignment for stride in strides[:3] + strides[4:7] + strides[8:11])
                             or positions // alignment <= 1):
        alignment //= 2
    return alignment


def _row_walk_strides(u, delta, y, accumulate):
    """Batch, route, channel and position strides of u, delta and y (or dy) for the row-walk kernels."""
    u_strides = (u.stride(0), u.stride(1) if u.shape[1] > 1 else 0, u.stride(2), u.stride(3))
    y_strides = (y.stride(0), 0, y.stride(1), y.stride(2)) if accumulate else tuple(y.stride())
    return u_strides + tuple(delta.stride()) + y_strides


def _row_walk_entering_shape(u, delta, A, plan):
    """(B, K, D, N, lines): the state entering each row (row routes) or column (column routes), kept by the row-walk
    forward for its backward."""
    return (u.shape[0], delta.shape[1], u.shape[2], A.shape[-1], max(plan[0], plan[1]))


@functools.lru_cache(maxsize=None)
def _unpack_kinds(kinds: int, num_routes: int) -> Tuple[int, ...]:
    return tuple((kinds >> (2 * k)) & 3 for k in range(num_routes))


@functools.lru_cache(maxsize=None)
def _has_column_routes(kinds: int, num_routes: int) -> bool:
    """Whether a route walks the map by columns (kinds 1 and 3)."""
    return any(kind % 2 for kind in _unpack_kinds(kinds, num_routes))


def _zeroed_param_grads(A, B, C, D, delta_bias, one_buffer: bool) -> List[Optional[torch.Tensor]]:
    """Zeroed float32 buffers for the backward kernels to accumulate dA, dB, dC, dD and dbias into (None for an
    absent D or bias)."""
    return _zeros_like_each((A.shape, B.shape, C.shape, A.shape[:2] if D is not None else None,
                             A.shape[:2] if delta_bias is not None else None), A.device, one_buffer)


def _zeros_like_each(shapes, device, one_buffer: bool) -> List[Optional[torch.Tensor]]:
    """Zeroed float32 tensors of ``shapes`` (None stays None). With ``one_buffer`` they are carved from one buffer:
    one allocation and one memset for the backward's accumulated gradients instead of one each (a custom op's
    outputs must not share storage, so it asks for separate ones)."""
    if not one_buffer:
        return [None if shape is None else torch.zeros(shape, device=device, dtype=torch.float32) for shape in shapes]
    sizes = [0 if shape is None else math.prod(shape) for shape in shapes]
    flat = torch.zeros(sum(sizes), device=device, dtype=torch.float32)
    return [None if shape is None else part.view(shape) for shape, part in zip(shapes, flat.split(sizes))]


def _raster_bwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, dy, dstates, dlast, entering=None,
                eager=False, du_dtype=torch.float32):
    """Gradients through the whole-map backward, or through the row-walk backward given the forward's ``entering``.

    ``eager``: the gradients need not keep the custom op's contract (float32 outputs that share no storage): the
    accumulated ones (A, B, C, D, bias) share one buffer, and ddelta, which these kernels store once per element,
    is stored in delta's dtype (the float32 buffer and its cast afterwards would round the same way).
    ``du_dtype``: the dtype the vectorised backward stores du in, for a caller that would cast a float32 du to it
    (the other kernels add to du once per route and keep it in float32). With routes in both of its walks, the first
    walk's sum goes to a float32 buffer and the second stores the total, rounded once as the cast would.
    """
    batch, k_u, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    height, width, tile_h, tile_w, kinds = plan
    accumulate = dy.dim() == 3
    row_walk = entering is not None and _row_walk_reads(u, delta, plan) and _is_dense(u) and _is_dense(delta)
    if not row_walk:
        u, delta, dy = u.contiguous(), delta.contiguous(), dy.contiguous()
    vector = _vector_walk(u, delta, B, C, dy, plan, state_dim, accumulate, False) if entering is not None \
        and VECTOR_ROW_WALK_BWD and dstates is None and dlast is None and dy.dtype == torch.float32 else None
    # du and ddelta take the layout of u and delta: the row walk writes them through the same strides.
    du = torch.empty_strided(u.shape, u.stride(), device=u.device,
                             dtype=torch.float32 if vector is None else du_dtype)
    ddelta = torch.empty_strided(delta.shape, delta.stride(), device=u.device,
                                 dtype=delta.dtype if eager else torch.float32)
    dA, dB, dC, dD, dbias = _zeroed_param_grads(A, B, C, D, delta_bias, one_buffer=eager)
    grid = ConfigGrid(lambda meta: (batch * cdiv(dim, meta['BLOCK_D']),))
    inputs = (u, delta, A, B, C, D, delta_bias)
    upstream = (dy, None if dstates is None else dstates.contiguous(), None if dlast is None else dlast.contiguous())
    grads = (du, ddelta, dA, dB, dC, dD, dbias)
    sizes = (dim, positions, height, width, state_dim)
    strides = (u.stride(0), u.stride(1) if k_u > 1 else 0, dy.stride(0), 0 if accumulate else dy.stride(1))
    flags = dict(KINDS=kinds, NUM_ROUTES=num_routes, U_SHARED=k_u == 1, HAS_D=D is not None,
                 HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, ACCUMULATE=accumulate,
                 HAS_DSTATES=dstates is not None, HAS_DLAST=dlast is not None)
    if entering is None:
        _LAUNCH['_raster_scan_bwd_kernel'](grid, *inputs, *upstream, *grads, *sizes, *strides, **flags, HP=tile_h,
                                           WP=tile_w)
        return grads
    if vector is not None:
        threads, lanes_per_thread, block_d, delta_strides = vector
        programs = batch * cdiv(dim, block_d)
        walks, slabs, num_slabs = _walk_groups(kinds, num_routes)
        # Per program, the rebuilt states of its column routes: num_slabs x (H, channels, lanes).
        scratch = torch.empty(programs * num_slabs * height * block_d * tile_w, device=u.device, dtype=torch.float32)
        # The first walk's sum of du, float32 (the same layout as u and du).
        du_first = du if du.dtype == torch.float32 or walks != 3 else torch.empty_like(du, dtype=torch.float32)
        _LAUNCH['_vector_rows_bwd_kernel'](
            (programs,), *inputs, entering, dy, scratch, *grads, du_first, dim, height, width // lanes_per_thread,
            entering.shape[-1], *delta_strides, KINDS=kinds, WALKS=walks, SLABS=slabs, NUM_SLABS=num_slabs,
            NUM_ROUTES=num_routes, HAS_D=D is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, T=threads, V=lanes_per_thread, BLOCK_D=block_d,
            num_warps=max(1, threads * block_d // 32),
            **_register_cap(VECTOR_ROW_WALK_BWD_MAX_REGISTERS, lanes_per_thread))
        return grads
    state_tile = next_power_of_2(state_dim)
    # Scratch for the rebuilt states of column routes: one (H, BLOCK_D, NP, lanes) slab per program, sized for the
    # largest BLOCK_D the autotuner may pick (the programs' channel blocks cover dim rounded up to it).
    widest = max(_ROW_WALK_BLOCK_DS)
    has_columns = _has_column_routes(kinds, num_routes)
    scratch = torch.empty(batch * (dim + widest) * height * state_tile * tile_w if has_columns else 0,
                          device=u.device, dtype=torch.float32)
    strides = _row_walk_strides(u, delta, dy, accumulate)
    alignment = _row_walk_alignment(strides, positions, height, width, max(u.element_size(), delta.element_size()))
    if alignment > 1:
        sizes = sizes[:3] + (width // alignment,) + sizes[4:]
        strides = tuple(stride if position % 4 == 3 else stride // alignment for position, stride in enumerate(strides))
    _LAUNCH['_raster_rows_bwd_kernel'](grid, *inputs, entering, *upstream, scratch, *grads, *sizes,
                                       entering.shape[-1], *strides, **flags, LANES=tile_w, NP=state_tile,
                                       V=alignment)
    return grads


@functools.lru_cache(maxsize=256)
def _walk_groups(kinds: int, num_routes: int) -> Tuple[int, int, int]:
    """(walks, slabs, number of slabs) of the vectorised walks, which treat the routes crossing the rows in one
    direction together: bit w of walks is set when some route is in group w (0: kinds 0 and 1, walked top to bottom
    by the forward's output walk and bottom to top by the backward's adjoint walk; 1: kinds 2 and 3, the other way);
    a walk without routes is skipped. slabs packs, 2 bits per route, the backward's scratch slab of each column
    route, distinct among the column routes of one walk."""
    walks = slabs = 0
    used = [0, 0]
    for k, kind in enumerate(_unpack_kinds(kinds, num_routes)):
        walk = kind >> 1
        walks |= 1 << walk
        if kind % 2:
            slabs |= used[walk] << (2 * k)
            used[walk] += 1
    return walks, slabs, max(used)


def _pass_states(decay, drive, reverse, final=None):
    """Launch the sequential-over-chunks state passing on (B, K, D, C, N) summaries."""
    entering = torch.empty_like(decay)
    batch, num_routes, dim, num_chunks, state_dim = decay.shape
    rows = batch * num_routes * dim * state_dim
    block = 128
    _chunk_state_passing_kernel[(cdiv(rows, block),)](
        decay, drive, entering, final, rows, num_chunks, state_dim, REVERSE=reverse, BLOCK_R=block)
    return entering


def _chunk_entering(u, delta, A, B, delta_bias, routes, delta_softplus, length=None):
    """State entering every chunk of every route (B, K, D, chunks, N), and each route's final state. ``length``:
    the route length of route-ordered operands whose rows are padded past it (default: all P positions)."""
    batch, k_u, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    length = _route_length(positions, routes, length)
    chunk = _chunk_size()
    num_chunks = cdiv(length, chunk)
    summary = torch.empty(2, batch, num_routes, dim, num_chunks, state_dim, device=u.device, dtype=torch.float32)

    def grid(meta):
        return num_chunks, batch * cdiv(dim, meta['BLOCK_D']), num_routes

    kernel = _chunk_summary_fwd_kernel if routes is not None else _chunk_summary_fwd_contiguous_kernel
    kernel[grid](u, delta, A, B, delta_bias, routes, summary[0], summary[1], dim, positions, length, state_dim,
                 num_chunks, u.stride(0), u.stride(1) if k_u > 1 else 0, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=delta_softplus, IDENTITY=routes is None, CHUNK=chunk)
    last_state = torch.empty(batch, num_routes, dim, state_dim, device=u.device, dtype=torch.float32)
    return _pass_states(summary[0], summary[1], reverse=False, final=last_state), last_state


def _route_length(positions: int, routes: Optional[torch.Tensor], length: Optional[int]) -> int:
    if routes is not None:
        return routes.shape[1]
    return positions if length is None else length


# d_state from which the chunked path copies routed operands into route order for the kernels' twins (see
# _route_gather_kernel); below it the copies cost more than the twins save.
ROUTE_ORDERED_MIN_STATE_DIM = 9
_ROUTE_ORDER_ALIGN = 16  # route-ordered rows padded to a multiple of this, for vectorised loads
# (channels, steps, warps) per program of the route copies. H200, B=128, cross routes (2026-12-01): against (8, 128, 4),
# a bf16 gather 0.26 vs 0.41 ms and a float32 route sum 0.31 vs 0.59 ms at 56x56, no slower at 28x28 and 14x14; longer
# rows of steps (512-2048) were no better at 56x56 and up to 3x slower at 14x14.
_ROUTE_COPY_BLOCK = (4, 256, 4)
# The copies live for one call; batches are split so that one float32 route-ordered map (an output or a gradient)
# stays under this size, which bounds the copies' memory to a few times it (vanilla VMamba-T's first stage at B=128:
# 1.2 GB per map).
ROUTE_ORDER_SLICE_BYTES = 512 << 20


def _route_ordered(routes: Optional[torch.Tensor], state_dim: int, return_states: bool) -> bool:
    """Whether the chunked path runs on route-ordered copies (the states at every position stay routed)."""
    return routes is not None and state_dim >= ROUTE_ORDERED_MIN_STATE_DIM and not return_states


def _to_route_order(t: torch.Tensor, routes: torch.Tensor, num_routes: int) -> torch.Tensor:
    """(B, Kt, C, P) with Kt in {1, K} -> (B, K, C, LP) in route order, rows zero-padded to LP, a multiple of 16."""
    batch, k_t, channels, positions = t.shape
    length = routes.shape[1]
    padded = cdiv(length, _ROUTE_ORDER_ALIGN) * _ROUTE_ORDER_ALIGN
    t = t.contiguous()
    out = torch.empty(batch, num_routes, channels, padded, device=t.device, dtype=t.dtype)
    block_c, block_l, warps = _ROUTE_COPY_BLOCK
    _route_gather_kernel[(cdiv(padded, block_l), batch * cdiv(channels, block_c), num_routes)](
        t, routes, out, channels, positions, length, padded, t.stride(0), t.stride(1) if k_t > 1 else 0,
        BLOCK_C=block_c, BLOCK_L=block_l, num_warps=warps)
    return out


def _route_inverse(routes: torch.Tensor, positions: int) -> Optional[torch.Tensor]:
    """(K, P) int32: the step at which route k visits position p (-1 where it never does), or None when a route
    visits a position twice. Kept on the routes tensor (``ScanPattern.routes_on`` hands out one tensor per pattern
    and device), keyed by its version."""
    def inverse():
        if _routes_revisit(routes):
            return None
        num_routes, length = routes.shape
        table = torch.full((num_routes, positions), -1, device=routes.device, dtype=torch.int32)
        steps = torch.arange(length, device=routes.device, dtype=torch.int32)
        return table.scatter_(1, routes.long(), steps.expand(num_routes, length))
    return _kept_answer(routes, '_vmamba_zoo_inverse', positions, inverse)


def _kept_answer(routes: torch.Tensor, name: str, key, answer):
    """``answer()``, kept on the ``routes`` tensor as attribute ``name`` and reused while the tensor's version and
    ``key`` stay the same. Answers about an inference tensor, which has no version counter, and about a tensor that
    takes no attributes are not kept."""
    if routes.is_inference():
        return answer()
    version_key = (routes._version, key)
    kept = getattr(routes, name, None)
    if kept is not None and kept[0] == version_key:
        return kept[1]
    value = answer()
    try:
        setattr(routes, name, (version_key, value))
    except (AttributeError, RuntimeError):
        pass
    return value


def _from_route_order(t: torch.Tensor, routes: torch.Tensor, positions: int, sum_routes: bool) -> torch.Tensor:
    """Adjoint of ``_to_route_order``: (B, K, C, LP) float32 -> (B, 1 if sum_routes else K, C, P) float32, each
    route's steps added at the positions they visit (0 where none does)."""
    batch, num_routes, channels, padded = t.shape
    out_routes = 1 if sum_routes else num_routes
    block_c, block_l, warps = _ROUTE_COPY_BLOCK
    inverse = _route_inverse(routes, positions)
    if inverse is not None:  # each output element gathered once from the steps that visit it
        out = torch.empty(batch, out_routes, channels, positions, device=t.device, dtype=torch.float32)
        _route_merge_kernel[(cdiv(positions, block_l), batch * cdiv(channels, block_c), out_routes)](
            t, inverse, out, channels, positions, padded, SUM_ROUTES=sum_routes, NUM_ROUTES=num_routes,
            BLOCK_C=block_c, BLOCK_P=block_l, num_warps=warps)
        return out
    out = torch.zeros(batch, out_routes, channels, positions, device=t.device, dtype=torch.float32)
    _route_scatter_kernel[(cdiv(routes.shape[1], block_l), batch * cdiv(channels, block_c), num_routes)](
        t, routes, out, channels, positions, routes.shape[1], padded, SUM_ROUTES=sum_routes, BLOCK_C=block_c,
        BLOCK_L=block_l, num_warps=warps)
    return out


def _route_order_slices(batch: int, num_routes: int, channels: int, length: int) -> List[slice]:
    """Batch slices whose float32 route-ordered (K, channels, padded length) maps fit ROUTE_ORDER_SLICE_BYTES."""
    per_sample = num_routes * channels * cdiv(length, _ROUTE_ORDER_ALIGN) * _ROUTE_ORDER_ALIGN * 4
    size = cdiv(batch, cdiv(batch, max(1, ROUTE_ORDER_SLICE_BYTES // per_sample)))  # even slices
    return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


def _route_ordered_fwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate):
    """``_triton_fwd`` on route-ordered copies (see ``_route_gather_kernel``), one batch slice at a time."""
    batch, _, dim, positions = u.shape
    num_routes = delta.shape[1]
    parts = []
    for part in _route_order_slices(batch, num_routes, dim, routes.shape[1]):
        ordered = [_to_route_order(t[part], routes, num_routes) for t in (u, delta, B, C)]
        y, last_state, entering, states = _triton_fwd(
            *ordered[:2], A, *ordered[2:], D, delta_bias, None, delta_softplus, False, False, routes.shape[1])
        del ordered
        y = _from_route_order(y, routes, positions, sum_routes=accumulate)
        parts.append(((y[:, 0] if accumulate else y), last_state, entering, states))
    return parts[0] if len(parts) == 1 else tuple(torch.cat(outputs) for outputs in zip(*parts))


def _route_ordered_bwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, entering, dy, dlast, one_buffer):
    """``_triton_bwd`` on route-ordered copies, one batch slice at a time (the batch slices' parameter gradients
    summed)."""
    batch, k_u, dim, positions = u.shape
    num_routes = delta.shape[1]
    dy = dy.view(batch, 1, dim, positions) if dy.dim() == 3 else dy
    parts = []
    for part in _route_order_slices(batch, num_routes, dim, routes.shape[1]):
        ordered = [_to_route_order(t[part], routes, num_routes) for t in (u, delta, B, C, dy)]
        du, ddelta, dA, dB, dC, dD, dbias = _triton_bwd(
            *ordered[:2], A, *ordered[2:4], D, delta_bias, None, delta_softplus, entering[part], ordered[4], None,
            None if dlast is None else dlast[part], False, one_buffer, routes.shape[1])
        del ordered
        du = _from_route_order(du, routes, positions, sum_routes=k_u == 1)
        ddelta, dB, dC = (_from_route_order(g, routes, positions, sum_routes=False) for g in (ddelta, dB, dC))
        parts.append((du, ddelta, dA, dB, dC, dD, dbias))
    if len(parts) == 1:
        return parts[0]
    du, ddelta, dA, dB, dC, dD, dbias = zip(*parts)

    def batch_sum(per_slice):  # parameter gradients: summed over the samples, so over the slices
        return None if per_slice[0] is None else torch.stack(per_slice).sum(0)

    return (torch.cat(du), torch.cat(ddelta), batch_sum(dA), torch.cat(dB), torch.cat(dC), batch_sum(dD),
            batch_sum(dbias))


def _triton_fwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate, return_states, length=None):
    batch, k_u, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    if _route_ordered(routes, state_dim, return_states):
        return _route_ordered_fwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate)
    length = _route_length(positions, routes, length)
    chunk = _chunk_size()
    num_chunks = cdiv(length, chunk)
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, IDENTITY=routes is None, CHUNK=chunk)
    stride_u = (u.stride(0), u.stride(1) if k_u > 1 else 0)

    def grid(meta):
        return num_chunks, batch * cdiv(dim, meta['BLOCK_D']), num_routes

    entering, last_state = _chunk_entering(u, delta, A, B, delta_bias, routes, delta_softplus, length)
    y_routes = 1 if accumulate else num_routes
    # Accumulated outputs are summed with atomics, and unvisited positions must read 0.
    full_cover = routes is None and not accumulate
    y = (torch.empty if full_cover else torch.zeros)(batch, y_routes, dim, positions, device=u.device,
                                                     dtype=torch.float32)
    states = (torch.empty if routes is None else torch.zeros)(
        batch, num_routes, dim, state_dim, positions if return_states else 0, device=u.device, dtype=torch.float32)
    kernel = _scan_chunk_fwd_kernel if routes is not None else _scan_chunk_fwd_contiguous_kernel
    kernel[grid](
        u, delta, A, B, C, D, delta_bias, routes, entering, y, states,
        dim, positions, length, state_dim, num_chunks, *stride_u, y.stride(0), y.stride(1) if y_routes > 1 else 0,
        HAS_D=D is not None, ACCUMULATE=accumulate, STORE_STATES=return_states, **flags)
    return (y[:, 0] if accumulate else y), last_state, entering, states


def _triton_bwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, entering, dy, dstates, dlast,
                scatter_atomic, one_buffer=False, length=None):
    batch, k_u, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    if _route_ordered(routes, state_dim, dstates is not None):
        return _route_ordered_bwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, entering, dy, dlast,
                                  one_buffer)
    length = _route_length(positions, routes, length)
    chunk = _chunk_size()
    num_chunks = entering.shape[3]
    accumulate = dy.dim() == 3
    dy = dy.contiguous()
    flags = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, IDENTITY=routes is None, CHUNK=chunk,
                 HAS_DSTATES=dstates is not None, HAS_DLAST=dlast is not None)
    strides = (u.stride(0), u.stride(1) if k_u > 1 else 0, dy.stride(0), 0 if accumulate else dy.stride(1))
    dstates = dstates.contiguous() if dstates is not None else None
    dlast = dlast.contiguous() if dlast is not None else None

    def grid(meta):
        return num_chunks, batch * cdiv(dim, meta['BLOCK_D']), num_routes

    if num_chunks == 1:  # no chunk to the right: nothing enters the adjoint recurrence
        dentering = torch.zeros_like(entering)
    else:
        summary = torch.empty(2, *entering.shape, device=u.device, dtype=torch.float32)
        kernel = _chunk_summary_bwd_kernel if routes is not None else _chunk_summary_bwd_contiguous_kernel
        kernel[grid](u, delta, A, C, delta_bias, routes, dy, dstates, dlast, summary[0], summary[1], dim, positions,
                     length, state_dim, num_chunks, *strides, **flags)
        dentering = _pass_states(summary[0], summary[1], reverse=True)
    du = torch.zeros(u.shape, device=u.device, dtype=torch.float32)
    ddelta = (torch.zeros if scatter_atomic else torch.empty)(delta.shape, device=u.device, dtype=torch.float32)
    if not scatter_atomic and routes is not None:
        ddelta.zero_()  # positions no route visits have zero gradient
    dA, dB, dC, dD, dbias = _zeroed_param_grads(A, B, C, D, delta_bias, one_buffer)
    kernel = _scan_chunk_bwd_kernel if routes is not None else _scan_chunk_bwd_contiguous_kernel
    kernel[grid](
        u, delta, A, B, C, D, delta_bias, routes, dy, entering, dentering, dstates, dlast,
        du, ddelta, dA, dB, dC, dD, dbias,
        dim, positions, length, state_dim, num_chunks, *strides,
        HAS_D=D is not None, SCATTER_ATOMIC=scatter_atomic, **flags)
    return du, ddelta, dA, dB, dC, dD, dbias


# ---------------------------------------------------------------------------------------------------------------------
# The custom op: one graph node for every path (fvcore, flop_counter, torch.compile), with autograd.
# ---------------------------------------------------------------------------------------------------------------------
def _resolve_backend(backend: str, *tensors) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got '{backend}'")
    if backend == 'auto':
        return 'triton' if use_triton_for(*tensors) and tensors[0].dtype != torch.float64 else 'torch'
    if backend == 'triton':
        if not HAS_TRITON:
            raise RuntimeError("backend='triton' needs the triton package")
        if not tensors[0].is_cuda and not triton_interpreting():
            raise RuntimeError("backend='triton' on CPU tensors needs the Triton interpreter (TRITON_INTERPRET=1)")
        if tensors[0].dtype == torch.float64:
            raise TypeError("backend='triton' computes in float32; use backend='torch' for float64")
    return backend


@torch.library.custom_op('vmamba_zoo::scan_routes_fwd', mutates_args=())
def _scan_routes_fwd_op(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], routes: Optional[torch.Tensor],
        delta_softplus: bool, accumulate: bool, return_states: bool, backend: str,
        route_kinds: Optional[List[int]] = None, map_hw: Optional[List[int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == 'triton':
        plan = _raster_plan(u.shape[2], u.shape[3], route_kinds, map_hw, A.shape[-1])
        if plan is not None:
            return _raster_fwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, accumulate, return_states)
        return _triton_fwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate, return_states)
    with torch.no_grad():
        y, last_state, states = _scan_routes_torch(u, delta, A, B, C, D, delta_bias, routes, delta_softplus,
                                                   accumulate, return_states)
    # The blocked scan's last state and states are views of its work tensors; the op's outputs are dense tensors
    # of their own, as its fake describes them.
    return (_owned_dense(y), _owned_dense(last_state), y.new_empty(0),
            _owned_dense(states) if states is not None else y.new_empty(0))


def _owned_dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when it is a contiguous tensor owning its storage from offset 0, else a contiguous copy."""
    if t._base is None and t.is_contiguous() and t.storage_offset() == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


@_scan_routes_fwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate, return_states, backend, route_kinds=None,
      map_hw=None):
    batch, _, dim, positions = u.shape
    num_routes, state_dim = delta.shape[1], A.shape[-1]
    out_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    plan = _raster_plan(u.shape[2], u.shape[3], route_kinds, map_hw, A.shape[-1]) if backend == 'triton' else None
    if plan is not None:
        y = _scan_output(u, num_routes, accumulate, _row_walk_reads(u, delta, plan))
    else:
        y = u.new_empty(batch, dim, positions, dtype=out_dtype) if accumulate else u.new_empty(
            batch, num_routes, dim, positions, dtype=out_dtype)
    last_state = u.new_empty(batch, num_routes, dim, state_dim, dtype=out_dtype)
    if plan is not None:
        chunk_states = u.new_empty(0 if _whole_map(plan) else _row_walk_entering_shape(u, delta, A, plan),
                                   dtype=torch.float32)
        states = u.new_empty(batch, num_routes, dim, state_dim, positions if return_states else 0,
                             dtype=torch.float32)
    elif backend == 'triton':
        length = positions if routes is None else routes.shape[1]
        chunk_states = u.new_empty(batch, num_routes, dim, -(-length // _chunk_size()), state_dim,
                                   dtype=torch.float32)
        states = u.new_empty(batch, num_routes, dim, state_dim, positions if return_states else 0,
                             dtype=torch.float32)
    else:
        chunk_states = u.new_empty(0, dtype=out_dtype)
        states = u.new_empty(batch, num_routes, dim, state_dim, positions, dtype=out_dtype) if return_states \
            else u.new_empty(0, dtype=out_dtype)
    return y, last_state, chunk_states, states


def _scan_routes_bwd(u, delta, A, B, C, D, delta_bias, routes, chunk_states, dy, dstates, dlast, delta_softplus,
                     return_states, scatter_atomic, backend, plan, eager=False, du_dtype=torch.float32):
    """The gradients of (u, delta, A, B, C, D, delta_bias) in float32 (float64 for float64 input), None where an
    input is None, given the forward's raster ``plan`` (None: chunked or PyTorch). The body of the backward op, and
    of the eager training path that runs without the op (``eager``: the raster kernels may return ddelta in delta's
    dtype and share one buffer among the accumulated gradients; ``du_dtype``: see ``_raster_bwd``)."""
    if plan is not None and not _whole_map(plan, backward=True):
        if ROW_WALK_BACKWARD and chunk_states.numel() > 0:
            return _raster_bwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, dy, dstates, dlast,
                               entering=chunk_states, eager=eager, du_dtype=du_dtype)
        # The chunked backward recomputes its chunk states (one extra read of u, delta and B). It needs the route
        # table, which scan_routes leaves out of the op when the row walk's backward is to run.
        if routes is None and any(kind != 0 for kind in _unpack_kinds(plan[4], delta.shape[1])):
            raise RuntimeError('scan_routes: the backward needs the route table, which the forward left out (the '
                               'raster switches changed between the forward and the backward)')
        u, delta = u.contiguous(), delta.contiguous()
        chunk_states = _chunk_entering(u, delta, A, B, delta_bias, routes, delta_softplus)[0]
        plan = None
    if plan is not None:
        grads = _raster_bwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus, dy, dstates, dlast,
                            eager=eager)
    elif backend == 'triton':
        u, delta, dy = u.contiguous(), delta.contiguous(), dy.contiguous()
        grads = _triton_bwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, chunk_states, dy, dstates,
                            dlast, scatter_atomic, one_buffer=eager)
    else:
        grads = _scan_routes_torch_bwd(u, delta, A, B, C, D, delta_bias, routes, delta_softplus, dy, dlast,
                                       dstates if return_states else None)
    return grads


@torch.library.custom_op('vmamba_zoo::scan_routes_bwd', mutates_args=())
def _scan_routes_bwd_op(
        u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], routes: Optional[torch.Tensor],
        chunk_states: torch.Tensor, dy: torch.Tensor, dstates: Optional[torch.Tensor], dlast: Optional[torch.Tensor],
        delta_softplus: bool, return_states: bool, scatter_atomic: bool, backend: str,
        route_kinds: Optional[List[int]] = None, map_hw: Optional[List[int]] = None,
) -> List[torch.Tensor]:
    plan = _raster_plan(u.shape[2], u.shape[3], route_kinds, map_hw, A.shape[-1]) if backend == 'triton' else None
    grads = _scan_routes_bwd(u, delta, A, B, C, D, delta_bias, routes, chunk_states, dy, dstates, dlast,
                             delta_softplus, return_states, scatter_atomic, backend, plan)
    # Dense gradients whatever layout a path produced, so that the fake below describes them exactly (inductor
    # asserts the strides of custom-op outputs).
    return [_owned_dense(g) if g is not None else u.new_empty(0) for g in grads]


@_scan_routes_bwd_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, routes, chunk_states, dy, dstates, dlast, delta_softplus, return_states,
      scatter_atomic, backend, route_kinds=None, map_hw=None):
    grad_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    return [u.new_empty(t.shape, dtype=grad_dtype) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, delta_bias)]


def _setup_context(ctx, inputs, output):
    (u, delta, A, B, C, D, delta_bias, routes, delta_softplus, accumulate, return_states, backend, route_kinds,
     map_hw) = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, routes, output[2])
    ctx.delta_softplus, ctx.return_states, ctx.backend = delta_softplus, return_states, backend
    ctx.route_kinds, ctx.map_hw = route_kinds, map_hw
    ctx.scatter_atomic = _scatter_atomic(u, routes)


def _scatter_atomic(u: torch.Tensor, routes: Optional[torch.Tensor]) -> bool:
    """Whether the chunked backward must add its u/delta gradients atomically: routes that share one input, or that
    revisit a position."""
    return routes is not None and (u.shape[1] == 1 or _routes_revisit(routes))


def _routes_revisit(routes: torch.Tensor) -> bool:
    """Whether a route visits a position twice (it must then accumulate its delta/u gradients there; distinct visits
    can store). Answering reads the table on the host, so the answer is kept on the tensor, keyed by its version."""
    return _kept_answer(routes, '_vmamba_zoo_revisits', None,
                        lambda: bool((routes.sort(dim=1).values.diff(dim=1) == 0).any()))


def _backward(ctx, dy, dlast, dchunk, dstates):
    u, delta, A, B, C, D, delta_bias, routes, chunk_states = ctx.saved_tensors
    grads = _scan_routes_bwd_op(
        u, delta, A, B, C, D, delta_bias, routes, chunk_states, dy,
        dstates if ctx.return_states and dstates is not None else None, dlast, ctx.delta_softplus,
        ctx.return_states, ctx.scatter_atomic, ctx.backend, ctx.route_kinds, ctx.map_hw)
    return _input_grads(grads, (u, delta, A, B, C, D, delta_bias)) + (None,) * 7


def _input_grads(grads, inputs):
    """The float32 gradients in their inputs' dtypes, None for absent inputs."""
    return tuple(None if t is None else g.to(t.dtype) for g, t in zip(grads, inputs))


_scan_routes_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _RasterScanEager(torch.autograd.Function):
    """The raster scan with autograd, for eager training: the custom op's forward and backward bodies without its
    dispatch (schema defaults, alias checks, redispatch), which took more host time than the kernels it launched in
    a VMamba-T training step on the H200 (2026-11-30 host profile). Tracing, compiling and dispatch modes keep the
    custom op.

    ``layout``: None when the operands come in the scan's layout and types (``_raster_operands``); else the
    ``scan_layout`` shapes of a map-shaped call with a merged output (``multi_scan_2d``), into which the forward
    reshapes them itself (``_map_scan_forward``), and the backward returns the gradients in the caller's shapes and
    dtypes: the reshapes and casts around the node then record no autograd nodes of their own (eight for
    ``multi_scan_2d`` on a leaf's views, and their backward calls, about a quarter of a small map's host time per
    forward and backward on the CPU)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, routes, plan, delta_softplus, accumulate, return_states,
                layout=None):
        ctx.input_meta = None
        if layout is None:
            y, last_state, entering, states = _raster_fwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus,
                                                          accumulate, return_states)
        else:
            inputs = (u, delta, A, B, C, D, delta_bias)
            ctx.input_meta = tuple(None if t is None else (t.shape, t.dtype) for t in inputs)
            (u, delta, A, B, C, D, delta_bias), (y, last_state, entering, states) = _map_scan_forward(
                inputs, layout, plan, delta_softplus, return_states, distinct_outputs=True)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, routes, entering)
        ctx.plan, ctx.delta_softplus = plan, delta_softplus
        ctx.accumulate, ctx.return_states = accumulate, return_states
        ctx.scatter_atomic = _scatter_atomic(u, routes)
        ctx.set_materialize_grads(False)
        return y, last_state, states

    @staticmethod
    def backward(ctx, dy, dlast, dstates):
        u, delta, A, B, C, D, delta_bias, routes, entering = ctx.saved_tensors
        plan = ctx.plan
        if ctx.input_meta is not None:  # map-shaped upstream gradients
            dy = None if dy is None else dy.flatten(-2)
            dstates = None if dstates is None else dstates.flatten(-2)
        if dy is None:  # only the states or the last state are used
            dy = _scan_output(u, delta.shape[1], ctx.accumulate, _row_walk_reads(u, delta, plan)).zero_()
        grads = _scan_routes_bwd(u, delta, A, B, C, D, delta_bias, routes, entering, dy,
                                 dstates if ctx.return_states else None, dlast, ctx.delta_softplus, ctx.return_states,
                                 ctx.scatter_atomic, 'triton', plan, eager=True, du_dtype=u.dtype)
        if ctx.input_meta is None:
            return _input_grads(grads, (u, delta, A, B, C, D, delta_bias)) + (None,) * 6
        return tuple(None if g is None else cast_to(g.reshape(meta[0]), meta[1])
                     for g, meta in zip(grads, ctx.input_meta)) + (None,) * 6


def _raster_operands(u, delta, A, B, C, D, delta_bias, plan):
    """The Triton kernels' operands: the parameters (A, D, delta_bias) float32 and contiguous, B and C contiguous, u
    and delta contiguous unless the row walk reads them in place (``plan`` None: no raster plan)."""
    A, D, delta_bias = (None if t is None else cast_to(t, torch.float32).contiguous() for t in (A, D, delta_bias))
    B, C = B.contiguous(), C.contiguous()
    if not _row_walk_reads(u, delta, plan):
        u, delta = u.contiguous(), delta.contiguous()
    return u, delta, A, B, C, D, delta_bias


def _map_scan_forward(inputs, layout, plan, delta_softplus: bool, return_states: bool, distinct_outputs: bool):
    """The raster forward of map-shaped operands (x, delta, A, B, C, D, delta_bias) reshaped into ``layout``
    (``scan_layout``) and ``_raster_operands``: those operands, and ``_raster_fwd``'s results with y and the states
    map-shaped, (batch, dim, H, W) and (batch, K, dim, N, H, W)."""
    operands = _raster_operands(*(None if t is None else t.reshape(shape) for t, shape in zip(inputs, layout)), plan)
    y, last_state, entering, states = _raster_fwd(*operands, plan, delta_softplus, True, return_states,
                                                  distinct_outputs=distinct_outputs)
    map_hw = inputs[0].shape[-2:]
    y = y.view(*y.shape[:-1], *map_hw)
    if return_states:
        states = states.view(*states.shape[:-1], *map_hw)
    return operands, (y, last_state, entering, states)


def scan_layout(x_shape, num_routes: int, state_dim: int):
    """The shapes that ``scan_routes`` takes for ``multi_scan_2d``'s operands of a map ``x`` of ``x_shape``
    ((batch, dim, H, W) or (batch, K, dim, H, W)): u, delta, A, B, C, D and delta_bias."""
    batch, dim, positions = x_shape[0], x_shape[-3], x_shape[-2] * x_shape[-1]
    return ((batch, 1 if len(x_shape) == 4 else num_routes, dim, positions), (batch, num_routes, dim, positions),
            (num_routes, dim, state_dim), (batch, num_routes, state_dim, positions),
            (batch, num_routes, state_dim, positions), (num_routes, dim), (num_routes, dim))


def eager_map_scan(x, delta, A, B, C, D, delta_bias, pattern, delta_softplus: bool, return_states: bool,
                   backend: str):
    """``multi_scan_2d``'s fused scan on the raster kernels in a plain eager call, with its operands in the caller's
    shapes (already checked there), as one autograd node (``_RasterScanEager`` with a layout); None where other
    kernels would run (PyTorch backend, routes that are not raster walks, large d_state), where ``scan_routes`` then
    runs it and checks the rest.

    Returns:
        (y (batch, dim, H, W) float32, states (batch, K, dim, N, H, W) or None), or None.
    """
    if pattern.route_kinds is None or _resolve_backend(backend, x) != 'triton':
        return None
    device = x.device
    # Types and devices (the shapes were checked by multi_scan_2d).
    for name, t in (('x', x), ('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('delta_bias', delta_bias)):
        if t is not None:
            _check_tensor('multi_scan_2d', name, t, t.shape, device)
    state_dim = A.shape[-1]
    layout = scan_layout(x.shape, pattern.num_routes, state_dim)
    plan = _raster_plan(layout[0][2], layout[0][3], tuple(pattern.route_kinds), (pattern.height, pattern.width),
                        state_dim)
    if plan is None:
        return None
    routes = pattern.routes_on(device) if _backward_reads_routes(plan) else None
    inputs = (x, delta, A, B, C, D, delta_bias)
    if _needs_grad(*inputs):
        y, _, states = _RasterScanEager.apply(*inputs, routes, plan, delta_softplus, True, return_states, layout)
    else:
        y, _, _, states = _map_scan_forward(inputs, layout, plan, delta_softplus, return_states,
                                            distinct_outputs=False)[1]
    return y, (states if return_states else None)


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs: 9 * B * L * D * N per scan (+ B * D * L for the D skip), as VMamba and mamba_ssm#110 count it.
# ---------------------------------------------------------------------------------------------------------------------
SCAN_OP_NAMES = ('vmamba_zoo::scan_routes_fwd',)


def selective_scan_flops(batch: int, length: int, channels: int, state_dim: int, with_D: bool = True,
                         with_z: bool = False) -> int:
    """FLOPs of a selective scan over ``channels`` (all routes together) and ``length`` steps: 9·B·L·D·N (+B·D·L
    for the D skip, +B·D·L for the z gate)."""
    flops = 9 * batch * length * channels * state_dim
    return flops + batch * channels * length * (int(with_D) + int(with_z))


def _op_flops(u_shape, delta_shape, A_shape, has_D, routes_shape) -> int:
    batch, _, dim, positions = u_shape
    num_routes, state_dim = delta_shape[1], A_shape[-1]
    length = positions if routes_shape is None else routes_shape[1]
    return selective_scan_flops(batch, length, num_routes * dim, state_dim, with_D=has_D)


def _fvcore_scan_handle(inputs, outputs):
    from fvcore.nn.jit_handles import get_shape

    shapes = [get_shape(v) if v.isCompleteTensor() else None for v in inputs]
    # Positional schema: u, delta, A, B, C, D, delta_bias, routes, ... (None arguments trace as constants).
    return _op_flops(shapes[0], shapes[1], shapes[2], shapes[5] is not None, shapes[7])


def fvcore_op_handles():
    """fvcore handles for the scan op: ``FlopCountAnalysis(model, x).set_op_handle(**fvcore_op_handles())``."""
    return {name: _fvcore_scan_handle for name in SCAN_OP_NAMES}


def _register_flop_formulas():
    try:
        from torch.utils.flop_counter import register_flop_formula
    except ImportError:  # pragma: no cover - torch < 2.4
        return

    @register_flop_formula(torch.ops.vmamba_zoo.scan_routes_fwd)
    def _(u, delta, A, B, C, D, delta_bias, routes, *args, out_shape=None, **kwargs):
        return _op_flops(u, delta, A, D is not None, routes)

    @register_flop_formula(torch.ops.vmamba_zoo.scan_routes_bwd)
    def _(u, delta, A, B, C, D, delta_bias, routes, *args, out_shape=None, **kwargs):
        # The backward recomputes the forward recurrence and runs the reverse one: twice the forward.
        return 2 * _op_flops(u, delta, A, D is not None, routes)


_register_flop_formulas()


# ---------------------------------------------------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------------------------------------------------
def _check_tensor(fn: str, name: str, t, shape, device, optional: bool = False):
    if t is None:
        if optional:
            return
        raise ValueError(f'{fn}: {name} is required')
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{fn}: {name} must be a torch.Tensor, got {type(t).__name__}')
    if t.is_complex():
        raise TypeError(f'{fn}: {name} must be real; complex state matrices are not supported')
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f'{fn}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}')
    if t.device != device:
        raise ValueError(f'{fn}: {name} is on {t.device} but u is on {device}; all inputs must share one device')
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f'{fn}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}')


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def scan_routes(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None,
        routes: Optional[torch.Tensor] = None,
        delta_softplus: bool = False,
        accumulate: bool = True,
        return_states: bool = False,
        return_last_state: bool = False,
        backend: str = 'auto',
        route_kinds: Optional[Sequence[int]] = None,
        map_hw: Optional[Tuple[int, int]] = None,
):
    """Selective scan along K routes over P positions, every operand in spatial layout (see the module docstring).

    Args:
        u: (batch, Ku, dim, P) input, Ku = 1 (shared by every route) or K.
        delta: (batch, K, dim, P) step sizes.
        A: (K, dim, N) real state matrix.
        B: (batch, K, N, P) input projections.
        C: (batch, K, N, P) output projections.
        D: optional (K, dim) skip weights.
        delta_bias: optional (K, dim) bias added to ``delta``.
        routes: optional (K, L) integer positions in [0, P); None walks 0..P-1 for every route.
        delta_softplus: apply softplus to ``delta`` after the bias.
        accumulate: sum the route outputs into one (batch, dim, P) map; else return (batch, K, dim, P).
        return_states: also return the hidden state at every position, (batch, K, dim, N, P), in float32.
        return_last_state: also return each route's final state, (batch, K, dim, N), in float32.
        backend: 'auto' (Triton on CUDA, chunked PyTorch elsewhere), 'triton' or 'torch'.
        route_kinds: optional K codes saying that the routes are raster walks of an ``map_hw`` map: 0 row-major,
            1 column-major, 2 row-major reversed, 3 column-major reversed (``ScanPattern.route_kinds``). With them
            Triton runs its whole-map kernels, which need no route table; ``routes`` must be those walks.
        map_hw: (H, W) of the map, with H * W = P; needed with ``route_kinds``.

    Returns:
        The float32 output (float64 for float64 input), followed by the requested states.
    """
    fn = 'scan_routes'
    if not isinstance(u, torch.Tensor) or u.dim() != 4:
        raise ValueError(f'{fn}: u must be a 4-D tensor (batch, Ku, dim, P), got '
                         f'{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}')
    batch, k_u, dim, positions = u.shape
    if not isinstance(delta, torch.Tensor) or delta.dim() != 4:
        raise ValueError(f'{fn}: delta must be a 4-D tensor (batch, K, dim, P)')
    num_routes = delta.shape[1]
    if k_u not in (1, num_routes):
        raise ValueError(f'{fn}: u has {k_u} maps; it must have 1 (shared) or K={num_routes}')
    if not isinstance(A, torch.Tensor) or A.dim() != 3:
        raise ValueError(f'{fn}: A must be a 3-D tensor (K, dim, N)')
    state_dim = A.shape[-1]
    device = u.device
    _check_tensor(fn, 'u', u, (batch, k_u, dim, positions), device)
    _check_tensor(fn, 'delta', delta, (batch, num_routes, dim, positions), device)
    _check_tensor(fn, 'A', A, (num_routes, dim, state_dim), device)
    _check_tensor(fn, 'B', B, (batch, num_routes, state_dim, positions), device)
    _check_tensor(fn, 'C', C, (batch, num_routes, state_dim, positions), device)
    _check_tensor(fn, 'D', D, (num_routes, dim), device, optional=True)
    _check_tensor(fn, 'delta_bias', delta_bias, (num_routes, dim), device, optional=True)
    if routes is not None:
        if not isinstance(routes, torch.Tensor) or routes.dim() != 2 or routes.shape[0] != num_routes:
            raise ValueError(f'{fn}: routes must be an integer tensor of shape (K={num_routes}, L)')
        if routes.dtype.is_floating_point or routes.dtype == torch.bool:
            raise TypeError(f'{fn}: routes must be an integer tensor, got {routes.dtype}')
        if routes.device != device:
            raise ValueError(f'{fn}: routes is on {routes.device} but u is on {device}')
        routes = routes.to(torch.int32).contiguous()
    if route_kinds is not None:
        route_kinds = [int(kind) for kind in route_kinds]
        if len(route_kinds) != num_routes or any(kind not in (0, 1, 2, 3) for kind in route_kinds):
            raise ValueError(f'{fn}: route_kinds must hold K={num_routes} codes in 0..3, got {route_kinds}')
        if map_hw is None or len(map_hw) != 2 or int(map_hw[0]) * int(map_hw[1]) != positions:
            raise ValueError(f'{fn}: map_hw must be (H, W) with H * W = P = {positions} when route_kinds is given, '
                             f'got {map_hw}')
        if routes is not None and routes.shape[1] != positions:
            raise ValueError(f'{fn}: raster routes visit every position once; routes has length {routes.shape[1]} '
                             f'for P={positions}')
        map_hw = [int(map_hw[0]), int(map_hw[1])]
    elif routes is None:  # the identity route is a row-major walk of any map
        route_kinds, map_hw = [0] * num_routes, [1, positions]
    else:
        map_hw = None
    if torch.jit.is_tracing():  # the tracer (fvcore) cannot record int lists; they only pick a kernel, not the math
        route_kinds = map_hw = None
    if state_dim < 1 or state_dim > 256:
        raise ValueError(f'{fn}: d_state N={state_dim} must be in [1, 256]')
    backend = _resolve_backend(backend, u)
    plan = _raster_plan(u.shape[2], u.shape[3], route_kinds, map_hw, state_dim) if backend == 'triton' else None
    if backend == 'triton':
        # Parameters stay float32 inside the kernel; activations keep their dtype and are upcast on load.
        u, delta, A, B, C, D, delta_bias = _raster_operands(u, delta, A, B, C, D, delta_bias, plan)
    # In plain eager calls the raster scan runs without the custom op, whose dispatch cost more host time than the
    # kernels at the smaller stages.
    if plan is not None and plain_eager():
        if _needs_grad(u, delta, A, B, C, D, delta_bias):
            y, last_state, states = _RasterScanEager.apply(u, delta, A, B, C, D, delta_bias, routes, plan,
                                                           delta_softplus, accumulate, return_states)
        else:
            y, last_state, _, states = _raster_fwd(u, delta, A, B, C, D, delta_bias, plan, delta_softplus,
                                                   accumulate, return_states, distinct_outputs=False)
    else:
        # The raster kernels walk the routes from route_kinds alone. Left out of the op, the route table is dead
        # code in a compiled graph, which would otherwise rebuild it (arange, flip, stack) on every call.
        op_routes = None if plan is not None and not _backward_reads_routes(plan) else routes
        y, last_state, _, states = _scan_routes_fwd_op(u, delta, A, B, C, D, delta_bias, op_routes, delta_softplus,
                                                       accumulate, return_states, backend, route_kinds, map_hw)
    outputs = (y,) + ((states,) if return_states else ()) + ((last_state,) if return_last_state else ())
    return outputs if len(outputs) > 1 else y


def selective_scan_fn(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor] = None,
        z: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None,
        delta_softplus: bool = False,
        return_last_state: bool = False,
        *,
        backend: str = 'auto',
):
    """Drop-in replacement for ``mamba_ssm.selective_scan_fn``: same arguments, order and results.

    Args:
        u: (batch, dim, L) input, float32/float16/bfloat16 (float64 on the PyTorch path).
        delta: (batch, dim, L) step sizes.
        A: (dim, N) real state matrix.
        B: (batch, N, L) or (batch, G, N, L); channel d uses group ``d // (dim // G)``.
        C: same shapes as ``B``.
        D: optional (dim,) skip weights.
        z: optional (batch, dim, L) gate: the output is multiplied by ``silu(z)``.
        delta_bias: optional (dim,) bias added to ``delta``.
        delta_softplus: apply softplus to ``delta`` after the bias.
        return_last_state: also return the final state (batch, dim, N), float32.
        backend: 'auto' (Triton on CUDA, chunked PyTorch on CPU), 'triton' or 'torch'.

    Returns:
        ``out`` (batch, dim, L) in ``u``'s dtype, and the last state if ``return_last_state``.

    Example:
        >>> out = selective_scan_fn(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    """
    fn = 'selective_scan_fn'
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f'{fn}: u must be a 3-D tensor (batch, dim, L), got '
                         f'{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}')
    batch, dim, length = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError(f'{fn}: A must be a 2-D tensor (dim, N)')
    state_dim = A.shape[1]
    if not isinstance(B, torch.Tensor) or B.dim() not in (3, 4):
        raise ValueError(f'{fn}: B must be (batch, N, L) or (batch, G, N, L); constant B is not supported')
    groups = 1 if B.dim() == 3 else B.shape[1]
    if groups < 1 or dim % groups:
        raise ValueError(f'{fn}: dim={dim} must be divisible by the number of B/C groups G={groups}')
    group_shape = (batch, state_dim, length) if B.dim() == 3 else (batch, groups, state_dim, length)
    _check_tensor(fn, 'u', u, (batch, dim, length), u.device)
    _check_tensor(fn, 'delta', delta, (batch, dim, length), u.device)
    _check_tensor(fn, 'A', A, (dim, state_dim), u.device)
    _check_tensor(fn, 'B', B, group_shape, u.device)
    _check_tensor(fn, 'C', C, group_shape, u.device)
    _check_tensor(fn, 'D', D, (dim,), u.device, optional=True)
    _check_tensor(fn, 'z', z, (batch, dim, length), u.device, optional=True)
    _check_tensor(fn, 'delta_bias', delta_bias, (dim,), u.device, optional=True)
    per_group = dim // groups
    y, last_state = scan_routes(
        u.reshape(batch, groups, per_group, length), delta.reshape(batch, groups, per_group, length),
        A.reshape(groups, per_group, state_dim), B.reshape(batch, groups, state_dim, length),
        C.reshape(batch, groups, state_dim, length),
        D=None if D is None else D.reshape(groups, per_group),
        delta_bias=None if delta_bias is None else delta_bias.reshape(groups, per_group),
        delta_softplus=delta_softplus, accumulate=False, return_last_state=True, backend=backend)
    out = y.reshape(batch, dim, length)
    if z is not None:
        out = out * F.silu(z.to(out.dtype))
    out = out.to(u.dtype)
    return (out, last_state.reshape(batch, dim, state_dim)) if return_last_state else out
