"""Model lookup shared by the tools: which timm names belong to the zoo, default input sizes, creation at a size."""
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
from torch import nn

__all__ = [
    'list_zoo_models', 'is_zoo_model', 'default_input_size', 'create_model_at_size', 'count_params',
    'count_params_by_name', 'describe_models',
]

ZOO_MODULE_PREFIX = 'vmamba_zoo.'


def _import_zoo():
    import vmamba_zoo  # noqa: F401  (registers the zoo's models with timm)


def is_zoo_model(name: str) -> bool:
    """True if ``name`` (with or without a ``.tag``) is registered by a module of ``vmamba_zoo``."""
    _import_zoo()
    arch = name.split('.')[0]
    if not timm.is_model(arch):
        return False
    return timm.models.model_entrypoint(arch).__module__.startswith(ZOO_MODULE_PREFIX)


def list_zoo_models(pattern: str = '') -> List[str]:
    """Architectures registered with timm by ``vmamba_zoo`` modules, sorted, optionally filtered by a wildcard."""
    _import_zoo()
    names = timm.list_models(pattern) if pattern else timm.list_models()
    return [name for name in names if timm.models.model_entrypoint(name).__module__.startswith(ZOO_MODULE_PREFIX)]


def default_input_size(name: str) -> Tuple[int, int, int]:
    """(C, H, W) input size of the model's default pretrained cfg; (3, 224, 224) if it has none."""
    _import_zoo()
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    input_size = getattr(cfg, 'input_size', None) if cfg is not None else None
    return tuple(input_size) if input_size else (3, 224, 224)


def create_model_at_size(name: str, img_size: Optional[Sequence[int]] = None, **kwargs) -> nn.Module:
    """``timm.create_model`` that builds the model for ``img_size`` (H, W) when it differs from the default.

    Models with a fixed token grid (ViT, Swin) are created with ``img_size``; models that do not take the argument
    (convolutional and most state-space models accept any size) are created as they are.
    """
    _import_zoo()
    if img_size is not None:
        img_size = tuple(int(s) for s in img_size)
        if img_size != tuple(default_input_size(name)[1:]):
            for size_arg in (img_size, img_size[0]) if img_size[0] == img_size[1] else (img_size,):
                try:
                    return timm.create_model(name, img_size=size_arg, **kwargs)
                except TypeError:
                    continue
    return timm.create_model(name, **kwargs)


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


_DESCRIBE_CHILD = """
import json, sys
import timm, torch
import vmamba_zoo
info = {}
for name in json.loads(sys.argv[1]):
    try:
        with torch.device('meta'):
            model = timm.create_model(name)
    except Exception:  # some constructors need real tensors (numpy, .item() loops)
        model = timm.create_model(name)
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    info[name] = dict(params=sum(p.numel() for p in model.parameters()), architecture=cfg.get('architecture'))
print(json.dumps(info))
"""


def describe_models(names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Parameter count and built architecture (``pretrained_cfg['architecture']``; differs from the name for an
    alias) of registered models, built on the meta device (no memory, no init cost).

    The models are built in a child process: a constructor run under ``torch.device('meta')`` can leave meta tensors
    in module-level caches (e.g. scan patterns cached by size) that would break later real forwards in this process.

    Returns:
        ``{name: {'params': int, 'architecture': str or None}}``.
    """
    names = list(names)
    if not names:
        return {}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, '-c', _DESCRIBE_CHILD, json.dumps(names)], capture_output=True,
                         text=True, env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f'building {names} on the meta device failed:\n{out.stderr[-2000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def count_params_by_name(names: Sequence[str]) -> Dict[str, int]:
    """``{name: number of parameters}`` of registered models (see ``describe_models``)."""
    return {name: info['params'] for name, info in describe_models(names).items()}
