"""MSVMamba: Multi-Scale VMamba, hierarchy in hierarchy visual state space model.

Paper: Yuheng Shi, Minjing Dong, Chang Xu, "Multi-Scale VMamba: Hierarchy in Hierarchy Visual State Space Model",
NeurIPS 2024, https://arxiv.org/abs/2405.14174

Original code and weights: https://github.com/YuHengsss/MSVMamba (master branch; the repository carries no licence
file). This is an independent implementation on the vmamba_zoo scan core, not a copy.

Architecture (``classification/models/vmamba.py`` with ``sscore_type='multiscale_4scan_12'``, ``ms_split=[1, 3]``,
``add_se=True``, ``convFFN=True``; configs ``classification/configs/ms_vssm/*.yaml``):

* VMamba-v0 macro design: 4x4 conv stem + LayerNorm, PatchMerging2D, channel-last maps, final LayerNorm + linear.
* block: ``x + drop_path(MS2D(norm(x)))`` then ``x + drop_path(ConvFFN(norm2(x)))``.
* MS2D: in_proj -> (x, z); branch 0: DWConv3x3 + SiLU, one row-major scan at full resolution; branch 1: DWConv7x7
  stride 2 + SiLU, three scans of the half-resolution map (reversed rows, columns, reversed columns) concatenated
  into ONE sequence with one parameter set; every route output is LayerNorm-ed, the three half-resolution outputs of
  a position are summed, upsampled bilinearly and added to branch 0; then SE (reduction 8), * SiLU(z), out_proj.
  d_state is 1 in all released models.
"""
import re
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ..kernels import multi_scan_2d, multiscale_patterns
from ..layers import SS2D, PatchMerging2d
from ._hierarchical import HierarchicalNHWCModel

__all__ = ['MSVMamba']


class SEModule(nn.Module):
    """Linear squeeze-and-excitation without biases (MSVMamba's ``SEModule``), channel-last."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 1).permute(0, 2, 3, 1)
        return x * self.fc(pooled)


class MultiScaleSS2D(SS2D):
    """MSVMamba's MS2D mixer: the shared ``SS2D`` with two parameter sets, a second (stride-2) branch and SE.

    Parameter set 0 (``x_proj_weight[0]``, ``A_logs[:D]``, ...) belongs to the half-resolution sequence and set 1 to
    the full-resolution scan, as in the official checkpoints. The half-resolution sequence is one route over the
    half-resolution map stacked three times (see ``multiscale_patterns``), so the state carries across the three scans
    exactly as in the original concatenation while each visit keeps its own output for the per-visit LayerNorm.
    """

    def __init__(self, d_model: int, d_state: int = 1, ssm_ratio: float = 2.0, dt_rank: Union[int, str] = 'auto',
                 d_conv: int = 3, ms_kernel: int = 7, se_reduction: int = 8):
        super().__init__(d_model, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                         pattern='unidirectional', num_routes=2)
        d_inner = self.d_inner
        self.conv2d_b1 = nn.Conv2d(d_inner, d_inner, ms_kernel, stride=2, padding=ms_kernel // 2, groups=d_inner)
        self.se = SEModule(d_inner, reduction=se_reduction)

    def _projections(self, x: torch.Tensor, index: int):
        """x_proj and dt_proj of parameter set ``index`` on a (B, D, H, W) map, as 1x1 convs."""
        rank, state, dim = self.dt_rank, self.d_state, self.d_inner
        x_dbl = F.conv2d(x, self.x_proj_weight[index].view(rank + 2 * state, dim, 1, 1))
        dts, Bs, Cs = torch.split(x_dbl, [rank, state, state], dim=1)
        dts = F.conv2d(dts, self.dt_projs_weight[index].view(dim, rank, 1, 1))
        return dts, Bs, Cs

    def _scan(self, x, dts, Bs, Cs, index: int, pattern) -> torch.Tensor:
        dim = self.d_inner
        params = slice(index * dim, (index + 1) * dim)
        return multi_scan_2d(
            x, dts.unsqueeze(1), -torch.exp(self.A_logs[params].float()), Bs.unsqueeze(1), Cs.unsqueeze(1),
            D=self.Ds[params].float(), delta_bias=self.dt_projs_bias[index].float(), delta_softplus=True,
            pattern=pattern, backend=self.backend)

    def forward_core(self, x: torch.Tensor, x_half: torch.Tensor) -> torch.Tensor:
        """Full-resolution map (B, D, H, W) and half-resolution map -> normalised (B, H, W, D) sum of both branches."""
        height, width = x.shape[2:]
        full, half = multiscale_patterns(height, width)
        if tuple(x_half.shape[2:]) != (half.height // 3, half.width):
            raise ValueError(f'MultiScaleSS2D: half-resolution map {tuple(x_half.shape[2:])} does not match '
                             f'the {height}x{width} map')
        y_full = self.out_norm(self._scan(x, *self._projections(x, 1), 1, full).permute(0, 2, 3, 1))
        # Like the original, project the three-fold sequence (the stacked map) rather than the half map once.
        stacked = x_half.repeat(1, 1, 3, 1)
        y_half = self.out_norm(self._scan(stacked, *self._projections(stacked, 0), 0, half).permute(0, 2, 3, 1))
        batch, _, half_w, dim = y_half.shape
        y_half = y_half.view(batch, 3, -1, half_w, dim).sum(1).permute(0, 3, 1, 2)
        y_half = F.interpolate(y_half, size=(height, width), mode='bilinear', align_corners=False)
        return y_full + y_half.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        z = self.act(z)
        x = x.permute(0, 3, 1, 2)
        y = self.forward_core(self.act(self.conv2d(x)), self.act(self.conv2d_b1(x))).to(z.dtype)
        return self.dropout(self.out_proj(self.se(y) * z))


class ConvFFN(nn.Module):
    """MSVMamba's ConvFFN, channels-first: 1x1 expand, + depthwise 3x3 residual, GELU, 1x1 project."""

    def __init__(self, dim: int, expansion: int = 2, drop: float = 0.0):
        super().__init__()
        hidden = dim * expansion
        self.linear1 = nn.Conv2d(dim, hidden, 1)
        self.drop1 = nn.Dropout(drop)
        self.dwc = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.linear2 = nn.Conv2d(hidden, dim, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.linear1(x))
        return self.drop2(self.linear2(self.act(x + self.dwc(x))))


