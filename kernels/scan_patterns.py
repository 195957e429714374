"""Traversal orders ("scan patterns") over a 2D map, and the plain cross-scan / cross-merge pair.

A pattern is a set of K routes. Route k is a sequence of flat spatial positions ``p = h * W + w`` over an (H, W)
map; the selective scan walks it in order. Every tensor a route reads or writes stays in spatial layout, so a fused
kernel can follow the route through the original (B, D, H, W) feature map instead of materialising K permuted copies
(from d_state 9 the chunked kernels make transient route-ordered copies, which pay off there; see
``selective_scan.ROUTE_ORDERED_MIN_STATE_DIM``).

The plain pair ``cross_scan`` (gather each route into a (B, K, D, L) copy) and ``cross_merge`` (scatter-add the K
route outputs back onto the map) is the readable reference for the fused path and a debugging aid.
"""
from dataclasses import dataclass
import functools
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

__all__ = [
    'cached_outside_inference_mode', 'ScanPattern', 'register_pattern', 'get_pattern', 'list_patterns', 'cross_scan',
    'cross_merge',
    'cross_pattern', 'bidirectional_pattern', 'unidirectional_pattern', 'atrous_pattern', 'multiscale_patterns',
    'custom_pattern',
]


def cached_outside_inference_mode(maxsize=None):
    """``functools.lru_cache`` for functions that build index tensors, which are always built on the CPU and outside
    inference mode, whatever context the first caller runs in.

    A tensor created under ``torch.inference_mode()`` and cached would be reused by later training steps, where
    autograd refuses to save it ("Inference tensors cannot be saved for backward"); one created under a
    ``torch.device('meta')`` context (meta-device model construction) would hold no data for later real forwards.
    """
    def wrap(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args, **kwargs):
            if torch.compiler.is_compiling():  # dynamo traces through the cache and cannot enter these contexts
                return fn(*args, **kwargs)
            with torch.inference_mode(False), torch.device('cpu'):
                return fn(*args, **kwargs)
        return cached
    return wrap


@dataclass(frozen=True)
class ScanPattern:
    """K routes over an (H, W) map.

    Attributes:
        name: Pattern name, for messages.
        height: Map height H.
        width: Map width W.
        routes: int64 tensor (K, L) of flat positions in [0, H * W). Routes may revisit positions or skip some.
        route_kinds: For patterns made only of whole-map raster walks, one code per route (0 row-major,
            1 column-major, 2 row-major reversed, 3 column-major reversed); the Triton path then runs its whole-map
            kernels. None for any other pattern.
    """

    name: str
    height: int
    width: int
    routes: torch.Tensor
    route_kinds: Optional[Tuple[int, ...]] = None

    @property
    def num_routes(self) -> int:
        return self.routes.shape[0]

    @property
    def route_length(self) -> int:
        return self.routes.shape[1]

    @property
    def num_positions(self) -> int:
        return self.height * self.width

    def routes_on(self, device: torch.device) -> torch.Tensor:
        """The routes as contiguous int32 on ``device`` (cached per device), as the kernels consume them."""
        return _routes_on_device(self, torch.device(device))

    def is_identity(self) -> bool:
        """True for a single raster route with no reordering."""
        return self.num_routes == 1 and self.route_length == self.num_positions and bool(
            torch.equal(self.routes[0], torch.arange(self.num_positions)))

    def __hash__(self):  # routes are a tensor; identity of the (cached) object is enough
        return id(self)

    def __eq__(self, other):
        return self is other


@cached_outside_inference_mode(maxsize=256)
def _routes_on_device(pattern: ScanPattern, device: torch.device) -> torch.Tensor:
    return pattern.routes.to(device=device, dtype=torch.int32).contiguous()


def _raster(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width)


def _column_major(height: int, width: int) -> torch.Tensor:
    return torch.arange(height * width).view(height, width).t().reshape(-1)


@cached_outside_inference_mode()
def cross_pattern(height: int, width: int) -> ScanPattern:
    """VMamba's four routes: row-major, column-major, then each reversed (the order of its cross-scan)."""
    row, col = _raster(height, width), _column_major(height, width)
    return ScanPattern('cross', height, width, torch.stack([row, col, row.flip(0), col.flip(0)]), (0, 1, 2, 3))


@cached_outside_inference_mode()
def bidirectional_pattern(height: int, width: int = 1) -> ScanPattern:
    """Vim's forward and backward pass over a token sequence (pass ``height=L`` for a 1D sequence)."""
    row = _raster(height, width)
    return ScanPattern('bidirectional', height, width, torch.stack([row, row.flip(0)]), (0, 2))


