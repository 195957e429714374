"""VMamba-T[s1l8] at batch 128 on one GPU under the zoo's host-time and layout switches, in one process.

Images/s of bf16 inference and bf16 training (SGD step) for each combination of:

* ``CachedLaunch.enabled``: Triton kernels launched through their compiled handles, or through ``kernel[grid]``;
* ``SS2D.nchw_scan_min_positions``: channel-last maps copied to NCHW for the scan at every stage (1), or from 28x28
  up (784; the 14x14 and 7x7 maps scanned in place).

Usage: python benchmarks/bench_switches.py [--out OUT.json]
"""
import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    from vmamba_zoo.layers import SS2D
    torch.backends.cudnn.benchmark = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'batch': bl.BATCH, 'rows': []}
    images = torch.randn(bl.BATCH, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (bl.BATCH,), device='cuda')
    model = timm.create_model('vmamba_tiny_s1l8', drop_path_rate=0.0).cuda()
    infer_bf16, _, train_bf16 = bl.steps(model, images, target)
    for cached, min_positions in itertools.product((True, False), (1, 28 * 28)):
        CachedLaunch.enabled, SS2D.nchw_scan_min_positions = cached, min_positions
        model.eval()
        row = {'cached_launch': cached, 'nchw_scan_min_positions': min_positions,
               'infer_bf16_img_s': bl.BATCH * 1e3 / bl.timed_ms(infer_bf16, 20)}
        model.train()
        row['train_bf16_img_s'] = bl.BATCH * 1e3 / bl.timed_ms(train_bf16, 8)
        result['rows'].append(row)
        print(json.dumps(row), flush=True)
    bs.write_result(result, args.out, 'bench_switches')


if __name__ == '__main__':
    main()
