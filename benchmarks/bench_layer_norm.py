"""GPU evidence for the channel-first LayerNorm (``kernels/layer_norm.py``) at VMamba-T's stage shapes.

For B=128 and (C, H, W) in VMamba-T's four stages it:

1. checks the Triton forward and backward against the float64 reference (bf16 in and out, and float32 in with bf16
   out, which is what a block's first norm sees under autocast: a float32 residual stream);
2. times forward and forward+backward of the kernel and of what ``LayerNorm2d`` ran before it (``permute ->
   F.layer_norm -> permute`` under bf16 autocast, which computes and returns float32), with CUDA events;
3. prints the bytes floor (read x once, write y once; backward reads x and dy, writes dx) at the measured copy
   bandwidth, and writes everything to JSON.

With ``--backward-tiles`` it instead times the backward kernel alone (``_layer_norm_bwd``: the kernel and the sum of
its weight/bias partials) as VMamba's norms run it, for several tilings: the tile size (channels x pixels per loop
step), warps, most pixels and fewest programs, with the weight and bias sums accumulated per tile element or not,
against the bytes floor.

Usage: python benchmarks/bench_layer_norm.py [--out OUT.json] [--backward-tiles]
"""
import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402

STAGES = ((96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7))
BATCH = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='')
    parser.add_argument('--backward-tiles', action='store_true')
    args = parser.parse_args()
    if args.backward_tiles:
        return backward_tiles(args.out)
    import triton
    import triton.testing
    kernels = bs.import_kernels()
    ln = kernels.layer_norm_2d
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, batch=BATCH,
                  checks={}, timings={})
    start = time.time()
    for in_dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(4, 96, 13, 17, device='cuda').mul(3).add(1).to(in_dtype).requires_grad_()
        weight = torch.randn(96, device='cuda', requires_grad=True)
        bias = torch.randn(96, device='cuda', requires_grad=True)
        y = ln(x, weight, bias, 1e-5, out_dtype=torch.bfloat16)
        ref_in = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
        y_ref = kernels.layer_norm_2d_ref(*ref_in, 1e-5)
        dy = torch.randn_like(y_ref)
        grads = torch.autograd.grad(y, (x, weight, bias), dy.to(y.dtype))
        grads_ref = torch.autograd.grad(y_ref, ref_in, dy)
        errs = [bs.rel_err(y, y_ref)] + [bs.rel_err(g, r) for g, r in zip(grads, grads_ref)]
        key = f'{str(in_dtype)[6:]}_in_bf16_out'
        result['checks'][key] = dict(zip(('y', 'dx', 'dweight', 'dbias'), errs))
        print('check', key, ' '.join(f'{e:.1e}' for e in errs), flush=True)
    bandwidth = bs.measure_copy_bandwidth()
    result['copy_bandwidth_GBps'] = bandwidth

    def bench(fn, rep=50):
        return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode='median')

    for channels, height, width in STAGES:
        weight = torch.randn(channels, device='cuda', requires_grad=True)
        bias = torch.randn(channels, device='cuda', requires_grad=True)
        row = {}
        for in_dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(BATCH, channels, height, width, device='cuda', dtype=in_dtype, requires_grad=True)
            dy = torch.randn(BATCH, channels, height, width, device='cuda', dtype=torch.bfloat16)

            def ours():
                return ln(x, weight, bias, 1e-5, out_dtype=torch.bfloat16)

            def permuted():  # LayerNorm2d before: float32 statistics and output under autocast
                with torch.autocast('cuda', torch.bfloat16):
                    return F.layer_norm(x.permute(0, 2, 3, 1), (channels,), weight, bias, 1e-5).permute(0, 3, 1, 2)

            tag = str(in_dtype)[6:]
            for name, fn in (('ours', ours), ('permute_layer_norm', permuted)):
                with torch.no_grad():
                    row[f'{name}_{tag}_in_fwd_ms'] = bench(fn)
                grad_out = dy if name == 'ours' else dy.float()
                row[f'{name}_{tag}_in_fwd_bwd_ms'] = bench(
                    lambda: torch.autograd.grad(fn(), (x, weight, bias), grad_out))
            size = x.element_size()
            elements = x.numel()
            row[f'floor_{tag}_in_fwd_ms'] = elements * (size + 2) / bandwidth / 1e6
            row[f'floor_{tag}_in_fwd_bwd_ms'] = elements * (size + 2 + size + 2 + size) / bandwidth / 1e6
        key = f'C{channels}_{height}x{width}'
        result['timings'][key] = row
        print(key, ' '.join(f'{k} {v:.3f}' for k, v in row.items()), flush=True)
    result['wall_s'] = time.time() - start
    bs.write_result(result, args.out, 'bench_layer_norm')


