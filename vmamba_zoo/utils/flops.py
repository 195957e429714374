"""Parameter and FLOP counting for any timm model (zoo models included), with two independent counters.

Counting convention (stated by ``CONVENTION`` and printed by ``tools/flops.py``):

* fvcore (``FlopCountAnalysis``): one fused multiply-add counts as ONE flop. This is the figure papers (VMamba, Swin,
  ConvNeXt) quote as "FLOPs" and timm's model cards label "GMACs". fvcore's default handles also count norms; our
  handle counts ``scaled_dot_product_attention`` like the two explicit matmuls it replaces.
* ``torch.utils.flop_counter``: one multiply-add counts as TWO flops; only matmul/conv/attention ops are counted.
* The selective scan (custom op ``vmamba_zoo::scan_routes_fwd``) counts 9·B·L·D·N + B·D·L (the B·D·L term is
  the D skip; D = all routes' channels) in BOTH counters, as VMamba and state-spaces/mamba#110 do. So flop_counter
  is 2x fvcore for conv/linear/attention but equal to it for the scan, and the totals are not exactly 2x apart.
* Elementwise ops (activations, adds, products, softplus, exp, flips, ...) count zero in both. fvcore lists them as
  ``ignored``; any other op fvcore has no handle for is listed as ``unsupported`` (not counted: review them).

Both counters run a real forward at batch 1 (``device`` may be 'cpu' or 'cuda'); the scan op goes through the same
custom op on every path (fused or plain, Triton or PyTorch), so the count does not depend on the path or device.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .registry import count_params, create_model_at_size, default_input_size

__all__ = [
    'CONVENTION', 'FVCORE_IGNORED_OPS', 'measure_flops', 'fvcore_count', 'flop_counter_count', 'has_fvcore',
    'format_report',
]

CONVENTION = (
    'fvcore: 1 fused multiply-add = 1 flop (the "FLOPs" of papers, "GMACs" of timm cards), norms counted; '
    'torch.utils.flop_counter: 1 multiply-add = 2 flops, only matmul/conv/attention counted; '
    'selective scan (vmamba_zoo::scan_routes_fwd): 9*B*L*D*N + B*D*L (D skip) in both; '
    'elementwise ops count 0 in both.'
)

# Ops that cost (close to) nothing next to the matmuls, skipped by convention. VMamba's own counter ignores silu, neg,
# exp and flip; the rest are the other elementwise, reduction and data-movement ops these models use.
FVCORE_IGNORED_OPS = (
    'aten::silu', 'aten::silu_', 'aten::gelu', 'aten::gelu_', 'aten::neg', 'aten::exp', 'aten::flip',
    'aten::softplus', 'aten::sigmoid', 'aten::sigmoid_', 'aten::tanh', 'aten::hardswish', 'aten::hardsigmoid',
    'aten::relu6', 'aten::leaky_relu', 'aten::elu', 'aten::add', 'aten::add_', 'aten::sub', 'aten::sub_',
    'aten::rsub', 'aten::mul', 'aten::mul_', 'aten::div', 'aten::div_', 'aten::pow', 'aten::sqrt', 'aten::rsqrt',
    'aten::abs', 'aten::square', 'aten::softmax', 'aten::log_softmax', 'aten::mean', 'aten::sum', 'aten::where',
    'aten::fill_',
    'aten::index_add_', 'aten::index_add', 'aten::scatter', 'aten::scatter_add', 'aten::repeat', 'aten::pad',
    'aten::zero_', 'aten::ones_like', 'aten::empty_like', 'aten::linspace', 'aten::rand', 'aten::bernoulli_',
    'aten::expand_as', 'aten::view_as', 'aten::clone', 'aten::repeat_interleave', 'aten::max_pool2d',
    'aten::avg_pool2d', 'aten::adaptive_max_pool2d', 'aten::unflatten', 'aten::movedim', 'aten::mT',
    'aten::lift_fresh', 'aten::alias', 'aten::amax', 'aten::exp_', 'aten::log', 'aten::erf', 'aten::norm',
    'aten::linalg_vector_norm', 'aten::clamp_min', 'aten::tile', 'aten::masked_fill_', 'aten::numpy_T',
    'aten::dropout_', 'aten::feature_dropout', 'aten::channel_shuffle', 'aten::pixel_shuffle',
    'aten::pixel_unshuffle', 'aten::_unsafe_view', 'aten::as_strided', 'aten::new_ones', 'aten::contiguous_',
    'aten::scalar_tensor', 'aten::meshgrid', 'aten::upsample_bicubic2d', 'aten::cumsum',
)

# Matmul-like ops in each counter: for these flop_counter must report exactly 2x fvcore.
_FVCORE_MATMUL = {'conv', 'linear', 'addmm', 'bmm', 'matmul', 'mm', 'einsum', 'baddbmm',
                  'scaled_dot_product_attention', '_convolution'}
_FC_MATMUL_PREFIXES = ('aten.convolution', 'aten.addmm', 'aten.mm', 'aten.bmm', 'aten.baddbmm',
                       'aten._scaled_dot_product', 'aten._flash_attention', 'aten._efficient_attention',
                       'aten.convolution_backward', 'aten._convolution')


def _scan_op_names() -> Tuple[str, ...]:
    from vmamba_zoo.kernels import SCAN_OP_NAMES
    return tuple(SCAN_OP_NAMES)


def has_fvcore() -> bool:
    """True when fvcore can be imported (it is optional on machines that only benchmark)."""
    try:
        import fvcore.nn  # noqa: F401
    except ImportError:
        return False
    return True


def _sdpa_fvcore_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: q @ k^T and attn @ v as MACs."""
    from fvcore.nn.jit_handles import get_shape

    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    batch_heads = math.prod(q_shape[:-2])
    q_len, k_len, head_dim, v_dim = q_shape[-2], k_shape[-2], q_shape[-1], v_shape[-1]
    return batch_heads * q_len * k_len * (head_dim + v_dim)


