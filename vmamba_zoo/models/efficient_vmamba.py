"""EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba.

Paper: Xiaohuan Pei, Tao Huang, Chang Xu, "EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba",
AAAI 2025, https://arxiv.org/abs/2403.09977

Original code and weights: https://github.com/TerryPei/EfficientVMamba (Apache-2.0 per its README; the repository
has no LICENSE file). This is an independent implementation on the vmamba_zoo scan core, not a copy.

Architecture (``classification/models/vmamba_efficient.py`` and the released training logs):

* stem: 4x4 stride-4 conv + LayerNorm; channel-last (B, H, W, C) maps throughout, as in the original.
* stages 0-1: EVSS blocks, ``x + drop_path(se(ES2D(norm(x))) + se(conv_branch(norm(x))))`` with one BiAttn SE module
  shared by both branches. ES2D = in_proj -> DWConv3x3 + SiLU -> atrous selective scan (4 stride-2 sub-grids, each
  scanned once with its own parameters) -> LayerNorm -> * SiLU(z) -> out_proj.
* stages 2-3: MobileNetV2 inverted residuals (expand 4, SE 0.125, ReLU, BatchNorm).
* PatchMerging2D between stages, final LayerNorm, average pool, linear head.

``efficient_vmamba_small`` is 64 channels wide, as in the released checkpoint and its training log (the yaml config
and the paper's Table 1 say 96).
"""
import re
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead, DropPath
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ..kernels import atrous_pattern, cached_outside_inference_mode, scan_routes
from ..layers import SS2D, PatchMerging2d
from ._hierarchical import HierarchicalNHWCModel

__all__ = ['EfficientVMamba']


