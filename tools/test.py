"""Evaluate a trained mmdet or mmseg checkpoint with the mmengine Runner and the config's test evaluator.

Single process::

    python tools/test.py CONFIG CHECKPOINT [--tta] [--out results.pkl]

Distributed::

    torchrun --nproc_per_node=8 tools/test.py CONFIG CHECKPOINT --launcher pytorch

Metrics are printed and logged to ``--work-dir`` (default ``work_dirs/<config name>``).
"""
import argparse
import os
import os.path as osp
from typing import Dict, Optional, Sequence

import torch
from mmengine.config import Config, DictAction
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from vmamba_zoo.mm.checkpoint import trust_local_checkpoints
from vmamba_zoo.mm.launch import finish_distributed, setup_cpu_distributed


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a detector or segmentor with the mmengine Runner')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the evaluation log')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file')
    parser.add_argument('--tta', action='store_true', help="test-time augmentation (the config's tta_pipeline)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args: argparse.Namespace) -> Config:
    """Load the config, point it at the checkpoint and apply ``--tta`` / ``--cfg-options``."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise RuntimeError('--tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model

    if args.launcher != 'none' and not torch.cuda.is_available():
        setup_cpu_distributed(cfg)
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """Run the test loop; returns the metrics dict."""
    args = parse_args(argv)
    cfg = build_config(args)
    trust_local_checkpoints()  # resume/load_from read checkpoints this project's runs wrote
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError('--out must be a .pkl or .pickle file')
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    return runner.test()


if __name__ == '__main__':
    main()
    finish_distributed()
