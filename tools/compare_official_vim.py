"""Compare vmamba_zoo's Vim with the official hustvl/Vim model on the same random weights.

Usage::

    git clone https://github.com/hustvl/Vim /path/to/Vim
    python tools/compare_official_vim.py --official-repo /path/to/Vim --model vim_tiny_patch16_224 --img-size 64

The official ``vim/models_mamba.py`` is imported from the user's checkout (nothing of it is copied here). It needs
``mamba_ssm`` with the bimamba extensions (the checkout's ``mamba-1p1p1``, compiled, plus ``causal-conv1d``). On CUDA
the compiled package is used when it imports. Otherwise (always on CPU) this script registers stand-in
``mamba_ssm``/``causal_conv1d`` modules at runtime: the checkout's own ``mamba_simple.py`` (the bimamba v2 module)
is loaded from the checkout, and only the compiled pieces it calls are replaced by plain implementations of their
documented semantics: ``mamba_inner_fn_no_out_proj`` (causal depthwise conv + SiLU, x/dt projections, then
``vmamba_zoo.kernels.selective_scan_fn`` with the ``z`` gate) and the fused add + RMSNorm. The official model then
runs its own two-pass structure (flip, scan, flip back) while ours runs one routed scan, so the comparison checks
the architecture, parameter layout and token order end to end.

The official weights are randomised (init + noise), loaded into our model through ``checkpoint_filter_fn`` from a
``{'model': state_dict}`` wrapper with ``strict=True``, and the maximum logit difference is printed.
"""
import argparse
import importlib.util
import os
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

OFFICIAL_NAMES = {
    'vim_tiny_patch16_224': 'vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2',
    'vim_tiny_patch16_stride8_224':
        'vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2',
    'vim_small_patch16_224': 'vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2',
    'vim_small_patch16_stride8_224':
        'vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2',
    'vim_base_patch16_224': 'vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2',
}


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins for the compiled parts of mamba_ssm / causal_conv1d (registered only when the real ones are unusable).
# ---------------------------------------------------------------------------------------------------------------------
def _inner_fn_no_out_proj(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight, A, B=None, C=None,
                          D=None, delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True,
                          checkpoint_lvl=1):
    """Semantics of mamba_ssm's ``mamba_inner_fn_no_out_proj`` for input-dependent B/C: returns silu(z)-gated y."""
    from vmamba_zoo.kernels import selective_scan_fn

    if B is not None or C is not None or B_proj_bias is not None or C_proj_bias is not None:
        raise NotImplementedError('stand-in supports input-dependent B/C without projection biases only')
    batch, _, length = xz.shape
    x, z = xz.chunk(2, dim=1)
    channels, width = conv1d_weight.shape[0], conv1d_weight.shape[-1]
    weight = conv1d_weight.reshape(channels, 1, width)
    x = F.silu(F.conv1d(x, weight, conv1d_bias, padding=width - 1, groups=channels)[..., :length])
    x_dbl = F.linear(x.transpose(1, 2).reshape(batch * length, channels), x_proj_weight)
    rank, state = delta_proj_weight.shape[1], A.shape[-1]
    delta = (delta_proj_weight @ x_dbl[:, :rank].t()).reshape(channels, batch, length).transpose(0, 1)
    B = x_dbl[:, rank:rank + state].reshape(batch, length, state).transpose(1, 2).contiguous()
    C = x_dbl[:, -state:].reshape(batch, length, state).transpose(1, 2).contiguous()
    return selective_scan_fn(x.contiguous(), delta.contiguous(), A, B, C, D, z=z.contiguous(),
                             delta_bias=delta_bias, delta_softplus=delta_softplus)


def _norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, is_rms=True, **_):
    """Semantics of mamba_ssm's Triton ``rms_norm_fn``/``layer_norm_fn`` (float32 math, output in x's dtype)."""
    out_dtype = x.dtype
    summed = x.float() if residual is None else x.float() + residual.float()
    if is_rms:
        normed = summed * torch.rsqrt(summed.pow(2).mean(-1, keepdim=True) + eps)
    else:
        variance = summed.var(-1, unbiased=False, keepdim=True)
        normed = (summed - summed.mean(-1, keepdim=True)) * torch.rsqrt(variance + eps)
    y = normed * weight.float() + (bias.float() if bias is not None else 0.)
    y = y.to(out_dtype)
    if not prenorm:
        return y
    return y, summed if residual_in_fp32 else summed.to(out_dtype)


class _StandInRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter('bias', None)

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return _norm_fn(x, self.weight, None, residual, prenorm, residual_in_fp32, self.eps)


