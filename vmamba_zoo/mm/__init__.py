"""OpenMMLab (mmdet 3.x / mmseg 1.x) integration: every zoo or timm model as a backbone.

Importing this module registers :class:`ZooBackbone` with mmengine (see :mod:`vmamba_zoo.mm.registry` for where and
why). Configs load it with::

    custom_imports = dict(imports=['vmamba_zoo.mm'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ZooBackbone', model_name='vmamba_tiny_s1l8', out_indices=(0, 1, 2, 3)))

This is the only part of vmamba_zoo that imports mmengine; mmcv, mmdet and mmseg are needed only by the configs.
"""
from .backbone import ZooBackbone, build_out_norm
from .registry import MODELS

__all__ = ['MODELS', 'ZooBackbone', 'build_out_norm']
