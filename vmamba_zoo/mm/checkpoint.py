"""Reading checkpoints under torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

Two kinds of files need more than plain tensors:

* official classification checkpoints (VMamba's ``save_checkpoint_ema`` also pickles its yacs training ``config``,
  so unpickling needs yacs) -- :func:`read_checkpoint` with ``weights_only=False`` reads them with an unpickler that
  replaces classes it cannot import by inert placeholders;
* mmengine's own training checkpoints (``HistoryBuffer``, numpy arrays in the message hub) -- mmengine 0.10 calls
  ``torch.load`` without ``weights_only``, so ``--resume`` and ``load_from`` fail. :func:`trust_local_checkpoints`
  (called by ``tools/train.py`` and ``tools/test.py``) restores mmengine's pre-torch-2.6 behaviour for local files.

``weights_only=False`` runs pickled code: use it only for files from a source you trust.
"""
import os
import pickle
import types
from urllib.parse import urlparse

import torch
from mmengine.runner.checkpoint import CheckpointLoader


class _Placeholder(dict):
    """Stands in for a pickled object whose class is not importable (e.g. a yacs CfgNode, a dict subclass).

    Accepts whatever pickle rebuilds it with (constructor arguments, items, appended elements, state) and keeps it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs, self.items_appended = args, kwargs, []

    def __setstate__(self, state):
        self.state = state

    def append(self, item):  # copyreg may rebuild the object without calling __init__
        self.__dict__.setdefault('items_appended', []).append(item)

    def extend(self, items):
        self.__dict__.setdefault('items_appended', []).extend(items)


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {'__module__': module})


_tolerant_pickle = types.SimpleNamespace(Unpickler=_TolerantUnpickler, load=pickle.load, __name__='tolerant_pickle')


def _local_path(filename: str) -> str:
    """Download http(s) files into torch hub's checkpoint cache (once); return a local path."""
    if urlparse(filename).scheme not in ('http', 'https'):
        return filename
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, os.path.basename(urlparse(filename).path))
    if not os.path.exists(path):
        torch.hub.download_url_to_file(filename, path, progress=True)
    return path


def read_checkpoint(filename: str, map_location='cpu', weights_only: bool = True):
    """Read a checkpoint from a local path or URL (other mmengine schemes go through ``CheckpointLoader``).

    Args:
        filename: Local path, ``http(s)://`` URL, or any prefix mmengine's ``CheckpointLoader`` knows.
        map_location: Passed to ``torch.load``.
        weights_only: ``True``: tensors and plain containers only (torch's safe loader). ``False``: full
            unpickling, with placeholders for classes that cannot be imported. Only for trusted files.

    Returns:
        The loaded object (usually a dict).

    Raises:
        RuntimeError: If the safe loader refuses the file; the message says how to opt in.
    """
    scheme = urlparse(filename).scheme
    if scheme not in ('', 'http', 'https') and not os.path.exists(filename):
        return CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    path = _local_path(filename)
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_tolerant_pickle)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise RuntimeError(
            f'{filename} holds more than tensors (e.g. a pickled training config) and torch refuses it with '
            f'weights_only=True. If you trust its source, add weights_only=False to the init_cfg. Torch said: '
            f'{str(error).splitlines()[-1]}') from error


def _load_trusted_local(filename, map_location=None, logger=None):
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return torch.load(filename, map_location=map_location, weights_only=False)


def trust_local_checkpoints() -> None:
    """Make mmengine read local checkpoints with ``weights_only=False``, as it did before torch 2.6.

    mmengine's training checkpoints pickle its ``HistoryBuffer`` and numpy arrays, which torch's safe loader rejects,
    so without this ``--resume`` and ``load_from`` fail on torch >= 2.6. Called by the tools, which load the
    checkpoints a training run wrote; not called on ``import vmamba_zoo.mm``.
    """
    CheckpointLoader.register_scheme(prefixes='', force=True)(_load_trusted_local)
