"""Kernel time of a batch-128 step, per kernel, for model variants side by side (one GPU, one process).

For each model: ms per bf16 inference step and per bf16 training step (SGD) between CUDA events, then the CUDA
kernels of each step under the profiler (total and top kernels, ms per step). A step that takes longer than its
kernels waits on the host; two variants whose kernels differ show where GPU time moved.

Model names take a variant after a colon (``bench_layout.set_variant``): ``vmamba_tiny_s1l8:scan_node`` runs only
SS2D's core and the MLP as fused nodes, ``:composite`` every layer op by op.

Usage: python benchmarks/profile_step.py [--batch 128] [--top 25] [--by-op] [--out OUT.json] [MODEL ...]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402


def ops_by_cuda_time(step, top: int) -> list:
    """The operators (with input shapes) whose kernels took the most GPU time in one step: (ms, calls, op,
    shapes)."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        step()
        torch.cuda.synchronize()
    rows = [(event.self_device_time_total / 1e3, event.count, event.key, str(event.input_shapes)[:150])
            for event in prof.key_averages(group_by_input_shape=True) if event.self_device_time_total > 0]
    return sorted(rows, reverse=True)[:top]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=['vmamba_tiny_s1l8', 'vmamba_tiny_s1l8:scan_node',
                                                      'convnext_tiny'])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--top', type=int, default=25)
    parser.add_argument('--by-op', action='store_true', help='also list the operators whose kernels took the most '
                        'GPU time, with their input shapes')
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.backends.cudnn.benchmark = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'batch': args.batch, 'models': {}}
    images = torch.randn(args.batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    for spec in args.models:
        name, _, variant = spec.partition(':')
        bl.set_variant(variant)
        model = timm.create_model(name, drop_path_rate=0.0).cuda()
        infer, _, train = bl.steps(model, images, target)
        row = result['models'][spec] = {}
        for mode, step, iters in (('infer_bf16', infer, 20), ('train_bf16', train, 10)):
            model.train(mode.startswith('train'))
            step_ms = bl.timed_ms(step, iters, warm=3)
            breakdown = bl.kernel_breakdown(step)
            row[mode] = {'step_ms': step_ms, 'kernel_ms': breakdown['kernel_ms_total'],
                         'top': dict(list(breakdown['top'].items())[:args.top])}
            print(f"{spec} {mode}: step {step_ms:.2f} ms, kernels {breakdown['kernel_ms_total']:.2f} ms", flush=True)
            for kernel, ms in list(breakdown['top'].items())[:args.top]:
                print(f'  {ms:8.3f} {kernel}')
            if args.by_op:
                row[mode]['ops'] = ops = ops_by_cuda_time(step, args.top)
                print(f'{spec} {mode}: operators by GPU time (ms, calls, op, input shapes)')
                for ms, calls, op, shapes in ops:
                    print(f'  {ms:8.3f} {calls:4d} {op} {shapes}')
        del model, infer, train
        torch.cuda.empty_cache()
    bl.set_variant('')
    bs.write_result(result, args.out, 'profile_step')


if __name__ == '__main__':
    main()
