"""Vision Mamba (Vim): plain ViT-style bidirectional state-space model with a middle class token.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model"
(Zhu et al., ICML 2024, https://arxiv.org/abs/2401.09417). Official code: https://github.com/hustvl/Vim.

Architecture as in the official ``vim/models_mamba.py``
(``*_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2``): a conv patch embed (patch 16, stride 16 or 8),
the class token inserted in the middle of the token sequence, an absolute position embedding, 24 blocks
"add -> RMSNorm -> bidirectional Mamba mixer" with a float32 residual stream and no MLP, a final add + RMSNorm and
a linear head on the class token. The mixer is :class:`vmamba_zoo.layers.BiMambaMixer`: one ``scan_routes`` call
for both directions on the shared kernel core.

Module and parameter names follow the official checkpoints (``layers.N.mixer.*``, ``norm_f``, ``head``), so the
released Hugging Face files load without renaming. ``features_only=True`` builds the multi-scale pyramid of Vim's
segmentation backbone (``seg/backbone/vim.py``): block outputs at the end of each quarter of the depth, turned into
strides 4/8/16/32 by transposed convs / max pooling (ViTDet-style), see :class:`VimFeaturePyramid`.
"""
import argparse
import math
from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, lecun_normal_, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet, FeatureInfo, feature_take_indices
from timm.models._registry import register_model_deprecations

from vmamba_zoo.layers import BiMambaMixer, RMSNorm, add_rms_norm, check_image_input

__all__ = ['VisionMamba', 'VimBlock', 'VimPatchEmbed', 'VimFeaturePyramid', 'checkpoint_filter_fn']


class VimPatchEmbed(nn.Module):
    """Conv patch embedding with a stride that may be smaller than the patch (Vim "+" models use 16/8).

    Any input size works as long as the patches tile it exactly: ``(H - patch) % stride == 0`` (same for W).

    Args:
        img_size: pretraining image size (sets the default token grid).
        patch_size: conv kernel size.
        stride: conv stride.
        in_chans: input channels.
        embed_dim: output channels.
    """

    def __init__(self, img_size=224, patch_size=16, stride=16, in_chans=3, embed_dim=192):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.stride = to_2tuple(stride)
        self.in_chans = in_chans
        self.grid_size = self.feat_size(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)

    def feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        """Token grid (rows, cols) for an (H, W) input, with a clear error if the patches do not tile it."""
        grid = []
        for size, patch, stride, axis in zip(img_size, self.patch_size, self.stride, ('height', 'width')):
            if size < patch or (size - patch) % stride:
                nearest = patch + stride * max(0, round((size - patch) / stride))
                raise ValueError(
                    f'Vim: input {axis} {size} is not covered exactly by patches of {patch} with stride {stride}; '
                    f'use a size of the form {patch} + k * {stride} (e.g. {nearest})')
            grid.append((size - patch) // stride + 1)
        return grid[0], grid[1]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        check_image_input(x, self.in_chans, stride=1, name='Vim input')  # rank and channels; tiling below
        grid = self.feat_size(x.shape[-2:])
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), grid


class VimBlock(nn.Module):
    """Vim block: ``residual += drop_path(hidden); hidden = mixer(RMSNorm(residual))``.

    The residual add happens at the start of the next block (mamba_ssm's fused "add + norm" layout), so a block takes
    and returns the pair ``(hidden, residual)``; the first block gets ``residual=None``.

    Args:
        dim: model width.
        mixer_kwargs: keyword arguments of :class:`BiMambaMixer`.
        drop_path: stochastic depth applied to the incoming ``hidden`` before the add.
        norm_eps: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in float32.
    """

    def __init__(self, dim: int, mixer_kwargs: Optional[Dict[str, Any]] = None, drop_path: float = 0.,
                 norm_eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = BiMambaMixer(dim, **(mixer_kwargs or {}))
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor] = None):
        if residual is not None:
            hidden = self.drop_path(hidden)
        hidden, residual = add_rms_norm(hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32)
        return self.mixer(hidden), residual


