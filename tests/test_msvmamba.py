"""MSVMamba on CPU: multi-scale route order, mixer semantics, shared core, timm contract, checkpoints, sizes."""
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from vmamba_zoo.kernels import multiscale_patterns, selective_scan_ref
from vmamba_zoo.models.msvmamba import MultiScaleSS2D, checkpoint_filter_fn

from _hierarchical_contract import (
    ScanOpSpy, check_bad_inputs, check_features_only, check_grad_checkpointing, check_timm_contract,
)

SMALL = dict(depths=(1, 1, 1, 1), dims=16)


def _official_half_sequence(half_h, half_w):
    """Positions of MSVMamba's concatenated half-resolution sequence, re-derived from its flips and transposes."""
    grid = torch.arange(half_h * half_w).view(1, 1, half_h, half_w)
    columns = grid.transpose(2, 3).flatten(2)
    return torch.cat([grid.flatten(2).flip(-1), columns, columns.flip(-1)], dim=2).view(-1)


@pytest.mark.parametrize('size', [(4, 4), (6, 10), (7, 5), (1, 3)])
def test_multiscale_patterns_follow_the_official_order(size):
    full, half = multiscale_patterns(*size)
    assert torch.equal(full.routes, torch.arange(size[0] * size[1])[None])
    half_h, half_w = (size[0] + 1) // 2, (size[1] + 1) // 2
    assert (half.height, half.width, half.num_routes) == (3 * half_h, half_w, 1)
    route, cells = half.routes[0], half_h * half_w
    assert torch.equal(route % cells, _official_half_sequence(half_h, half_w))
    assert torch.equal(route // cells, torch.arange(3).repeat_interleave(cells))  # copy c holds the c-th scan


def _official_core(op: MultiScaleSS2D, x: torch.Tensor, x_half: torch.Tensor) -> torch.Tensor:
    """MSVMamba's multiscale_4scan_12 core written out: one sequential scan per branch, the three half-resolution
    scans concatenated into one sequence, per-token LayerNorm, un-permute, sum, bilinear upsample, add."""
    batch, dim, height, width = x.shape
    half_h, half_w = x_half.shape[2:]
    rank, state = op.dt_rank, op.d_state

    def scan(seq, k):
        x_dbl = torch.einsum('bdl,cd->bcl', seq, op.x_proj_weight[k])
        dts, Bs, Cs = torch.split(x_dbl, [rank, state, state], dim=1)
        dts = torch.einsum('brl,dr->bdl', dts, op.dt_projs_weight[k])
        params = slice(k * dim, (k + 1) * dim)
        y = selective_scan_ref(seq, dts, -torch.exp(op.A_logs[params]), Bs, Cs, D=op.Ds[params],
                               delta_bias=op.dt_projs_bias[k], delta_softplus=True)
        return op.out_norm(y.transpose(1, 2))  # (B, L, D)

    seq = torch.cat([x_half.flatten(2).flip(-1), x_half.transpose(2, 3).flatten(2),
                     x_half.transpose(2, 3).flatten(2).flip(-1)], dim=2)
    y_seq = scan(seq, 0)
    cells = half_h * half_w
    y_half = (y_seq[:, :cells].flip(1).reshape(batch, half_h, half_w, dim)
              + y_seq[:, cells:2 * cells].reshape(batch, half_w, half_h, dim).transpose(1, 2)
              + y_seq[:, 2 * cells:].flip(1).reshape(batch, half_w, half_h, dim).transpose(1, 2))
    y_half = F.interpolate(y_half.permute(0, 3, 1, 2), size=(height, width), mode='bilinear', align_corners=False)
    return scan(x.flatten(2), 1).view(batch, height, width, dim) + y_half.permute(0, 2, 3, 1)


@pytest.mark.parametrize('size', [(6, 8), (5, 7)])
def test_multiscale_mixer_matches_the_official_scan(size):
    torch.manual_seed(0)
    op = MultiScaleSS2D(8, d_state=2).eval()
    with torch.no_grad():
        op.A_logs.add_(0.3 * torch.randn_like(op.A_logs))
        op.dt_projs_bias.add_(torch.randn_like(op.dt_projs_bias))
        op.out_norm.weight.add_(0.5 * torch.randn_like(op.out_norm.weight))
        op.out_norm.bias.add_(0.5 * torch.randn_like(op.out_norm.bias))
        x = torch.randn(2, op.d_inner, *size)
        x_half = torch.randn(2, op.d_inner, (size[0] + 1) // 2, (size[1] + 1) // 2)
        assert torch.allclose(op.forward_core(x, x_half), _official_core(op, x, x_half), atol=1e-5)


def test_mixer_runs_on_the_shared_core():
    model = timm.create_model('msvmamba_nano', **SMALL).eval()
    spy = ScanOpSpy()
    with torch.no_grad(), spy:
        model(torch.randn(1, 3, 64, 64))
    assert spy.calls == 2 * 4  # full- and half-resolution scans in each of the 4 blocks


def test_timm_contract():
    check_timm_contract('msvmamba_nano', **SMALL)


def test_features_only():
    check_features_only('msvmamba_micro', **SMALL)


def test_grad_checkpointing():
    check_grad_checkpointing('msvmamba_nano', **SMALL)


def test_bad_inputs():
    check_bad_inputs('msvmamba_nano', **SMALL)


@pytest.mark.parametrize('size', [(96, 160), (72, 100)])
def test_non_square_and_odd_stage_sizes(size):
    model = timm.create_model('msvmamba_nano', num_classes=4, **SMALL).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    expected, (h, w) = [], (size[0] // 4, size[1] // 4)
    for _ in range(4):
        expected.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    assert [tuple(f.shape[2:]) for f in feats] == expected


def _to_official_layout(state_dict):
    """Our keys -> the official VSSM keys (inverse of checkpoint_filter_fn)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace('stem.proj.', 'patch_embed.0.').replace('stem.norm.', 'patch_embed.2.')
        key = key.replace('head.fc.', 'classifier.head.').replace('.ffn.', '.convFFN.')
        key = re.sub(r'^norm\.', 'classifier.norm.', key)
        key = re.sub(r'^stages\.(\d+)\.downsample\.', lambda m: f'layers.{int(m.group(1)) - 1}.downsample.', key)
        key = re.sub(r'^stages\.(\d+)\.blocks\.', r'layers.\1.blocks.', key)
        out[key] = value
    return out


def test_official_checkpoint_round_trip():
    source = timm.create_model('msvmamba_nano', **SMALL).eval()
    official = _to_official_layout(source.state_dict())
    for key in ('patch_embed.0.weight', 'layers.0.blocks.0.op.conv2d_b1.weight', 'layers.0.blocks.0.op.se.fc.2.weight',
                'layers.0.blocks.0.convFFN.dwc.bias', 'layers.2.downsample.reduction.weight',
                'layers.3.blocks.0.op.A_logs', 'classifier.norm.weight'):
        assert key in official, key
    assert official['layers.0.blocks.0.op.x_proj_weight'].shape[0] == 2
    target = timm.create_model('msvmamba_nano', **SMALL).eval()
    target.load_state_dict(checkpoint_filter_fn({'model': official}, target), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@pytest.mark.parametrize('name, published_millions', [
    ('msvmamba_nano', 6.86), ('msvmamba_micro', 11.88), ('msvmamba_tiny', 33.08),
])
def test_param_counts_match_the_configs(name, published_millions):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - published_millions) / published_millions < 0.01
