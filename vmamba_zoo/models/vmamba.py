"""VMamba (Visual State Space Model) for timm, on the shared selective-scan core.

Paper: `VMamba: Visual State Space Model` - https://arxiv.org/abs/2401.10166 (NeurIPS 2024)

@inproceedings{liu2024vmamba,
  title={VMamba: Visual State Space Model},
  author={Liu, Yue and Tian, Yunjie and Zhao, Yuzhong and Yu, Hongtian and Xie, Lingxi and Wang, Yaowei and Ye, Qixiang
    and Jiao, Jianbin and Liu, Yunfan},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}
}

Original code and weights: https://github.com/MzeroMiko/VMamba (MIT licence). This is an independent
implementation: same architecture, hyper-parameters, initialisation and parameter names inside each block, a timm
module layout (``stem``, ``stages.i.downsample``, ``stages.i.blocks``, ``norm``, ``head.fc``) and the fused 2D
multi-scan of ``vmamba_zoo.kernels`` instead of VMamba's CUDA extension. ``checkpoint_filter_fn`` converts the
official checkpoints.

Official ``forward_type`` strings map to named arguments: ``v0`` -> ``ssm_scan_fp32=True``; ``v05`` ->
``ssm_scan_fp32=False``; ``_noz`` -> ``ssm_use_z_gate=False``; norm ``ln2d`` -> ``channel_first=True``;
``patchembed_version`` v1/v2 -> ``stem_type`` 'patch'/'overlap'; ``downsample_version`` v1/v2/v3 ->
``downsample_type`` 'merge'/'conv2'/'conv3'.
"""
import re
from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, get_act_layer, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq

from vmamba_zoo.layers import (
    SS2D, GatedMlp, Mlp, OverlapPatchEmbed, create_downsample, create_patch_embed, get_norm_layer,
)
from vmamba_zoo.layers.eager import drop_path_scale
from ._hierarchical import StagedModelMixin, stage_widths

__all__ = ['VMamba', 'VSSBlock', 'VMambaStage', 'checkpoint_filter_fn']


