"""VMamba: shared layers, the 9 registered configs, the timm contract and official checkpoint conversion.

Everything that runs a forward uses tiny configs, except one fvcore FLOP count at 224x224.
"""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from timm.models._manipulate import group_parameters

import vmamba_zoo  # noqa: F401  (registers the models)
from vmamba_zoo.layers.eager import derived_until_changed
from vmamba_zoo.layers import (
    SS2D, ConvDownsample, LayerNorm2d, Linear2d, Mlp, OverlapPatchEmbed, PatchEmbed, PatchMerging2d,
)
from vmamba_zoo.models.vmamba import VMamba, VSSBlock, checkpoint_filter_fn

# Published parameter counts and FLOPs (MzeroMiko/VMamba README and assets/performance.md, with head).
PUBLISHED_PARAMS_M = {
    'vmamba_tiny_s1l8': 30, 'vmamba_small_s1l20': 49, 'vmamba_base_s1l20': 87,
    'vmamba_tiny_s2l5': 31, 'vmamba_small_s2l15': 50, 'vmamba_base_s2l15': 89,
    'vanilla_vmamba_tiny': 23, 'vanilla_vmamba_small': 44, 'vanilla_vmamba_base': 76,
}
PUBLISHED_GFLOPS = {
    'vmamba_tiny_s1l8': 4.9, 'vmamba_small_s1l20': 8.6, 'vmamba_base_s1l20': 15.2,
    'vmamba_tiny_s2l5': 4.9, 'vmamba_small_s2l15': 8.7, 'vmamba_base_s2l15': 15.4,
    'vanilla_vmamba_tiny': 5.6, 'vanilla_vmamba_small': 11.2, 'vanilla_vmamba_base': 18.0,
}
# Tiny versions of the two architectures (v2: channel-first, overlap stem, conv downsample; v0: channel-last,
# patch stem, patch merging, z gate, no MLP).
# The vanilla tiny config uses d_state 4 instead of 16 to keep the CPU scan cheap.
TINY_ARGS = {
    'vmamba_tiny_s1l8': dict(depths=(1, 1, 1, 1), dims=16, num_classes=10),
    'vanilla_vmamba_tiny': dict(depths=(1, 1, 1, 1), dims=16, num_classes=10, ssm_d_state=4),
}
TINY_MODELS = tuple(TINY_ARGS)


def _tiny(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **dict(TINY_ARGS[name], **kwargs)).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------------
def test_ss2d_channel_first_equals_channel_last():
    torch.manual_seed(0)
    first = SS2D(16, d_state=4, ssm_ratio=1.5, channel_first=True)
    last = SS2D(16, d_state=4, ssm_ratio=1.5, channel_first=False)
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(first(x), last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('copy_to_nchw', [True, False])
def test_ss2d_channel_last_path_equals_channel_first_with_gradients(monkeypatch, backend, copy_to_nchw):
    """The channel-last path (GEMM projections, grouped dt projection, scan of the map copied to NCHW or read in
    place, LayerNorm into NHWC) gives the channel-first path's output and gradients, also through the Triton
    kernels."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(SS2D, 'nchw_scan_min_positions', 1 if copy_to_nchw else 10 ** 9)
    monkeypatch.setattr(LayerNorm2d, 'backend', backend)
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', backend)
    torch.manual_seed(0)
    first = SS2D(8, d_state=1, ssm_ratio=1.0, channel_first=True, use_z_gate=False, backend=backend)
    last = SS2D(8, d_state=1, ssm_ratio=1.0, channel_first=False, use_z_gate=False, backend=backend)
    last.load_state_dict(first.state_dict())
    assert isinstance(last.out_norm, ChannelLastLayerNorm)
    x = torch.randn(2, 8, 3, 5)
    x_last = x.permute(0, 2, 3, 1).contiguous().requires_grad_(True)
    x_first = x.clone().requires_grad_(True)
    out_first, out_last = first(x_first), last(x_last)
    assert out_last.is_contiguous()
    torch.testing.assert_close(out_last.permute(0, 3, 1, 2), out_first, rtol=1e-4, atol=1e-5)
    cotangent = torch.randn_like(out_first)
    out_first.backward(cotangent)
    out_last.backward(cotangent.permute(0, 2, 3, 1))
    torch.testing.assert_close(x_last.grad.permute(0, 3, 1, 2), x_first.grad, rtol=1e-4, atol=1e-5)
    for (name, p_first), p_last in zip(first.named_parameters(), last.parameters()):
        torch.testing.assert_close(p_last.grad, p_first.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_grouped_projection_gradients():
    from vmamba_zoo.layers import grouped_projection
    weight = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 5, 2, dtype=torch.float64).transpose(1, 2).requires_grad_(True)  # strided, as SS2D passes it
    assert torch.autograd.gradcheck(grouped_projection, (weight, x))
    torch.testing.assert_close(grouped_projection(weight, x), torch.bmm(weight, x))


def test_grouped_weight_gradient_reads_a_column_slice_in_place():
    """The weight gradient of ``bmm(weight, x)`` where x is a column slice of (P, K, J) rows, as SS2D's ``dt_in`` is
    of ``x_proj``'s output: one GEMM over the rows in place (no copy of x), the same values as for other layouts,
    and no read past the storage for a slice at the rows' end."""
    from vmamba_zoo.layers.ss2d import _grouped_weight_grad, _rows_holding
    gen = torch.Generator().manual_seed(0)
    positions, groups, rank, width, out_features = 23, 4, 3, 7, 5
    # Rows with room after them in their storage, and rows at its end.
    padded = torch.randn(positions * groups * width + 2, generator=gen, dtype=torch.float64)
    x_dbl = padded[:-2].view(positions, groups, width)
    at_end = padded[2:].view(positions, groups, width)
    grad = torch.randn(groups, out_features, positions, generator=gen, dtype=torch.float64)
    for rows_of, start, end, in_place in ((x_dbl, 0, rank, True), (x_dbl, 2, 5, True), (at_end, 2, 5, False),
                                          (at_end, rank, width, False)):
        x = rows_of[:, :, start:end].permute(1, 2, 0)
        rows = _rows_holding(x)
        assert (rows is not None) == in_place and (rows is None or rows.data_ptr() == x.data_ptr())
        expected = torch.einsum('kop,kip->koi', grad, x)
        torch.testing.assert_close(_grouped_weight_grad(grad, x), expected, rtol=1e-12, atol=1e-12)
    x = x_dbl[:, :, :rank].permute(1, 2, 0).detach().requires_grad_()
    weight = torch.randn(groups, out_features, rank, generator=gen, dtype=torch.float64, requires_grad=True)
    from vmamba_zoo.layers import grouped_projection
    assert torch.autograd.gradcheck(grouped_projection, (weight, x))


def test_block_diagonal_dt_proj_is_the_routes_dt_proj():
    """The fused paths' dt_proj, one GEMM of the block-diagonal weight with ``x_proj``'s whole output rows, equals
    the routes' own dt_proj (a batched GEMM over the rows' first R columns): the B and C columns meet zeros only."""
    from vmamba_zoo.layers.ss2d import _block_diagonal_dt_proj
    gen = torch.Generator().manual_seed(0)
    groups, d_inner, rank, d_state, positions = 4, 5, 3, 2, 11
    width = rank + 2 * d_state
    weight = torch.randn(groups, d_inner, rank, generator=gen, dtype=torch.float64)
    rows = torch.randn(positions, groups, width, generator=gen, dtype=torch.float64)
    blocks = _block_diagonal_dt_proj(weight, width, torch.float64)
    assert blocks.shape == (groups * d_inner, groups * width) and blocks.is_contiguous()
    expected = torch.bmm(weight, rows[..., :rank].permute(1, 2, 0)).reshape(groups * d_inner, positions)
    torch.testing.assert_close(blocks @ rows.reshape(positions, -1).t(), expected, rtol=1e-12, atol=1e-12)
    mask = torch.block_diag(*[torch.ones(d_inner, width, dtype=torch.bool)] * groups)
    mask.view(groups, d_inner, groups, width)[..., rank:] = False
    assert not blocks[~mask].any()
    assert _block_diagonal_dt_proj(weight.float(), width, torch.bfloat16).dtype == torch.bfloat16


def test_ss2d_composite_path_with_one_dt_proj_gemm_is_the_same_layer(monkeypatch):
    """The composite (autograd op by op) path, which ``torch.compile`` traces, runs dt_proj on CUDA as one GEMM
    with the block-diagonal weight: output and every gradient equal those of the routes' batched GEMM (within
    float32 rounding), and a FLOP counter (a dispatch mode) still sees the batched GEMM."""
    from vmamba_zoo.layers import ss2d as ss2d_module
    torch.manual_seed(0)
    layer = SS2D(8, d_state=2, ssm_ratio=1.0, dt_rank=3, use_z_gate=False)
    x = torch.randn(2, 3, 5, 8)
    results = {}
    built = []
    real_build = ss2d_module._block_diagonal_dt_proj
    monkeypatch.setattr(ss2d_module, '_block_diagonal_dt_proj', lambda *args: built.append(1) or real_build(*args))
    for one_gemm in (True, False):
        monkeypatch.setattr(ss2d_module, '_dt_proj_as_one_gemm', lambda t, _one=one_gemm: _one)
        layer.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        out = layer(x_in)
        out.square().sum().backward()
        results[one_gemm] = out, x_in.grad, {k: p.grad for k, p in layer.named_parameters()}
    assert len(built) == 1, 'the one-GEMM run builds the block-diagonal weight, the other does not'
    (out, dx, grads), (out_ref, dx_ref, grads_ref) = results[True], results[False]
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-5, atol=1e-6, msg=name)
    monkeypatch.undo()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        assert not ss2d_module._dt_proj_as_one_gemm(x)
        layer(x)
    assert torch.ops.aten.bmm in counter.get_flop_counts()['Global']


