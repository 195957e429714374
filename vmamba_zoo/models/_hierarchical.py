"""Pieces shared by the channel-last, four-stage VMamba-v0-style families (EfficientVMamba, MSVMamba).

The stem, the v1 PatchMerging2D downsample, the official selective-scan parameter initialisation, input checks and a
base class carrying the timm model contract (``forward_intermediates``, ``features_only`` support, grad checkpointing,
``group_matcher``, classifier reset) for models made of ``stem`` -> ``stages`` -> ``norm`` -> ``head`` on (B, H, W, C)
maps.
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices

__all__ = ['PatchEmbed', 'PatchMerging2D', 'init_ssm_parameters', 'check_image', 'HierarchicalNHWCModel']


# ---------------------------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` conv + LayerNorm; NCHW image in, NHWC map out."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4, norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.conv = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """VMamba's v1 downsample: concatenate each 2x2 neighbourhood (zero-padding odd sizes), LayerNorm, linear.

    The concatenation order is (0, 0), (1, 0), (0, 1), (1, 1) in (row, column) offsets, as in Swin/VMamba, which the
    order of the official ``reduction`` weight columns depends on.
    """

    def __init__(self, dim: int, out_dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


def init_ssm_parameters(module: nn.Module, num_routes: int, d_inner: int, d_state: int, dt_rank: int,
                        dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
    """Create VMamba-style selective-scan parameters on ``module`` with the official names and initialisation.

    ``x_proj_weight`` (K, R + 2N, D) as nn.Linear's default init, ``dt_projs_weight`` (K, D, R) uniform in
    +-R^-0.5, ``dt_projs_bias`` (K, D) = softplus^-1 of a log-uniform step in [dt_min, dt_max], ``A_logs`` (K * D, N)
    = log(1..N) (S4D-real), ``Ds`` (K * D) = 1.
    """
    bound = 1.0 / math.sqrt(d_inner)
    module.x_proj_weight = nn.Parameter(torch.empty(num_routes, dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
    dt_std = dt_rank ** -0.5
    module.dt_projs_weight = nn.Parameter(torch.empty(num_routes, d_inner, dt_rank).uniform_(-dt_std, dt_std))
    dt = torch.exp(torch.rand(num_routes, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    module.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
    a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(num_routes * d_inner, 1)
    module.A_logs = nn.Parameter(a_log)
    module.Ds = nn.Parameter(torch.ones(num_routes * d_inner))
    module.A_logs._no_weight_decay = True
    module.Ds._no_weight_decay = True


def check_image(model: nn.Module, x: torch.Tensor, in_chans: int, patch_size: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f'{type(model).__name__}: expected a 4-D image batch (B, {in_chans}, H, W), got '
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    if x.shape[1] != in_chans:
        raise ValueError(f'{type(model).__name__}: expected {in_chans} input channels, got {x.shape[1]} '
                         f'(input shape {tuple(x.shape)})')
    if x.shape[2] % patch_size or x.shape[3] % patch_size:
        raise ValueError(f'{type(model).__name__}: input height and width must be multiples of the patch size '
                         f'{patch_size}, got {x.shape[2]}x{x.shape[3]}')


class HierarchicalNHWCModel(nn.Module):
    """timm model contract for ``stem -> stages -> norm -> head`` on channel-last maps.

    Subclasses set ``in_chans``, ``patch_size``, ``num_classes``, ``stem``, ``stages`` (each with a
    ``grad_checkpointing`` flag), ``norm``, ``head`` (a ``ClassifierHead`` with ``input_fmt='NHWC'``),
    ``feature_info``, ``num_features`` and ``head_hidden_size``.
    """

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # As the original: truncated-normal Linear weights, zero biases, unit LayerNorms; convs keep PyTorch's init.
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, p in self.named_parameters() if getattr(p, '_no_weight_decay', False)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the stage outputs (strides 4, 8, 16, 32).

        Args:
            x: Input images (B, C, H, W).
            indices: Take the last n stages if int, all if None, or the listed stage indices.
            norm: Apply the final norm to the last stage's output.
            stop_early: Stop after the last requested stage.
            output_fmt: 'NCHW' or 'NHWC' for the intermediates.
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or (final features, intermediates).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        check_image(self, x, self.in_chans, self.patch_size)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        x = self.stem(x)
        last = len(self.stages) - 1
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                inter = self.norm(x) if norm and i == last else x
                intermediates.append(inter.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else inter)
        if intermediates_only:
            return intermediates
        if i == last:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages (and norm/head) not needed for ``indices``; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised final map (B, H / 32, W / 32, C), channel-last."""
        check_image(self, x, self.in_chans, self.patch_size)
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
