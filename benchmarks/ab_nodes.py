"""Interleaved A/B of the fused-node variants of VMamba-T[s1l8] at batch 128 on one GPU, with ConvNeXt-T, in one
process, and a search for host-device synchronisations.

The lent GPU machine's host speed varies from run to run and within a run, and our steps are partly host-bound, so
variants are timed in turns, several rounds over (``--rounds``), and compared by their best and median rounds. Per
variant and round: ms per bf16 inference step and per bf16 training step (SGD) between CUDA events; the host's time
to issue a step (``perf_counter`` around the call, no synchronisation) and the CPU time the main thread spent per
step (``time.thread_time``: near the issue time when the host computes, below it when it waits), with the thread's
involuntary context switches, and the process's minor page faults per step; and how many device allocations and
frees the caching allocator made during the timed steps (each ``cudaFree`` synchronises the device). Before each
round, two fixed host workloads tell a slow machine from a slow process: ms of a pure-Python loop, and host µs per
launch of a one-element CUDA add. Finally one inference
and one training step of each variant run under ``torch.cuda.set_sync_debug_mode('warn')``, whose warnings name
the operators that synchronise the host with the GPU.

Model names take a variant after a colon, as ``bench_layout.set_variant`` reads it (none: every fused node on,
':scan_node' only SS2D's core and the MLP as nodes, ':composite' op by op, ':tensor_args', ':fresh_casts',
':scalar_walk').

Usage: python benchmarks/ab_nodes.py [--rounds 3] [--no-gc] [--drop-path 0.2] [--out OUT.json] [MODEL ...]
"""
import argparse
import gc
import resource
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402


def timed(step, iters: int, warm: int = 3) -> dict:
    """ms per step between CUDA events, host ms to issue a step, and the allocator's device allocations and frees
    during the timed steps."""
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    issue = 0.0
    usage_before, thread_before = resource.getrusage(resource.RUSAGE_THREAD), time.thread_time()
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start.record()
    for _ in range(iters):
        begin = time.perf_counter()
        step()
        issue += time.perf_counter() - begin
    end.record()
    thread_ms = (time.thread_time() - thread_before) * 1e3 / iters
    usage_after = resource.getrusage(resource.RUSAGE_THREAD)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()
    return {'step_ms': start.elapsed_time(end) / iters, 'issue_ms': issue * 1e3 / iters, 'thread_cpu_ms': thread_ms,
            'involuntary_switches': usage_after.ru_nivcsw - usage_before.ru_nivcsw,
            'minor_faults_per_step': faults / iters,
            'device_allocs': after.get('num_device_alloc', 0) - before.get('num_device_alloc', 0),
            'device_frees': after.get('num_device_free', 0) - before.get('num_device_free', 0)}


def host_probe() -> dict:
    """Fixed host workloads: ms of a pure-Python loop and host µs per launch of a one-element CUDA add."""
    start = time.perf_counter()
    total = 0
    for value in range(300_000):
        total += value & 7
    python_ms = (time.perf_counter() - start) * 1e3
    tiny = torch.zeros(1, device='cuda')
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(2000):
        tiny.add_(1)
    launch_us = (time.perf_counter() - start) / 2000 * 1e6
    torch.cuda.synchronize()
    return {'python_loop_ms': round(python_ms, 3), 'tiny_add_launch_us': round(launch_us, 3)}


def synchronising_ops(step) -> list:
    """Distinct (message, innermost zoo/timm/torch frames) of the sync warnings one step raises."""
    found = {}

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f'{frame.filename.split("/")[-1]}:{frame.lineno}' for frame in traceback.extract_stack()[:-1]
                  if 'warnings' not in frame.filename][-6:]
        found.setdefault(str(message)[:160], frames)

    step()
    torch.cuda.synchronize()
    original = warnings.showwarning
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('always')
            warnings.showwarning = record
            step()
    finally:
        torch.cuda.set_sync_debug_mode('default')
        warnings.showwarning = original
    torch.cuda.synchronize()
    return [{'message': m, 'frames': f} for m, f in found.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=['vmamba_tiny_s1l8', 'vmamba_tiny_s1l8:scan_node',
                                                      'convnext_tiny'])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--batch', type=int, default=bl.BATCH)
    parser.add_argument('--no-gc', action='store_true', help="disable Python's garbage collector for the run")
    parser.add_argument('--drop-path', type=float, default=0.0,
                        help='drop-path rate of every model (timm DropPath; VMamba-T trains at 0.2)')
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    if args.no_gc:
        gc.disable()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.backends.cudnn.benchmark = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'gc_enabled': gc.isenabled(), 'batch': args.batch, 'drop_path': args.drop_path, 'rounds': [],
              'summary': {}, 'syncs': {}}
    images = torch.randn(args.batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    models = {}
    for spec in args.models:
        name = spec.partition(':')[0]
        if name not in models:
            models[name] = timm.create_model(name, drop_path_rate=args.drop_path).cuda()
    steps = {name: bl.steps(model, images, target) for name, model in models.items()}
    for round_index in range(args.rounds):
        for spec in args.models:
            name, _, variant = spec.partition(':')
            bl.set_variant(variant)
            infer, _, train = steps[name]
            models[name].eval()
            row = {'round': round_index, 'model': spec, 'host_probe': host_probe(), 'infer_bf16': timed(infer, 20)}
            models[name].train()
            row['train_bf16'] = timed(train, 10)
            result['rounds'].append(row)
            print(f"round {round_index} {spec}: infer {row['infer_bf16']['step_ms']:.2f} ms (issue "
                  f"{row['infer_bf16']['issue_ms']:.2f}, thread CPU {row['infer_bf16']['thread_cpu_ms']:.2f}), "
                  f"train {row['train_bf16']['step_ms']:.2f} ms (issue {row['train_bf16']['issue_ms']:.2f}, thread "
                  f"CPU {row['train_bf16']['thread_cpu_ms']:.2f}, involuntary switches "
                  f"{row['train_bf16']['involuntary_switches']}, device allocs/frees "
                  f"{row['train_bf16']['device_allocs']}/{row['train_bf16']['device_frees']}, minor faults/step "
                  f"{row['train_bf16']['minor_faults_per_step']:.0f}), probe {row['host_probe']}", flush=True)
    for spec in args.models:
        rows = [r for r in result['rounds'] if r['model'] == spec]
        result['summary'][spec] = summary = {}
        for mode in ('infer_bf16', 'train_bf16'):
            times = [r[mode]['step_ms'] for r in rows]
            summary[mode] = {'best_ms': min(times), 'median_ms': statistics.median(times),
                             'best_img_s': args.batch * 1e3 / min(times),
                             'median_img_s': args.batch * 1e3 / statistics.median(times)}
        print(spec, summary, flush=True)
    for spec in args.models:
        name, _, variant = spec.partition(':')
        bl.set_variant(variant)
        infer, _, train = steps[name]
        models[name].eval()
        syncs = {'infer_bf16': synchronising_ops(infer)}
        models[name].train()
        syncs['train_bf16'] = synchronising_ops(train)
        result['syncs'][spec] = syncs
        print(spec, 'synchronising ops:', syncs, flush=True)
    bl.set_variant('')
    bs.write_result(result, args.out, 'ab_nodes')


if __name__ == '__main__':
    main()
