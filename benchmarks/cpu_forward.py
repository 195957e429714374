"""Batch-1 CPU forward time of vmamba_tiny_s1l8 beside timm's convnext_tiny, measured in the same run.

Usage::

    python benchmarks/cpu_forward.py                       # 224x224, 3 warm-up + 10 timed runs each
    python benchmarks/cpu_forward.py --threads 2 --runs 20 --model vmamba_tiny_s1l8 --model convnext_tiny
    python benchmarks/cpu_forward.py --threads 2 --scan-stages   # also the scan alone at VMamba-T's stage shapes

Prints the median and min wall time per forward (eval mode, ``torch.inference_mode``, float32, random weights).
``--scan-stages`` first times the PyTorch scan path by itself (``_scan_routes_torch``, batch 1, the cross pattern's
4 routes, softplus, D and bias) at VMamba-T's four stage shapes: the part of the CPU forward the zoo's own code sets.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, List

import torch

import timm

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import vmamba_zoo  # noqa: E402,F401


def time_calls(call: Callable[[], Any], warmup: int, runs: int) -> List[float]:
    """Wall times (s) of ``runs`` calls after ``warmup`` untimed ones, under ``torch.inference_mode``."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            call()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def time_scan_stages(warmup: int, runs: int):
    """(dim, side, median ms, min ms) of the PyTorch scan path at VMamba-T's stage shapes."""
    from vmamba_zoo.kernels import cross_pattern
    from vmamba_zoo.kernels import selective_scan as ss
    rows = []
    for dim, side in ((96, 56), (192, 28), (384, 14), (768, 7)):
        positions, routes = side * side, cross_pattern(side, side).routes_on('cpu')
        u, delta = torch.randn(1, 1, dim, positions), 0.5 * torch.randn(1, 4, dim, positions)
        A, B, C = -torch.rand(4, dim, 1) - 0.5, torch.randn(1, 4, 1, positions), torch.randn(1, 4, 1, positions)
        args = (u, delta, A, B, C, torch.randn(4, dim), 0.1 * torch.randn(4, dim), routes, True, True, False)
        times = time_calls(lambda: ss._scan_routes_torch(*args), warmup, runs)
        rows.append((dim, side, statistics.median(times) * 1e3, min(times) * 1e3))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', action='append', help='default: vmamba_tiny_s1l8 and convnext_tiny')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    parser.add_argument('--scan-stages', action='store_true', help="also time the PyTorch scan path at VMamba-T's "
                        'stage shapes')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.img_size, args.img_size)
    print(f'torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, '
          f'{os.cpu_count()} CPUs, batch 1, {args.img_size}x{args.img_size}, float32', flush=True)
    if args.scan_stages:
        for dim, side, median, best in time_scan_stages(args.warmup, args.runs):
            print(f'scan {dim}x{side}x{side}: median {median:.2f} ms, min {best:.2f} ms over {args.runs} runs',
                  flush=True)
    for name in args.model or ['vmamba_tiny_s1l8', 'convnext_tiny']:
        model = timm.create_model(name).eval()
        times = time_calls(lambda: model(x), args.warmup, args.runs)
        print(f'{name}: median {statistics.median(times) * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms '
              f'over {len(times)} runs', flush=True)


if __name__ == '__main__':
    main()