class VSSBlock(nn.Module):
    """VMamba block: ``x + drop_path(SS2D(norm(x)))``, then ``x + drop_path(MLP(norm2(x)))``.

    Either branch is dropped when its ratio is 0 (Vanilla VMamba has no MLP). ``post_norm`` moves the norms after
    the branches.

    Args:
        dim: Channels.
        drop_path: Stochastic depth rate.
        norm_layer: Norm class for the layout.
        channel_first: (B, C, H, W) activations instead of (B, H, W, C).
        ssm_ratio: SS2D expansion; 0 removes the SS2D branch.
        mlp_ratio: MLP expansion; 0 removes the MLP branch.
        mlp_act_layer: MLP activation class.
        mlp_drop_rate: MLP dropout.
        gated_mlp: Use ``GatedMlp`` instead of ``Mlp``.
        post_norm: Normalise after each branch instead of before.
        **ssm_kwargs: Further ``SS2D`` arguments (d_state, dt_rank, act_layer, d_conv, ...).
    """

    # The layers return ``x + branch`` (times the drop-path's factor) themselves (``SS2D``/``Mlp`` ``residual=True``);
    # False sums in the block, as op by op.
    residual_in_layer = True

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            norm_layer: type = nn.LayerNorm,
            channel_first: bool = False,
            ssm_ratio: float = 2.0,
            mlp_ratio: float = 4.0,
            mlp_act_layer: type = nn.GELU,
            mlp_drop_rate: float = 0.,
            gated_mlp: bool = False,
            post_norm: bool = False,
            **ssm_kwargs: Any,
    ):
        super().__init__()
        self.ssm_branch = ssm_ratio > 0
        self.mlp_branch = mlp_ratio > 0
        self.post_norm = post_norm
        if self.ssm_branch:
            self.norm = norm_layer(dim)
            self.op = SS2D(d_model=dim, ssm_ratio=ssm_ratio, channel_first=channel_first, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if self.mlp_branch:
            mlp_cls = GatedMlp if gated_mlp else Mlp
            self.norm2 = norm_layer(dim)
            self.mlp = mlp_cls(dim, int(dim * mlp_ratio), act_layer=mlp_act_layer, drop=mlp_drop_rate,
                               channel_first=channel_first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The layers take their pre-norm so that eager training can run it inside their fused node, and the residual
        # sum with timm's drop-path factor too (the node then adds the residual's gradient in its norm's backward
        # instead of autograd summing x's two gradients, and the drop-path costs no product and node of its own).
        # The submodules come from ``_modules`` directly: ``nn.Module.__getattr__`` costs about a microsecond per
        # lookup, and an eager step's host time matters (2026-11-30 profiles).
        modules = self._modules
        drop_path = modules['drop_path']
        in_layer = self.residual_in_layer and not self.post_norm and type(drop_path) in (nn.Identity, DropPath)
        if self.ssm_branch:
            op, norm = modules['op'], modules['norm']
            if self.post_norm:
                x = x + drop_path(norm(op(x)))
            elif in_layer:
                x = op(x, norm, residual=True, branch_scale=drop_path_scale(x, drop_path, self.training))
            else:
                x = x + drop_path(op(x, norm))
        if self.mlp_branch:
            mlp, norm2 = modules['mlp'], modules['norm2']
            if self.post_norm:
                x = x + drop_path(norm2(mlp(x)))
            elif in_layer:
                x = mlp(x, norm2, residual=True, branch_scale=drop_path_scale(x, drop_path, self.training))
            else:
                x = x + drop_path(mlp(x, norm2))
        return x


class VMambaStage(nn.Module):
    """Optional stride-2 downsample, then ``depth`` VSS blocks.

    Args:
        in_dim: Input channels.
        out_dim: Output channels (the downsample maps ``in_dim`` to ``out_dim``).
        depth: Number of blocks.
        downsample_type: None (first stage) or a ``create_downsample`` name ('merge', 'conv2', 'conv3').
        drop_path: Per-block stochastic depth rates.
        norm_layer: Norm class for the layout.
        channel_first: (B, C, H, W) activations instead of (B, H, W, C).
        **block_kwargs: ``VSSBlock`` arguments.
    """

    def __init__(
            self,
            in_dim: int,
            out_dim: int,
            depth: int,
            downsample_type: Optional[str] = None,
            drop_path: Sequence[float] = (),
            norm_layer: type = nn.LayerNorm,
            channel_first: bool = False,
            **block_kwargs: Any,
    ):
        super().__init__()
        self.grad_checkpointing = False
        if downsample_type is None:
            if in_dim != out_dim:
                raise ValueError(f'VMambaStage: without downsample in_dim ({in_dim}) must equal out_dim ({out_dim})')
            self.downsample = nn.Identity()
        else:
            self.downsample = create_downsample(downsample_type, in_dim, out_dim, norm_layer=norm_layer,
                                                channel_first=channel_first)
        drop_path = list(drop_path) or [0.] * depth
        self.blocks = nn.Sequential(*[
            VSSBlock(out_dim, drop_path=drop_path[i], norm_layer=norm_layer, channel_first=channel_first,
                     **block_kwargs)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class VMamba(StagedModelMixin, nn.Module):
    """VMamba: a 4-stage hierarchy of VSS blocks (SS2D mixer + optional MLP), stride 4/8/16/32.

    Args:
        in_chans: Image channels.
        num_classes: Classifier outputs (0 for no classifier).
        global_pool: Pooling type of the head ('avg', 'max', '' ...).
        depths: Blocks per stage.
        dims: Channels per stage, or the first stage's channels (doubled every stage).
        patch_size: Stem stride.
        stem_type: 'patch' (official patchembed v1) or 'overlap' (v2).
        downsample_type: 'merge' (official downsample v1), 'conv2' (v2) or 'conv3' (v3).
        patch_norm: Norms in the stem.
        channel_first: Run (B, C, H, W) with LayerNorm2d/1x1 projections (official norm 'ln2d'/'bn') instead of
            (B, H, W, C) with LayerNorm/Linear (official 'ln').
        norm_type: 'layernorm' or 'batchnorm' (channel-first only).
        ssm_d_state: SSM state size N.
        ssm_ratio: SS2D expansion; 0 removes the SS2D branch.
        ssm_dt_rank: Delta projection rank, 'auto' = ceil(dim / 16).
        ssm_act_layer: SS2D activation.
        ssm_conv: Depthwise conv kernel in SS2D (< 2: none).
        ssm_conv_bias: Bias of that conv.
        ssm_drop_rate: Dropout after SS2D's out_proj.
        ssm_init: SSM parameter init, 'mamba' (official 'v0'), 'random' ('v1') or 'zero' ('v2').
        ssm_use_z_gate: Gate the SS2D output with a z branch (official forward_type without '_noz').
        ssm_z_act: Activate z (official without '_nozact').
        ssm_out_act: GELU before the gate (official '_oact').
        ssm_out_norm: SS2D output norm ('layernorm', 'none', 'sigmoid', 'softmax', 'dwconv3', 'cnorm').
        ssm_scan_fp32: Feed the scan float32 inputs (official 'v0').
        ssm_pattern: Scan pattern name ('cross' = VMamba's four routes).
        ssm_fused: Fused multi-scan (True) or plain permute/scan/merge (same result).
        mlp_ratio: MLP expansion; 0 removes the MLP branch.
        mlp_act_layer: MLP activation.
        mlp_drop_rate: MLP dropout.
        gated_mlp: Gated MLP (official gmlp).
        post_norm: Norm after each branch.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, linear over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 9, 2),
            dims: Union[int, Sequence[int]] = 96,
            patch_size: int = 4,
            stem_type: str = 'patch',
            downsample_type: str = 'conv2',
            patch_norm: bool = True,
            channel_first: bool = False,
            norm_type: str = 'layernorm',
            ssm_d_state: int = 16,
            ssm_ratio: float = 2.0,
            ssm_dt_rank: Union[int, str] = 'auto',
            ssm_act_layer: Union[str, type] = 'silu',
            ssm_conv: int = 3,
            ssm_conv_bias: bool = True,
            ssm_drop_rate: float = 0.,
            ssm_init: str = 'mamba',
            ssm_use_z_gate: bool = True,
            ssm_z_act: bool = True,
            ssm_out_act: bool = False,
            ssm_out_norm: str = 'layernorm',
            ssm_scan_fp32: bool = False,
            ssm_pattern: str = 'cross',
            ssm_fused: bool = True,
            mlp_ratio: float = 4.0,
            mlp_act_layer: Union[str, type] = 'gelu',
            mlp_drop_rate: float = 0.,
            gated_mlp: bool = False,
            post_norm: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
    ):
        super().__init__()
        num_stages = len(depths)
        dims = stage_widths('VMamba', depths, dims)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.dims = dims
        self.channel_first = channel_first
        self.output_fmt = 'NCHW' if channel_first else 'NHWC'
        self.patch_size = patch_size
        norm_layer = get_norm_layer(norm_type, channel_first)
        ssm_act_layer = get_act_layer(ssm_act_layer)
        mlp_act_layer = get_act_layer(mlp_act_layer)

        self.stem = create_patch_embed(stem_type, in_chans=in_chans, embed_dim=dims[0], patch_size=patch_size,
                                       patch_norm=patch_norm, norm_layer=norm_layer, channel_first=channel_first)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths), device='cpu')]
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(VMambaStage(
                dims[i - 1] if i > 0 else dims[0], dims[i], depths[i],
                downsample_type=downsample_type if i > 0 else None,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer,
                channel_first=channel_first, ssm_ratio=ssm_ratio, mlp_ratio=mlp_ratio, mlp_act_layer=mlp_act_layer,
                mlp_drop_rate=mlp_drop_rate, gated_mlp=gated_mlp, post_norm=post_norm,
                d_state=ssm_d_state, dt_rank=ssm_dt_rank, act_layer=ssm_act_layer, d_conv=ssm_conv,
                conv_bias=ssm_conv_bias, dropout=ssm_drop_rate, initialize=ssm_init, use_z_gate=ssm_use_z_gate,
                z_act=ssm_z_act, out_act=ssm_out_act, out_norm=ssm_out_norm, scan_fp32=ssm_scan_fp32,
                pattern=ssm_pattern, fused=ssm_fused,
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        # The official classifier normalises the map before pooling, as Swin does.
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt=self.output_fmt)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official VSSM._init_weights: Linear (incl. the 1x1 Linear2d) trunc_normal(0.02), LayerNorm (1, 0); convs
        # and SS2D's own parameters keep their init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # The official optimizer decays every >= 2-D parameter, A_logs included; 1-D ones are excluded by timm anyway.
        return set()


def _official_to_timm_key(key: str, overlap_stem: bool) -> Optional[str]:
    """Rename one official VMamba key to this module layout; None drops it."""
    # Names of older official releases (VSSM._load_from_state_dict renames them the same way).
    key = re.sub(r'^patch_embed\.proj\.', 'patch_embed.0.', key)
    key = re.sub(r'^patch_embed\.norm\.', 'patch_embed.2.', key)
    key = re.sub(r'\.ln_1\.', '.norm.', key)
    key = re.sub(r'\.self_attention\.', '.op.', key)
    key = re.sub(r'^norm\.', 'classifier.norm.', key)
    key = re.sub(r'^head\.', 'classifier.head.', key)
    if key.startswith('outnorm'):  # Backbone_VSSM's per-stage norms have no counterpart in the classifier
        return None

    stem_names = {0: 'conv1', 2: 'norm1', 5: 'conv2', 7: 'norm2'} if overlap_stem else {0: 'proj', 2: 'norm'}
    match = re.match(r'^patch_embed\.(\d+)\.(.*)$', key)
    if match:
        return f'stem.{stem_names[int(match.group(1))]}.{match.group(2)}'
    match = re.match(r'^layers\.(\d+)\.blocks\.(.*)$', key)
    if match:
        return f'stages.{match.group(1)}.blocks.{match.group(2)}'
    # The official stage i ends with the downsample into stage i + 1; here stage i + 1 starts with it.
    match = re.match(r'^layers\.(\d+)\.downsample\.(\d+)\.(.*)$', key)  # conv downsample: Sequential(_, conv, _, norm)
    if match:
        name = {1: 'conv', 3: 'norm'}[int(match.group(2))]
        return f'stages.{int(match.group(1)) + 1}.downsample.{name}.{match.group(3)}'
    match = re.match(r'^layers\.(\d+)\.downsample\.(.*)$', key)  # patch merging: norm, reduction
    if match:
        return f'stages.{int(match.group(1)) + 1}.downsample.{match.group(2)}'
    key = re.sub(r'^classifier\.norm\.', 'norm.', key)
    key = re.sub(r'^classifier\.head\.', 'head.fc.', key)
    return key


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: VMamba) -> Dict[str, torch.Tensor]:
    """Convert an official VMamba checkpoint (MzeroMiko/VMamba ``classification``) to this module layout.

    Accepts the raw training checkpoint (``{'model': state_dict, ...}``) or a bare state dict, with official names
    (``patch_embed.N``, ``layers.i.blocks.j``, ``layers.i.downsample``, ``classifier.norm/head``, and the older
    ``ln_1``/``self_attention``/``norm``/``head`` names). Conv-shaped (out, in, 1, 1) weights of 1x1 projections are
    reshaped to the model's (out, in). A state dict already in this layout is returned unchanged.
    """
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state_dict.items()}
    if any(k.startswith('stem.') or k.startswith('stages.') for k in state_dict):
        return state_dict
    overlap_stem = isinstance(model.stem, OverlapPatchEmbed)
    model_sd = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        new_key = _official_to_timm_key(key, overlap_stem)
        if new_key is None:
            continue
        target = model_sd.get(new_key)
        if target is not None and value.shape != target.shape and value.numel() == target.numel():
            value = value.reshape(target.shape)
        out[new_key] = value
    return out


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs.get('depths', (2, 2, 9, 2))))))
    return build_model_with_cfg(
        VMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        # The getter wraps forward_intermediates, which returns NCHW maps for channel-last models too.
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv1', 'classifier': 'head.fc',
        'license': 'mit', 'paper_ids': 'arXiv:2401.10166', 'paper_name': 'VMamba: Visual State Space Model',
        'origin_url': 'https://github.com/MzeroMiko/VMamba',
        **kwargs,
    }


_RELEASE = 'https://github.com/MzeroMiko/VMamba/releases/download/'

default_cfgs = generate_default_cfgs({
    'vmamba_tiny_s1l8.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'),
    'vmamba_small_s1l20.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm1_small_0229s_ckpt_epoch_240.pth'),
    'vmamba_base_s1l20.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm1_base_0229s_ckpt_epoch_225.pth'),
    'vmamba_tiny_s2l5.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth'),
    'vmamba_small_s2l15.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'),
    'vmamba_base_s2l15.in1k': _cfg(url=_RELEASE + '%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'),
    'vanilla_vmamba_tiny.in1k': _cfg(url=_RELEASE + '%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth',
                                     first_conv='stem.proj'),
    'vanilla_vmamba_small.in1k': _cfg(url=_RELEASE + '%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth',
                                      first_conv='stem.proj'),
    'vanilla_vmamba_base.in1k': _cfg(url=_RELEASE + '%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth',
                                     first_conv='stem.proj'),
})


# VMamba v2 ("VMamba-T/S/B[s*l*]"): d_state 1, no z gate (official forward_type 'v05_noz'), overlapped stem
# (patchembed v2), 3x3 conv downsample (v3), MLP ratio 4, no bias in SS2D's depthwise conv. The official runs these
# channel-first (norm 'ln2d'); the same weights and function run channel-last here (channel_first=False), which on the
# H200 cut the bf16 inference step's kernel time from 24 to 15 ms: its projections are plain GEMMs where cuDNN
# converted NCHW maps to NHWC and back around every 1x1 convolution (2026-11-30, benchmarks/results/README.md).
# channel_first=True gives the official layout.
_V2_ARGS = dict(
    stem_type='overlap', downsample_type='conv3', channel_first=False, ssm_d_state=1, ssm_dt_rank='auto',
    ssm_act_layer='silu', ssm_conv=3, ssm_conv_bias=False, ssm_init='mamba', ssm_use_z_gate=False,
    ssm_scan_fp32=False, mlp_ratio=4.0, mlp_act_layer='gelu',
)

# Vanilla VMamba (v0): channel-last, d_state 16, z gate, float32 scan inputs (forward_type 'v0'), patch stem (v1),
# patch merging (v1), no MLP.
_V0_ARGS = dict(
    stem_type='patch', downsample_type='merge', channel_first=False, ssm_d_state=16, ssm_ratio=2.0,
    ssm_dt_rank='auto', ssm_act_layer='silu', ssm_conv=3, ssm_conv_bias=True, ssm_init='mamba', ssm_use_z_gate=True,
    ssm_scan_fp32=True, mlp_ratio=0.0,
)


@register_model
def vmamba_tiny_s1l8(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s1l8] (official ``vmamba_tiny_s1l8``, config ``vmambav2v_tiny_224``): 30M params, 4.9 GFLOPs."""
    model_args = dict(_V2_ARGS, depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2)
    return _create_vmamba('vmamba_tiny_s1l8', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s1l20] (official ``vmamba_small_s1l20``, config ``vmambav2v_small_224``): 49M params, 8.6 GFLOPs."""
    model_args = dict(_V2_ARGS, depths=(2, 2, 20, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.3)
    return _create_vmamba('vmamba_small_s1l20', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s1l20(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s1l20] (official ``vmamba_base_s1l20``, config ``vmambav2v_base_224``): 87M params, 15.2 GFLOPs."""
    model_args = dict(_V2_ARGS, depths=(2, 2, 20, 2), dims=128, ssm_ratio=1.0, drop_path_rate=0.5)
    return _create_vmamba('vmamba_base_s1l20', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T[s2l5] (official ``vmamba_tiny_s2l5``, config ``vmambav2_tiny_224``): 31M params, 4.9 GFLOPs."""
    model_args = dict(_V2_ARGS, depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.2)
    return _create_vmamba('vmamba_tiny_s2l5', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_small_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S[s2l15] (official ``vmamba_small_s2l15``, config ``vmambav2_small_224``): 50M params, 8.7 GFLOPs."""
    model_args = dict(_V2_ARGS, depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3)
    return _create_vmamba('vmamba_small_s2l15', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vmamba_base_s2l15(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B[s2l15] (official ``vmamba_base_s2l15``, config ``vmambav2_base_224``): 89M params, 15.4 GFLOPs."""
    model_args = dict(_V2_ARGS, depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6)
    return _create_vmamba('vmamba_base_s2l15', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vanilla_vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla-VMamba-T (official ``vanilla_vmamba_tiny``, config ``vmambav0_tiny_224``): 23M params, 5.6 GFLOPs."""
    model_args = dict(_V0_ARGS, depths=(2, 2, 9, 2), dims=96, drop_path_rate=0.2)
    return _create_vmamba('vanilla_vmamba_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vanilla_vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla-VMamba-S (official ``vanilla_vmamba_small``, config ``vmambav0_small_224``): 44M params, 11.2 GFLOPs."""
    model_args = dict(_V0_ARGS, depths=(2, 2, 27, 2), dims=96, drop_path_rate=0.3)
    return _create_vmamba('vanilla_vmamba_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vanilla_vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla-VMamba-B (official ``vanilla_vmamba_base``, config ``vmambav0_base_224``): 76M params, 18.0 GFLOPs."""
    model_args = dict(_V0_ARGS, depths=(2, 2, 27, 2), dims=128, drop_path_rate=0.6)
    return _create_vmamba('vanilla_vmamba_base', pretrained=pretrained, **dict(model_args, **kwargs))
