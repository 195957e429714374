"""``ZooBackbone``: any timm or vmamba_zoo model as an mmdet / mmseg backbone, through ``features_only``."""
import re
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from timm.models import model_entrypoint, split_model_name_tag
from timm.models._features import FeatureGetterNet
from timm.models._helpers import clean_state_dict
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import read_checkpoint
from .registry import register_everywhere

__all__ = ['ZooBackbone', 'build_out_norm']

# Official VMamba builds its ``outnorm{i}`` from torch's LayerNorm defaults (eps 1e-5) on every norm_layer choice.
_OUT_NORM_EPS = 1e-5


def build_out_norm(kind: Optional[str], num_channels: int) -> nn.Module:
    """Build the norm applied to one NCHW output map.

    Args:
        kind: ``'ln2d'`` or ``'ln'`` (LayerNorm over channels, what official VMamba uses for both of its norm
            choices), ``'bn'`` (BatchNorm2d), or ``None`` (identity).
        num_channels: Channels of the map.

    Returns:
        The norm module; LayerNorm and BatchNorm keep the ``weight``/``bias`` names of official ``outnorm{i}``.
    """
    if kind is None:
        return nn.Identity()
    kind = kind.lower()
    if kind in ('ln', 'ln2d'):
        return LayerNorm2d(num_channels, eps=_OUT_NORM_EPS)
    if kind == 'bn':
        return nn.BatchNorm2d(num_channels)
    raise ValueError(f"out_norm must be 'ln2d', 'ln', 'bn' or None, got {kind!r}")


def _checkpoint_filter_fn(model_name: str):
    """The ``checkpoint_filter_fn`` of the module that registers ``model_name`` (what timm uses), or ``None``."""
    entrypoint = model_entrypoint(split_model_name_tag(model_name)[0])
    return getattr(sys.modules[entrypoint.__module__], 'checkpoint_filter_fn', None)


def _unwrap_checkpoint(checkpoint: dict, state_dict_key: Optional[str]) -> Dict[str, torch.Tensor]:
    """Pick the state dict out of an mmengine (``state_dict``) or classification (``model``) checkpoint."""
    if state_dict_key is not None:
        if state_dict_key not in checkpoint:
            raise KeyError(f'state_dict_key={state_dict_key!r} is not in the checkpoint (keys: {list(checkpoint)})')
        return checkpoint[state_dict_key]
    # Non-EMA 'model' first, as official VMamba's detection/segmentation loaders do (load_pretrained(key='model')).
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