def _key(tiling):
    return 'tile{}_warps{}_px{}_min{}'.format(*tiling)


BACKWARD_TILINGS = tuple((tile, warps, 128, min_programs) for tile in (4096, 8192) for warps in (4, 8)
                         for min_programs in (1, 1024, 4096))


def backward_tiles(out: str):
    """Backward kernel time per tiling (tile elements, warps, most pixels per program, fewest programs), in
    VMamba's two cases: channel-last rows
    (B * H * W, C) with float32 x (a block's pre-norms, on the float32 residual stream) and an NCHW float32 map x
    with a channel-last dy (the out-norm, which reads the scan's NCHW output); dy in bf16."""
    import triton
    import triton.testing
    bs.import_kernels()
    from vmamba_zoo.kernels import layer_norm as ln
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, batch=BATCH,
                  copy_bandwidth_GBps=bs.measure_copy_bandwidth(), default=ln._BWD_TILING,
                  rows={})
    default = ln._BWD_TILING
    totals = {}
    for channels, height, width in STAGES:
        weight = torch.randn(channels, device='cuda')
        for case in ('rows', 'map'):
            rows = case == 'rows'
            if rows:
                x = torch.randn(BATCH, height, width, channels, device='cuda')
                dy = torch.randn(BATCH, height, width, channels, device='cuda', dtype=torch.bfloat16)
            else:
                x = torch.randn(BATCH, channels, height, width, device='cuda')
                dy = torch.randn(BATCH, channels, height, width, device='cuda', dtype=torch.bfloat16).to(
                    memory_format=torch.channels_last)
            stats = ln._layer_norm_fwd(x, weight, None, 1e-5, torch.empty_like(x), rows, True)
            row = dict(floor_ms=x.numel() * (2 * x.element_size() + 2) / result['copy_bandwidth_GBps'] / 1e6)
            reference = None
            for tiling in BACKWARD_TILINGS:
                ln._BWD_TILING = tiling
                ln._launch_bwd_tiles.cache_clear()
                dx, parts = ln._layer_norm_bwd(x, weight, stats, dy, rows)
                if reference is None:
                    reference = dx.float(), parts
                else:  # every tiling computes the same gradients
                    assert torch.allclose(dx.float(), reference[0], rtol=1e-3, atol=1e-3)
                    assert torch.allclose(parts, reference[1], rtol=1e-3, atol=1e-2)
                key = _key(tiling)
                row[key] = triton.testing.do_bench(lambda: ln._layer_norm_bwd(x, weight, stats, dy, rows),
                                                   warmup=10, rep=40, return_mode='median')
                totals[key] = totals.get(key, 0.0) + row[key]
            name = f'C{channels}_{height}x{width}_{case}'
            result['rows'][name] = row
            best = min((k for k in row if k != 'floor_ms'), key=row.get)
            print(name, f"floor {row['floor_ms']:.3f}", 'default', f"{row[_key(default)]:.3f}",
                  'best', best, f'{row[best]:.3f}', flush=True)
    # VMamba-T[s1l8] runs per step 2 blocks at 56x56 and 28x28, 8 at 14x14 and 2 at 7x7, each with two row norms
    # and one out-norm; weighted by those counts, the tilings' total per step:
    counts = {96: 2, 192: 2, 384: 8, 768: 2}
    weighted = {}
    for key in totals:
        weighted[key] = sum(counts[c] * (2 if case == 'rows' else 1) * result['rows'][f'C{c}_{h}x{w}_{case}'][key]
                            for c, h, w in STAGES for case in ('rows', 'map'))
    result['vmamba_t_step_ms'] = dict(sorted(weighted.items(), key=lambda kv: kv[1]))
    for key, ms in list(result['vmamba_t_step_ms'].items())[:8]:
        print(f'VMamba-T step, block norms: {ms:.3f} ms  {key}', flush=True)
    print('default:', f"{weighted[_key(default)]:.3f} ms", flush=True)
    ln._BWD_TILING = default
    ln._launch_bwd_tiles.cache_clear()
    bs.write_result(result, out, 'bench_layer_norm_backward_tiles')


if __name__ == '__main__':
    main()
