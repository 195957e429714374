"""vmamba_zoo.kernels: the shared selective-scan core, and the channel-first LayerNorm, two-layout SiLU and
linear-with-activation the SS2D networks run.

Installed as ``vmamba_zoo.kernels`` from the top-level ``kernels/`` folder. Imports without Triton or a GPU.
"""
from ._triton_utils import HAS_TRITON, plain_eager, use_triton_for
from .layer_norm import layer_norm_2d, layer_norm_2d_ref, layer_norm_backward, layer_norm_forward
from .fused_linear import (
    ACTIVATIONS, bias_grad_float32, linear_act, linear_act_forward, linear_act_ref, linear_input_grad, mm_float32,
)
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
    'HAS_TRITON', 'plain_eager', 'use_triton_for', 'ACTIVATIONS', 'bias_grad_float32', 'linear_act',
    'linear_act_forward', 'linear_act_ref', 'linear_input_grad', 'mm_float32', 'layer_norm_2d', 'layer_norm_2d_ref', 'layer_norm_forward', 'layer_norm_backward',
    'multi_scan_2d', 'RasterMultiScan',
    'ScanPattern',
    'cached_outside_inference_mode', 'atrous_pattern',
    'bidirectional_pattern', 'cross_merge', 'cross_pattern', 'cross_scan', 'custom_pattern', 'get_pattern',
    'list_patterns', 'multiscale_patterns', 'register_pattern', 'unidirectional_pattern', 'SCAN_OP_NAMES',
    'fvcore_op_handles', 'scan_routes',
    'scan_routes_ref', 'selective_scan_flops', 'selective_scan_fn', 'selective_scan_ref', 'silu_dual_layout',
    'silu_dual_layout_backward', 'silu_dual_layout_forward', 'silu_dual_layout_ref',
]