@pytest.mark.parametrize('shape', [(2, 3, 5, 8), (2, 7, 8), (4, 8), 'nchw_viewed_channel_last'])
def test_channel_last_layer_norm_is_layer_norm(monkeypatch, shape):
    """Contiguous input of any rank, and an NCHW map viewed as (B, H, W, C) (the out-norm's input, read in place)."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    norm = ChannelLastLayerNorm(8)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    if shape == 'nchw_viewed_channel_last':
        x = torch.randn(2, 8, 3, 5).permute(0, 2, 3, 1).requires_grad_(True)
        shape = x.shape
    else:
        x = torch.randn(shape, requires_grad=True)
    y = norm(x)
    ref = F.layer_norm(x, (8,), norm.weight, norm.bias, norm.eps)
    assert y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    cotangent = torch.randn(shape)
    grads = torch.autograd.grad(y, (x, norm.weight, norm.bias), cotangent)
    grads_ref = torch.autograd.grad(ref, (x, norm.weight, norm.bias), cotangent)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_ss2d_inference_keeps_derived_weights_until_a_parameter_changes(monkeypatch):
    """Without gradients A = -exp(A_logs) and the projection weights in the activation dtype are derived once and
    reused; an in-place update (an optimizer step), a loaded state dict, another dtype or a call with gradients
    between derives them again, and the output always equals a model that derives them on every call (with
    gradients)."""
    torch.manual_seed(0)
    m = SS2D(8, d_state=2, ssm_ratio=1.0)
    x = torch.randn(2, 5, 6, 8)
    exps = []
    real_exp = torch.Tensor.exp
    monkeypatch.setattr(torch.Tensor, 'exp', lambda t: exps.append(1) or real_exp(t))

    def check():
        with torch.no_grad():
            y = m(x)
        torch.testing.assert_close(y, m(x).detach(), rtol=0, atol=0)

    check()
    assert len(exps) == 2
    with torch.no_grad():
        m(x)
        m(x)
    assert len(exps) == 3, 'consecutive calls without gradients derive A once (a call with gradients drops it)'
    assert '_ssm_weights_cache' in m.__dict__
    m(x)
    assert '_ssm_weights_cache' not in m.__dict__, 'training holds no kept weights'
    with torch.no_grad():
        m.A_logs.add_(0.5)
        m.dt_projs_weight.mul_(2)
    check()
    m.load_state_dict({k: v * 1.1 for k, v in m.state_dict().items()})
    check()
    with torch.no_grad():
        _, x_proj_weight, dt_projs_weight = m._ssm_weights(torch.float16)
    assert x_proj_weight.dtype == dt_projs_weight.dtype == torch.float16
    with torch.inference_mode():  # a module built here has inference-tensor parameters, without version counters
        built_in_inference_mode = SS2D(8, d_state=2, ssm_ratio=1.0)
        built_in_inference_mode.load_state_dict(m.state_dict())
        torch.testing.assert_close(built_in_inference_mode(x), m(x).detach())


def test_ss2d_matches_unfused_reference_with_gradients():
    """The map-layout projections + fused scan equal an explicit cross-scan -> per-route projections -> scan -> merge.
    """
    from vmamba_zoo.kernels import cross_merge, cross_pattern, cross_scan, selective_scan_ref

    torch.manual_seed(0)
    m = SS2D(8, d_state=2, ssm_ratio=1.0, channel_first=True, use_z_gate=False, out_norm='none')
    x = torch.randn(1, 8, 3, 4, requires_grad=True)
    h = m.act(m.conv2d(m.in_proj(x)))
    pattern = cross_pattern(3, 4)
    xs = cross_scan(h, pattern)  # (B, K, D, L)
    ys = []
    for k in range(4):
        x_dbl = torch.einsum('bdl,cd->bcl', xs[:, k], m.x_proj_weight[k])
        dts, Bs, Cs = x_dbl.split([m.dt_rank, m.d_state, m.d_state], dim=1)
        dts = torch.einsum('brl,dr->bdl', dts, m.dt_projs_weight[k])
        ys.append(selective_scan_ref(
            xs[:, k], dts, -m.A_logs.view(4, 8, -1)[k].exp(), Bs, Cs, m.Ds.view(4, 8)[k],
            delta_bias=m.dt_projs_bias[k], delta_softplus=True))
    expected = m.out_proj(cross_merge(torch.stack(ys, 1), pattern))
    out = m(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    grad, = torch.autograd.grad(out.square().sum(), x)
    grad_ref, = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)


def test_ss2d_init_matches_official():
    torch.manual_seed(0)
    m = SS2D(96, d_state=16, ssm_ratio=2.0, dt_min=0.001, dt_max=0.1)
    d_inner, rank = 192, 6
    assert m.dt_rank == rank and tuple(m.x_proj_weight.shape) == (4, rank + 32, d_inner)
    torch.testing.assert_close(m.A_logs, torch.log(torch.arange(1., 17.)).repeat(4 * d_inner, 1))
    assert torch.all(m.Ds == 1)
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_projs_weight.abs().max() <= rank ** -0.5
    assert m.x_proj_weight.abs().max() <= d_inner ** -0.5
    assert m.A_logs._no_weight_decay and m.Ds._no_weight_decay


def test_model_init_matches_official():
    model = timm.create_model('vmamba_tiny_s1l8', depths=(1, 1, 2, 1))
    linear_weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    assert abs(linear_weights.std().item() - 0.02) < 0.002
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    assert all(torch.all(m.weight == 1) for m in model.modules() if isinstance(m, nn.LayerNorm))


def test_patch_merging_neighbour_order_and_layouts():
    merge = PatchMerging2d(1, 1, channel_first=False)
    with torch.no_grad():
        merge.norm.weight.fill_(1)
        merge.reduction.weight.copy_(torch.tensor([[1., 10., 100., 1000.]]))
    merge.norm = nn.Identity()
    x = torch.tensor([[0., 1.], [2., 3.]]).view(1, 2, 2, 1)  # (row, col) values 0, 1 / 2, 3
    # order (0,0), (1,0), (0,1), (1,1) -> 0*1 + 2*10 + 1*100 + 3*1000
    assert merge(x).item() == 3120.
    torch.manual_seed(0)
    last, first = PatchMerging2d(8, channel_first=False), PatchMerging2d(8, channel_first=True)
    first.load_state_dict(last.state_dict())
    x = torch.randn(2, 8, 5, 7)  # odd sizes are zero-padded
    y = first(x)
    assert y.shape == (2, 16, 3, 4)
    torch.testing.assert_close(y, last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('module_cls', [PatchEmbed, OverlapPatchEmbed])
def test_stems_layouts(module_cls):
    torch.manual_seed(0)
    first, last = module_cls(3, 16, channel_first=True), module_cls(3, 16, channel_first=False)
    last.load_state_dict(first.state_dict())
    x = torch.randn(2, 3, 16, 24)
    y = first(x)
    assert y.shape == (2, 16, 4, 6)
    torch.testing.assert_close(y, last(x).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_linear2d_mlp_and_conv_downsample_layouts():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5)
    mlp_first, mlp_last = Mlp(8, 32, channel_first=True), Mlp(8, 32)
    mlp_first.load_state_dict(mlp_last.state_dict())
    torch.testing.assert_close(mlp_first(x), mlp_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    down_first, down_last = ConvDownsample(8, 16, channel_first=True), ConvDownsample(8, 16)
    down_first.load_state_dict(down_last.state_dict())
    assert down_first(x).shape == (2, 16, 3, 3)
    torch.testing.assert_close(down_first(x), down_last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    linear = Linear2d(8, 4)
    linear.load_state_dict({'weight': torch.ones(4, 8, 1, 1), 'bias': torch.zeros(4)})  # conv-shaped weight
    assert linear.weight.shape == (4, 8)
    torch.testing.assert_close(LayerNorm2d(8)(x), F.layer_norm(x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Full-size configs (cheap checks)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS_M))
def test_param_counts_match_published(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params_m - PUBLISHED_PARAMS_M[name]) <= 0.01 * PUBLISHED_PARAMS_M[name], params_m


def test_fvcore_flops_vmamba_tiny_s1l8_224():
    """Published 4.9G (fvcore, scan counted as 9BLDN + BDL); one real forward at 224x224."""
    from fvcore.nn import FlopCountAnalysis

    from vmamba_zoo.kernels import fvcore_op_handles

    model = timm.create_model('vmamba_tiny_s1l8').eval()
    analysis = FlopCountAnalysis(model, torch.randn(1, 3, 224, 224)).set_op_handle(**fvcore_op_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    gflops = analysis.total() / 1e9
    assert abs(gflops - 4.9) <= 0.049, gflops
    assert analysis.by_operator()['scan_routes_fwd'] > 0


def _model_stats():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'vmamba_stats.py')
    spec = importlib.util.spec_from_file_location('vmamba_stats', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model_stats


@pytest.mark.parametrize('name', TINY_MODELS)
def test_meta_device_macs_equal_fvcore(name):
    """benchmarks/vmamba_stats.py (meta device, used for the model cards) counts what fvcore counts."""
    from fvcore.nn import FlopCountAnalysis

    from vmamba_zoo.kernels import fvcore_op_handles

    model = _tiny(name)
    analysis = FlopCountAnalysis(model, torch.randn(1, 3, 64, 32)).set_op_handle(**fvcore_op_handles())
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    fvcore_total = analysis.total()
    pool = analysis.by_operator().get('adaptive_avg_pool2d', 0)  # fvcore counts the global pool, the tool does not
    assert _model_stats()(model, (3, 64, 32))['macs'] == fvcore_total - pool


@pytest.mark.parametrize('name', sorted(PUBLISHED_GFLOPS))
def test_macs_match_published_flops(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    gmacs = _model_stats()(model)['macs'] / 1e9
    assert abs(gmacs - PUBLISHED_GFLOPS[name]) <= 0.01 * PUBLISHED_GFLOPS[name], gmacs


def test_registered_hyper_parameters():
    with torch.device('meta'):
        s1l8 = timm.create_model('vmamba_tiny_s1l8')
        vanilla = timm.create_model('vanilla_vmamba_base')
    block = s1l8.stages[2].blocks[0]
    assert [len(s.blocks) for s in s1l8.stages] == [2, 2, 8, 2] and s1l8.dims == [96, 192, 384, 768]
    assert (block.op.d_state, block.op.d_inner, block.op.dt_rank) == (1, 384, 24)
    assert not block.op.use_z_gate and block.op.conv2d.bias is None and block.mlp.fc1.out_features == 4 * 384
    assert isinstance(s1l8.stem, OverlapPatchEmbed) and isinstance(s1l8.stages[1].downsample, ConvDownsample)
    assert s1l8.stages[3].blocks[1].drop_path.drop_prob == pytest.approx(0.2)
    block = vanilla.stages[2].blocks[0]
    assert [len(s.blocks) for s in vanilla.stages] == [2, 2, 27, 2] and vanilla.dims == [128, 256, 512, 1024]
    assert (block.op.d_state, block.op.d_inner, block.op.dt_rank) == (16, 1024, 32)
    assert block.op.use_z_gate and block.op.scan_fp32 and block.op.conv2d.bias is not None
    assert not block.mlp_branch and isinstance(vanilla.stages[1].downsample, PatchMerging2d)


# ---------------------------------------------------------------------------------------------------------------------
# timm contract (tiny configs)
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('name', TINY_MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True, **TINY_ARGS[name]).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [16, 32, 64, 128]
    features = model(torch.randn(2, 3, 32, 64))
    assert [tuple(f.shape) for f in features] == [(2, 16, 8, 16), (2, 32, 4, 8), (2, 64, 2, 4), (2, 128, 1, 2)]
    assert all(f.is_contiguous() for f in features)
    subset = timm.create_model(name, features_only=True, out_indices=(1, 3), **TINY_ARGS[name]).eval()
    assert [f.shape[1] for f in subset(torch.randn(1, 3, 32, 32))] == [32, 128]


@pytest.mark.parametrize('name', TINY_MODELS)
def test_forward_features_head_and_intermediates(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 64, 32)
    features = model.forward_features(x)
    channel_dim = 1 if model.output_fmt == 'NCHW' else 3
    assert features.shape[channel_dim] == model.num_features == 128
    spatial = features.shape[2:] if channel_dim == 1 else features.shape[1:3]
    assert tuple(spatial) == (2, 1)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    logits = model(x)
    assert logits.shape == (2, 10)
    torch.testing.assert_close(model.forward_head(features), logits)

    final, intermediates = model.forward_intermediates(x)
    torch.testing.assert_close(final, features)
    assert [tuple(t.shape) for t in intermediates] == [(2, 16, 16, 8), (2, 32, 8, 4), (2, 64, 4, 2), (2, 128, 2, 1)]
    normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    expected = features if channel_dim == 1 else features.permute(0, 3, 1, 2)
    torch.testing.assert_close(normed[0], expected)
    early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[1], intermediates[1])
    channel_last = model.forward_intermediates(x, output_fmt='NHWC', intermediates_only=True)
    for nhwc, nchw in zip(channel_last, intermediates):
        assert nhwc.is_contiguous()
        torch.testing.assert_close(nhwc, nchw.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="'NCHW' or 'NHWC'"):
        model.forward_intermediates(x, output_fmt='NLC')


def test_reset_classifier_and_unpooled_model():
    model = _tiny('vmamba_tiny_s1l8')
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    model.reset_classifier(0, '')
    assert model(x).dim() == 4
    unpooled_args = dict(TINY_ARGS['vanilla_vmamba_tiny'], num_classes=0, global_pool='')
    unpooled = timm.create_model('vanilla_vmamba_tiny', **unpooled_args)
    assert unpooled(x).shape == (2, 1, 1, 128)  # channel-last model: NHWC map


def test_grad_checkpointing_same_result_and_grads():
    model = _tiny('vmamba_tiny_s1l8').train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    reference = model(x)
    reference.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.stages)
    torch.manual_seed(1)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, reference)
    for grad, param in zip(grads, model.parameters()):
        torch.testing.assert_close(param.grad, grad, rtol=1e-4, atol=1e-6)


def test_group_matcher_covers_every_parameter():
    model = _tiny('vmamba_tiny_s1l8')
    for coarse in (True, False):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = {name for names in groups.values() for name in names}
        assert grouped == {name for name, _ in model.named_parameters()}
    deeper = timm.create_model('vmamba_tiny_s1l8', depths=(1, 1, 3, 1), dims=16)
    fine = group_parameters(deeper, deeper.group_matcher(coarse=False))
    assert len(fine) > len(group_parameters(deeper, deeper.group_matcher(coarse=True)))


@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS_M))
def test_pretrained_cfg(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    state = model.state_dict()
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state
    assert cfg['url'].startswith('https://github.com/MzeroMiko/VMamba/releases/download/')
    assert cfg['url'].endswith('.pth')
    assert cfg['license'] == 'mit' and cfg['num_classes'] == 1000 and cfg['input_size'] == (3, 224, 224)


@pytest.mark.parametrize('name', TINY_MODELS)
def test_channels_last_input(name):
    model = _tiny(name)
    x = torch.randn(2, 3, 32, 48)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


@pytest.mark.parametrize('name', TINY_MODELS)
def test_non_square_256x320_input(name):
    model = _tiny(name, ssm_d_state=1)
    final, features = model.forward_intermediates(torch.randn(1, 3, 256, 320))
    assert [tuple(f.shape[-2:]) for f in features] == [(64, 80), (32, 40), (16, 20), (8, 10)]
    assert model.forward_head(final).shape == (1, 10)


def test_bad_input_raises_clear_errors():
    model = _tiny('vmamba_tiny_s1l8')
    with pytest.raises(ValueError, match='channels but the model expects in_chans=3'):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='divisible by the patch stride 4'):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match='channels but the model expects'):  # NHWC-shaped tensor
        model(torch.randn(1, 32, 32, 3))


def test_torch_compile_fullgraph():
    model = _tiny('vmamba_tiny_s1l8')
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph_training_step():
    """A compiled training step is one graph with the eager step's logits and gradients. A graph break inside the
    blocks made dynamo recompile per stage with dynamic shapes, which inductor then failed on (H200, torch 2.11)."""
    model = _tiny('vmamba_tiny_s1l8', drop_path_rate=0.).train()  # no random drops: the two steps must agree
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    eager_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    compiled(x).square().mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], rtol=1e-4, atol=1e-12, msg=name)


def test_kept_derivations_leave_the_module_alone_while_compiling(monkeypatch):
    """While compiling, ``derived_until_changed`` derives without reading or writing the module's ``__dict__``: torch
    2.11's dynamo cannot trace ``__dict__.pop`` and broke the graph there in every block."""
    module = nn.Linear(2, 2)
    module.__dict__['_kept'] = 'a result kept by an eager call'
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert derived_until_changed(module, '_kept', [module.weight], None, lambda: 'derived') == 'derived'
        assert module.__dict__['_kept'] == 'a result kept by an eager call'