def _init_vim_weights(module: nn.Module, depth: int):
    """The official "mamba init": zero Linear biases (except dt biases) and rescale ``out_proj`` by 1/sqrt(depth)."""
    if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, '_no_reinit', False):
        nn.init.zeros_(module.bias)
    if isinstance(module, BiMambaMixer):
        nn.init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            module.out_proj.weight /= math.sqrt(depth)


class VisionMamba(nn.Module):
    """Vision Mamba (Vim) classifier.

    Args:
        img_size: pretraining image size (position-embedding grid); other sizes interpolate the embedding.
        patch_size: patch (conv kernel) size.
        stride: patch stride (16, or 8 for the "+" models).
        in_chans: input channels.
        num_classes: classifier classes (0 for no head).
        global_pool: ``'token'`` (class token, the official head), ``'avg'`` (mean of patch tokens) or ``''``;
            ``'token'`` becomes ``'avg'`` when ``class_token=False``.
        embed_dim: model width.
        depth: number of blocks.
        d_state: SSM state size.
        d_conv: mixer conv width.
        expand: mixer inner-width multiplier.
        class_token: insert the class token in the middle of the sequence.
        drop_rate: dropout after the position embedding (``pos_drop``).
        drop_path_rate: stochastic depth; block i uses the linear ramp's entry i-1 (official), the final add uses the
            full rate.
        norm_eps: RMSNorm epsilon.
        residual_in_fp32: keep the residual stream in float32 (official: True).
        divide_out: average the two scan directions (official ``if_divide_out=True``).
        layer_scale_init: optional mixer output layer-scale init (official ``init_layer_scale``; unused by releases).
        pyramid_block_indices: blocks tapped by ``features_only``; default: the last block of each quarter.
        intermediate_source: what ``forward_intermediates`` returns per block: ``'mixer'`` (the block's mixer output,
            official Vim-Ti segmentation) or ``'residual'`` (the residual stream after the block, official Vim-S
            segmentation with ``use_residual_as_feature=True``).
        scan_backend: selective-scan backend ('auto', 'triton', 'torch').
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'token',
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            class_token: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.1,
            norm_eps: float = 1e-5,
            residual_in_fp32: bool = True,
            divide_out: bool = True,
            layer_scale_init: Optional[float] = None,
            pyramid_block_indices: Optional[Sequence[int]] = None,
            intermediate_source: str = 'mixer',
            scan_backend: str = 'auto',
    ):
        super().__init__()
        if global_pool not in ('', 'avg', 'token'):
            raise ValueError(f"Vim: global_pool must be '', 'avg' or 'token', got {global_pool!r}")
        if global_pool == 'token' and not class_token:
            global_pool = 'avg'
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.residual_in_fp32 = residual_in_fp32
        self.grad_checkpointing = False

        self.patch_embed = VimPatchEmbed(img_size, patch_size, stride, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        # Official layout: the class token's embedding sits at its sequence position, num_patches // 2.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + self.num_prefix_tokens, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)

        ramp = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        block_drop_path = [0.0] + ramp  # official: block i uses ramp[i - 1]
        mixer_kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand, divide_out=divide_out,
                            layer_scale_init=layer_scale_init, backend=scan_backend)
        self.layers = nn.ModuleList([
            VimBlock(embed_dim, mixer_kwargs, drop_path=block_drop_path[i], norm_eps=norm_eps,
                     residual_in_fp32=residual_in_fp32)
            for i in range(depth)])
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0. else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        if pyramid_block_indices is None:
            pyramid_block_indices = [(i + 1) * depth // 4 - 1 for i in range(4)]
        self.pyramid_block_indices = list(pyramid_block_indices)
        if intermediate_source not in ('mixer', 'residual'):
            raise ValueError(f"Vim: intermediate_source must be 'mixer' or 'residual', got {intermediate_source!r}")
        self.intermediate_source = intermediate_source
        reduction = self.patch_embed.stride[0]
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=f'layers.{i}') for i in range(depth)]
        self.init_weights()

    def init_weights(self):
        """Official init: lecun-normal patch conv, trunc-normal head/cls/pos-embed, then the Mamba rescaling."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=.02)
        self.apply(partial(_init_vim_weights, depth=len(self.layers)))

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^cls_token|pos_embed|patch_embed',
                    blocks=[(r'^layers\.(\d+)', None), (r'^norm_f', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ('', 'avg', 'token'):
                raise ValueError(f"Vim: global_pool must be '', 'avg' or 'token', got {global_pool!r}")
            if global_pool == 'token' and self.cls_token is None:
                raise ValueError("Vim: global_pool='token' needs a model built with class_token=True")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _cls_index(self, seq_len: int) -> int:
        return (seq_len - 1) // 2  # num_patches // 2 for a sequence of num_patches + 1 tokens

    def _resized_pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        if grid == self.patch_embed.grid_size:
            return self.pos_embed
        return resample_vim_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self.num_prefix_tokens)

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x, grid = self.patch_embed(x)
        if self.cls_token is not None:
            mid = x.shape[1] // 2
            x = torch.cat([x[:, :mid], self.cls_token.expand(x.shape[0], -1, -1), x[:, mid:]], dim=1)
        x = self.pos_drop(x + self._resized_pos_embed(grid))
        return x, grid

    def _run_layer(self, layer: VimBlock, hidden, residual):
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint(layer, hidden, residual, use_reentrant=False)
        return layer(hidden, residual)

    def _final_norm(self, hidden: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
        if residual is not None:
            hidden = self.drop_path(hidden)
        if isinstance(self.norm_f, RMSNorm):
            return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps, self.residual_in_fp32)[0]
        return hidden if residual is None else (hidden.float() + residual.float()).to(hidden.dtype)  # pruned norm

    def _strip_prefix(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self.cls_token is None:
            return tokens, None
        mid = self._cls_index(tokens.shape[1])
        return torch.cat([tokens[:, :mid], tokens[:, mid + 1:]], dim=1), tokens[:, mid:mid + 1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, num_patches + 1, C), the class token in the middle."""
        hidden, _ = self._embed(x)
        residual = None
        for layer in self.layers:
            hidden, residual = self._run_layer(layer, hidden, residual)
        return self._final_norm(hidden, residual)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, self._cls_index(x.shape[1])]
        elif self.global_pool == 'avg':
            x = self._strip_prefix(x)[0].mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Block outputs for dense tasks, as Vim's segmentation backbone taps them.

        An intermediate is block ``i``'s mixer output (the official seg backbone's ``hidden_states``), or with
        ``intermediate_source='residual'`` the residual stream after block ``i``; with ``norm`` it is the final
        RMSNorm applied to the residual stream after block ``i``.

        Args:
            x: (B, C, H, W) images.
            indices: last n blocks if int, all if None, or these block indices.
            return_prefix_tokens: also return the class token of each intermediate (pairs ``(map, cls)``).
            norm: normalise the residual stream with ``norm_f`` instead of returning raw mixer outputs.
            stop_early: stop after the last requested block.
            output_fmt: ``'NCHW'`` maps or ``'NLC'`` tokens.
            intermediates_only: return only the intermediates.

        Returns:
            The list of intermediates, or ``(final_tokens, intermediates)``.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"Vim: output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        batch = x.shape[0]
        hidden, grid = self._embed(x)
        residual = None
        intermediates = []
        layers = self.layers if (torch.jit.is_scripting() or not stop_early) else self.layers[:max_index + 1]
        for i, layer in enumerate(layers):
            hidden, residual = self._run_layer(layer, hidden, residual)
            if i in take_indices:
                if norm:
                    out = add_rms_norm(hidden, residual, self.norm_f.weight if isinstance(self.norm_f, RMSNorm)
                                       else None, getattr(self.norm_f, 'eps', 1e-5), False)[0]
                elif self.intermediate_source == 'residual':
                    out = hidden if residual is None else (hidden.float() + residual.float()).to(hidden.dtype)
                else:
                    out = hidden
                intermediates.append(out)
        prefix = []
        if self.cls_token is not None:
            split = [self._strip_prefix(t) for t in intermediates]
            intermediates, prefix = [s[0] for s in split], [s[1] for s in split]
        if output_fmt == 'NCHW':
            intermediates = [t.reshape(batch, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
                             for t in intermediates]
        if return_prefix_tokens and prefix:
            intermediates = list(zip(intermediates, prefix))
        if intermediates_only:
            return intermediates
        if len(layers) < len(self.layers):
            return hidden, intermediates  # stopped early: no final norm over an unfinished stream
        return self._final_norm(hidden, residual), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        """Drop blocks after the last index in ``indices`` (and the norm/head if asked); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm_f = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str, prefix: str = ''):
        """Load an official Vim checkpoint file (timm calls this for ``pretrained=True``, see ``custom_load``).

        The released files are full training checkpoints (``model``, ``model_ema``, optimizer, ``args`` as an
        ``argparse.Namespace``). They are read with ``weights_only=True`` plus ``argparse.Namespace`` as the only
        extra allowed global; the ``model`` weights are used, as the official evaluation does.
        """
        if hasattr(torch.serialization, 'safe_globals'):
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(checkpoint_path, map_location='cpu', weights_only=True)
        else:  # torch 2.4: no context manager, only the process-wide allow-list
            torch.serialization.add_safe_globals([argparse.Namespace])
            state = torch.load(checkpoint_path, map_location='cpu', weights_only=True)
        state = checkpoint_filter_fn(state, self)
        head_matches = isinstance(self.head, nn.Linear) and 'head.weight' in state and \
            state['head.weight'].shape == self.head.weight.shape
        if head_matches:
            self.load_state_dict(state, strict=True)
            return
        state.pop('head.weight', None)
        state.pop('head.bias', None)
        missing, unexpected = self.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith('head.')] + list(unexpected)
        if bad:
            raise RuntimeError(f'Vim: checkpoint does not match the model; missing/unexpected keys: {bad}')


