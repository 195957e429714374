"""Train an mmdet or mmseg config (e.g. ``configs/vmamba/*``) with the mmengine Runner.

Single process::

    python tools/train.py configs/vmamba/mask-rcnn_vmamba-t-s1l8_fpn_1x_coco.py

Distributed (one process per GPU; on a CPU-only machine the processes talk over gloo)::

    torchrun --nproc_per_node=8 tools/train.py CONFIG --launcher pytorch

Logs, the dumped config and checkpoints go to ``--work-dir`` (default ``work_dirs/<config name>``). ``--resume``
continues from the latest checkpoint in the work dir, ``--resume PATH`` from a given one (weights, optimizer,
scheduler, iteration and the data position).
"""
import argparse
import os
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from vmamba_zoo.mm.checkpoint import trust_local_checkpoints
from vmamba_zoo.mm.launch import finish_distributed, setup_cpu_distributed


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector or segmentor with the mmengine Runner')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training (AmpOptimWrapper)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from PATH, or without a value from the latest checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line options (the same rules as mmdet's and mmseg's tools)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config.')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    if args.launcher != 'none' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> Runner:
    """Train; returns the Runner (its ``message_hub`` and ``work_dir`` hold the results)."""
    args = parse_args(argv)
    cfg = build_config(args)
    trust_local_checkpoints()  # resume/load_from read checkpoints this project's runs wrote
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()
    return runner


if __name__ == '__main__':
    main()
    finish_distributed()
