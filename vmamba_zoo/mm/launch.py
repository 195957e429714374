"""Launch helpers shared by ``tools/train.py`` and ``tools/test.py``."""
import torch.distributed as dist
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """Let ``--launcher pytorch`` run on machines without CUDA (e.g. CI, gloo).

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its default DDP wrapper passes ``device_ids``; both
    fail without a GPU. Here the gloo process group is created first from torchrun's environment (the Runner then
    skips ``init_dist``) and DDP is configured without ``device_ids``. A ``model_wrapper_cfg`` already in the config
    is left alone.

    Args:
        cfg: The config the Runner will be built from; modified in place.
    """
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))


def finish_distributed() -> None:
    """Tear down the process group a distributed run created, once its work is done.

    mmengine's Runner leaves it open. Then gloo's threads are still running while the interpreter exits, and a
    torchrun rank can abort ("terminate called without an active exception", SIGABRT) after training succeeded. A
    barrier first, so that no rank tears down while another still talks to it.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
