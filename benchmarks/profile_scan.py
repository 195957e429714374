"""Where a 2D multi-scan's time goes: forward and forward + backward times, each kernel's share, peak memory and the
autotuners' choices, per pattern and stage shape (GPU only).

``bench_scan.py`` and ``bench_official_scan.py`` time the scan against its references; this takes one call apart.
For each pattern and stage it times ``multi_scan_2d`` (B = 128, K = 4 routes, delta_softplus with bias and D, bf16 by
default) forward and forward + backward with ``triton.testing.do_bench`` (median), records every kernel's time per
forward + backward call under ``torch.profiler``, the memory one forward + backward allocates above its inputs, and,
for every autotuned scan kernel that ran, the configuration it picked and the times of those it tried (for the last
key it tuned). Patterns: ``cross`` (VMamba), ``rows4`` (four row-major routes: cross without the column routes'
strided gathers), ``atrous`` (EfficientVMamba) and ``bidirectional`` (Vim, over the flattened map, two routes
repeated); ``--plain`` also times the plain cross-scan / scan / cross-merge path, ``--routed`` the fused path without
the route-ordered copies (``ROUTE_ORDERED_MIN_STATE_DIM``).

The 2026-12-01 (twelfth session) d_state-16 measurements were made with an earlier throwaway form of this script;
a kernel variant (a changed config list, a reversed scan made forward, ...) is measured by running this on a
modified copy of ``kernels/selective_scan.py``.

Usage: python benchmarks/profile_scan.py [--state-dim 16] [--patterns cross rows4 atrous bidirectional]
    [--stages 96x56x56 192x28x28] [--dtype bfloat16|float32] [--plain] [--routed] [--out OUT.json]
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402

PATTERNS = ('cross', 'rows4', 'atrous', 'bidirectional')


def make_pattern(name: str, height: int, width: int):
    """The pattern ``name`` over an (H, W) map, with 4 routes (the inputs of ``bench_scan.make_inputs``)."""
    kernels = bs.import_kernels()
    if name == 'rows4':
        raster = torch.arange(height * width)
        return kernels.custom_pattern(torch.stack([raster, raster, raster.flip(0), raster.flip(0)]), height, width,
                                      'rows4')
    if name == 'bidirectional':
        two = kernels.bidirectional_pattern(height * width).routes
        return kernels.custom_pattern(torch.cat([two, two]), height, width, 'bidirectional x2')
    return kernels.get_pattern(name, height, width)


def autotuner_choices() -> dict:
    """{kernel: {'picks': {key: config}, 'last_timings': {config: ms}}} of the scan core's autotuned kernels."""
    from triton.runtime.autotuner import Autotuner
    from vmamba_zoo.kernels import selective_scan as ss
    choices = {}
    for name, kernel in vars(ss).items():
        if isinstance(kernel, Autotuner) and kernel.cache:
            timings = getattr(kernel, 'configs_timings', None) or {}
            choices[name] = dict(picks={str(key[:4]): str(config) for key, config in kernel.cache.items()},
                                 last_timings={str(config): round(float(ms[0] if isinstance(ms, (list, tuple))
                                                                        else ms), 4)
                                               for config, ms in timings.items()})
    return choices


def profile_call(kernels, inputs, pattern, fused: bool) -> dict:
    """Times, kernel shares and peak memory of one pattern's forward and forward + backward."""
    import triton
    from torch.profiler import ProfilerActivity, profile
    x, delta, A, B, C, D, bias = inputs

    def forward():
        return kernels.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                                     fused=fused)

    def step():
        y = forward()
        y.backward(torch.ones_like(y))

    step()  # autotunes and compiles
    torch.cuda.synchronize()
    forward_ms = triton.testing.do_bench(forward, warmup=10, rep=150)
    step_ms = triton.testing.do_bench(step, warmup=5, rep=300)
    calls = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    kernel_ms = {event.key: round(event.device_time_total / calls / 1e3, 4) for event in prof.key_averages()
                 if event.device_time_total > 0}
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return dict(fwd_ms=round(forward_ms, 4), fwd_bwd_ms=round(step_ms, 4),
                kernels_ms=dict(sorted(kernel_ms.items(), key=lambda item: -item[1])),
                peak_extra_mib=round((torch.cuda.max_memory_allocated() - before) / 2 ** 20, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--state-dim', type=int, default=16)
    parser.add_argument('--patterns', nargs='+', default=['cross'], choices=PATTERNS)
    parser.add_argument('--stages', nargs='+', default=[f'{d}x{h}x{w}' for d, h, w in bs.STAGES],
                        help='DxHxW stage shapes (default: the four VMamba-T stages)')
    parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
    parser.add_argument('--plain', action='store_true', help='also time the plain cross-scan / scan / merge path')
    parser.add_argument('--routed', action='store_true',
                        help='also time the fused path with the route-ordered copies off (the chunked kernels read '
                             'through the route table at every d_state)')
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit('profile_scan.py needs a CUDA GPU')
    kernels = bs.import_kernels()
    from vmamba_zoo.kernels import selective_scan as ss
    dtype = getattr(torch, args.dtype)
    rows = []
    for stage in args.stages:
        dim, height, width = (int(v) for v in stage.split('x'))
        inputs = bs.make_inputs(dim, height, width, args.state_dim, dtype, requires_grad=True)
        runs = [(name, True, False) for name in args.patterns]
        runs += [(name, True, True) for name in args.patterns if args.routed]
        runs += [('cross', False, False)] if args.plain else []
        default_min_state = ss.ROUTE_ORDERED_MIN_STATE_DIM
        for name, fused, routed in runs:
            ss.ROUTE_ORDERED_MIN_STATE_DIM = 1 << 30 if routed else default_min_state
            row = dict(stage=[dim, height, width], pattern=name, fused=fused, routed=routed,
                       route_ordered=fused and args.state_dim >= ss.ROUTE_ORDERED_MIN_STATE_DIM,
                       **profile_call(kernels, inputs, make_pattern(name, height, width), fused))
            rows.append(row)
            top = ', '.join(f'{key[:40]} {ms}' for key, ms in list(row['kernels_ms'].items())[:4])
            label = ' (plain)' if not fused else ' (routed)' if routed else ''
            print(f"D{dim} {height}x{width} {name}{label}: fwd {row['fwd_ms']:.3f} ms, "
                  f"fwd+bwd {row['fwd_bwd_ms']:.3f} ms, +{row['peak_extra_mib']} MiB; {top}", flush=True)
        ss.ROUTE_ORDERED_MIN_STATE_DIM = default_min_state
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  gpu=torch.cuda.get_device_name(), torch=torch.__version__, batch=bs.BATCH, routes=bs.ROUTES,
                  state_dim=args.state_dim, dtype=args.dtype, rows=rows, autotuners=autotuner_choices())
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print('wrote', args.out)


if __name__ == '__main__':
    main()