# ---------------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def _to_official_layout(state_dict, model: VMamba):
    """Our layout -> the official one (MzeroMiko/VMamba classification/models/vmamba.py module tree)."""
    overlap = isinstance(model.stem, OverlapPatchEmbed)
    stem_index = {'conv1': 0, 'norm1': 2, 'conv2': 5, 'norm2': 7} if overlap else {'proj': 0, 'norm': 2}
    out = {}
    for key, value in state_dict.items():
        match = re.match(r'^stem\.(\w+)\.(.*)$', key)
        if match:
            key = f'patch_embed.{stem_index[match.group(1)]}.{match.group(2)}'
        match = re.match(r'^stages\.(\d+)\.downsample\.(\w+)\.(.*)$', key)
        if match:
            stage, name = int(match.group(1)), match.group(2)
            name = {'conv': '1', 'norm': '3'}[name] if isinstance(model.stages[stage].downsample, ConvDownsample) \
                else name
            key = f'layers.{stage - 1}.downsample.{name}.{match.group(3)}'
        key = re.sub(r'^stages\.(\d+)\.blocks\.', r'layers.\1.blocks.', key)
        key = re.sub(r'^norm\.', 'classifier.norm.', key)
        key = re.sub(r'^head\.fc\.', 'classifier.head.', key)
        out[key] = value.clone()
    return out