class MSVSSBlock(nn.Module):
    """MS2D token mixer then ConvFFN, both pre-norm residual; channel-last."""

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 1, ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = 'auto', d_conv: int = 3, ffn_expansion: int = 2, ffn_drop: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = MultiScaleSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = ConvFFN(dim, expansion=ffn_expansion, drop=ffn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.ffn(self.norm2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class MSVMambaStage(nn.Module):
    """Optional PatchMerging2D downsample then MSVSS blocks; channel-last in and out."""

    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool, drop_path: Sequence[float],
                 **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = PatchMerging2d(in_dim, dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[MSVSSBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class MSVMamba(HierarchicalNHWCModel):
    """Multi-Scale VMamba (master branch, ``multiscale_4scan_12``).

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs (0 for no classifier).
        global_pool: Head pooling type.
        depths: Blocks per stage.
        dims: Channels per stage, or the stem width (doubled at every stage).
        d_state: SSM state size N (1 in the released models).
        ssm_ratio: SSM inner width over block width.
        dt_rank: Rank of the step-size projection ('auto' = ceil(dim / 16)).
        d_conv: Depthwise conv size of the full-resolution branch.
        ffn_expansion: ConvFFN hidden width over block width.
        ffn_drop: ConvFFN dropout (0 in the released configs).
        patch_size: Stem patch size.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, linearly increasing over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (1, 2, 9, 2),
            dims: Union[int, Sequence[int]] = 96,
            d_state: int = 1,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            ffn_expansion: int = 2,
            ffn_drop: float = 0.0,
            patch_size: int = 4,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        dims, stage_drop_paths = self._build_trunk(
            'MSVMamba', in_chans, num_classes, depths, dims, patch_size, drop_rate, drop_path_rate)
        block_kwargs = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                            ffn_expansion=ffn_expansion, ffn_drop=ffn_drop)
        self.feature_info = []
        stages = []
        for i, depth in enumerate(depths):
            stages.append(MSVMambaStage(dims[i - 1] if i else dims[0], dims[i], depth, downsample=i > 0,
                                        drop_path=stage_drop_paths[i], **block_kwargs))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt='NHWC')
        self.apply(self._init_weights)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MSVMamba) -> Dict[str, torch.Tensor]:
    """Map an official MSVMamba checkpoint (``{'model': ...}``, optionally ``model_ema``) to this implementation.

    Renames ``patch_embed.{0,2}`` -> ``stem.{proj,norm}``, ``layers.i.blocks.j`` -> ``stages.i.blocks.j``,
    ``layers.i.downsample`` -> ``stages.(i+1).downsample``, ``convFFN`` -> ``ffn``, ``classifier.norm`` -> ``norm``
    and ``classifier.head`` -> ``head.fc``; drops the detection backbones' ``outnorm*`` layers.
    """
    for key in ('model', 'state_dict', 'model_ema'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if 'stem.proj.weight' in state_dict:
        return state_dict
    out = {}
    for key, value in state_dict.items():
        while key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith('outnorm'):
            continue
        key = key.replace('patch_embed.0.', 'stem.proj.').replace('patch_embed.2.', 'stem.norm.')
        key = key.replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.fc.')
        key = key.replace('.convFFN.', '.ffn.')
        key = re.sub(r'^layers\.(\d+)\.downsample\.', lambda m: f'stages.{int(m.group(1)) + 1}.downsample.', key)
        key = re.sub(r'^layers\.(\d+)\.blocks\.', r'stages.\1.blocks.', key)
        out[key] = value
    return out


def _create_msvmamba(variant: str, pretrained: bool = False, **kwargs) -> MSVMamba:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        MSVMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.proj', 'classifier': 'head.fc', 'license': 'unknown',
        'paper_ids': 'arXiv:2405.14174',
        'paper_name': 'Multi-Scale VMamba: Hierarchy in Hierarchy Visual State Space Model',
        **kwargs,
    }


# The official weights sit in Google Drive folders (no direct file URL): download the checkpoint from origin_url and
# load it with pretrained_cfg_overlay=dict(file=path).
default_cfgs = generate_default_cfgs({
    'msvmamba_nano.in1k': _cfg(
        origin_url='https://drive.google.com/drive/folders/1J41w3ApitQhp2O3wHmJoOs4U032uqebK'),
    'msvmamba_micro.in1k': _cfg(
        origin_url='https://drive.google.com/drive/folders/1jfl2GmuKcUB8sPwRlyHK_wT0MjqgljYk'),
    'msvmamba_tiny.in1k': _cfg(
        origin_url='https://drive.google.com/drive/folders/1ddNWk89ohcxxMuVEaJ2Y5A6xeBKgA7lU'),
})


@register_model
def msvmamba_nano(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-Nano: dims 48, depths (1, 2, 5, 2), d_state 1 (``vssm_nano_224_ms.yaml``)."""
    model_args = dict(depths=(1, 2, 5, 2), dims=48)
    return _create_msvmamba('msvmamba_nano', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_micro(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-Micro: dims 64, depths (1, 2, 5, 2), d_state 1 (``vssm_micro_224_ms.yaml``)."""
    model_args = dict(depths=(1, 2, 5, 2), dims=64)
    return _create_msvmamba('msvmamba_micro', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def msvmamba_tiny(pretrained: bool = False, **kwargs) -> MSVMamba:
    """MSVMamba-Tiny: dims 96, depths (1, 2, 9, 2), d_state 1 (``vssm_tiny_224_ms.yaml``)."""
    model_args = dict(depths=(1, 2, 9, 2), dims=96)
    return _create_msvmamba('msvmamba_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


# The official configs name the models vssm_{nano,micro,tiny}_ms_e300.
@register_model
def vssm_nano_ms(pretrained: bool = False, **kwargs) -> MSVMamba:
    """Alias of ``msvmamba_nano`` under the official config name."""
    return msvmamba_nano(pretrained=pretrained, **kwargs)


@register_model
def vssm_micro_ms(pretrained: bool = False, **kwargs) -> MSVMamba:
    """Alias of ``msvmamba_micro`` under the official config name."""
    return msvmamba_micro(pretrained=pretrained, **kwargs)


@register_model
def vssm_tiny_ms(pretrained: bool = False, **kwargs) -> MSVMamba:
    """Alias of ``msvmamba_tiny`` under the official config name."""
    return msvmamba_tiny(pretrained=pretrained, **kwargs)
