"""vmamba_zoo.kernels: the shared selective-scan core, and the channel-first LayerNorm and two-layout SiLU the SS2D
networks run.

Installed as ``vmamba_zoo.kernels`` from the top-level ``kernels/`` folder. Imports without Triton or a GPU.
"""
from ._triton_utils import HAS_TRITON, cast_to, plain_eager
from .layer_norm import layer_norm_2d, layer_norm_2d_ref, layer_norm_backward, layer_norm_forward
from .multi_scan import RasterMultiScan, multi_scan_2d
from .scan_patterns import (
    ScanPattern, cached_outside_inference_mode, atrous_pattern, bidirectional_pattern, cross_merge, cross_pattern,
    cross_scan, custom_pattern, get_pattern, list_patterns, multiscale_patterns, register_pattern,
    unidirectional_pattern,
)
from .selective_scan import (
    SCAN_OP_NAMES, fvcore_op_handles, scan_routes, scan_routes_ref, selective_scan_flops, selective_scan_fn,
    selective_scan_ref,
)
from .silu_layouts import (
    silu_dual_layout, silu_dual_layout_backward, silu_dual_layout_forward, silu_dual_layout_ref,
)

__all__ = [
    'HAS_TRITON', 'cast_to', 'plain_eager', 'layer_norm_2d', 'layer_norm_2d_ref', 'layer_norm_forward',
    'layer_norm_backward', 'multi_scan_2d', 'RasterMultiScan',
    'ScanPattern',
    'cached_outside_inference_mode', 'atrous_pattern',
    'bidirectional_pattern', 'cross_merge', 'cross_pattern', 'cross_scan', 'custom_pattern', 'get_pattern',
    'list_patterns', 'multiscale_patterns', 'register_pattern', 'unidirectional_pattern', 'SCAN_OP_NAMES',
    'fvcore_op_handles', 'scan_routes',
    'scan_routes_ref', 'selective_scan_flops', 'selective_scan_fn', 'selective_scan_ref', 'silu_dual_layout',
    'silu_dual_layout_backward', 'silu_dual_layout_forward', 'silu_dual_layout_ref',
]