# Keys the official module tree has for the tiny configs (read off the official VSSM definition).
OFFICIAL_KEYS = {
    'vmamba_tiny_s1l8': ['patch_embed.0.weight', 'patch_embed.2.weight', 'patch_embed.5.bias', 'patch_embed.7.bias',
                         'layers.0.downsample.1.weight', 'layers.2.downsample.3.bias',
                         'layers.0.blocks.0.op.x_proj_weight', 'layers.3.blocks.0.op.dt_projs_bias',
                         'layers.1.blocks.0.op.out_norm.weight', 'layers.1.blocks.0.mlp.fc2.weight',
                         'classifier.norm.weight', 'classifier.head.weight'],
    'vanilla_vmamba_tiny': ['patch_embed.0.weight', 'patch_embed.2.weight', 'layers.0.downsample.reduction.weight',
                            'layers.2.downsample.norm.bias', 'layers.0.blocks.0.norm.weight',
                            'layers.0.blocks.0.op.A_logs', 'layers.0.blocks.0.op.conv2d.bias',
                            'classifier.norm.bias', 'classifier.head.bias'],
}


@pytest.mark.parametrize('name', TINY_MODELS)
def test_official_checkpoint_round_trip(name, tmp_path):
    source = _tiny(name)
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.05)  # no identity norms, no zero biases
    official = _to_official_layout(source.state_dict(), source)
    assert set(OFFICIAL_KEYS[name]) <= set(official)
    assert not any(k.startswith(('stem.', 'stages.', 'head.fc')) for k in official)
    path = tmp_path / 'official.pth'
    torch.save({'model': official, 'epoch': 3}, path)

    # num_classes in the overlay: a pretrained cfg with another class count makes timm drop the classifier.
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                               **TINY_ARGS[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)

    fresh = _tiny(name)
    result = fresh.load_state_dict(checkpoint_filter_fn({'model': official}, fresh), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert checkpoint_filter_fn(source.state_dict(), fresh).keys() == source.state_dict().keys()


def test_checkpoint_filter_legacy_names_and_conv_shaped_weights():
    model = _tiny('vanilla_vmamba_tiny')
    official = _to_official_layout(model.state_dict(), model)
    legacy = {}
    for key, value in official.items():
        key = key.replace('patch_embed.0.', 'patch_embed.proj.').replace('patch_embed.2.', 'patch_embed.norm.')
        key = key.replace('.blocks.0.norm.', '.blocks.0.ln_1.').replace('.op.', '.self_attention.')
        key = key.replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.')
        legacy['module.' + key] = value
    converted = checkpoint_filter_fn(legacy, model)
    assert converted.keys() == model.state_dict().keys()

    v2 = _tiny('vmamba_tiny_s1l8')
    official = _to_official_layout(v2.state_dict(), v2)
    key = 'layers.0.blocks.0.op.in_proj.weight'
    official[key] = official[key][:, :, None, None]  # a Linear2d weight saved as a 1x1 conv
    result = v2.load_state_dict(checkpoint_filter_fn(official, v2), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('d_state', [1, 2])
def test_ss2d_scan_node_equals_composite_path(monkeypatch, dtype, d_state):
    """Eager training runs x_proj, dt_proj, the B/C layout and the scan as one autograd node (``_SS2DScanCore``).
    Its output and every gradient equal the composite path's (the same kernels, recorded op by op)."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    from vmamba_zoo.layers.ss2d import _SS2DScanCore
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    block = SS2D(8, d_state=d_state, ssm_ratio=1.0, dt_rank=3, channel_first=False, use_z_gate=False,
                 backend='triton').to(dtype)
    x = torch.randn(2, 3, 5, 8, dtype=dtype)
    cotangent = torch.randn(2, 3, 5, 8, dtype=dtype)
    results = []
    for fused_node in (True, False):
        monkeypatch.setattr(SS2D, 'fused_scan_node', fused_node)
        block.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        out = block(x_in)
        nodes = _autograd_nodes(out)
        assert any(type(n).__name__ == f'{_SS2DScanCore.__name__}Backward' for n in nodes) == fused_node
        out.backward(cotangent)
        results.append((out, x_in.grad, len(nodes), {name: p.grad for name, p in block.named_parameters()}))
    (out, dx, nodes, grads), (out_ref, dx_ref, nodes_ref, grads_ref) = results
    assert nodes < nodes_ref // 2, (nodes, nodes_ref)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(dx, dx_ref, **tol)
    assert dx.stride() == dx_ref.stride()
    for name, grad in grads.items():
        assert grad.dtype == grads_ref[name].dtype, name
        torch.testing.assert_close(grad, grads_ref[name], **tol, msg=name)


def _assert_close_at_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str = ''):
    """Equal within ``rel`` of the expected tensor's largest magnitude: 16-bit results of the same kernels whose
    gradients round in other places (float32 bias sums, float32 GEMM outputs) differ by an ulp of the large
    entries."""
    assert actual.dtype == expected.dtype, (name, actual.dtype, expected.dtype)
    scale = expected.abs().max().float().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=0, atol=rel * scale + 1e-12, msg=name)


def _branch_gradients(layer, norm, x, cotangent, autocast):
    """Output, input gradient and parameter gradients of ``layer(x, norm)`` (norm's under 'norm.')."""
    for module in (layer, norm):
        module.zero_grad(set_to_none=True)
    x_in = x.clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = layer(x_in, norm)
    nodes = _autograd_nodes(out)
    out.backward(cotangent.to(out.dtype))
    params = list(layer.named_parameters()) + [('norm.' + k, p) for k, p in norm.named_parameters()]
    return out, x_in.grad, {k: p.grad for k, p in params}, nodes


@pytest.mark.parametrize('z_gate, z_act, dtype, autocast', [
    (False, True, torch.float32, False), (False, True, torch.float32, True), (True, True, torch.float32, False),
    (True, True, torch.float16, False), (True, False, torch.float32, False)])
def test_ss2d_branch_node_equals_composite_path(monkeypatch, z_gate, z_act, dtype, autocast):
    """Eager training of ``SS2D(x, norm)`` runs the pre-norm, in_proj (with bias), the z gate (with or without its
    activation), the conv (with bias), SiLU, the core, the out-norm and out_proj as one autograd node
    (``_SS2DBranch``). Its output and every gradient equal the composite path's (the same kernels recorded op by
    op, except SiLU and its gradient, which the node runs as the two-layout kernel): within float32 rounding in
    float32, within 16-bit rounding otherwise."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    from vmamba_zoo.layers.ss2d import _SS2DBranch
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    layer = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, use_z_gate=z_gate, z_act=z_act, bias=True, backend='triton')
    norm = ChannelLastLayerNorm(8)
    with torch.no_grad():
        for param in (norm.weight, norm.bias, layer.out_norm.weight, layer.out_norm.bias):
            param.normal_()
    layer, norm = layer.to(dtype), norm.to(dtype)
    x = torch.randn(2, 3, 5, 8, dtype=dtype)
    cotangent = torch.randn(2, 3, 5, 8)
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(SS2D, 'fused_branch_node', fused)
        results[fused] = _branch_gradients(layer, norm, x, cotangent, autocast)
        assert (type(results[fused][3][0]).__name__ == f'{_SS2DBranch.__name__}Backward') == fused
    (out, dx, grads, nodes), (out_ref, dx_ref, grads_ref, nodes_ref) = results[True], results[False]
    assert len(nodes) == 1 and len(nodes_ref) > 15, (len(nodes), len(nodes_ref))
    assert dx.stride() == dx_ref.stride()
    if dtype == torch.float32 and not autocast:
        _assert_close_at_scale(out, out_ref, 1e-6)
        _assert_close_at_scale(dx, dx_ref, 1e-6)
    else:
        _assert_close_at_scale(out, out_ref, 2e-2)
        _assert_close_at_scale(dx, dx_ref, 2e-2)
    for name, grad in grads.items():
        assert (grad is None) == (grads_ref[name] is None), name
        # bf16 roundings that differ by an ulp upstream add up in the small, cancelling sums of dt_projs_weight's
        # gradient (2.4 % of its largest entry here).
        _assert_close_at_scale(grad, grads_ref[name], 1e-6 if dtype == torch.float32 and not autocast else
                               5e-2 if autocast else 2e-2, name)


@pytest.mark.parametrize('autocast', [False, True])
def test_fused_branches_inference_equals_modules(monkeypatch, autocast):
    """Without gradients, ``SS2D(x, norm)`` and ``Mlp(x, norm)`` run the fused nodes' ops directly, without module
    calls or a node: the same output as the modules (the same kernels in the same order, except SiLU, which runs as
    the two-layout kernel), within float32 rounding."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    layer = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, use_z_gate=False, backend='triton').eval()
    mlp, norm = Mlp(8, 20).eval(), ChannelLastLayerNorm(8)
    x = torch.randn(2, 3, 5, 8)
    from vmamba_zoo.layers import mlp as mlp_module, ss2d as ss2d_module
    direct_calls = []
    for module, name in ((ss2d_module, '_branch_forward'), (mlp_module, '_mlp_forward')):
        monkeypatch.setattr(module, name, lambda *args, _run=getattr(module, name), _name=name, **kwargs:
                            direct_calls.append(_name) or _run(*args, **kwargs))
    outputs = {}
    for fused in (True, False):
        monkeypatch.setattr(SS2D, 'fused_branch_node', fused)
        monkeypatch.setattr(Mlp, 'fused_node', fused)
        direct_calls.clear()
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            outputs[fused] = layer(x, norm), mlp(x, norm)
        assert direct_calls == (['_branch_forward', '_mlp_forward'] if fused else [])
    for fused_out, module_out in zip(outputs[True], outputs[False]):
        assert fused_out.dtype == module_out.dtype
        if autocast:  # on CPU the modules' LayerNorm writes float32 for autocast to cast, and GEMMs block differently
            _assert_close_at_scale(fused_out, module_out, 2e-2)
        else:
            _assert_close_at_scale(fused_out, module_out, 1e-6)


def test_fused_inference_keeps_weight_casts_until_a_parameter_changes(monkeypatch):
    """Inference of ``SS2D(x, norm)`` and ``Mlp(x, norm)`` under autocast casts the Linear and conv weights once and
    reuses the casts: a second call casts no parameter, an in-place update casts again, and the output equals the
    modules' (which cast on every call) after the update too."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    layer = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, use_z_gate=False, backend='triton').eval()
    mlp, norm = Mlp(8, 20).eval(), ChannelLastLayerNorm(8)
    x = torch.randn(1, 3, 4, 8)
    params = {id(p) for p in list(layer.parameters()) + list(mlp.parameters())}
    casts = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, 'to', lambda t, *a, **k: (casts.append(1) if id(t) in params else None)
                        or real_to(t, *a, **k))

    def run(fused):
        monkeypatch.setattr(SS2D, 'fused_branch_node', fused)
        monkeypatch.setattr(Mlp, 'fused_node', fused)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
            return layer(x, norm), mlp(x, norm)

    run(True)
    casts.clear()
    first = run(True)
    assert not casts, 'the second inference call casts no parameter'
    with torch.no_grad():
        mlp.fc1.weight.mul_(2)
        layer.in_proj.weight.mul_(2)
    updated = run(True)
    assert casts, 'an in-place update casts again'
    assert not torch.equal(updated[1], first[1])
    for fused_out, module_out in zip(updated, run(False)):
        _assert_close_at_scale(fused_out, module_out, 2e-3)


def test_ss2d_branch_node_is_left_out_when_it_does_not_apply(monkeypatch):
    """A hooked norm or layer, another out-norm, dropout, the PyTorch LayerNorm backend and channel-first layers run
    the modules (``self(norm(x))``), and give what the node gives."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    layer = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, use_z_gate=False, backend='triton')
    norm = ChannelLastLayerNorm(8)
    x = torch.randn(1, 2, 3, 8, requires_grad=True)
    assert layer._branch_spec(x, norm) is not None
    assert layer._branch_spec(x.detach(), norm) is not None  # training of the parameters alone
    with torch.no_grad():
        assert layer._branch_spec(x, norm) is not None  # inference runs the node's ops without a node
    assert layer._branch_spec(x.transpose(1, 2), norm) is None  # not contiguous
    seen = []
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(out))
    assert layer._branch_spec(x, norm) is None
    out_hooked = layer(x, norm)
    handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(out_hooked, layer(x, norm))
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'torch')
    assert layer._branch_spec(x, norm) is None
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    for kwargs in (dict(out_norm='none'), dict(dropout=0.1), dict(out_act=True), dict(act_layer=nn.GELU)):
        assert SS2D(8, d_state=1, ssm_ratio=1.0, use_z_gate=False, backend='triton', **kwargs)._branch_spec(
            x, norm) is None, kwargs
    channel_first = SS2D(8, d_state=1, ssm_ratio=1.0, use_z_gate=False, channel_first=True, backend='triton')
    assert channel_first._branch_spec(x.detach().permute(0, 3, 1, 2), LayerNorm2d(8)) is None


def test_vmamba_training_with_fused_branches_equals_composite_path(monkeypatch):
    """A training step of a tiny VMamba on the Triton kernels (Triton's CPU interpreter): logits and every parameter
    gradient are the same with the blocks' fused nodes (``SS2D.fused_branch_node``, ``Mlp.fused_node``), also under
    activation checkpointing, as op by op, and the fused step records fewer than half the autograd nodes."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    # Two stages of 8 channels: the interpreter's time grows with the channels.
    model = _tiny('vmamba_tiny_s1l8', depths=(1, 1), dims=(8, 8), drop_path_rate=0.).train()
    for module in model.modules():
        if isinstance(module, SS2D):
            module.backend = 'triton'
    x = torch.randn(2, 3, 16, 16)
    results = {}
    # With activation checkpointing too: it unpacks each tensor a node saved once, and re-runs the forward.
    for fused, checkpointing in ((True, False), (False, False), (True, True)):
        monkeypatch.setattr(SS2D, 'fused_branch_node', fused)
        monkeypatch.setattr(Mlp, 'fused_node', fused)
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        logits = model(x)
        nodes = len(_autograd_nodes(logits))
        logits.square().sum().backward()
        results[fused, checkpointing] = logits, nodes, [p.grad for p in model.parameters()]
    logits_ref, nodes_ref, grads_ref = results[False, False]
    assert results[True, False][1] < nodes_ref / 2, (results[True, False][1], nodes_ref)
    for logits, _, grads in (results[True, False], results[True, True]):
        torch.testing.assert_close(logits, logits_ref, rtol=1e-5, atol=1e-6)
        for (name, _), grad, grad_ref in zip(model.named_parameters(), grads, grads_ref):
            torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6, msg=name)


def test_stacked_is_a_view_only_of_adjacent_tensors():
    """``_stacked`` (the SS2D node's stack of dB and dC) equals ``torch.stack`` and views the memory when the second
    tensor directly follows the first, as the scan's eager backward lays them out."""
    from vmamba_zoo.layers.ss2d import _stacked
    flat = torch.arange(48.)
    first, second = flat[:24].view(2, 3, 4), flat[24:].view(2, 3, 4)
    stacked = _stacked(first, second)
    assert torch.equal(stacked, torch.stack((first, second))) and stacked.data_ptr() == first.data_ptr()
    for other in (torch.randn(2, 3, 4), flat[24:].view(2, 4, 3).transpose(1, 2)):  # elsewhere; not contiguous
        stacked = _stacked(first, other)
        assert torch.equal(stacked, torch.stack((first, other))) and stacked.data_ptr() != first.data_ptr()


def _autograd_nodes(output: torch.Tensor) -> list:
    """The backward nodes reachable from ``output``, without the leaves' AccumulateGrad."""
    nodes, stack = [], [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in nodes and type(node).__name__ != 'AccumulateGrad':
            nodes.append(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return nodes


@pytest.mark.parametrize('autocast, act_layer, with_norm', [
    (False, 'gelu', False), (True, 'gelu', False), (True, 'gelu_tanh', False), (True, torch.nn.GELU, False),
    (False, 'gelu', True), (True, 'gelu', True)])
def test_mlp_node_equals_composite_path(monkeypatch, autocast, act_layer, with_norm):
    """Eager training runs the channel-last MLP (fc1 -> GELU -> fc2), with its block's pre-norm when given
    (``mlp(x, norm)``, on the Triton LayerNorm), as one autograd node. Output, input gradient and parameter
    gradients (values and dtypes) equal the composite path's, with and without bf16 autocast, for timm's GELU
    modules (what the models get from ``get_act_layer``) and torch's."""
    from timm.layers import get_act_layer
    from vmamba_zoo.layers import ChannelLastLayerNorm, Mlp
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    mlp = Mlp(8, 20, act_layer=get_act_layer(act_layer))
    norm = ChannelLastLayerNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 3, 5, 8)
    cotangent = torch.randn(2, 3, 5, 8)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(Mlp, 'fused_node', fused)
        mlp.zero_grad(set_to_none=True)
        norm.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = mlp(x_in, norm) if with_norm else mlp(x_in)
        assert (len(_autograd_nodes(out)) == 1) == fused
        out.backward(cotangent.to(out.dtype))
        params = list(mlp.parameters()) + (list(norm.parameters()) if with_norm else [])
        results.append((out, x_in.grad, [p.grad for p in params]))
    (out, dx, grads), (out_ref, dx_ref, grads_ref) = results
    assert out.dtype == out_ref.dtype == (torch.bfloat16 if autocast else torch.float32)
    if autocast:
        _assert_close_at_scale(out, out_ref, 1e-2)
        _assert_close_at_scale(dx, dx_ref, 1e-2)
    else:
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-6)
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.dtype == grad_ref.dtype == torch.float32
        if autocast:
            _assert_close_at_scale(grad, grad_ref, 1e-2)
        else:
            torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_mlp_node_is_left_out_when_it_does_not_apply():
    """Dropout, another activation, channel-first maps, inference and frozen inputs take the composite path."""
    from vmamba_zoo.layers import Mlp
    x = torch.randn(2, 4, 8, requires_grad=True)
    assert len(_autograd_nodes(Mlp(8, 16)(x))) == 1
    assert len(_autograd_nodes(Mlp(8, 16, drop=0.1)(x))) > 1
    assert len(_autograd_nodes(Mlp(8, 16, act_layer=torch.nn.SiLU)(x))) > 1
    assert len(_autograd_nodes(Mlp(8, 16, channel_first=True)(x.detach().view(2, 8, 2, 2).requires_grad_()))) > 1
    assert len(_autograd_nodes(Mlp(8, 16).requires_grad_(False)(x.detach()))) == 0


def test_ss2d_scan_node_is_left_out_when_autocast_would_change_the_dtype(monkeypatch):
    """The node computes in the map's dtype: a float32 map under bf16 autocast takes the composite path, whose
    projections autocast runs in bf16."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    block = SS2D(8, d_state=1, ssm_ratio=1.0, channel_first=False, use_z_gate=False, backend='triton')
    x = torch.randn(1, 3, 4, 8).permute(0, 3, 1, 2).requires_grad_(True)  # (B, D, H, W), channel-last in memory
    assert block._scan_node(x) is not None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert block._scan_node(x) is None
        assert block._scan_node(x.detach().bfloat16().requires_grad_(True)) is not None


@pytest.mark.parametrize('channel_first', [False, True])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_ss2d_direct_inference_scan_equals_multi_scan_2d(monkeypatch, channel_first, dtype):
    """Eager inference runs the raster scan directly (``RasterMultiScan``), without ``multi_scan_2d``'s wrapper:
    the same output, bit for bit."""
    from vmamba_zoo.kernels import multi_scan
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(LayerNorm2d, 'backend', 'triton')
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    torch.manual_seed(0)
    block = SS2D(8, d_state=1, ssm_ratio=1.0, channel_first=channel_first, use_z_gate=False,
                 backend='triton').to(dtype).eval()
    x = torch.randn((2, 8, 3, 5) if channel_first else (2, 3, 5, 8), dtype=dtype)
    calls = []
    monkeypatch.setattr(multi_scan.RasterMultiScan, 'forward', lambda self, *args, _forward=multi_scan.RasterMultiScan
                        .forward: calls.append(1) or _forward(self, *args))
    outputs = []
    for direct in (True, False):
        monkeypatch.setattr(SS2D, 'fused_scan_node', direct)
        calls.clear()
        with torch.no_grad():
            outputs.append(block(x))
        assert bool(calls) == direct
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize('autocast', [False, True])
@pytest.mark.parametrize('fused', [True, False])
def test_branches_with_the_residual_equal_the_sum(monkeypatch, autocast, fused):
    """``SS2D(x, norm, residual=True)`` and ``Mlp(x, norm, residual=True)`` return ``x + layer(x, norm)`` with the same
    gradients, fused (one autograd node, no separate sum of x's gradients) or op by op, with and without bf16
    autocast."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    monkeypatch.setattr(SS2D, 'fused_branch_node', fused)
    monkeypatch.setattr(Mlp, 'fused_node', fused)
    torch.manual_seed(0)
    ss2d = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, use_z_gate=False, backend='triton')
    for layer in (ss2d, Mlp(8, 20)):
        norm = ChannelLastLayerNorm(8)
        x = torch.randn(2, 3, 5, 8)
        cotangent = torch.randn(2, 3, 5, 8)
        results = []
        for residual in (True, False):
            layer.zero_grad(set_to_none=True)
            x_in = x.clone().requires_grad_(True)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
                out = layer(x_in, norm, residual=True) if residual else x_in + layer(x_in, norm)
            if residual and fused:
                assert len(_autograd_nodes(out)) == 1, type(layer).__name__
            out.backward(cotangent.to(out.dtype))
            results.append((out, x_in.grad, [p.grad for p in layer.parameters()]))
        (out, dx, grads), (out_ref, dx_ref, grads_ref) = results
        assert out.dtype == out_ref.dtype and dx.dtype == dx_ref.dtype
        # The fused sum rounds once where the reference rounds the branch first, under autocast.
        tol = 2e-2 if autocast else 1e-6
        _assert_close_at_scale(out, out_ref, tol)
        _assert_close_at_scale(dx, dx_ref, tol)
        for grad, grad_ref in zip(grads, grads_ref):
            assert (grad is None) == (grad_ref is None)
            if grad is not None:
                _assert_close_at_scale(grad, grad_ref, 5e-2 if autocast else 1e-6)


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('autocast', [False, True])
def test_vss_block_folds_residual_and_drop_path_into_its_layers(monkeypatch, fused, autocast):
    """A VSS block hands its residual sums and drop-path factors to its layers (``residual=True``,
    ``branch_scale``): in training, with samples dropped and kept, the output and every gradient equal the block
    summing ``x + drop_path(layer(x, norm))`` itself (``VSSBlock.residual_in_layer = False``) under the same seed; in
    evaluation no factor is drawn."""
    from vmamba_zoo.layers import ChannelLastLayerNorm
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    monkeypatch.setattr(SS2D, 'fused_branch_node', fused)
    monkeypatch.setattr(Mlp, 'fused_node', fused)
    torch.manual_seed(0)
    block = VSSBlock(8, drop_path=0.5, norm_layer=ChannelLastLayerNorm, ssm_ratio=1.0, mlp_ratio=2.0, d_state=1,
                     dt_rank=3, use_z_gate=False, backend='triton').train()
    x = torch.randn(6, 3, 4, 8)
    cotangent = torch.randn(6, 3, 4, 8)
    calls = []
    for module in (block.op, block.mlp):
        monkeypatch.setattr(module, 'forward', lambda *args, _run=module.forward, **kwargs:
                            calls.append(kwargs.get('branch_scale')) or _run(*args, **kwargs))
    results = {}
    for in_layer in (True, False):
        monkeypatch.setattr(VSSBlock, 'residual_in_layer', in_layer)
        block.zero_grad(set_to_none=True)
        x_in = x.clone().requires_grad_(True)
        torch.manual_seed(1)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = block(x_in)
        out.backward(cotangent.to(out.dtype))
        results[in_layer] = out, x_in.grad, [p.grad for p in block.parameters()]
    scales = calls[:2]
    assert all(s is not None and s.shape == (6, 1, 1, 1) for s in scales) and calls[2:] == [None, None]
    assert any((s == 0).any() and (s == 2).any() for s in scales), 'some samples dropped, some kept'
    (out, dx, grads), (out_ref, dx_ref, grads_ref) = results[True], results[False]
    assert out.dtype == out_ref.dtype
    tol = 2e-2 if autocast else 1e-6
    _assert_close_at_scale(out, out_ref, tol)
    _assert_close_at_scale(dx, dx_ref, tol)
    for grad, grad_ref in zip(grads, grads_ref):
        _assert_close_at_scale(grad, grad_ref, 5e-2 if autocast else 1e-6)
    calls.clear()
    monkeypatch.setattr(VSSBlock, 'residual_in_layer', True)
    with torch.no_grad():
        block.eval()(x)
    assert calls == [None, None]


def test_branch_scale_needs_the_residual():
    """A drop-path factor without ``residual=True`` names the argument."""
    scale = torch.ones(1, 1, 1, 1)
    for layer in (SS2D(8, d_state=1, ssm_ratio=1.0, use_z_gate=False), Mlp(8, 16)):
        with pytest.raises(ValueError, match='branch_scale'):
            layer(torch.randn(1, 2, 2, 8), branch_scale=scale)


def test_fused_nodes_gather_the_same_parameters_as_attribute_access():
    """The nodes read submodules and parameters from the module dicts (``SS2D._branch_params``, ``own_parameters``):
    the same tensors as attribute access, biases absent as None; a parametrized name is read as its attribute."""
    from torch.nn.utils import parametrize
    from vmamba_zoo.layers import ChannelLastLayerNorm
    from vmamba_zoo.layers.eager import own_parameters
    layer, norm = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, bias=False), ChannelLastLayerNorm(8)
    expected = (norm.weight, norm.bias, layer.in_proj.weight, layer.in_proj.bias, layer.conv2d.weight,
                layer.conv2d.bias, layer.x_proj_weight, layer.dt_projs_weight, layer.dt_projs_bias, layer.A_logs,
                layer.Ds, layer.out_norm.weight, layer.out_norm.bias, layer.out_proj.weight, layer.out_proj.bias)
    gathered = layer._branch_params(norm)
    assert len(gathered) == len(expected) and gathered[3] is None and gathered[14] is None
    assert all(a is b for a, b in zip(gathered, expected))

    class Doubled(nn.Module):
        def forward(self, weight):
            return weight * 2

    parametrize.register_parametrization(layer, 'Ds', Doubled())
    ds, a_logs = own_parameters(layer, ('Ds', 'A_logs'))
    assert torch.equal(ds, layer.Ds) and torch.equal(ds, 2 * layer.parametrizations.Ds.original)
    assert a_logs is layer.A_logs
