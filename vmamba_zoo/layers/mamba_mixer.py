"""Bidirectional Mamba-1 mixer (Vision Mamba's "bimamba v2") on the shared routed selective scan.

Vim's mixer runs a Mamba-1 branch over the token sequence and a second branch, with its own depthwise conv, x/dt
projections, ``A`` and ``D``, over the reversed sequence; both are gated by ``silu(z)`` and averaged before
``out_proj``. The official code flips the whole ``xz`` tensor, runs the fused kernel twice and flips the result back.

Here the reversal never materialises: the backward branch's causal conv over the reversed sequence is an
anti-causal conv with a flipped kernel on the original order, the x/dt projections are pointwise (so they can be
applied in token order), and one ``scan_routes`` call runs both directions with ``bidirectional_pattern`` routes
(route 0 walks 0..L-1, route 1 walks L-1..0), summing the two outputs in place. The gate is shared by both
directions, so ``(y_f * g + y_b * g) / 2 == (y_f + y_b) * g / 2``. (At d_state 16 the scan itself copies its
operands into route order for the call, as its kernels run twice as fast on contiguous steps; see
``kernels/selective_scan.py``.)

Parameter names match mamba_ssm's ``Mamba(bimamba_type='v2')`` so official checkpoints load unchanged.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmamba_zoo.kernels import bidirectional_pattern, scan_routes

__all__ = ['BiMambaMixer']


class BiMambaMixer(nn.Module):
    """Mamba-1 mixer with a forward and a backward scan (Vim, ``bimamba_type='v2'``), on ``(B, L, C)`` tokens.

    Args:
        dim: model width C.
        d_state: SSM state size N.
        d_conv: depthwise causal conv width.
        expand: inner width multiplier (``d_inner = expand * dim``).
        dt_rank: rank of the delta projection; ``'auto'`` is ``ceil(dim / 16)``.
        dt_min: smallest initial step size (forward branch).
        dt_max: largest initial step size (forward branch).
        dt_init: ``'random'`` or ``'constant'`` init of ``dt_proj.weight``.
        dt_scale: scale of the ``dt_proj.weight`` init.
        dt_init_floor: floor of the initial step size.
        conv_bias: bias in the depthwise convs.
        bias: bias in ``in_proj``/``out_proj``.
        divide_out: average the two directions (Vim's ``if_divide_out``) instead of summing them.
        layer_scale_init: optional init value of a per-channel output scale ``gamma``.
        backend: scan backend passed to ``scan_routes`` ('auto', 'triton', 'torch').
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank='auto',
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init: str = 'random',
            dt_scale: float = 1.0,
            dt_init_floor: float = 1e-4,
            conv_bias: bool = True,
            bias: bool = False,
            divide_out: bool = True,
            layer_scale_init: Optional[float] = None,
            backend: str = 'auto',
    ):
        super().__init__()
        self.d_model = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.divide_out = divide_out
        self.backend = backend
        d_inner = self.d_inner

        if layer_scale_init is not None:
            self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim))
        else:
            self.gamma = None
        self.in_proj = nn.Linear(dim, d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        self._init_dt_proj(self.dt_proj, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
        self.A_log = nn.Parameter(self._s4d_real_log(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_b_log = nn.Parameter(self._s4d_real_log(d_inner, d_state))
        self.conv1d_b = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj_b = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        # The official v2 code leaves dt_proj_b at nn.Linear's default init (no dt-range bias); kept for fidelity.
        self.dt_proj_b = nn.Linear(self.dt_rank, d_inner, bias=True)
        self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)
        for p in (self.A_log, self.A_b_log, self.D, self.D_b):
            p._no_weight_decay = True

    @staticmethod
    def _s4d_real_log(d_inner: int, d_state: int) -> torch.Tensor:
        return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1).contiguous()

    @staticmethod
    def _init_dt_proj(proj: nn.Linear, dt_init, dt_scale, dt_min, dt_max, dt_init_floor):
        std = proj.in_features ** -0.5 * dt_scale
        if dt_init == 'constant':
            nn.init.constant_(proj.weight, std)
        elif dt_init == 'random':
            nn.init.uniform_(proj.weight, -std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        dt = torch.exp(torch.rand(proj.out_features) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        proj.bias._no_reinit = True  # model-level inits zero Linear biases; this one must survive

    def _scan_inputs(self, x: torch.Tensor):
        """Both branches' conv outputs, in token order, stacked as the (B, 2, d_inner, L) per-route scan input."""
        length = x.shape[-1]
        pad = self.d_conv - 1
        u_fwd = self.conv1d(x)[..., :length]
        # Causal conv over the reversed sequence == anti-causal conv with the kernel reversed, read in token order.
        u_bwd = F.conv1d(x, self.conv1d_b.weight.flip(-1), self.conv1d_b.bias, padding=pad,
                         groups=self.d_inner)[..., pad:]
        return F.silu(torch.stack([u_fwd, u_bwd], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix ``x`` (B, L, C) along the sequence in both directions; returns (B, L, C)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f'BiMambaMixer expects (batch, length, {self.d_model}) tokens, got {tuple(x.shape)}')
        length = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2 * d_inner, L)
        x_in, z = xz.chunk(2, dim=1)
        u = self._scan_inputs(x_in)  # (B, 2, d_inner, L)

        # x_proj / dt_proj are pointwise: apply each direction's weights in token order, no reversed copies.
        x_dbl = torch.einsum('bkdl,kcd->bkcl', u, torch.stack([self.x_proj.weight, self.x_proj_b.weight]))
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        delta = torch.einsum('bkrl,kdr->bkdl', dt, torch.stack([self.dt_proj.weight, self.dt_proj_b.weight]))
        param_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # SSM parameters stay fp32
        A = -torch.exp(torch.stack([self.A_log, self.A_b_log]).to(param_dtype))
        pattern = bidirectional_pattern(length)
        y = scan_routes(
            u, delta.contiguous(), A, B.contiguous(), C.contiguous(),
            D=torch.stack([self.D, self.D_b]).to(param_dtype),
            delta_bias=torch.stack([self.dt_proj.bias, self.dt_proj_b.bias]).to(param_dtype),
            routes=pattern.routes_on(x.device), route_kinds=pattern.route_kinds, map_hw=(length, 1),
            delta_softplus=True, accumulate=True, backend=self.backend,
        )  # (B, d_inner, L) float32: forward + backward outputs at each token
        y = y * F.silu(z.to(y.dtype))
        if self.divide_out:
            y = y / 2
        out = self.out_proj(y.to(x.dtype).transpose(1, 2))
        if self.gamma is not None:
            out = out * self.gamma
        return out

    def extra_repr(self) -> str:
        return f'd_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}'