def _register_cpu_sdpa_flop_formula():
    """torch's flop_counter has no formula for the CPU flash-attention kernel that SDPA dispatches to on CPU, so a
    ViT counted on CPU would miss its attention matmuls; register the same formula torch uses for the CUDA kernels."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, '_scaled_dot_product_flash_attention_for_cpu', None)
    if op is None or op in flop_counter.flop_registry or not hasattr(flop_counter, 'sdpa_flop'):
        return

    @flop_counter.register_flop_formula(op)
    def _(query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop(query, key, value)


_register_cpu_sdpa_flop_formula()


def fvcore_count(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Dict[str, Any]:
    """Count with fvcore (one FMA = one flop), the zoo's scan handle and an SDPA handle registered.

    Returns:
        dict with ``total`` (int), ``by_operator`` (op -> flops), ``unsupported`` (op -> number of calls not counted)
        and ``ignored`` (op -> number of calls of the elementwise ops skipped by convention).
    """
    from fvcore.nn import FlopCountAnalysis
    from vmamba_zoo.kernels import fvcore_op_handles

    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**fvcore_op_handles())
    analysis.set_op_handle('aten::scaled_dot_product_attention', _sdpa_fvcore_handle)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings('none')
    with torch.no_grad():
        total = analysis.total()
    by_operator = {name: int(value) for name, value in analysis.by_operator().items() if value}
    # Ops without a handle are reported by fvcore as unsupported; split off those skipped by convention.
    skipped = dict(analysis.unsupported_ops())
    ignored = {op: calls for op, calls in skipped.items() if op in FVCORE_IGNORED_OPS}
    unsupported = {op: calls for op, calls in skipped.items() if op not in FVCORE_IGNORED_OPS}
    return dict(total=int(total), by_operator=by_operator, unsupported=unsupported, ignored=ignored)


def flop_counter_count(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Dict[str, Any]:
    """Count with ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = two flops).

    Returns:
        dict with ``total`` (int) and ``by_operator`` (op name such as 'aten.addmm' -> flops).
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    by_operator = {str(op): int(value) for op, value in counter.get_flop_counts().get('Global', {}).items()}
    return dict(total=int(counter.get_total_flops()), by_operator=by_operator)


def _split_fvcore(by_operator: Dict[str, int]) -> Dict[str, int]:
    scan_short = {name.split('::')[-1] for name in _scan_op_names()}
    scan = sum(v for k, v in by_operator.items() if k in scan_short)
    matmul = sum(v for k, v in by_operator.items() if k in _FVCORE_MATMUL)
    return dict(scan=scan, matmul=matmul, other=sum(by_operator.values()) - scan - matmul)


def _split_flop_counter(by_operator: Dict[str, int]) -> Dict[str, int]:
    scan_names = {name.replace('::', '.') for name in _scan_op_names()}
    scan = sum(v for k, v in by_operator.items() if k in scan_names)
    matmul = sum(v for k, v in by_operator.items() if k.startswith(_FC_MATMUL_PREFIXES))
    return dict(scan=scan, matmul=matmul, other=sum(by_operator.values()) - scan - matmul)


