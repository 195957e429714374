"""Parameter counts and GMACs of the registered VMamba models, on the meta device (no weights, no real compute).

GMACs follow the fvcore convention that VMamba publishes ("FLOPs"): one multiply-add per conv/linear MAC, the
selective scan as 9·B·L·D·N + B·D·L (``vmamba_zoo.kernels`` registers that formula with
``torch.utils.flop_counter``), and 5 per element for every affine LayerNorm. It equals
``fvcore.nn.FlopCountAnalysis(model, x).set_op_handle(**vmamba_zoo.kernels.fvcore_op_handles())`` up to fvcore's
count of the global average pool (B·C·H·W, 0.04 M for VMamba-T), without running a real forward.

Usage::

    python benchmarks/vmamba_stats.py                      # all 9 VMamba models at 224x224
    python benchmarks/vmamba_stats.py --model vmamba_tiny_s1l8 --img-size 256 320
"""
import argparse
import os
import sys
from typing import Dict, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import timm

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vmamba_zoo  # noqa: E402,F401

VMAMBA_MODELS = (
    'vmamba_tiny_s1l8', 'vmamba_small_s1l20', 'vmamba_base_s1l20', 'vmamba_tiny_s2l5', 'vmamba_small_s2l15',
    'vmamba_base_s2l15', 'vanilla_vmamba_tiny', 'vanilla_vmamba_small', 'vanilla_vmamba_base',
)
_SCAN_OPS = ('vmamba_zoo.scan_routes_fwd',)


def model_stats(model: nn.Module, input_size: Sequence[int] = (3, 224, 224)) -> Dict[str, float]:
    """Params and fvcore-convention MACs of one batch-1 forward of ``model`` (moved to the meta device).

    Returns:
        dict with ``params`` (count), ``macs`` (total), ``scan_macs`` (the selective-scan part) and ``norm_macs``.
    """
    params = sum(p.numel() for p in model.parameters())
    model = model.to('meta').eval()
    norm_elements = []

    def count_norm(module, inputs, output):
        if getattr(module, 'elementwise_affine', True):
            norm_elements.append(5 * inputs[0].numel())

    hooks = [m.register_forward_hook(count_norm) for m in model.modules() if isinstance(m, nn.LayerNorm)]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, *input_size, device='meta'))
    finally:
        for hook in hooks:
            hook.remove()
    counts = {str(op): n for op, n in counter.get_flop_counts()['Global'].items()}
    scan = sum(n for op, n in counts.items() if op in _SCAN_OPS)
    dense = sum(n for op, n in counts.items() if op not in _SCAN_OPS)  # torch counts 2 FLOPs per MAC
    norms = sum(norm_elements)
    return {'params': params, 'macs': dense / 2 + scan + norms, 'scan_macs': scan, 'norm_macs': norms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', action='append', help='model name (repeatable; default: all VMamba models)')
    parser.add_argument('--img-size', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    args = parser.parse_args()
    print(f'| model | params (M) | GMACs @ {args.img_size[0]}x{args.img_size[1]} |')
    print('|---|---|---|')
    for name in args.model or VMAMBA_MODELS:
        with torch.device('meta'):
            model = timm.create_model(name)
        stats = model_stats(model, (3, *args.img_size))
        print(f'| {name} | {stats["params"] / 1e6:.2f} | {stats["macs"] / 1e9:.2f} |', flush=True)


if __name__ == '__main__':
    main()
