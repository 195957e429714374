"""Compare vmamba_zoo's EfficientVMamba / MSVMamba with the official code on CPU: logits, params and FLOPs.

The official model code is imported from a user checkout (nothing is vendored). Its CUDA selective-scan extensions are
replaced at runtime by stand-in modules that call ``vmamba_zoo.kernels.selective_scan_fn``. Both models get the same
random weights: the official state dict is randomised, wrapped like an official checkpoint and loaded into ours
through ``checkpoint_filter_fn`` (strict, so a missing or unexpected key fails).

Usage::

    git clone https://github.com/TerryPei/EfficientVMamba /path/EfficientVMamba
    python tools/compare_official_effms.py --family efficient --official-repo /path/EfficientVMamba
    git clone https://github.com/YuHengsss/MSVMamba /path/MSVMamba
    python tools/compare_official_effms.py --family ms --official-repo /path/MSVMamba

Official code needs ``einops`` and ``fvcore`` installed.
"""
import argparse
import importlib
import os
import sys
import types
import warnings

import torch

FAMILIES = {
    'efficient': {
        'efficient_vmamba_tiny': dict(depths=[2, 2, 4, 2], dims=48),
        'efficient_vmamba_small': dict(depths=[2, 2, 4, 2], dims=64),
        'efficient_vmamba_base': dict(depths=[2, 2, 9, 2], dims=96),
    },
    'ms': {
        'msvmamba_nano': dict(depths=[1, 2, 5, 2], dims=48),
        'msvmamba_micro': dict(depths=[1, 2, 5, 2], dims=64),
        'msvmamba_tiny': dict(depths=[1, 2, 9, 2], dims=96),
    },
}


def _install_scan_stubs():
    """Stand-ins for the CUDA extensions the official code imports, backed by vmamba_zoo's selective scan."""
    from vmamba_zoo.kernels import selective_scan_fn

    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, *rest):
        out = selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
        return out, None

    def bwd(*args, **kwargs):
        raise RuntimeError('compare_official_effms: backward through the official code is not supported')

    mamba = types.ModuleType('selective_scan_cuda')  # mamba_ssm API: fwd(u, delta, A, B, C, D, z, bias, softplus)
    mamba.fwd, mamba.bwd = fwd, bwd
    sys.modules['selective_scan_cuda'] = mamba
    # The official ``selective_scan_cuda_core`` modules take (u, delta, A, B, C, D, bias, softplus, nrows): make their
    # imports fail so the code falls back to the mamba_ssm API above.
    for name in ('selective_scan_cuda_core', 'selective_scan_vmamba_pt202', 'selective_scan_vmamba'):
        sys.modules[name] = None


