"""Our fused 2D multi-scan against the official VMamba's scan path, measured side by side in one process (issue 2).

The official VMamba-T[s1l8] scans a block's map as three steps: its Triton ``cross_scan_fn`` writes the K = 4 route
orders of the input (B, K, D, L), the compiled ``selective_scan_cuda_oflex`` scans them (float32 output), and
``cross_merge_fn`` sums the routes back onto the map. Ours, ``multi_scan_2d(..., fused=True)``, walks the routes on the
map directly. This script times both at VMamba-T's four stage shapes (B = 128, K = 4, N = 1 or ``--state-dim``),
bf16 and fp32 inputs, forward and forward + backward, with ``triton.testing.do_bench`` (median), against the bytes
floor of ``bench_scan.bytes_floor`` at the measured device-copy bandwidth. Forward + backward runs with fresh
gradients (``bench_scan.forward_backward``: the leaves' ``.grad`` dropped before each call, as in a model, whose scan
inputs are activations); ``*_fwd_bwd_accumulating_ms`` keeps the earlier sessions' measure, where each call's
gradients were added to the last call's on every input of both paths.

Before timing it checks that both compute the same thing: the official path gets each route's step sizes, B and C in
that route's order (``cross_scan_fn(..., one_by_one=True)`` of our per-route maps), and its merged output is compared
with ours (relative L2 error, float32 inputs) and with the float64 PyTorch path.

The official code is not part of this repository: pass the root of a MzeroMiko/VMamba checkout and the folder that
holds its compiled ``selective_scan_cuda_oflex`` (built for the GPU from the checkout's ``kernels/selective_scan``;
with CUDA 13 two CUB calls removed in CCCL 3, ``cub::LaneId`` and ``cub::CTA_SYNC``, must be replaced first).

Usage: python benchmarks/bench_official_scan.py --official PATH --ext-dir DIR [--state-dim N] [--out OUT.json]
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402


def official_path(repo: str, ext_dir: str):
    """The official cross-scan, oflex scan and cross-merge as one function of our operands' layout."""
    from vmamba_zoo.utils.benchmark import _load_official_vmamba_module
    _load_official_vmamba_module(Path(repo), [ext_dir])
    csm, s6 = sys.modules['csm_triton'], sys.modules['csms6s']
    if not s6.WITH_SELECTIVESCAN_OFLEX:
        raise RuntimeError(f'selective_scan_cuda_oflex did not import from {ext_dir}')

    def route_orders(delta, B, C):
        """(B, K*D, L) step sizes and (B, K, N, L) B and C, each route's in its own order, as the official model's
        projections of the scanned input produce them."""
        dts = csm.cross_scan_fn(delta, in_channel_first=True, out_channel_first=True, one_by_one=True)
        Bs = csm.cross_scan_fn(B, in_channel_first=True, out_channel_first=True, one_by_one=True)
        Cs = csm.cross_scan_fn(C, in_channel_first=True, out_channel_first=True, one_by_one=True)
        return dts.reshape(dts.shape[0], -1, dts.shape[-1]), Bs.contiguous(), Cs.contiguous()

    def scan(x, dts, A, Bs, Cs, D, bias):
        """What the official SS2D runs from its (B, D, H, W) input to the merged map (B, D, L), float32: the cross
        scan of x, the oflex scan and the cross merge."""
        batch, dim, height, width = x.shape
        xs = csm.cross_scan_fn(x, in_channel_first=True, out_channel_first=True).reshape(batch, -1, height * width)
        ys = s6.SelectiveScanCuda.apply(xs, dts, A, Bs, Cs, D, bias, True, True, 'oflex')
        return csm.cross_merge_fn(ys.view(batch, 4, dim, height, width), in_channel_first=True, out_channel_first=True)

    return route_orders, scan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--official', required=True, help='root of a MzeroMiko/VMamba checkout')
    parser.add_argument('--ext-dir', required=True, help='folder holding the compiled selective_scan_cuda_oflex')
    parser.add_argument('--out', default='')
    parser.add_argument('--dtypes', nargs='+', default=['bfloat16', 'float32'])
    parser.add_argument('--state-dim', type=int, default=1)
    args = parser.parse_args()
    import vmamba_zoo.kernels as kernels
    route_orders, official_scan = official_path(args.official, args.ext_dir)
    bandwidth = bs.measure_copy_bandwidth()  # GB/s of a device copy: the floor's bandwidth, as in bench_scan
    result = dict(date=str(datetime.date.today()), gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                  batch=bs.BATCH, routes=bs.ROUTES, state_dim=args.state_dim, copy_bandwidth_GBps=bandwidth, checks={},
                  timings={})
    print(f'copy bandwidth {bandwidth:.0f} GB/s', flush=True)
    for dim, height, width in bs.STAGES:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            x, delta, A, B, C, D, bias = bs.make_inputs(dim, height, width, args.state_dim, dtype, requires_grad=True)
            key = f'D{dim}_{height}x{width}_{dtype_name}'
            with torch.no_grad():
                dts, Bs, Cs = route_orders(delta, B, C)
            dts, Bs, Cs = (t.detach().requires_grad_(True) for t in (dts, Bs, Cs))

            def ours():
                return kernels.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, fused=True)

            def official():
                return official_scan(x, dts, A, Bs, Cs, D, bias)

            with torch.no_grad():
                y_ours, y_official = ours().flatten(2), official()
                check = {'official_vs_ours': bs.rel_err(y_official, y_ours)}
                if dtype == torch.float32 and dim * height * width <= 192 * 28 * 28:
                    ref = kernels.multi_scan_2d(*(t.double() for t in (x, delta, A, B, C, D)),
                                                delta_bias=bias.double(), delta_softplus=True, fused=False,
                                                backend='torch').flatten(2)
                    check.update(official_vs_float64=bs.rel_err(y_official, ref), ours_vs_float64=bs.rel_err(
                        y_ours, ref))
            result['checks'][key] = check
            print('check', key, ' '.join(f'{k} {v:.1e}' for k, v in check.items()), flush=True)
            in_size = torch.finfo(dtype).bits // 8
            floors = [bs.bytes_floor(dim, height, width, args.state_dim, in_size, backward) / bandwidth / 1e6
                      for backward in (False, True)]
            row = {'bytes_floor_fwd_ms': floors[0], 'bytes_floor_fwd_bwd_ms': floors[1]}
            for name, fn, leaves in (('ours_fused', ours, (x, delta, A, B, C, D, bias)),
                                     ('official_csm_oflex', official, (x, dts, A, Bs, Cs, D, bias))):
                with torch.no_grad():
                    row[f'{name}_fwd_ms'] = bs.bench(fn)
                grad = torch.randn_like(fn())
                row[f'{name}_fwd_bwd_ms'] = bs.bench(bs.forward_backward(fn, grad, leaves), warmup=5, rep=30)

                def accumulating(fn=fn, grad=grad):
                    fn().backward(grad)
                # As measured until the sixteenth session: every call adds its gradients to the leaves' last ones.
                row[f'{name}_fwd_bwd_accumulating_ms'] = bs.bench(accumulating, warmup=5, rep=30)
                for t in leaves:
                    t.grad = None
            row['speedup_fwd'] = row['official_csm_oflex_fwd_ms'] / row['ours_fused_fwd_ms']
            row['speedup_fwd_bwd'] = row['official_csm_oflex_fwd_bwd_ms'] / row['ours_fused_fwd_bwd_ms']
            row['speedup_fwd_bwd_accumulating'] = row['official_csm_oflex_fwd_bwd_accumulating_ms'] / row[
                'ours_fused_fwd_bwd_accumulating_ms']
            result['timings'][key] = row
            print(key, ' '.join(f'{k} {v:.3f}' for k, v in row.items()), flush=True)
            torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
        print('wrote', args.out)


if __name__ == '__main__':
    main()
