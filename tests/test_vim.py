"""Vision Mamba (Vim): mixer vs. a two-pass reference, shared-core use, timm contract, checkpoints, feature pyramid."""
import argparse
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vmamba_zoo  # noqa: F401  (registers the models)
from timm.models._features import FeatureGetterNet
from vmamba_zoo.kernels import bidirectional_pattern, selective_scan_ref
from vmamba_zoo.layers import BiMambaMixer, add_rms_norm, rms_norm
from vmamba_zoo.layers import mamba_mixer as mamba_mixer_module
from vmamba_zoo.models.vim import checkpoint_filter_fn, resample_vim_pos_embed

TINY = dict(embed_dim=32, depth=4, d_state=4, drop_path_rate=0.)
VIM_NAMES = ['vim_tiny_patch16_224', 'vim_tiny_patch16_stride8_224', 'vim_small_patch16_224',
             'vim_small_patch16_stride8_224', 'vim_base_patch16_224']


def _tiny(name='vim_tiny_patch16_224', **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **dict(TINY, **kwargs)).eval()


def _perturb(module, std=0.05, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


# ---------------------------------------------------------------------------------------------------------------------
# Mixer
# ---------------------------------------------------------------------------------------------------------------------
def _two_pass_reference(mixer: BiMambaMixer, x: torch.Tensor) -> torch.Tensor:
    """The official bimamba v2 data flow: flip xz, scan each direction separately, flip back, average, project."""
    xz = mixer.in_proj(x).transpose(1, 2)

    def branch(xz_dir, conv, x_proj, dt_proj, A_log, D):
        length = xz_dir.shape[-1]
        x_in, z = xz_dir.chunk(2, dim=1)
        u = F.silu(conv(x_in)[..., :length])
        dt, B, C = x_proj(u.transpose(1, 2)).split([mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)
        return selective_scan_ref(u, delta, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2), D, z=z,
                                  delta_bias=dt_proj.bias, delta_softplus=True)

    y_f = branch(xz, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    y_b = branch(xz.flip(-1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b)
    return mixer.out_proj(((y_f + y_b.flip(-1)) / 2).transpose(1, 2))


def test_mixer_matches_two_pass_reference_forward_and_backward():
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4).double()
    _perturb(mixer, 0.1)
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    out = mixer(x)
    ref = _two_pass_reference(mixer, x)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)

    grad_out = torch.randn_like(out)
    params = [x] + list(mixer.parameters())
    grads = torch.autograd.grad(out, params, grad_out)
    grads_ref = torch.autograd.grad(ref, params, grad_out)
    for (name, _), g, g_ref in zip([('x', None)] + list(mixer.named_parameters()), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-9, msg=f'gradient of {name}')


def test_mixer_backward_direction_matters():
    """The backward branch really reads the sequence in reverse: changing its params changes early tokens."""
    torch.manual_seed(0)
    mixer = BiMambaMixer(16, d_state=4)
    x = torch.randn(1, 9, 16)
    out = mixer(x)
    with torch.no_grad():
        mixer.x_proj_b.weight.mul_(3.0)
    out2 = mixer(x)
    assert (out2[:, 0] - out[:, 0]).abs().max() > 1e-4  # token 0 sees the future only through the backward scan


def test_mixer_calls_shared_core_once_with_bidirectional_routes(monkeypatch):
    calls = []
    real = mamba_mixer_module.scan_routes

    def spy(u, delta, A, B, C, *args, **kwargs):
        calls.append(dict(u=u.shape, delta=delta.shape, routes=kwargs.get('routes'),
                          accumulate=kwargs.get('accumulate')))
        return real(u, delta, A, B, C, *args, **kwargs)

    monkeypatch.setattr(mamba_mixer_module, 'scan_routes', spy)
    mixer = BiMambaMixer(16, d_state=4)
    mixer(torch.randn(2, 7, 16))
    assert len(calls) == 1
    assert calls[0]['u'] == (2, 2, mixer.d_inner, 7) and calls[0]['delta'] == (2, 2, mixer.d_inner, 7)
    assert calls[0]['accumulate'] is True
    assert torch.equal(calls[0]['routes'].long(), bidirectional_pattern(7).routes)


def test_model_forward_goes_through_scan_custom_op():
    """Counted by torch's FLOP counter through the registered formula of the vmamba_zoo custom op."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _tiny(img_size=32)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    counts = {str(k): v for k, v in counter.get_flop_counts()['Global'].items()}
    assert any('scan_routes_fwd' in k for k in counts), counts


def test_add_rms_norm_fp32_residual():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8).bfloat16()
    residual = torch.randn(2, 5, 8)
    weight = torch.rand(8) + 0.5
    y, res = add_rms_norm(x, residual, weight, eps=1e-5, residual_in_fp32=True)
    summed = x.float() + residual
    expected = summed / torch.sqrt(summed.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
    assert res.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(res, summed)
    torch.testing.assert_close(y, expected.bfloat16())
    y0, res0 = add_rms_norm(x, None, weight, residual_in_fp32=False)
    assert res0.dtype == torch.bfloat16 and torch.equal(res0, x)


# ---------------------------------------------------------------------------------------------------------------------
# Model structure, init, registry
# ---------------------------------------------------------------------------------------------------------------------
def _official_param_count(dim, depth, patch, stride, img=224, d_state=16, expand=2, d_conv=4, classes=1000):
    """Parameters of the official architecture, counted from its definition (models_mamba.py / mamba_simple.py)."""
    inner, rank = expand * dim, math.ceil(dim / 16)
    direction = inner * d_conv + inner + inner * (rank + 2 * d_state) + rank * inner + inner + inner * d_state + inner
    layer = dim * 2 * inner + 2 * direction + inner * dim + dim
    tokens = ((img - patch) // stride + 1) ** 2 + 1
    return 3 * dim * patch * patch + dim + dim + tokens * dim + depth * layer + dim + dim * classes + classes


@pytest.mark.parametrize('name,dim,stride,published_m', [
    ('vim_tiny_patch16_224', 192, 16, 7), ('vim_small_patch16_224', 384, 16, 26), ('vim_base_patch16_224', 768, 16, 98),
    ('vim_tiny_patch16_stride8_224', 192, 8, 7), ('vim_small_patch16_stride8_224', 384, 8, 26)])
def test_full_config_param_counts(name, dim, stride, published_m):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == _official_param_count(dim, 24, 16, stride)
    assert round(count / 1e6) == published_m  # README: Ti 7M, S 26M, B 98M (rounded to 1M)
    assert len(model.layers) == 24 and model.layers[0].mixer.d_state == 16 and model.layers[0].mixer.d_conv == 4


def test_official_key_layout():
    model = timm.create_model('vim_tiny_patch16_224', embed_dim=32, depth=1)
    expected = {
        'cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias', 'head.weight', 'head.bias',
        'norm_f.weight', 'layers.0.norm.weight', 'layers.0.mixer.in_proj.weight', 'layers.0.mixer.conv1d.weight',
        'layers.0.mixer.conv1d.bias', 'layers.0.mixer.x_proj.weight', 'layers.0.mixer.dt_proj.weight',
        'layers.0.mixer.dt_proj.bias', 'layers.0.mixer.A_log', 'layers.0.mixer.D', 'layers.0.mixer.A_b_log',
        'layers.0.mixer.conv1d_b.weight', 'layers.0.mixer.conv1d_b.bias', 'layers.0.mixer.x_proj_b.weight',
        'layers.0.mixer.dt_proj_b.weight', 'layers.0.mixer.dt_proj_b.bias', 'layers.0.mixer.D_b',
        'layers.0.mixer.out_proj.weight'}
    assert set(model.state_dict()) == expected
    assert model.pos_embed.shape == (1, 197, 32)


def test_official_init_and_drop_path_schedule():
    torch.manual_seed(0)
    model = timm.create_model('vim_tiny_patch16_224', embed_dim=32, depth=6, drop_path_rate=0.1)
    mixer = model.layers[0].mixer
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 and dt.max() <= 0.1 + 1e-6
    assert torch.count_nonzero(mixer.dt_proj_b.bias) == 0  # official: default Linear init, bias zeroed by mamba init
    s4d_real = torch.log(torch.arange(1, 17).float()).expand(mixer.d_inner, -1)
    torch.testing.assert_close(mixer.A_log, s4d_real)
    torch.testing.assert_close(mixer.A_b_log, s4d_real)
    assert torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(6)  # kaiming-uniform(a=sqrt(5)) bound, / sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-7
    ramp = torch.linspace(0, 0.1, 6).tolist()
    assert isinstance(model.layers[0].drop_path, torch.nn.Identity)
    assert isinstance(model.layers[1].drop_path, torch.nn.Identity)  # ramp[0] == 0
    assert model.layers[5].drop_path.drop_prob == pytest.approx(ramp[4])
    assert model.drop_path.drop_prob == pytest.approx(0.1)


@pytest.mark.parametrize('alias,target_stride,target_dim', [
    ('vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2', 16, 192),
    ('vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2', 8, 384),
    ('vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2', 16, 768),
    ('vim_tiny_patch8_224', 8, 192)])
def test_official_names_are_aliases(alias, target_stride, target_dim):
    with pytest.warns(UserWarning, match='Mapping deprecated model name'):
        with torch.device('meta'):
            model = timm.create_model(alias)
    assert model.patch_embed.stride == (target_stride, target_stride) and model.embed_dim == target_dim
    assert model.pretrained_cfg['hf_hub_id'].startswith('hustvl/Vim-')


def test_pretrained_cfgs():
    for name in VIM_NAMES:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.hf_hub_filename.endswith('.pth') and cfg.url.endswith(cfg.hf_hub_filename)
        assert cfg.first_conv == 'patch_embed.proj' and cfg.classifier == 'head' and cfg.license == 'apache-2.0'


# ---------------------------------------------------------------------------------------------------------------------
# timm contract
# ---------------------------------------------------------------------------------------------------------------------
def test_forward_shapes_head_and_middle_class_token():
    model = _tiny(img_size=64)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 17, 32)
    pre = model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pre, feats[:, 8])  # 16 patches: the class token is at index 8
    assert model(x).shape == (2, 1000)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0, 'avg')
    torch.testing.assert_close(model(x), torch.cat([feats[:, :8], feats[:, 9:]], 1).mean(1))
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(0, 'max')


def test_non_square_and_channels_last_inputs():
    model = _tiny(img_size=64)
    x = torch.randn(1, 3, 48, 80)
    out = model(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), out)
    feats = model.forward_features(x)
    assert feats.shape == (1, 3 * 5 + 1, 32)
    s8 = _tiny('vim_tiny_patch16_stride8_224', img_size=64)
    assert s8.forward_features(torch.randn(1, 3, 40, 56)).shape == (1, 4 * 6 + 1, 32)


def test_position_embedding_resample_keeps_class_entry_and_identity():
    pe = torch.randn(1, 16 + 1, 8)
    same = resample_vim_pos_embed(pe, (4, 4), (4, 4))
    torch.testing.assert_close(same, pe)
    bigger = resample_vim_pos_embed(pe, (3, 6), (4, 4))
    assert bigger.shape == (1, 19, 8)
    torch.testing.assert_close(bigger[:, 9], pe[:, 8])  # middle class entry moved to the new middle


@pytest.mark.parametrize('bad,match', [
    (torch.randn(3, 64, 64), '4-D'), (torch.randn(1, 1, 64, 64), 'in_chans=3'),
    (torch.randn(1, 3, 64, 70), 'width 70'), (torch.randn(1, 3, 8, 64), 'height 8')])
def test_bad_input_errors(bad, match):
    model = _tiny(img_size=64)
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_grad_checkpointing_same_result_and_backward():
    model = _tiny(img_size=32).train()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert model.layers[0].mixer.A_b_log.grad is not None and model.cls_token.grad is not None


def test_group_matcher_covers_all_params():
    from timm.models._manipulate import group_parameters

    model = _tiny(img_size=32)
    groups = group_parameters(model, model.group_matcher())
    names = {n for g in groups.values() for n in g}
    assert names == {n for n, _ in model.named_parameters()}
    assert len(groups) == len(model.layers) + 2  # stem, one group per block, final norm (+ head with it)


def test_forward_intermediates():
    model = _tiny(img_size=64)
    x = torch.randn(1, 3, 64, 96)
    final, inters = model.forward_intermediates(x, indices=[1, 3])
    assert [t.shape for t in inters] == [(1, 32, 4, 6)] * 2
    torch.testing.assert_close(final, model.forward_features(x))
    nlc = model.forward_intermediates(x, indices=2, output_fmt='NLC', intermediates_only=True)
    assert [t.shape for t in nlc] == [(1, 24, 32)] * 2
    torch.testing.assert_close(nlc[1].transpose(1, 2).reshape(1, 32, 4, 6), inters[1])
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], inters[0])
    normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0].flatten(2).transpose(1, 2),
                               model._strip_prefix(model.forward_features(x))[0])
    with_cls = model.forward_intermediates(x, indices=[3], return_prefix_tokens=True, intermediates_only=True)
    assert with_cls[0][1].shape == (1, 1, 32)
    model.intermediate_source = 'residual'  # official Vim-S segmentation taps the residual stream
    stream = model.forward_intermediates(x, indices=[3], output_fmt='NLC', intermediates_only=True)[0]
    torch.testing.assert_close(rms_norm(stream, model.norm_f.weight), model._strip_prefix(model.forward_features(x))[0])
    with pytest.raises(ValueError, match='intermediate_source'):
        _tiny(img_size=32, intermediate_source='hidden')
    kept = model.prune_intermediate_layers([1])
    assert kept == [1] and len(model.layers) == 2 and model.num_classes == 0


@pytest.mark.parametrize('name,grids', [
    ('vim_tiny_patch16_224', [(16, 24), (8, 12), (4, 6), (2, 3)]),
    ('vim_tiny_patch16_stride8_224', [(14, 22), (7, 11), (3, 5), (1, 2)])])
def test_features_only_pyramid(name, grids):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, img_size=64, **TINY).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32] and model.feature_info.channels() == [32] * 4
    assert model.block_indices == [0, 1, 2, 3]
    assert model.feature_info.module_name() == ['layers.0', 'layers.1', 'layers.2', 'layers.3']
    assert isinstance(model, FeatureGetterNet) and 'model.pos_embed' in model.state_dict()
    feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == grids and all(f.shape[1] == 32 for f in feats)
    two = timm.create_model(name, features_only=True, out_indices=(1, 3), img_size=64, **TINY)
    assert two.feature_info.reduction() == [8, 32]
    with pytest.raises(ValueError, match='pyramid levels'):
        timm.create_model(name, features_only=True, out_indices=(4,), img_size=64, **TINY)


def test_features_only_taps_official_blocks_for_24_layers():
    with torch.device('meta'):
        model = timm.create_model('vim_tiny_patch16_224', features_only=True)
    assert model.block_indices == [5, 11, 17, 23] and len(model.model.layers) == 24


def test_features_only_getter_gives_block_maps():
    model = timm.create_model('vim_tiny_patch16_224', features_only=True, feature_cls='getter', out_indices=(1, 3),
                              img_size=64, **TINY).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in feats] == [(1, 32, 4, 4)] * 2 and model.feature_info.reduction() == [16, 16]


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_official_layout(tmp_path):
    src = _tiny(img_size=64)
    _perturb(src)
    ema = _tiny(img_size=64)
    path = tmp_path / 'vim_t_midclstok_test.pth'
    # The released files are full training checkpoints (model, model_ema, optimizer, argparse.Namespace args).
    torch.save({'model': src.state_dict(), 'model_ema': ema.state_dict(), 'epoch': 3,
                'args': argparse.Namespace(lr=1e-3)}, path)
    overlay = dict(file=str(path), custom_load=True)
    dst = timm.create_model('vim_tiny_patch16_224', pretrained=True, img_size=64, pretrained_cfg_overlay=overlay,
                            **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))  # the 'model' weights, as the official evaluation uses
    # Other head size: the classifier is dropped, everything else loads.
    dst10 = timm.create_model('vim_tiny_patch16_224', pretrained=True, img_size=64, num_classes=10,
                              pretrained_cfg_overlay=overlay, **TINY).eval()
    torch.testing.assert_close(dst10.forward_features(x), src.forward_features(x))
    assert dst10(x).shape == (2, 10)
    # Pyramid for dense tasks on top of the same checkpoint.
    feats = timm.create_model('vim_tiny_patch16_224', pretrained=True, img_size=64, features_only=True,
                              pretrained_cfg_overlay=overlay, **TINY).eval()
    torch.testing.assert_close(feats.model.pos_embed, src.pos_embed)
    # A mismatching checkpoint is an error, not a silent partial load.
    torch.save({'model': _tiny(img_size=64, embed_dim=16).state_dict()}, tmp_path / 'bad.pth')
    with pytest.raises(RuntimeError):
        timm.create_model('vim_tiny_patch16_224', pretrained=True, img_size=64,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / 'bad.pth'), custom_load=True), **TINY)


def test_default_pretrained_route_reads_official_hub_file(tmp_path, monkeypatch):
    """pretrained=True with the registered cfg: Hub file name from the cfg, loaded by VisionMamba.load_pretrained."""
    import timm.models._hub as timm_hub

    src = _tiny(img_size=64)
    _perturb(src)
    path = tmp_path / 'downloaded.pth'
    torch.save({'model': src.state_dict(), 'args': argparse.Namespace(model='vim')}, path)
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append((repo_id, filename))
        return str(path)

    monkeypatch.setattr(timm_hub, 'hf_hub_download', fake_download)
    model = timm.create_model('vim_tiny_patch16_224', pretrained=True, img_size=64, **TINY).eval()
    assert requested == [('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth')]
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), src(x))


def test_checkpoint_filter_resizes_and_drops_class_token():
    src = _tiny(img_size=64)
    sd = {'model': {('module.' + k): v for k, v in src.state_dict().items()}}
    sd['model']['rope.freqs_cos'] = torch.zeros(1)
    bigger = _tiny(img_size=96)
    out = checkpoint_filter_fn(sd, bigger)
    bigger.load_state_dict(out, strict=True)
    torch.testing.assert_close(out['pos_embed'][:, 18], src.pos_embed[:, 8])
    no_cls = _tiny(img_size=64, class_token=False)
    out = checkpoint_filter_fn(sd, no_cls)
    no_cls.load_state_dict(out, strict=True)
    torch.testing.assert_close(out['pos_embed'], torch.cat([src.pos_embed[:, :8], src.pos_embed[:, 9:]], 1))
    assert no_cls.global_pool == 'avg' and no_cls(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_model_matches_manual_official_forward():
    """Vim's forward written out step by step (official order: cls in the middle, add+norm, final drop path/norm)."""
    model = _tiny(img_size=32)
    _perturb(model)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    mid = tokens.shape[1] // 2
    hidden = torch.cat([tokens[:, :mid], model.cls_token.expand(2, -1, -1), tokens[:, mid:]], 1) + model.pos_embed
    residual = None
    for layer in model.layers:
        residual = hidden if residual is None else residual + hidden
        normed = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + 1e-5) * layer.norm.weight
        hidden = _two_pass_reference(layer.mixer, normed)
    residual = residual + hidden
    final = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + 1e-5) * model.norm_f.weight
    torch.testing.assert_close(model(x), model.head(final[:, mid]), rtol=1e-4, atol=1e-5)
