"""VMamba-T[s1l8] at batch 128 on one GPU under the zoo's host-time and layout switches, in one process.

Images/s of bf16 inference for each setting of the first switch, then of bf16 training (SGD step) for each
combination of the two node switches (cached launches on), twice over:

* ``CachedLaunch.enabled``: Triton kernels launched through their compiled handles, or through ``kernel[grid]``;
* ``SS2D.fused_scan_node``: SS2D's projections and scan as one autograd node in training (and, with
  ``SS2D.fused_branch_node`` on, the whole branch with its pre-norm), or the composite path;
* ``Mlp.fused_node``: the MLP (with its pre-norm) as one autograd node in training, or the composite path.

(Run 8 of 2026-11-30 timed ``SS2D.nchw_scan_min_positions`` here too; the 14x14 change it served was reverted.
Run 2 of the third session timed cached launches on and off in training too.)

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
    from vmamba_zoo.layers import SS2D, Mlp
    torch.backends.cudnn.benchmark = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'batch': bl.BATCH, 'rows': []}
    images = torch.randn(bl.BATCH, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (bl.BATCH,), device='cuda')
    model = timm.create_model('vmamba_tiny_s1l8', drop_path_rate=0.0).cuda()
    infer_bf16, _, train_bf16 = bl.steps(model, images, target)
    # Inference first (the node switch does not touch it): in run 1 of 2026-11-30's third session, bf16 inference
    # measured after training steps took 4,346-4,878 img/s against 7,972 before them, with the same code.
    model.eval()
    for cached in (True, False):
        CachedLaunch.enabled = cached
        row = {'cached_launch': cached, 'infer_bf16_img_s': bl.BATCH * 1e3 / bl.timed_ms(infer_bf16, 20, warm=10)}
        result['rows'].append(row)
        print(json.dumps(row), flush=True)
    model.train()
    CachedLaunch.enabled = True
    for repeat, (scan_node, mlp_node) in itertools.product(range(2), itertools.product((True, False), (True, False))):
        SS2D.fused_scan_node, Mlp.fused_node = scan_node, mlp_node
        row = {'repeat': repeat, 'fused_scan_node': scan_node, 'mlp_fused_node': mlp_node,
               'train_bf16_img_s': bl.BATCH * 1e3 / bl.timed_ms(train_bf16, 10, warm=5)}
        result['rows'].append(row)
        print(json.dumps(row), flush=True)
    # Where a training step's kernel time goes with both switches on (the profiler's hooks put launches through the
    # JIT path, which does not change the kernels).
    CachedLaunch.enabled = SS2D.fused_scan_node = Mlp.fused_node = True
    result['profile_train_bf16'] = profile = bl.kernel_breakdown(train_bf16)
    print(f"training step: {profile['kernel_ms_total']:.1f} ms of kernels", flush=True)
    for name, ms in list(profile['top'].items())[:12]:
        print(f'   {ms:7.3f} {name}', flush=True)
    bs.write_result(result, args.out, 'bench_switches')


if __name__ == '__main__':
    main()
