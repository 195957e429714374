"""2D multi-scan: the selective scan along a pattern's routes over a (B, D, H, W) map.

Two paths compute the same function:

* fused (default): the kernel walks each route through the original map and accumulates the route outputs into one
  (B, D, H, W) result. No permuted copy of the input and no per-route output is materialised, except from
  d_state ``selective_scan.ROUTE_ORDERED_MIN_STATE_DIM`` (9), where the recurrence, not the bytes, dominates: there
  the chunked kernels run on transient route-ordered copies, in batch slices, twice as fast as through the route
  table.
* plain: ``cross_scan`` gathers K copies, the scan runs on them, ``cross_merge`` scatter-adds the K outputs. It is the
  readable reference of the fused path and a debugging aid.
"""
from typing import Optional, Union

import torch

from .scan_patterns import ScanPattern, cross_merge, cross_scan, get_pattern
from ._triton_utils import cast_to, plain_eager
from .selective_scan import (_backward_reads_routes, _raster_fwd, _raster_plan, _resolve_backend, _row_walk_reads,
                             _scan_routes_bwd, _scatter_atomic, eager_map_scan, scan_layout, scan_routes)

__all__ = ['multi_scan_2d', 'RasterMultiScan']


def _check_routes_param(fn: str, name: str, t: Optional[torch.Tensor], num_routes: int, dim: int):
    """Accept (K * D,) or (K, D) parameters (VMamba stores them flat)."""
    if t is None or (t.dim() == 1 and t.shape[0] == num_routes * dim) or (t.dim() == 2 and tuple(t.shape) == (
            num_routes, dim)):
        return
    raise ValueError(f'{fn}: {name} must have shape ({num_routes * dim},) or ({num_routes}, {dim}), got '
                     f'{tuple(t.shape)}')