def _load_official(family: str, repo: str):
    sys.path.insert(0, os.path.join(repo, 'classification'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if family == 'efficient':
            module = importlib.import_module('models.vmamba_efficient')

            def build(depths, dims):
                return module.EfficientVSSM(
                    depths=depths, dims=dims, d_state=16, dt_rank='auto', ssm_ratio=2.0, mlp_ratio=0.0,
                    drop_path_rate=0.0, downsample_version='v1', patch_norm=True)

            flop_op = ('prim::PythonOp.SelectiveScan', module.selective_scan_flop_jit)
        else:
            module = importlib.import_module('models.vmamba')

            def build(depths, dims):
                # The keyword arguments of the official build_vssm_model with the ms_vssm yaml and config defaults.
                return module.VSSM(
                    depths=depths, dims=dims, ssm_d_state=1, ssm_ratio=2.0, ssm_rank_ratio=2.0, ssm_dt_rank='auto',
                    ssm_act_layer='silu', ssm_conv=3, ssm_conv_bias=True, ssm_drop_rate=0.0, ssm_simple_init=False,
                    forward_type='v2', mlp_ratio=0.0, mlp_act_layer='gelu', mlp_drop_rate=0.0, drop_path_rate=0.0,
                    patch_norm=True, norm_layer='ln', downsample_version='v1', patchembed_version='v1',
                    use_checkpoint=False, recurrent=False, sscore_type='multiscale_4scan_12', inter_block_ssm=False,
                    grid_size=0, multiscale_ratio=[], multiscale_ksize=[], continous_patch=False,
                    adaptive_merge=False, add_conv=True, b1_seq=False, b1_ratio=0.5, add_se=True, ms_fusion=None,
                    up_sample='interpolate', convFFN=True, lpu=False, sep_norm=False, ms_stage=[0, 1, 2, 3],
                    ms_split=[1, 3], ffn_dropout=0.0)

            flop_op = ('prim::PythonOp.SelectiveScan', module.selective_scan_flop_jit)
    return build, flop_op


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace every floating parameter and buffer by random values of a plausible scale."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith('running_var'):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            elif name.endswith('A_logs'):
                tensor.add_(0.1 * noise)
            elif name.endswith('dt_projs_bias'):
                tensor.add_(0.5 * noise)
            elif tensor.dim() <= 1 or name.endswith('Ds'):
                tensor.copy_(1.0 + 0.1 * noise if 'weight' in name or name.endswith('Ds') else 0.05 * noise)
            else:
                tensor.mul_(1.0 + 0.2 * noise)


def _count_flops(model, size, op_name=None, op_handle=None):
    from fvcore.nn import FlopCountAnalysis
    from vmamba_zoo.kernels import fvcore_op_handles

    handles = dict(fvcore_op_handles())
    if op_name is not None:
        handles[op_name] = op_handle
    for name in ('aten::silu', 'aten::neg', 'aten::exp', 'aten::flip', 'aten::sigmoid', 'aten::gelu'):
        handles.setdefault(name, None)
    analysis = FlopCountAnalysis(model, torch.randn(1, 3, *size)).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis.total()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--family', choices=sorted(FAMILIES), required=True)
    parser.add_argument('--official-repo', required=True, help='checkout of the official repository')
    parser.add_argument('--models', nargs='*', help='subset of the family (default: all)')
    parser.add_argument('--sizes', nargs='*', default=['224x224', '200x264'], help='HxW input sizes for the logits')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--flops', action='store_true', help='also count FLOPs of both with fvcore at 224x224')
    args = parser.parse_args()

    _install_scan_stubs()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.models import efficient_vmamba, msvmamba

    build_official, (flop_name, flop_handle) = _load_official(args.family, args.official_repo)
    filter_fn = efficient_vmamba.checkpoint_filter_fn if args.family == 'efficient' else msvmamba.checkpoint_filter_fn
    sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes]
    for name in args.models or FAMILIES[args.family]:
        torch.manual_seed(args.seed)
        official = build_official(**FAMILIES[args.family][name]).eval()
        _randomize(official, args.seed)
        ours = timm.create_model(name).eval()
        official_sd = official.state_dict()
        if args.family == 'efficient':  # as released: {'state_dict': ...} saved from a twice-wrapped module
            checkpoint = {'state_dict': {f'module.module.{k}': v for k, v in official_sd.items()}}
        else:
            checkpoint = {'model': dict(official_sd)}
        ours.load_state_dict(filter_fn(checkpoint, ours), strict=True)
        params_official = sum(p.numel() for p in official.parameters())
        params_ours = sum(p.numel() for p in ours.parameters())
        print(f'{name}: params official {params_official} ours {params_ours}; checkpoint keys '
              f'{len(official_sd)} -> {len(ours.state_dict())}, strict load OK')
        for size in sizes:
            x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(args.seed + 1))
            with torch.no_grad():
                ref = official(x)
                out = ours(x)
            diff = (ref - out).abs().max().item()
            print(f'  {size[0]}x{size[1]}: max |logit diff| {diff:.3e} (max |logit| {ref.abs().max().item():.3e})')
        if args.flops:
            flops_official = _count_flops(official, (224, 224), flop_name, flop_handle)
            flops_ours = _count_flops(ours, (224, 224))
            print(f'  FLOPs 224x224 (fvcore, MACs): official {flops_official / 1e9:.4f} G, '
                  f'ours {flops_ours / 1e9:.4f} G')


if __name__ == '__main__':
    main()
