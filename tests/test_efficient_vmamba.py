"""EfficientVMamba on CPU: atrous route order, mixer semantics, shared core, timm contract, checkpoints, sizes."""
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from vmamba_zoo.kernels import atrous_pattern, selective_scan_ref
from vmamba_zoo.models.efficient_vmamba import AtrousSS2D, checkpoint_filter_fn

from _hierarchical_contract import (
    ScanOpSpy, check_bad_inputs, check_features_only, check_grad_checkpointing, check_timm_contract,
)

SMALL = dict(depths=(1, 1, 1, 1), dims=16)


def _official_atrous_order(height, width):
    """Positions visited by EfficientVMamba's EfficientScan (step 2), re-derived from its slicing."""
    grid = torch.arange(height * width).view(height, width)
    return torch.stack([
        grid[::2, ::2].reshape(-1),
        grid.t()[::2, 1::2].reshape(-1),
        grid[::2, 1::2].reshape(-1),
        grid.t()[1::2, 1::2].reshape(-1),
    ])


@pytest.mark.parametrize('size', [(2, 2), (4, 6), (8, 4), (14, 10)])
def test_atrous_pattern_is_the_official_route_order(size):
    assert torch.equal(atrous_pattern(*size, step=2).routes, _official_atrous_order(*size))


def test_atrous_pattern_rejects_unpadded_maps():
    with pytest.raises(ValueError, match='multiples of step'):
        atrous_pattern(5, 4, 2)


def _official_core(op: AtrousSS2D, x: torch.Tensor) -> torch.Tensor:
    """EfficientVMamba's cross_selective_scan written out (before its out_norm): pad, gather 4 routes, per-route
    projections and sequential scans, scatter back, crop."""
    batch, dim, height, width = x.shape
    padded = F.pad(x, (0, width % 2, 0, height % 2))
    padded_h, padded_w = padded.shape[2:]
    routes = _official_atrous_order(padded_h, padded_w)
    flat = padded.flatten(2)
    out = torch.zeros(batch, dim, padded_h * padded_w)
    rank, state = op.dt_rank, op.d_state
    for k in range(4):
        xs = flat[:, :, routes[k]]
        x_dbl = torch.einsum('bdl,cd->bcl', xs, op.x_proj_weight[k])
        dts, Bs, Cs = torch.split(x_dbl, [rank, state, state], dim=1)
        dts = torch.einsum('brl,dr->bdl', dts, op.dt_projs_weight[k])
        params = slice(k * dim, (k + 1) * dim)
        y = selective_scan_ref(xs, dts, -torch.exp(op.A_logs[params]), Bs, Cs, D=op.Ds[params],
                               delta_bias=op.dt_projs_bias[k], delta_softplus=True)
        out[:, :, routes[k]] = y
    return out.view(batch, dim, padded_h, padded_w)[:, :, :height, :width]


@pytest.mark.parametrize('size', [(6, 8), (5, 7)])
def test_atrous_mixer_matches_the_official_scan(size):
    torch.manual_seed(0)
    op = AtrousSS2D(8, d_state=4).eval()
    with torch.no_grad():
        op.A_logs.add_(0.3 * torch.randn_like(op.A_logs))
        op.dt_projs_bias.add_(torch.randn_like(op.dt_projs_bias))
        x = torch.randn(2, op.d_inner, *size)
        expected = op.out_norm(_official_core(op, x).permute(0, 2, 3, 1))
        assert torch.allclose(op.forward_core(x), expected, atol=1e-5)


def test_mixer_runs_on_the_shared_core():
    model = timm.create_model('efficient_vmamba_tiny', **SMALL).eval()
    spy = ScanOpSpy()
    with torch.no_grad(), spy:
        model(torch.randn(1, 3, 64, 64))
    assert spy.calls == 2  # one per EVSS block (stages 0 and 1); stages 2-3 are inverted residuals


def test_timm_contract():
    check_timm_contract('efficient_vmamba_tiny', **SMALL)


def test_features_only():
    check_features_only('efficient_vmamba_small', **SMALL)


def test_grad_checkpointing():
    check_grad_checkpointing('efficient_vmamba_tiny', **SMALL)


def test_bad_inputs():
    check_bad_inputs('efficient_vmamba_tiny', **SMALL)


@pytest.mark.parametrize('size', [(96, 160), (72, 100)])
def test_non_square_and_odd_stage_sizes(size):
    model = timm.create_model('efficient_vmamba_tiny', num_classes=4, **SMALL).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    expected, (h, w) = [], (size[0] // 4, size[1] // 4)
    for _ in range(4):
        expected.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    assert [tuple(f.shape[2:]) for f in feats] == expected


def _to_official_layout(state_dict, depths):
    """Our keys -> the official EfficientVSSM keys (inverse of checkpoint_filter_fn)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace('stem.proj.', 'patch_embed.0.').replace('stem.norm.', 'patch_embed.2.')
        key = key.replace('head.fc.', 'classifier.head.')
        key = re.sub(r'^norm\.', 'classifier.norm.', key)
        match = re.match(r'stages\.(\d+)\.(downsample|blocks\.(\d+))\.(.*)', key)
        if match:
            stage, rest = int(match.group(1)), match.group(4)
            if match.group(2) == 'downsample':
                key = (f'layers.{stage - 1}.downsample.{rest}' if stage - 1 < 2
                       else f'layers.{stage - 1}.{depths[stage - 1] + 2}.{rest}')
            elif stage < 2:
                key = f'layers.{stage}.blocks.{match.group(3)}.{rest}'
            else:
                key = f'layers.{stage}.{int(match.group(3)) + 1}.{rest}'
        out['module.module.' + key] = value
    return out


def test_official_checkpoint_round_trip():
    depths = (1, 1, 2, 1)
    source = timm.create_model('efficient_vmamba_tiny', depths=depths, dims=16).eval()
    official = _to_official_layout(source.state_dict(), depths)
    # Key names of the released checkpoints (see the model print in the official training log).
    for key in ('module.module.patch_embed.0.weight', 'module.module.layers.0.blocks.0.op.x_proj_weight',
                'module.module.layers.0.blocks.0.se.global_reduce.weight',
                'module.module.layers.1.downsample.norm.weight',
                'module.module.layers.2.2.se.conv_expand.bias', 'module.module.layers.2.4.reduction.weight',
                'module.module.layers.3.1.conv_pw2.1.running_var', 'module.module.classifier.head.bias'):
        assert key in official, key
    target = timm.create_model('efficient_vmamba_tiny', depths=depths, dims=16).eval()
    target.load_state_dict(checkpoint_filter_fn({'state_dict': official}, target), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@pytest.mark.parametrize('name, logged_millions', [
    ('efficient_vmamba_tiny', 6.494), ('efficient_vmamba_small', 11.274), ('efficient_vmamba_base', 33.717),
])
def test_param_counts_match_the_training_logs(name, logged_millions):
    with torch.device('meta'):
        model = timm.create_model(name)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 3) == logged_millions


def test_official_names_are_aliases():
    with torch.device('meta'):
        alias, model = timm.create_model('efficient_vssm_small'), timm.create_model('efficient_vmamba_small')
    assert [(n, p.shape) for n, p in alias.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]
