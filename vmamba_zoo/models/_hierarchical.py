"""The timm model contract shared by the four-stage families: VMamba (either layout), EfficientVMamba and MSVMamba.

``forward_intermediates``, ``features_only`` support, grad checkpointing, ``group_matcher`` and classifier reset for
models made of ``stem`` -> ``stages`` -> ``norm`` -> ``head`` on channel-last (B, H, W, C) or channel-first maps.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ClassifierHead, trunc_normal_
from timm.models._features import feature_take_indices

from ..layers import PatchEmbed

__all__ = ['StagedModelMixin', 'HierarchicalNHWCModel', 'stage_widths']


def stage_widths(family: str, depths: Sequence[int], dims: Union[int, Sequence[int]]) -> List[int]:
    """Channels of each stage: ``dims`` as given, or one int doubled at every stage; one per entry of ``depths``."""
    widths = [dims * 2 ** i for i in range(len(depths))] if isinstance(dims, int) else [int(d) for d in dims]
    if len(widths) != len(depths):
        raise ValueError(f'{family}: dims {widths} and depths {tuple(depths)} must have the same length')
    return widths


class StagedModelMixin:
    """timm's forward, feature, classifier and stage methods for models made of ``stem`` -> ``stages`` (each with a
    ``grad_checkpointing`` flag and ``downsample``/``blocks``) -> ``norm`` -> ``head`` (a timm ``ClassifierHead``),
    whose maps are laid out as ``output_fmt`` ('NHWC' or 'NCHW') and which set ``num_features`` and
    ``feature_info``.

    Shared by VMamba (either layout) and the channel-last families.
    """

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

    def _as_format(self, x: torch.Tensor, fmt: str) -> torch.Tensor:
        """A stage map in ``fmt`` ('NCHW' or 'NHWC'), contiguous; the model's maps are in ``self.output_fmt``."""
        if fmt == self.output_fmt:
            return x.contiguous()
        return (x.permute(0, 3, 1, 2) if fmt == 'NCHW' else x.permute(0, 2, 3, 1)).contiguous()

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
            output_fmt: 'NCHW' or 'NHWC' for the intermediates, whatever the model's layout.
            intermediates_only: Return only the intermediates.

        Returns:
            The intermediates, or (final features, intermediates).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 1]
        x = self.stem(x)
        last = len(self.stages) - 1
        intermediates = []
        i = 0
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self._as_format(self.norm(x) if norm and i == last else x, output_fmt))
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
            # A new head: the kept stages may end narrower than the classifier's input.
            self.head = ClassifierHead(self.num_features, 0, pool_type='', input_fmt=self.output_fmt)
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the normalised final map, in the model's layout (``output_fmt``). The stem checks
        the images."""
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------------------------------
class HierarchicalNHWCModel(StagedModelMixin, nn.Module):
    """timm model contract for ``stem -> stages -> norm -> head`` on channel-last maps.

    Subclasses set ``in_chans``, ``patch_size``, ``num_classes``, ``stem``, ``stages`` (each with a
    ``grad_checkpointing`` flag), ``norm``, ``head`` (a ``ClassifierHead`` with ``input_fmt='NHWC'``),
    ``feature_info``, ``num_features`` and ``head_hidden_size``.
    """

    def _build_trunk(self, family: str, in_chans: int, num_classes: int, depths: Sequence[int],
                     dims: Union[int, Sequence[int]], patch_size: int, drop_rate: float,
                     drop_path_rate: float) -> Tuple[List[int], List[List[float]]]:
        """Set the shared attributes and the stem; return the per-stage widths and drop-path rates.

        ``dims`` given as one int doubles at every stage; drop path rises linearly over all blocks.
        """
        num_stages = len(depths)
        dims = stage_widths(family, depths, dims)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.drop_rate = drop_rate
        self.output_fmt = 'NHWC'
        self.dims = dims
        self.stem = PatchEmbed(in_chans, dims[0], patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        return dims, [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(num_stages)]

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
