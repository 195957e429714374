"""Where vmamba_zoo's OpenMMLab modules are registered, and why there.

``conventions.md`` section 4 compares two styles: (A) registering into ``mmdet.registry.MODELS`` and
``mmseg.registry.MODELS`` (VMamba's ``detection/model.py`` does this, which makes the module import mmdet *and* mmseg),
and (B/C) a scoped child registry, reached as ``type='<scope>.Name'``. We combine the two halves that need only
mmengine:

* ``ZooBackbone`` goes into mmengine's **root** ``MODELS``. mmdet, mmseg, mmpretrain and mmyolo all define their
  ``MODELS`` as children of that root, and an unscoped ``Registry.get('ZooBackbone')`` searches the current registry
  and then its parents, so the one registration serves every OpenMMLab codebase. The fixed config interface is
  ``custom_imports = dict(imports=['vmamba_zoo.mm'], allow_failed_imports=False)`` plus
  ``backbone=dict(type='ZooBackbone', model_name=...)``. Nothing here imports mmdet or mmseg, so a user of only one
  of them needs only that one installed.
* The same classes also go into ``MODELS`` below, a child of the root with scope ``'vmamba_zoo'``, so that
  ``type='vmamba_zoo.ZooBackbone'`` (the scoped style of ``type='mmpretrain.ConvNeXt'``) resolves from any codebase
  once ``vmamba_zoo.mm`` has been imported.

Only ``vmamba_zoo.mm`` imports mmengine; ``import vmamba_zoo`` never does.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='vmamba_zoo', locations=['vmamba_zoo.mm'])


def register_everywhere(cls):
    """Register ``cls`` in mmengine's root ``MODELS`` and in the scoped ``vmamba_zoo`` registry.

    Args:
        cls: The module class to register.

    Returns:
        ``cls`` unchanged, so this works as a class decorator.
    """
    MMENGINE_MODELS.register_module(module=cls)
    MODELS.register_module(module=cls)
    return cls
