"""tools/train_cls.py: a shortened digits run that must learn (with EMA, checkpoint and --resume) and a 2-process
gloo DDP run through torchrun. Both use a tiny VMamba and a subset of the digits."""
import csv
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

import train_cls  # noqa: E402

TINY_RUN = ['--depths', '1', '1', '1', '1', '--dims', '16', '--batch-size', '32', '--train-limit', '384',
            '--threads', '1', '--no-progress', '--lr', '3e-3']


def _rows(output):
    with open(os.path.join(output, 'metrics.csv')) as f:
        return list(csv.DictReader(f))


def test_short_run_learns_and_resumes(tmp_path):
    output = str(tmp_path / 'run')
    first = train_cls.main(TINY_RUN + ['--epochs', '1', '--output', output, '--ema'])
    assert first['epoch'] == 1 and os.path.isfile(os.path.join(output, 'last.pth'))
    checkpoint = torch.load(os.path.join(output, 'last.pth'), map_location='cpu', weights_only=False)
    assert {'model', 'optimizer', 'scheduler', 'model_ema', 'epoch'} <= set(checkpoint) and checkpoint['epoch'] == 0

    final = train_cls.main(TINY_RUN + ['--epochs', '3', '--output', output, '--ema',
                                       '--resume', os.path.join(output, 'last.pth')])
    rows = _rows(output)
    assert [int(r['epoch']) for r in rows] == [1, 2, 3]
    losses = [float(r['train_loss']) for r in rows]
    assert losses[-1] < losses[0]
    assert final['epoch'] == 3 and final['val_acc'] > 40.0  # chance is 10 %
    assert 'val_acc_ema' in final and rows[-1]['val_acc_ema'] != ''


def test_torchrun_two_process_gloo_ddp(tmp_path):
    output = str(tmp_path / 'ddp')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'tools', 'train_cls.py'), '--epochs', '1', '--output', output, '--device', 'cpu',
           *TINY_RUN]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert '2 process(es) on cpu' in result.stdout
    assert 'validation accuracy' in result.stdout
    rows = _rows(output)
    assert len(rows) == 1 and 0.0 <= float(rows[0]['val_acc']) <= 100.0
    assert os.path.isfile(os.path.join(output, 'last.pth'))


@pytest.mark.parametrize('step,expected', [(0, 0.25), (3, 1.0), (4, 1.0), (10, 0.1)])
def test_cosine_with_warmup(step, expected):
    assert train_cls.cosine_with_warmup(step, total=10, warmup=4, min_ratio=0.1) == pytest.approx(expected, abs=1e-6)