@cached_outside_inference_mode()
def unidirectional_pattern(height: int, width: int = 1) -> ScanPattern:
    """One raster scan."""
    return ScanPattern('unidirectional', height, width, _raster(height, width)[None], (0,))


@cached_outside_inference_mode()
def atrous_pattern(height: int, width: int, step: int = 2) -> ScanPattern:
    """EfficientVMamba's atrous routes: the ``step * step`` stride-``step`` sub-grids, each scanned once.

    Sub-grid (i, j) holds positions (i + step * a, j + step * b). The routes come in EfficientVMamba's ES2D order
    (``EfficientScan``): sub-grids ordered by column offset j, then row offset i, i.e. (0, 0), (1, 0), (0, 1), (1, 1)
    for ``step=2``; a sub-grid with even row offset is scanned row-major, one with odd row offset column-major. Route k
    owns the k-th set of x_proj/dt_proj/A/D parameters, so this order is what makes official checkpoints load.
    Every position is visited exactly once over all routes, so a route holds ``H * W / step**2`` positions; H and W
    must be multiples of ``step`` (EfficientVMamba zero-pads the map at the bottom/right first).
    """
    if height % step or width % step:
        raise ValueError(f'atrous_pattern: height={height} and width={width} must be multiples of step={step}; '
                         'pad the map first')
    grid = torch.arange(height * width).view(height, width)
    routes = []
    for j in range(step):
        for i in range(step):
            sub = grid[i::step, j::step]
            routes.append(sub.reshape(-1) if i % 2 == 0 else sub.t().reshape(-1))
    return ScanPattern(f'atrous{step}', height, width, torch.stack(routes))


@cached_outside_inference_mode()
def multiscale_patterns(height: int, width: int) -> Tuple[ScanPattern, ScanPattern]:
    """MSVMamba's routes (``multiscale_4scan_12``): one raster scan at full resolution plus three scans at half
    resolution that form ONE sequence.

    MSVMamba concatenates the reversed row-major, column-major and reversed column-major scans of the half-resolution
    map (size ``(ceil(H / 2), ceil(W / 2))``, the output of its stride-2 depthwise conv) along L and runs a single
    selective scan over the result: one parameter set, and the state carries across the two junctions. It then
    normalises every one of the 3 outputs of a position before summing them, so the three visits of a position must
    stay apart. ``half`` therefore lives on the half-resolution map stacked three times along H (``(3 * h, w)``, copy
    c in rows ``[c * h, (c + 1) * h)``, e.g. ``torch.cat([x] * 3, dim=-2)``): its single route walks copy 0 in
    reversed row-major order, copy 1 column-major, copy 2 in reversed column-major order, and visits every position
    of the stacked map once.

    Returns:
        ``(full, half)``: ``full`` is one row-major route over (H, W); ``half`` is the route of length
        ``3 * h * w`` over the stacked ``(3 * h, w)`` map described above.
    """
    full = unidirectional_pattern(height, width)
    half_h, half_w = (height + 1) // 2, (width + 1) // 2
    row, col = _raster(half_h, half_w), _column_major(half_h, half_w)
    size = half_h * half_w
    route = torch.cat([row.flip(0), col + size, col.flip(0) + 2 * size])
    half = ScanPattern('multiscale_half', 3 * half_h, half_w, route[None])
    return full, half


def custom_pattern(routes: torch.Tensor, height: int, width: int, name: str = 'custom') -> ScanPattern:
    """A user-defined pattern.

    Args:
        routes: Integer tensor (K, L) of flat positions ``h * W + w`` in [0, H * W).
        height: Map height H.
        width: Map width W.
        name: Name used in messages.

    Returns:
        The validated ``ScanPattern``.
    """
    routes = torch.as_tensor(routes)
    if routes.dim() != 2 or routes.dtype.is_floating_point or routes.dtype == torch.bool:
        raise ValueError(f'custom_pattern: routes must be an integer tensor of shape (K, L), got '
                         f'{tuple(routes.shape)} {routes.dtype}')
    if routes.numel() == 0:
        raise ValueError('custom_pattern: routes must not be empty')
    if int(routes.min()) < 0 or int(routes.max()) >= height * width:
        raise ValueError(f'custom_pattern: routes must hold positions in [0, {height * width}) for a '
                         f'{height}x{width} map')
    with torch.inference_mode(False):
        routes = routes.to(torch.int64).cpu().clone()
    return ScanPattern(name, height, width, routes)


_PATTERNS: Dict[str, Callable[..., ScanPattern]] = {}


def register_pattern(name: str, factory: Callable[..., ScanPattern]) -> None:
    """Register ``factory(height, width, **kwargs) -> ScanPattern`` under ``name`` for ``get_pattern``."""
    _PATTERNS[name] = factory