# ---------------------------------------------------------------------------------------------------------------------
# EfficientVMamba layers.
# ---------------------------------------------------------------------------------------------------------------------
@cached_outside_inference_mode(maxsize=64)
def _atrous_phase_routes(height: int, width: int, step: int):
    """The atrous pattern re-expressed on its sub-grids.

    Returns each route's sub-grid offset (i, j), its route over the (H / step, W / step) sub-grid, in the route order
    of ``atrous_pattern`` (the official parameter order), and each sub-grid route's raster kind (0 row-major,
    1 column-major; see ``ScanPattern.route_kinds``), read off the routes themselves.
    """
    pattern = atrous_pattern(height, width, step)
    sub_h, sub_w = height // step, width // step
    rows, cols = pattern.routes // width, pattern.routes % width
    offsets = tuple((int(r[0]) % step, int(c[0]) % step) for r, c in zip(rows, cols))
    routes = (rows // step) * sub_w + cols // step
    row_major = torch.arange(sub_h * sub_w)
    kinds = tuple(0 if torch.equal(route, row_major) else 1 for route in routes)
    return offsets, routes, kinds


@cached_outside_inference_mode(maxsize=64)
def _atrous_routes_on(height: int, width: int, step: int, device: torch.device) -> torch.Tensor:
    """``_atrous_phase_routes``' sub-grid routes as contiguous int32 on ``device``, one tensor per map and device (as
    ``ScanPattern.routes_on``): not copied to the device on every call, built outside inference mode so that the scan
    can key what it derives from them by their version, and reusable by training after inference."""
    return _atrous_phase_routes(height, width, step)[1].to(device=device, dtype=torch.int32).contiguous()


class AtrousSS2D(SS2D):
    """EfficientVMamba's ES2D mixer: the shared ``SS2D`` with the atrous scan as its core; channel-last in and out.

    The padded map is split into its ``step * step`` sub-grids (a pixel-unshuffle), route k is scanned over its own
    sub-grid with its own parameters through ``scan_routes``, and the route outputs are put back in place. Every
    projection runs once per visited position, as in the original, and no route output is summed with another.
    """

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0, dt_rank: Union[int, str] = 'auto',
                 d_conv: int = 3, step_size: int = 2):
        super().__init__(d_model, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                         pattern='atrous', num_routes=step_size * step_size)
        self.step_size = step_size

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, H, W) -> out_norm of the atrous scan, (B, H, W, D) in ``x``'s dtype."""
        batch, dim, height, width = x.shape
        step, num_routes = self.step_size, self.k_group
        padded_h, padded_w = -(-height // step) * step, -(-width // step) * step
        if (padded_h, padded_w) != (height, width):
            x_pad = F.pad(x, (0, padded_w - width, 0, padded_h - height))
        else:
            x_pad = x
        offsets, unused_routes, route_kinds = _atrous_phase_routes(padded_h, padded_w, step)
        sub_h, sub_w = padded_h // step, padded_w // step
        positions = sub_h * sub_w
        # pixel_unshuffle channel c * step^2 + i * step + j holds sub-grid (i, j); reorder to route order.
        route_phase = [i * step + j for i, j in offsets]
        xs = F.pixel_unshuffle(x_pad, step).view(batch, dim, step * step, sub_h, sub_w)[:, :, route_phase]
        xs = xs.transpose(1, 2).reshape(batch, num_routes * dim, sub_h, sub_w)
        rank, state = self.dt_rank, self.d_state
        x_dbl = F.conv2d(xs, self.x_proj_weight.reshape(-1, dim, 1, 1).to(xs.dtype), groups=num_routes)
        x_dbl = x_dbl.view(batch, num_routes, rank + 2 * state, positions)
        dts, Bs, Cs = torch.split(x_dbl, [rank, state, state], dim=2)
        dts = F.conv1d(dts.reshape(batch, num_routes * rank, positions),
                       self.dt_projs_weight.reshape(-1, rank, 1).to(xs.dtype), groups=num_routes)
        ys = scan_routes(
            xs.view(batch, num_routes, dim, positions), dts.view(batch, num_routes, dim, positions),
            -torch.exp(self.A_logs.float()).view(num_routes, dim, state), Bs.contiguous(), Cs.contiguous(),
            D=self.Ds.float().view(num_routes, dim), delta_bias=self.dt_projs_bias.float().view(num_routes, dim),
            routes=_atrous_routes_on(padded_h, padded_w, step, x.device), delta_softplus=True, accumulate=False,
            backend=self.backend, route_kinds=route_kinds, map_hw=(sub_h, sub_w))
        phase_route = [route_phase.index(p) for p in range(step * step)]
        ys = ys.view(batch, num_routes, dim, sub_h, sub_w)[:, phase_route].transpose(1, 2)
        y = F.pixel_shuffle(ys.reshape(batch, dim * num_routes, sub_h, sub_w), step)[:, :, :height, :width]
        return self.out_norm(y.permute(0, 2, 3, 1)).to(x.dtype)


class BiAttn(nn.Module):
    """EfficientVMamba's channel gate: sigmoid(MLP(mean over space of LayerNorm(x))) * x, channel-last."""

    def __init__(self, dim: int, act_ratio: float = 0.125, act_layer=nn.GELU):
        super().__init__()
        reduced = int(dim * act_ratio)
        self.norm = nn.LayerNorm(dim)
        self.global_reduce = nn.Linear(dim, reduced)
        self.act_fn = act_layer()
        self.channel_select = nn.Linear(reduced, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.norm(x).mean((1, 2), keepdim=True)
        return x * torch.sigmoid(self.channel_select(self.act_fn(self.global_reduce(pooled))))


class EVSSBlock(nn.Module):
    """Efficient visual state-space block: atrous SS2D branch and conv branch, both gated by one shared BiAttn."""

    def __init__(self, dim: int, drop_path: float = 0.0, d_state: int = 16, ssm_ratio: float = 2.0,
                 dt_rank: Union[int, str] = 'auto', d_conv: int = 3, step_size: int = 2, se_ratio: float = 0.125):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = AtrousSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv,
                             step_size=step_size)
        self.conv_branch = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 1),
        )
        self.se = BiAttn(dim, act_ratio=se_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        y_conv = self.conv_branch(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.drop_path(self.se(self.op(y)) + self.se(y_conv))


class SqueezeExcite(nn.Module):
    """Conv squeeze-and-excitation with ReLU and sigmoid gate (EfficientVMamba's ``lib.models.operations``)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act_fn = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(self.act_fn(self.conv_reduce(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(scale)


class InvertedResidual(nn.Module):
    """MobileNetV2 block used in EfficientVMamba's last two stages (channels-first)."""

    def __init__(self, dim: int, expand_ratio: float = 4.0, se_ratio: float = 0.125, drop_path: float = 0.0):
        super().__init__()
        mid = int(dim * expand_ratio)
        self.conv_pw = nn.Sequential(nn.Conv2d(dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.conv_dw = nn.Sequential(
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.se = SqueezeExcite(mid, max(1, int(mid * se_ratio)))
        self.conv_pw2 = nn.Sequential(nn.Conv2d(mid, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.conv_pw2(self.se(self.conv_dw(self.conv_pw(x)))))


class EfficientVMambaStage(nn.Module):
    """Optional PatchMerging2D downsample, then EVSS blocks (channel-last) or inverted residuals (channels-first).

    Input and output are channel-last (B, H, W, C).
    """

    def __init__(self, in_dim: int, dim: int, depth: int, block_type: str, downsample: bool,
                 drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.channels_first = block_type == 'mbconv'
        self.downsample = PatchMerging2d(in_dim, dim) if downsample else nn.Identity()
        if block_type == 'evss':
            blocks = [EVSSBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)]
        elif block_type == 'mbconv':
            blocks = [InvertedResidual(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)]
        else:
            raise ValueError(f"EfficientVMambaStage: block_type must be 'evss' or 'mbconv', got {block_type!r}")
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.channels_first:
            x = x.permute(0, 3, 1, 2)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 2, 3, 1) if self.channels_first else x


class EfficientVMamba(HierarchicalNHWCModel):
    """EfficientVMamba (EfficientVSSM): EVSS stages followed by inverted-residual stages.

    Args:
        in_chans: Input image channels.
        num_classes: Classifier outputs (0 for no classifier).
        global_pool: Head pooling type ('avg', 'max', '' for none, ...).
        depths: Blocks per stage.
        dims: Channels per stage, or the stem width (doubled at every stage).
        num_evss_stages: How many leading stages use EVSS blocks; the rest use inverted residuals.
        d_state: SSM state size N.
        ssm_ratio: SSM inner width over block width.
        dt_rank: Rank of the step-size projection ('auto' = ceil(dim / 16)).
        d_conv: Depthwise conv size before the scan.
        step_size: Atrous stride of the scan (2 in all released models).
        se_ratio: BiAttn reduction of the EVSS blocks.
        mbconv_expand_ratio: Expansion of the inverted residuals.
        mbconv_se_ratio: SE reduction of the inverted residuals.
        patch_size: Stem patch size.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth, linearly increasing over all blocks.
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            depths: Sequence[int] = (2, 2, 4, 2),
            dims: Union[int, Sequence[int]] = 48,
            num_evss_stages: int = 2,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            step_size: int = 2,
            se_ratio: float = 0.125,
            mbconv_expand_ratio: float = 4.0,
            mbconv_se_ratio: float = 0.125,
            patch_size: int = 4,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        dims, stage_drop_paths = self._build_trunk(
            'EfficientVMamba', in_chans, num_classes, depths, dims, patch_size, drop_rate, drop_path_rate)
        self.feature_info = []
        stages = []
        for i, depth in enumerate(depths):
            if i < num_evss_stages:
                block_type, block_kwargs = 'evss', dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank,
                                                        d_conv=d_conv, step_size=step_size, se_ratio=se_ratio)
            else:
                block_type, block_kwargs = 'mbconv', dict(expand_ratio=mbconv_expand_ratio, se_ratio=mbconv_se_ratio)
            stages.append(EfficientVMambaStage(
                dims[i - 1] if i else dims[0], dims[i], depth, block_type, downsample=i > 0,
                drop_path=stage_drop_paths[i], **block_kwargs))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt='NHWC')
        self.apply(self._init_weights)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: EfficientVMamba) -> Dict[str, torch.Tensor]:
    """Map an official EfficientVMamba checkpoint to this implementation.

    Accepts the released files (``{'state_dict': ...}`` with ``module.module.`` prefixes), the training checkpoints of
    the original ``lib`` trainer (``{'model', 'ema_model'}``; the EMA weights are the published ones) and bare state
    dicts. Renames ``patch_embed.{0,2}`` -> ``stem.{proj,norm}``, ``layers.i.blocks.j`` -> ``stages.i.blocks.j``,
    ``layers.i.n`` (inverted-residual stages, n >= 1) -> ``stages.i.blocks.(n-1)``, each stage's trailing downsample
    -> ``stages.(i+1).downsample``, ``classifier.norm`` -> ``norm`` and ``classifier.head`` -> ``head.fc``. The
    detection backbones' ``outnorm*`` layers have no counterpart and are dropped.
    """
    for key in ('state_dict', 'state_dict_ema', 'ema_model', 'model_ema', 'model'):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if 'stem.proj.weight' in state_dict:
        return state_dict
    depths = [len(stage.blocks) for stage in model.stages]
    out = {}
    for key, value in state_dict.items():
        while key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith('outnorm'):
            continue
        key = key.replace('patch_embed.0.', 'stem.proj.').replace('patch_embed.2.', 'stem.norm.')
        key = key.replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.fc.')
        match = re.match(r'layers\.(\d+)\.(blocks\.\d+|downsample|\d+)\.(.*)', key)
        if match:
            stage, part, rest = int(match.group(1)), match.group(2), match.group(3)
            if part == 'downsample' or (part.isdigit() and int(part) == depths[stage] + 2):
                key = f'stages.{stage + 1}.downsample.{rest}'
            elif part.isdigit():
                key = f'stages.{stage}.blocks.{int(part) - 1}.{rest}'
            else:
                key = f'stages.{stage}.{part}.{rest}'
        out[key] = value
    return out


def _create_efficient_vmamba(variant: str, pretrained: bool = False, **kwargs) -> EfficientVMamba:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        EfficientVMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict:
    return {
        'url': url, 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'first_conv': 'stem.proj', 'classifier': 'head.fc', 'license': 'apache-2.0',
        'paper_ids': 'arXiv:2403.09977',
        'paper_name': 'EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba',
        **kwargs,
    }


# The official weights are published on the Hugging Face Hub under the authors' account with an unspecified file name;
# download them from origin_url and load with pretrained_cfg_overlay=dict(file=path).
default_cfgs = generate_default_cfgs({
    'efficient_vmamba_tiny.in1k': _cfg(origin_url='https://huggingface.co/TerryPei/EfficientVMamba-Tiny'),
    'efficient_vmamba_small.in1k': _cfg(origin_url='https://huggingface.co/TerryPei/EfficientVMamba-Small'),
    'efficient_vmamba_base.in1k': _cfg(origin_url='https://huggingface.co/TerryPei/EfficientVMamba-Base'),
})


@register_model
def efficient_vmamba_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-T: dims 48, depths (2, 2, 4, 2); 6.49M params."""
    model_args = dict(depths=(2, 2, 4, 2), dims=48)
    return _create_efficient_vmamba('efficient_vmamba_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vmamba_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-S: dims 64 (the released checkpoint; the yaml/paper say 96), depths (2, 2, 4, 2)."""
    model_args = dict(depths=(2, 2, 4, 2), dims=64)
    return _create_efficient_vmamba('efficient_vmamba_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def efficient_vmamba_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-B: dims 96, depths (2, 2, 9, 2); 33.7M params."""
    model_args = dict(depths=(2, 2, 9, 2), dims=96)
    return _create_efficient_vmamba('efficient_vmamba_base', pretrained=pretrained, **dict(model_args, **kwargs))


# The original training code created these through timm as ``efficient_vssm_{tiny,small,base}``.
@register_model
def efficient_vssm_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """Alias of ``efficient_vmamba_tiny`` under the original timm name."""
    return efficient_vmamba_tiny(pretrained=pretrained, **kwargs)


@register_model
def efficient_vssm_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """Alias of ``efficient_vmamba_small`` under the original timm name."""
    return efficient_vmamba_small(pretrained=pretrained, **kwargs)


@register_model
def efficient_vssm_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """Alias of ``efficient_vmamba_base`` under the original timm name."""
    return efficient_vmamba_base(pretrained=pretrained, **kwargs)