def resample_vim_pos_embed(pos_embed: torch.Tensor, new_grid: Tuple[int, int], old_grid: Tuple[int, int],
                           num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a Vim position embedding whose class entry sits in the middle (index ``old_tokens // 2``).

    The patch entries are interpolated bicubically (as the official fine-tuning code does) and the class entry is put
    back at the middle of the new sequence.

    Args:
        pos_embed: (1, old_h * old_w + num_prefix_tokens, C).
        new_grid: target token grid (rows, cols).
        old_grid: grid of ``pos_embed``.
        num_prefix_tokens: 1 with a middle class token, 0 without.

    Returns:
        (1, new_h * new_w + num_prefix_tokens, C).
    """
    old_tokens = old_grid[0] * old_grid[1]
    if pos_embed.shape[1] != old_tokens + num_prefix_tokens:
        raise ValueError(f'Vim: position embedding has {pos_embed.shape[1]} entries, expected '
                         f'{old_tokens + num_prefix_tokens} for a {old_grid} grid')
    dim = pos_embed.shape[-1]
    if num_prefix_tokens:
        mid = old_tokens // 2
        cls_pe = pos_embed[:, mid:mid + 1]
        patch_pe = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
    else:
        patch_pe = pos_embed
    patch_pe = patch_pe.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    patch_pe = F.interpolate(patch_pe.float(), size=tuple(new_grid), mode='bicubic', align_corners=False)
    patch_pe = patch_pe.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    if not num_prefix_tokens:
        return patch_pe
    mid = patch_pe.shape[1] // 2
    return torch.cat([patch_pe[:, :mid], cls_pe, patch_pe[:, mid:]], dim=1)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VisionMamba) -> Dict[str, torch.Tensor]:
    """Map an official Vim checkpoint (``vim_*_midclstok_*.pth``) onto :class:`VisionMamba`.

    Keys already match; this unwraps ``{'model': sd}`` (the released files are full training checkpoints) or
    ``{'state_dict': sd}``, strips a ``module.`` prefix, drops RoPE buffers, resizes the position embedding to the
    model's grid (middle-class-token layout) and, for a model built with ``class_token=False``, drops the class
    token and its middle position entry.
    """
    if 'model' in state_dict and isinstance(state_dict['model'], dict):
        state_dict = state_dict['model']
    elif 'state_dict' in state_dict and isinstance(state_dict['state_dict'], dict):
        state_dict = state_dict['state_dict']
    out = {}
    for key, value in state_dict.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith('rope.'):
            continue
        out[key] = value
    pos_embed = out.get('pos_embed')
    if pos_embed is not None:
        ckpt_prefix = 1 if 'cls_token' in out else 0
        old_tokens = pos_embed.shape[1] - ckpt_prefix
        side = int(math.isqrt(old_tokens))
        if side * side != old_tokens:
            raise ValueError(f'Vim: cannot infer the grid of a {old_tokens}-patch position embedding')
        if ckpt_prefix and model.cls_token is None:
            mid = old_tokens // 2
            pos_embed = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)
            out.pop('cls_token')
            ckpt_prefix = 0
        if ckpt_prefix != model.num_prefix_tokens:
            raise ValueError('Vim: the checkpoint has no class token but the model expects one')
        if pos_embed.shape != model.pos_embed.shape:
            pos_embed = resample_vim_pos_embed(pos_embed, model.patch_embed.grid_size, (side, side), ckpt_prefix)
        out['pos_embed'] = pos_embed
    return out


class VimFeaturePyramid(FeatureGetterNet):
    """``features_only`` wrapper: Vim's ViTDet-like pyramid (strides 4, 8, 16, 32) as in ``seg/backbone/vim.py``.

    The four tapped block outputs (``model.pyramid_block_indices``, default the last block of each quarter, i.e.
    [5, 11, 17, 23] for 24 blocks) become NCHW maps at the token stride and are rescaled: for stride-16 tokens,
    deconv-BN-GELU-deconv (x4), deconv (x2), identity, 2x2 max pool; for stride-8 tokens, deconv (x2), identity,
    2x2 and 4x4 max pool. The official code uses SyncBatchNorm; this uses BatchNorm2d (convert with
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU training). The pyramid convs are new weights (the
    classification checkpoints do not contain them), as in the official segmentation fine-tuning.

    A ``FeatureGetterNet`` (trunk at ``self.model``, fed through ``forward_intermediates``) with the pyramid convs
    added, so tools that understand timm's getter wrapper (e.g. ``vmamba_zoo.mm.ZooBackbone``) map checkpoint keys
    to ``model.*``. A dedicated class rather than plain ``feature_cls='getter'`` because the pyramid has parameters
    of its own; ``feature_cls='getter'`` still works and returns the raw stride-16 (or 8) block maps with
    ``out_indices`` naming blocks. ``feature_info`` names the tapped blocks (``layers.N``) as each level's module.

    Args:
        model: the trunk (pruned after the last tapped block, head and final norm removed).
        out_indices: pyramid levels to return, from (0, 1, 2, 3).
        output_fmt: only ``'NCHW'``.
    """

    def __init__(self, model: VisionMamba, out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3),
                 output_fmt: str = 'NCHW', **kwargs):
        nn.ModuleDict.__init__(self)  # FeatureGetterNet's own setup assumes block-level out_indices
        if output_fmt != 'NCHW':
            raise ValueError("Vim features_only gives NCHW maps only")
        if isinstance(out_indices, int):
            out_indices = tuple(range(4 - out_indices, 4))
        out_indices = tuple(i % 4 if -4 <= i < 4 else i for i in out_indices)
        if any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f'Vim features_only: out_indices must be pyramid levels in (0, 1, 2, 3), '
                             f'got {out_indices}')
        self.out_indices = out_indices
        self.block_indices = list(model.pyramid_block_indices)
        model.prune_intermediate_layers(self.block_indices, prune_norm=True, prune_head=True)
        self.model = model
        dim, token_stride = model.embed_dim, model.patch_embed.stride[0]
        if token_stride == 16:
            self.fpn1 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim), nn.GELU(),
                                      nn.ConvTranspose2d(dim, dim, 2, 2))
            self.fpn2 = nn.ConvTranspose2d(dim, dim, 2, 2)
            self.fpn3 = nn.Identity()
            self.fpn4 = nn.MaxPool2d(2, 2)
        elif token_stride == 8:
            self.fpn1 = nn.ConvTranspose2d(dim, dim, 2, 2)
            self.fpn2 = nn.Identity()
            self.fpn3 = nn.MaxPool2d(2, 2)
            self.fpn4 = nn.MaxPool2d(4, 4)
        else:
            raise ValueError(f'Vim features_only supports token strides 16 and 8, got {token_stride}')
        info = [dict(num_chs=dim, reduction=r, module=f'layers.{b}')
                for r, b in zip((4, 8, 16, 32), self.block_indices)]
        self.feature_info = FeatureInfo(info, out_indices)
        self.out_map, self.return_dict, self.norm = None, False, False
        self.output_fmt = output_fmt

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        maps = self.model.forward_intermediates(x, indices=self.block_indices, intermediates_only=True)
        fpns = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        return [fpns[i](maps[i]) for i in self.out_indices]


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> VisionMamba:
    return build_model_with_cfg(
        VisionMamba, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls=VimFeaturePyramid, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


_LICENSE_NOTE = ('Hugging Face card metadata: apache-2.0; the card text says "Non-commercial license" '
                 '(per the vmamba_zoo reference notes); the code repository is Apache-2.0.')


def _cfg(repo: str = '', filename: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'hf_hub_id': repo,
        'hf_hub_filename': filename,
        'url': f'https://huggingface.co/{repo}/resolve/main/{filename}' if repo else '',
        'custom_load': 'hf',  # full training checkpoints with an argparse.Namespace: VisionMamba.load_pretrained
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0', 'notes': (_LICENSE_NOTE,),
        'paper_ids': 'arXiv:2401.09417',
        'paper_name': 'Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model',
        'origin_url': 'https://github.com/hustvl/Vim',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vim_tiny_patch16_224.in1k': _cfg('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_76p1acc.pth'),
    'vim_tiny_patch16_stride8_224.in1k': _cfg('hustvl/Vim-tiny-midclstok', 'vim_t_midclstok_ft_78p3acc.pth'),
    'vim_small_patch16_224.in1k': _cfg('hustvl/Vim-small-midclstok', 'vim_s_midclstok_80p5acc.pth'),
    'vim_small_patch16_stride8_224.in1k': _cfg('hustvl/Vim-small-midclstok', 'vim_s_midclstok_ft_81p6acc.pth'),
    'vim_base_patch16_224.in1k': _cfg('hustvl/Vim-base-midclstok', 'vim_b_midclstok_81p9acc.pth'),
})


@register_model
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti: width 192, 24 blocks, patch 16 / stride 16 (196 tokens + class token at 224)."""
    model_args = dict(patch_size=16, stride=16, embed_dim=192, depth=24)
    return _create_vim('vim_tiny_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-Ti+ : Vim-Ti with patch 16 / stride 8 (729 tokens + class token at 224), fine-tuned from Vim-Ti."""
    model_args = dict(patch_size=16, stride=8, embed_dim=192, depth=24)
    return _create_vim('vim_tiny_patch16_stride8_224', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S: width 384, 24 blocks, patch 16 / stride 16."""
    model_args = dict(patch_size=16, stride=16, embed_dim=384, depth=24)
    return _create_vim('vim_small_patch16_224', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-S+ : Vim-S with patch 16 / stride 8, fine-tuned from Vim-S."""
    model_args = dict(patch_size=16, stride=8, embed_dim=384, depth=24)
    return _create_vim('vim_small_patch16_stride8_224', pretrained, **dict(model_args, **kwargs))


@register_model
def vim_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionMamba:
    """Vim-B: width 768, 24 blocks, patch 16 / stride 16."""
    model_args = dict(patch_size=16, stride=16, embed_dim=768, depth=24)
    return _create_vim('vim_base_patch16_224', pretrained, **dict(model_args, **kwargs))


# Official registry names (vim/models_mamba.py) and short "patch8" names for the stride-8 models; timm maps them to
# the names above with a deprecation warning that shows the current name.
register_model_deprecations(__name__, {
    'vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2': 'vim_tiny_patch16_224.in1k',
    'vim_tiny_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2':
        'vim_tiny_patch16_stride8_224.in1k',
    'vim_small_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2': 'vim_small_patch16_224.in1k',
    'vim_small_patch16_stride8_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2':
        'vim_small_patch16_stride8_224.in1k',
    'vim_base_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_middle_cls_token_div2':
        'vim_base_patch16_224.in1k',
    'vim_tiny_patch8_224': 'vim_tiny_patch16_stride8_224.in1k',
    'vim_small_patch8_224': 'vim_small_patch16_stride8_224.in1k',
})