for _name, _factory in (('cross', cross_pattern), ('bidirectional', bidirectional_pattern),
                        ('unidirectional', unidirectional_pattern), ('atrous', atrous_pattern)):
    register_pattern(_name, _factory)


def list_patterns() -> Sequence[str]:
    """Names accepted by ``get_pattern``."""
    return sorted(_PATTERNS)


def get_pattern(name: str, height: int, width: int, **kwargs) -> ScanPattern:
    """Build the registered pattern ``name`` for an (H, W) map."""
    if name not in _PATTERNS:
        raise ValueError(f"get_pattern: unknown pattern '{name}'; known: {', '.join(list_patterns())}")
    return _PATTERNS[name](height, width, **kwargs)


def _check_map(fn: str, arg: str, x: torch.Tensor, pattern: ScanPattern) -> None:
    if x.shape[-2:] != (pattern.height, pattern.width):
        raise ValueError(f'{fn}: {arg} has spatial size {tuple(x.shape[-2:])} but the {pattern.name} pattern is for '
                         f'{pattern.height}x{pattern.width}')


def _raster_route(x: torch.Tensor, kind: int) -> torch.Tensor:
    """(..., H, W) map -> (..., L) in the order of raster route ``kind`` (see ``ScanPattern.route_kinds``)."""
    flat = (x.transpose(-1, -2) if kind % 2 else x).flatten(-2)
    return flat.flip(-1) if kind >= 2 else flat


def _raster_map(y: torch.Tensor, kind: int, height: int, width: int) -> torch.Tensor:
    """The inverse of ``_raster_route``: (..., L) in route ``kind``'s order -> (..., H, W)."""
    y = y.flip(-1) if kind >= 2 else y
    return y.unflatten(-1, (width, height)).transpose(-1, -2) if kind % 2 else y.unflatten(-1, (height, width))


def cross_scan(x: torch.Tensor, pattern: ScanPattern) -> torch.Tensor:
    """Gather every route of ``pattern`` into its own copy.

    Raster routes (patterns with ``route_kinds``) are flips and transposes of the map, copied as such; other routes
    are gathered through their position tables (whose backward, an indexed scatter-add, is slower).

    Args:
        x: (B, C, H, W) map shared by all routes, or (B, K, C, H, W) with one map per route.

    Returns:
        (B, K, C, L) tensor whose [:, k, :, l] is x at position ``routes[k, l]``.
    """
    _check_map('cross_scan', 'x', x, pattern)
    if x.dim() == 5 and x.shape[1] != pattern.num_routes:
        raise ValueError(f'cross_scan: x has {x.shape[1]} route maps but the pattern has {pattern.num_routes}')
    if pattern.route_kinds is not None and x.dim() in (4, 5):
        return torch.stack([_raster_route(x if x.dim() == 4 else x[:, k], kind)
                            for k, kind in enumerate(pattern.route_kinds)], dim=1)
    routes = pattern.routes.to(x.device)
    if x.dim() == 4:
        return x.flatten(2)[:, :, routes].transpose(1, 2)
    if x.dim() == 5:
        flat = x.flatten(3)
        index = routes[None, :, None, :].expand(x.shape[0], -1, x.shape[2], -1)
        return torch.gather(flat, 3, index)
    raise ValueError(f'cross_scan: x must be (B, C, H, W) or (B, K, C, H, W), got {tuple(x.shape)}')


def cross_merge(ys: torch.Tensor, pattern: ScanPattern) -> torch.Tensor:
    """Scatter-add route outputs back onto the map: the adjoint of ``cross_scan`` on a shared map.

    Args:
        ys: (B, K, C, L) route outputs.

    Returns:
        (B, C, H, W) tensor, the sum over routes of each route's output placed at its positions.
    """
    if ys.dim() != 4 or ys.shape[1] != pattern.num_routes or ys.shape[3] != pattern.route_length:
        raise ValueError(f'cross_merge: ys must be (B, {pattern.num_routes}, C, {pattern.route_length}), got '
                         f'{tuple(ys.shape)}')
    batch, _, channels, _ = ys.shape
    if pattern.route_kinds is not None:
        maps = [_raster_map(ys[:, k], kind, pattern.height, pattern.width)
                for k, kind in enumerate(pattern.route_kinds)]
        if len(maps) == 1:  # a fresh tensor, as with several routes, not a view of ys
            return maps[0].clone(memory_format=torch.contiguous_format)
        return functools.reduce(torch.add, maps)
    routes = pattern.routes.to(ys.device)
    out = ys.new_zeros(batch, channels, pattern.num_positions)
    out.index_add_(2, routes.reshape(-1), ys.permute(0, 2, 1, 3).reshape(batch, channels, -1))
    return out.view(batch, channels, pattern.height, pattern.width)