def measure_flops(
        model: Union[str, nn.Module],
        img_size: Optional[Sequence[int]] = None,
        batch_size: int = 1,
        device: Union[str, torch.device] = 'cpu',
        counters: Sequence[str] = ('fvcore', 'flop_counter'),
        in_chans: int = 3,
) -> Dict[str, Any]:
    """Parameters and FLOPs of a model at one input size, by fvcore and/or ``torch.utils.flop_counter``.

    Args:
        model: a timm model name (zoo or timm; created with random weights) or an ``nn.Module``.
        img_size: (H, W); the model's default input size if None (224x224 for an ``nn.Module``).
        batch_size: batch of the random input; the papers' figures are per image (batch 1).
        device: device to run the forward on ('cpu' or 'cuda'); the counts do not depend on it.
        counters: which counters to run; 'fvcore' is skipped (with ``fvcore_error`` set) when fvcore is missing.
        in_chans: input channels for an ``nn.Module`` model.

    Returns:
        A flat dict: ``model``, ``input_size`` [C, H, W], ``batch_size``, ``params``, ``params_m``; per counter
        ``<counter>_total`` (flops), ``<counter>_g`` (billions), ``<counter>_by_operator`` and the split into
        ``<counter>_matmul``/``_scan``/``_other``; fvcore also ``fvcore_unsupported`` and ``fvcore_ignored``;
        ``gmacs`` (multiply-adds of conv/linear/matmul/attention, in billions) and ``convention``.
    """
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        if img_size is None:
            img_size = default_input_size(model)[1:]
            in_chans = default_input_size(model)[0]
        model = create_model_at_size(model, img_size)
    elif img_size is None:
        img_size = (224, 224)
    model = model.eval().to(device)
    inputs = (torch.randn(batch_size, in_chans, *img_size, device=device),)
    params = count_params(model)
    report: Dict[str, Any] = dict(
        model=name, input_size=[in_chans, *map(int, img_size)], batch_size=batch_size, device=str(device),
        params=params, params_m=round(params / 1e6, 3), convention=CONVENTION)
    if 'fvcore' in counters:
        if has_fvcore():
            result = fvcore_count(model, inputs)
            report.update(fvcore_total=result['total'], fvcore_g=result['total'] / 1e9,
                          fvcore_by_operator=result['by_operator'], fvcore_unsupported=result['unsupported'],
                          fvcore_ignored=result['ignored'])
            report.update({f'fvcore_{k}': v for k, v in _split_fvcore(result['by_operator']).items()})
        else:
            report['fvcore_error'] = 'fvcore is not installed'
    if 'flop_counter' in counters:
        result = flop_counter_count(model, inputs)
        report.update(flop_counter_total=result['total'], flop_counter_g=result['total'] / 1e9,
                      flop_counter_by_operator=result['by_operator'])
        report.update({f'flop_counter_{k}': v for k, v in _split_flop_counter(result['by_operator']).items()})
        report['gmacs'] = report['flop_counter_matmul'] / 2 / 1e9
    elif 'fvcore_matmul' in report:
        report['gmacs'] = report['fvcore_matmul'] / 1e9
    if 'fvcore_g' not in report and 'flop_counter_total' in report:
        # Same convention as fvcore (MACs + scan), without norms: used where fvcore is unavailable.
        report['fvcore_equivalent_g'] = (report['flop_counter_matmul'] / 2 + report['flop_counter_scan']) / 1e9
    return report


def format_report(report: Dict[str, Any]) -> str:
    """Human-readable multi-line summary of ``measure_flops``'s result."""
    c, h, w = report['input_size']
    lines = [f"model: {report['model']}  input: {report['batch_size']}x{c}x{h}x{w}  device: {report['device']}",
             f"params: {report['params_m']:.2f} M ({report['params']:,})"]
    if 'fvcore_g' in report:
        lines.append(f"FLOPs (fvcore, paper convention): {report['fvcore_g']:.3f} G  "
                     f"[conv/linear/attn {report['fvcore_matmul'] / 1e9:.3f} G, "
                     f"scan {report['fvcore_scan'] / 1e9:.4f} G, "
                     f"other {report['fvcore_other'] / 1e9:.4f} G]")
    elif 'fvcore_error' in report:
        lines.append(f"FLOPs (fvcore): not counted ({report['fvcore_error']})")
    if 'gmacs' in report:
        lines.append(f"GMACs (conv/linear/matmul/attention multiply-adds): {report['gmacs']:.3f} G")
    if 'flop_counter_g' in report:
        lines.append(f"FLOPs (torch.utils.flop_counter, 2 per MAC): {report['flop_counter_g']:.3f} G  "
                     f"[conv/linear/attn {report['flop_counter_matmul'] / 1e9:.3f} G, "
                     f"scan {report['flop_counter_scan'] / 1e9:.4f} G]")
    if report.get('fvcore_unsupported'):
        ops = ', '.join(f'{k} x{v}' for k, v in sorted(report['fvcore_unsupported'].items()))
        lines.append(f'fvcore unsupported (not counted, review): {ops}')
    if report.get('fvcore_ignored'):
        ops = ', '.join(f'{k} x{v}' for k, v in sorted(report['fvcore_ignored'].items()))
        lines.append(f'fvcore ignored (elementwise, 0 by convention): {ops}')
    lines.append(f"convention: {report['convention']}")
    return '\n'.join(lines)