def _unsupported(*args, **kwargs):
    raise NotImplementedError('not needed by Vim bimamba v2')


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def install_stand_ins(official_repo: str):
    """Register stand-in ``mamba_ssm`` / ``causal_conv1d`` modules; ``mamba_simple.py`` comes from the checkout."""
    from vmamba_zoo.kernels import selective_scan_fn

    for name in ('mamba_ssm', 'mamba_ssm.modules', 'mamba_ssm.ops', 'mamba_ssm.ops.triton', 'mamba_ssm.utils'):
        _module(name, __path__=[])
    _module('causal_conv1d', causal_conv1d_fn=None, causal_conv1d_update=None)
    _module('mamba_ssm.ops.selective_scan_interface', selective_scan_fn=selective_scan_fn,
            mamba_inner_fn=_unsupported, bimamba_inner_fn=_unsupported,
            mamba_inner_fn_no_out_proj=_inner_fn_no_out_proj)
    _module('mamba_ssm.ops.triton.selective_state_update', selective_state_update=None)
    _module('mamba_ssm.ops.triton.layer_norm', RMSNorm=_StandInRMSNorm,
            rms_norm_fn=lambda *a, **k: _norm_fn(*a, is_rms=True, **k),
            layer_norm_fn=lambda *a, **k: _norm_fn(*a, is_rms=False, **k))
    _module('mamba_ssm.utils.generation', GenerationMixin=object)
    _module('mamba_ssm.utils.hf', load_config_hf=_unsupported, load_state_dict_hf=_unsupported)
    path = os.path.join(official_repo, 'mamba-1p1p1', 'mamba_ssm', 'modules', 'mamba_simple.py')
    spec = importlib.util.spec_from_file_location('mamba_ssm.modules.mamba_simple', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules['mamba_ssm.modules.mamba_simple'] = module
    spec.loader.exec_module(module)


def import_official(official_repo: str, device: str):
    """Import the checkout's ``models_mamba``; returns (module, 'compiled' | 'stand-in')."""
    sys.path.insert(0, os.path.join(official_repo, 'vim'))
    backend = 'stand-in'
    if device.startswith('cuda'):
        sys.path.insert(0, os.path.join(official_repo, 'mamba-1p1p1'))
        try:
            from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn_no_out_proj  # noqa: F401
            from mamba_ssm.ops.triton.layer_norm import rms_norm_fn  # noqa: F401
            backend = 'compiled'
        except ImportError:
            for name in [n for n in sys.modules if n.startswith(('mamba_ssm', 'causal_conv1d'))]:
                del sys.modules[name]
    if backend == 'stand-in':
        install_stand_ins(official_repo)
    import models_mamba  # noqa: E402  (from the checkout)
    return models_mamba, backend


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--official-repo', required=True, help='path to a checkout of github.com/hustvl/Vim')
    parser.add_argument('--model', default='vim_tiny_patch16_224', choices=sorted(OFFICIAL_NAMES))
    parser.add_argument('--img-size', type=int, default=64, help='square input size (both models are built for it)')
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--noise', type=float, default=0.02, help='std of the noise added to every official weight')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    official_repo = os.path.abspath(args.official_repo)
    if not os.path.isfile(os.path.join(official_repo, 'vim', 'models_mamba.py')):
        parser.error(f'{official_repo} is not a hustvl/Vim checkout (vim/models_mamba.py missing)')
    models_mamba, backend = import_official(official_repo, args.device)

    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.models.vim import checkpoint_filter_fn

    torch.manual_seed(args.seed)
    official = getattr(models_mamba, OFFICIAL_NAMES[args.model])(img_size=args.img_size).to(args.device).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.add_(torch.randn_like(p) * args.noise)
    ours = timm.create_model(args.model, img_size=args.img_size).to(args.device).eval()
    state = checkpoint_filter_fn({'model': official.state_dict(), 'args': None}, ours)
    ours.load_state_dict(state, strict=True)

    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=args.device)
    with torch.no_grad():
        ref = official(x)
        out = ours(x)
    diff = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    params = sum(p.numel() for p in ours.parameters())
    print(f'model={args.model} official={OFFICIAL_NAMES[args.model]} mamba_ssm={backend} device={args.device} '
          f'input={tuple(x.shape)} params={params}')
    print(f'max |logit diff| = {diff:.3e}  (max |logit| = {scale:.3e}, relative {diff / max(scale, 1e-12):.3e})')
    print(f'argmax agreement: {(out.argmax(-1) == ref.argmax(-1)).float().mean().item():.3f}')


if __name__ == '__main__':
    main()