@register_everywhere
class ZooBackbone(BaseModule):
    """Any registered timm / vmamba_zoo model as a multi-scale backbone for mmdet and mmseg.

    The model is built with ``timm.create_model(model_name, features_only=True, out_indices=...)`` and returns a tuple
    of NCHW maps, one per entry of ``out_indices`` (timm feature indices, as in ``model.feature_info``). Registered in
    mmengine's root ``MODELS`` and in the ``vmamba_zoo`` scope (see :mod:`vmamba_zoo.mm.registry`), so configs use
    ``custom_imports = dict(imports=['vmamba_zoo.mm'], allow_failed_imports=False)`` and
    ``backbone=dict(type='ZooBackbone', model_name='vmamba_tiny_s1l8', out_indices=(0, 1, 2, 3), ...)``.

    Pretrained weights come from ``init_cfg=dict(type='Pretrained', checkpoint=path_or_url)`` and are loaded in
    :meth:`init_weights` (the Runner calls it before training). Accepted checkpoints:

    * classification checkpoints, official or ours: the state dict (``state_dict`` or ``model`` entry, or the bare
      dict) goes through the model's timm ``checkpoint_filter_fn``, the same conversion as
      ``timm.create_model(..., pretrained=True)``; parts the features-only model drops (classifier, final norm) are
      listed in the log and skipped;
    * dense-prediction checkpoints, with ``prefix='backbone.'``: official VMamba ones (its ``outnorm{i}`` load into
      ours) and ones saved from this class.

    Extra ``init_cfg`` keys: ``prefix`` (keep only keys under it, stripped), ``state_dict_key`` (e.g. ``'model_ema'``
    to take EMA weights), ``map_location``, ``weights_only`` (default ``True``; ``False`` for trusted checkpoints that
    pickle more than tensors, as official VMamba ones do). Missing, unexpected and mis-shaped keys raise a
    ``RuntimeError`` that lists them; with ``pretrained_strict=False`` they are logged as a warning instead (never
    silently dropped).

    Args:
        model_name: timm model name, e.g. ``'vmamba_tiny_s1l8'``.
        out_indices: Feature levels to return.
        frozen_stages: ``-1`` freezes nothing; ``k >= 0`` freezes (no gradient, eval mode) every module that runs
            before feature level ``k``: the stem for ``k = 0``, the stem and levels ``0..k-1`` otherwise.
        norm_eval: Keep every BatchNorm of the backbone in eval mode while training.
        out_norm: Norm applied to each returned map, named ``outnorm{i}`` as in official VMamba: ``'ln2d'``,
            ``'ln'``, ``'bn'`` or ``None``.
        drop_path_rate: Stochastic depth rate passed to the model (``None`` keeps the model's default).
        pretrained_strict: Raise on missing/unexpected/mis-shaped checkpoint keys (``False``: warn).
        grad_checkpointing: Enable the model's activation checkpointing.
        model_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. ``depths``, ``dims``, ``feature_cls``).
        init_cfg: mmengine init config; ``type='Pretrained'`` is handled here, anything else by ``BaseModule``.
    """

    def __init__(
            self,
            model_name: str,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: Optional[str] = None,
            drop_path_rate: Optional[float] = None,
            pretrained_strict: bool = True,
            grad_checkpointing: bool = False,
            model_kwargs: Optional[dict] = None,
            init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        import vmamba_zoo  # noqa: F401  (registers the zoo's models with timm)

        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        if drop_path_rate is not None:
            self.model_kwargs['drop_path_rate'] = drop_path_rate
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.pretrained_strict = pretrained_strict

        self.body = timm.create_model(
            model_name, pretrained=False, features_only=True, out_indices=self.out_indices, **self.model_kwargs)
        self.out_channels: List[int] = list(self.body.feature_info.channels())
        self.out_strides: List[int] = list(self.body.feature_info.reduction())
        self._channels_last_output = getattr(self.body, 'output_fmt', 'NCHW') == 'NHWC'  # timm's Format is a str enum
        self._out_norm_names = []
        for index, channels in zip(self.out_indices, self.out_channels):
            name = f'outnorm{index}'
            self.add_module(name, build_out_norm(out_norm, channels))
            self._out_norm_names.append(name)
        if grad_checkpointing:
            self.body.set_grad_checkpointing(True)
        self._frozen_modules = self._modules_before_level(frozen_stages) if frozen_stages >= 0 else []
        for module in self._frozen_modules:
            for param in module.parameters(recurse=False):
                param.requires_grad = False

    # ----------------------------------------------------------------------------------------- names and freezing
    def _body_name(self, name: str) -> str:
        """Map a module or state-dict name of the full timm model to the features-only wrapper's namespace."""
        if isinstance(self.body, FeatureGetterNet):
            return 'model.' + name
        # FeatureListNet/FeatureDictNet flatten the first two levels of nn.Sequential children:
        # 'stages.1' -> 'stages_1'.
        parts = name.split('.')
        if len(parts) >= 2 and '_'.join(parts[:2]) in self.body._modules:
            return '.'.join(['_'.join(parts[:2])] + parts[2:])
        return name

    def _modules_before_level(self, level: int) -> List[nn.Module]:
        """The body's modules that run before feature level ``level`` (all of them past the last level kept)."""
        infos = self.body.feature_info.info
        modules = dict(self.body.named_modules())
        target = self._body_name(infos[level]['module']) if level < len(infos) else None
        if target not in modules:
            return [m for name, m in self.body.named_modules() if name]
        before = []
        for name, module in self.body.named_modules():
            if name == target:
                break
            # Ancestors of the target also hold later levels; their own flags stay untouched.
            if name and not target.startswith(name + '.'):
                before.append(module)
        return before

    def train(self, mode: bool = True):
        """Set train/eval mode, keeping frozen modules (and every BatchNorm with ``norm_eval``) in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules:
                module.training = False  # non-recursive: each frozen module is listed on its own
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Return one NCHW map per entry of ``out_indices``."""
        features = self.body(x)
        outs = []
        for name, feature in zip(self._out_norm_names, features):
            if self._channels_last_output:
                feature = feature.permute(0, 3, 1, 2)
            outs.append(getattr(self, name)(feature).contiguous())
        return tuple(outs)

    # ----------------------------------------------------------------------------------------- pretrained weights
    def init_weights(self):
        """Load ``init_cfg=dict(type='Pretrained', ...)`` through timm's conversion; other init_cfgs go to mmengine."""
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg] if self.init_cfg else []
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if others:
            self.init_cfg = others if len(others) > 1 else others[0]
            super().init_weights()
        for cfg in pretrained:
            self.load_pretrained(**{k: v for k, v in cfg.items() if k != 'type'})
        self.init_cfg = cfgs[0] if len(cfgs) == 1 else (cfgs or None)
        self._is_init = True

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None, state_dict_key: Optional[str] = None,
                        map_location: str = 'cpu', weights_only: bool = True) -> Dict[str, List[str]]:
        """Load a classification or dense-prediction checkpoint into the backbone.

        Args:
            checkpoint: Local path or URL (anything mmengine's ``CheckpointLoader`` reads).
            prefix: Keep only keys starting with this and strip it (``'backbone.'`` for detector checkpoints).
            state_dict_key: Entry of the checkpoint holding the weights; default ``state_dict``, then ``model``.
            map_location: Where tensors are loaded.
            weights_only: ``False`` also reads checkpoints that pickle other objects (official VMamba ones pickle
                their yacs config); it runs pickled code, so only for trusted files. See
                :func:`vmamba_zoo.mm.checkpoint.read_checkpoint`.

        Returns:
            A report dict with ``loaded``, ``missing``, ``unexpected``, ``mismatched``, ``skipped`` (parts the
            features-only model drops, e.g. the classifier, and output norms of levels not returned) and ``new``
            (output norms absent from the checkpoint).

        Raises:
            RuntimeError: On missing, unexpected or mis-shaped keys when ``pretrained_strict`` is set.
        """
        raw = read_checkpoint(checkpoint, map_location=map_location, weights_only=weights_only)
        state_dict = _unwrap_checkpoint(raw, state_dict_key) if isinstance(raw, dict) else raw
        if prefix:
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            if not state_dict:
                raise RuntimeError(f'No key of {checkpoint} starts with prefix {prefix!r}')
        state_dict = clean_state_dict(state_dict)

        # official Backbone_VSSM / our output norms; those of levels this backbone does not return are skipped
        norm_sd = {k: v for k, v in state_dict.items() if re.match(r'outnorm\d+\.', k)}
        body_sd = {k[len('body.'):]: v for k, v in state_dict.items() if k.startswith('body.')}
        classifier_sd = {k: v for k, v in state_dict.items() if k not in norm_sd and not k.startswith('body.')}
        if body_sd and classifier_sd:
            raise RuntimeError(f'{checkpoint} mixes ZooBackbone keys (body.*) with model keys, e.g. '
                               f'{sorted(classifier_sd)[:5]}; pass the right prefix')

        own = self.body.state_dict()
        report = dict(loaded=[], missing=[], unexpected=[], mismatched=[], skipped=[], new=[])
        mapped = {}
        if body_sd:
            candidates = body_sd
        else:
            candidates, skipped = self._convert_classifier_state_dict(classifier_sd, report)
            report['skipped'] = skipped
        for key, value in candidates.items():
            if key not in own:
                report['unexpected'].append(key)
            elif own[key].shape != value.shape:
                report['mismatched'].append(f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}')
            else:
                mapped[key] = value
        # BatchNorm's step counter is absent from some exports and never affects outputs.
        report['missing'] = [k for k in own if k not in candidates and not k.endswith('num_batches_tracked')]

        own_norms = {k: v for k, v in self.state_dict().items() if k.split('.')[0] in self._out_norm_names}
        norm_loaded = {}
        for key, value in norm_sd.items():
            if key.split('.')[0] not in self._out_norm_names:
                report['skipped'].append(key)
            elif key not in own_norms:
                report['unexpected'].append(key)
            elif own_norms[key].shape != value.shape:
                report['mismatched'].append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                                            f'{tuple(own_norms[key].shape)}')
            else:
                norm_loaded[key] = value
        # Official VMamba checkpoints carry no outnorm{i}: new output norms start from their init, as there.
        report['new'] = [k for k in own_norms if k not in norm_loaded]

        self.body.load_state_dict(mapped, strict=False)
        self.load_state_dict(norm_loaded, strict=False)
        report['loaded'] = sorted(mapped) + sorted(norm_loaded)
        self._report_load(checkpoint, report)
        return report

    def _convert_classifier_state_dict(self, state_dict, report) -> Tuple[Dict[str, torch.Tensor], List[str]]:
        """Run timm's ``checkpoint_filter_fn`` against a full model and map its keys into the features-only body."""
        reference_kwargs = {k: v for k, v in self.model_kwargs.items() if k not in ('drop_path_rate', 'feature_cls')}
        reference = timm.create_model(self.model_name, pretrained=False, **reference_kwargs)
        filter_fn = _checkpoint_filter_fn(self.model_name)
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, reference)
            except TypeError:  # some timm filter functions take only the state dict
                state_dict = filter_fn(state_dict)
        reference_keys = set(reference.state_dict())
        own = self.body.state_dict()
        converted, skipped = {}, []
        for key, value in state_dict.items():
            if key not in reference_keys:
                report['unexpected'].append(key)
                continue
            body_key = self._body_name(key)
            if body_key in own:
                converted[body_key] = value
            else:
                skipped.append(key)
        return converted, skipped

    def _report_load(self, checkpoint: str, report: Dict[str, List[str]]):
        """Log the load; raise (strict) or warn on missing/unexpected/mis-shaped keys."""
        print_log(f'ZooBackbone({self.model_name}): loaded {len(report["loaded"])} tensors from {checkpoint}; '
                  f'skipped {len(report["skipped"])} keys of parts this backbone does not use '
                  f'{_preview(report["skipped"])}; newly initialised output norms {_preview(report["new"])}',
                  logger='current')
        problems = [f'{name} keys ({len(report[name])}): {_preview(report[name], 20)}'
                    for name in ('missing', 'unexpected', 'mismatched') if report[name]]
        if not problems:
            return
        message = f'ZooBackbone({self.model_name}) loading {checkpoint}: ' + '; '.join(problems)
        if self.pretrained_strict:
            raise RuntimeError(message + ' (set pretrained_strict=False to load anyway)')
        print_log(message, logger='current', level=30)  # logging.WARNING
        warnings.warn(message, stacklevel=2)


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    keys = list(keys)
    return '[' + ', '.join(keys[:limit]) + (f', ... {len(keys) - limit} more' if len(keys) > limit else '') + ']'