def multi_scan_2d(
        x: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor] = None,
        delta_bias: Optional[torch.Tensor] = None,
        delta_softplus: bool = False,
        pattern: Union[str, ScanPattern] = 'cross',
        fused: bool = True,
        return_states: bool = False,
        out_dtype: Optional[torch.dtype] = torch.float32,
        backend: str = 'auto',
):
    """Selective scan along every route of ``pattern`` and sum of the route outputs on the map.

    All per-position operands stay in spatial layout: ``delta``, ``B`` and ``C`` of route k are read at the position
    the route visits. Because VMamba's projections are pointwise, they can be computed on the map directly.

    Args:
        x: (batch, dim, H, W) input shared by all routes, or (batch, K, dim, H, W) with one input per route.
        delta: (batch, K, dim, H, W) step sizes, one per route.
        A: (K * dim, N) or (K, dim, N) real state matrix.
        B: (batch, K, N, H, W) input projections.
        C: (batch, K, N, H, W) output projections.
        D: optional (K * dim,) or (K, dim) skip weights.
        delta_bias: optional (K * dim,) or (K, dim) bias added to ``delta``.
        delta_softplus: apply softplus to ``delta`` after the bias.
        pattern: a pattern name registered in ``scan_patterns`` (e.g. 'cross', 'bidirectional', 'atrous',
            'unidirectional') or a ``ScanPattern``.
        fused: walk the routes in the kernel (True) or permute, scan and merge (False).
        return_states: also return the hidden state at every position, (batch, K, dim, N, H, W), float32.
        out_dtype: dtype of the merged output; float32 by default, as the next op is usually a norm.
        backend: 'auto', 'triton' or 'torch' (see ``scan_routes``).

    Returns:
        (batch, dim, H, W) merged output, and the states if ``return_states``.
    """
    fn = 'multi_scan_2d'
    if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
        raise ValueError(f'{fn}: x must be (batch, dim, H, W) or (batch, K, dim, H, W), got '
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    batch, dim, height, width = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    if isinstance(pattern, str):
        pattern = get_pattern(pattern, height, width)
    if (pattern.height, pattern.width) != (height, width):
        raise ValueError(f'{fn}: pattern {pattern.name} is for {pattern.height}x{pattern.width} but x is '
                         f'{height}x{width}')
    num_routes = pattern.num_routes
    if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != (batch, num_routes, dim, height, width):
        raise ValueError(f'{fn}: delta must have shape {(batch, num_routes, dim, height, width)}, got '
                         f'{tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__}')
    if not isinstance(A, torch.Tensor) or A.dim() not in (2, 3):
        raise ValueError(f'{fn}: A must be (K * dim, N) or (K, dim, N)')
    state_dim = A.shape[-1]
    if A.shape[:-1] not in ((num_routes * dim,), (num_routes, dim)):
        raise ValueError(f'{fn}: A must have shape ({num_routes * dim}, N) or ({num_routes}, {dim}, N), got '
                         f'{tuple(A.shape)}')
    _check_routes_param(fn, 'D', D, num_routes, dim)
    _check_routes_param(fn, 'delta_bias', delta_bias, num_routes, dim)
    for name, t in (('B', B), ('C', C)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (batch, num_routes, state_dim, height, width):
            raise ValueError(f'{fn}: {name} must have shape (batch={batch}, K={num_routes}, N={state_dim}, {height}, '
                             f'{width}), got {tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}')
    positions = height * width
    result = None
    if fused and plain_eager():
        # One autograd node that takes the map-shaped operands as they are.
        result = eager_map_scan(x, delta, A, B, C, D, delta_bias, pattern, delta_softplus, return_states, backend)
    if result is not None:  # already map-shaped
        y, states = result
        y = y if out_dtype is None else cast_to(y, out_dtype)
        return (y, states) if return_states else y
    if fused:
        u_shape, delta_shape, A_shape, _, _, param_shape, _ = scan_layout(x.shape, num_routes, state_dim)
        result = scan_routes(
            x.reshape(u_shape), delta.reshape(delta_shape), A.view(A_shape), B.flatten(3), C.flatten(3),
            D=None if D is None else D.view(param_shape),
            delta_bias=None if delta_bias is None else delta_bias.view(param_shape), routes=pattern.routes_on(x.device),
            delta_softplus=delta_softplus, accumulate=True, return_states=return_states, backend=backend,
            route_kinds=pattern.route_kinds, map_hw=(height, width))
        y, states = result if return_states else (result, None)
        y = y.view(batch, dim, height, width)
    else:
        A = A.view(num_routes, dim, state_dim)
        D, delta_bias = (None if t is None else t.view(num_routes, dim) for t in (D, delta_bias))
        length = pattern.route_length
        routed = [cross_scan(t, pattern) for t in (x, delta, B, C)]  # each (batch, K, C, L)
        result = scan_routes(*routed[:2], A, *routed[2:], D=D, delta_bias=delta_bias,
                             delta_softplus=delta_softplus, accumulate=False, return_states=return_states,
                             backend=backend)
        ys, states = result if return_states else (result, None)
        y = cross_merge(ys.view(batch, num_routes, dim, length), pattern)
        if return_states:
            index = pattern.routes.to(x.device)[None, :, None, None, :].expand_as(states)
            states = states.new_zeros(*states.shape[:4], positions).scatter(4, index, states)
    if out_dtype is not None:
        y = cast_to(y, out_dtype)
    if return_states:
        return y, states.view(batch, num_routes, dim, -1, height, width)
    return y


class RasterMultiScan:
    """``multi_scan_2d``'s fused forward and backward on the Triton raster kernels, without autograd.

    For layers that fold the scan into their own ``autograd.Function`` together with the ops around it (SS2D's
    projections), so that one autograd node replaces the dozens that the framework ops around the scan record. An
    eager VMamba-T training step was bound by the host issuing those nodes on the H200 (2026-11-30 profiles).

    ``RasterMultiScan.plan`` says whether the raster kernels would run ``multi_scan_2d`` on a map, eagerly (not while
    tracing, compiling or under a dispatch mode, which keep the custom op); ``forward`` and ``backward`` then compute
    what ``multi_scan_2d(..., fused=True, out_dtype=torch.float32)`` and its backward compute.
    """

    def __init__(self, pattern: ScanPattern, raster_plan):
        self.pattern = pattern
        self.raster_plan = raster_plan

    @classmethod
    def plan(cls, x: torch.Tensor, state_dim: int, pattern: Union[str, ScanPattern] = 'cross',
             backend: str = 'auto', dim: Optional[int] = None) -> Optional['RasterMultiScan']:
        """The raster scan of the (batch, dim, H, W) map ``x`` with ``state_dim`` states along ``pattern``, or None
        where ``multi_scan_2d`` would run other kernels (PyTorch backend, routes that are not raster walks, large
        d_state) or keep its custom op (tracing, compiling, dispatch modes).

        ``dim`` plans for a map of ``dim`` channels that ``x`` stands in for (same H, W, device and dtype), for a
        layer that decides before computing the map; by default ``x.shape[1]``."""
        if not plain_eager() or _resolve_backend(backend, x) != 'triton':
            return None
        height, width = x.shape[-2:]
        if isinstance(pattern, str):
            pattern = get_pattern(pattern, height, width)
        if pattern.route_kinds is None or (pattern.height, pattern.width) != (height, width):
            return None
        raster_plan = _raster_plan(x.shape[1] if dim is None else dim, height * width, pattern.route_kinds,
                                   (height, width), state_dim)
        return None if raster_plan is None else cls(pattern, raster_plan)

    def _scan_views(self, x, delta, B, C):
        batch, dim, height, width = x.shape
        positions = height * width
        u, delta = x.view(batch, 1, dim, positions), delta.reshape(batch, -1, dim, positions)
        if not _row_walk_reads(u, delta, self.raster_plan):
            u, delta = u.contiguous(), delta.contiguous()
        return u, delta, B.flatten(3), C.flatten(3)

    def forward(self, x, delta, A, B, C, D, delta_bias, delta_softplus: bool):
        """The float32 (batch, dim, H, W) sum of the routes' outputs, and the tensor the backward needs.

        Args:
            x: (batch, dim, H, W) input whose H and W merge into one dim: NCHW-contiguous, or channel-last strides,
                which the row walk reads in place.
            delta: (batch, K, dim, H, W) step sizes (any strides with H, W adjacent).
            A: (K, dim, N) float32.
            B, C: (batch, K, N, H, W) contiguous.
            D, delta_bias: (K, dim) float32, or None.
            delta_softplus: apply softplus to ``delta`` after the bias.
        """
        u, delta, B, C = self._scan_views(x, delta, B, C)
        y, _, entering, _ = _raster_fwd(u, delta, A, B, C, D, delta_bias, self.raster_plan, delta_softplus,
                                        accumulate=True, return_states=False, distinct_outputs=False)
        return y.view(x.shape), entering

    def backward(self, x, delta, A, B, C, D, delta_bias, delta_softplus: bool, entering, dy):
        """Gradients of ``forward``'s inputs given ``dy`` (batch, dim, H, W): dx (batch, 1, dim, H * W) and dA, dB,
        dC, dD, dbias in float32, and ddelta in delta's dtype and layout (None for an absent D or bias)."""
        u, delta, B, C = self._scan_views(x, delta, B, C)
        batch, dim, height, width = x.shape
        # Only the chunked fallback reads the route table (a device lookup per call otherwise).
        routes = self.pattern.routes_on(x.device) if _backward_reads_routes(self.raster_plan) else None
        return _scan_routes_bwd(u, delta, A, B, C, D, delta_bias, routes, entering, dy.reshape(batch, dim, -1),
                                None, None, delta_softplus, False, _scatter_atomic(u, routes), 'triton',
                                self.raster_plan, eager=True)
