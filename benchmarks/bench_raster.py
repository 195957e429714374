"""Timings of the raster scan kernels at VMamba-T's stage shapes, each kernel forced through the size thresholds.

For B=128, K=4 (cross pattern), N=1 (and N=16 at stage 1), bf16 inputs, it prints and writes to JSON:

* on contiguous (NCHW) maps and on channel-last (NHWC) maps, which the row walk reads in place;
* the vectorised row-walk forward (NCHW, d_state 1; ``VECTOR_ROW_WALK``), the row-walk forward (one lane per
  thread) and the whole-map forward (the latter only on maps up to 14x14, NCHW only);
* forward+backward with the default dispatch (``WHOLE_MAP_*_MAX_TILE``, ``ROW_WALK_BACKWARD``), and with the row
  walk in both directions: vectorised (the defaults), the vectorised forward with the one-lane backward told its
  rows are aligned (``VECTOR_ROW_WALK_BWD = False``), and one lane per thread in both (``scalar``: the kernels
  before the vectorised walks);
* the bytes floor from ``bench_scan.bytes_floor`` at the measured copy bandwidth.

A few maps are first checked against the float64 PyTorch path with each kernel forced. This is how the dispatch
thresholds in ``kernels/selective_scan.py`` were chosen; ``bench_scan.py`` holds the full comparison with the other
paths and mamba_ssm.

With ``--sweep SECONDS`` it also times the vectorised forward at several channels per program, then the row-walk
kernels one (channels per program, warps) configuration at a time, on both layouts, which is how their programs were
chosen.

Usage: python benchmarks/bench_raster.py [--no-checks] [--sweep SECONDS] [--out OUT.json]
"""
import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402

STAGE_SHAPES = ((96, 56, 56, 1), (192, 28, 28, 1), (384, 14, 14, 1), (768, 7, 7, 1), (192, 28, 28, 16))
CHECKS = ((56, 56, 1, torch.bfloat16, 0, False), (28, 28, 4, torch.float32, 0, False),
          (13, 17, 1, torch.float32, 0, False), (7, 7, 1, torch.bfloat16, 256, False),
          (56, 56, 1, torch.bfloat16, 0, True), (13, 17, 2, torch.float32, 0, True))
# (H, W, N, dtype, whole-map limit, channel-last); the limit 0 runs the row walk


# (channels per program, warps) tried by --sweep: the forward at every stage, the backward at the two large ones;
# on contiguous maps and on channel-last maps (a channel-last program needs several channels for coalesced loads).
SWEEP_FWD = ((1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2), (16, 1), (16, 2), (32, 4))
SWEEP_BWD = ((1, 1), (2, 1), (4, 1), (4, 2), (8, 2), (8, 4))
# (lanes per thread, channels per program) of the vectorised forward (``VECTOR_WALK_LANES``, ``_CHANNELS``)
VECTOR_SWEEP = tuple((lanes, channels) for lanes in (2, 4, 8) for channels in (1, 2, 4, 8))
SWEEP_FWD_NHWC = ((2, 1), (4, 1), (4, 2), (8, 1), (8, 2), (8, 4), (16, 2), (16, 4), (32, 4), (32, 8))
SWEEP_BWD_NHWC = ((4, 1), (4, 2), (8, 2), (8, 4), (16, 4), (16, 8))
LAYOUTS = ('nchw', 'nhwc')


def set_whole_map_limit(ss, tile):
    ss.WHOLE_MAP_FWD_MAX_TILE = ss.WHOLE_MAP_BWD_MAX_TILE = tile


def sweep_row_walk(kernels, ss, bench, budget_s):
    """Time the row-walk kernels with one configuration forced at a time (the autotuner's list replaced by it):
    forward at every stage, backward alone (a retained graph) at 56x56 and 28x28. Stops starting new
    configurations after ``budget_s`` seconds."""
    start, timings = time.time(), {}
    saved = (ss.WHOLE_MAP_FWD_MAX_TILE, ss.WHOLE_MAP_BWD_MAX_TILE, ss.ROW_WALK_BACKWARD)
    set_whole_map_limit(ss, 0)
    ss.ROW_WALK_BACKWARD = True
    sweeps = ((ss._raster_rows_fwd_kernel, STAGE_SHAPES[:4], SWEEP_FWD_NHWC, False, 'nhwc'),
              (ss._raster_rows_bwd_kernel, STAGE_SHAPES[:2], SWEEP_BWD_NHWC, True, 'nhwc'),
              (ss._raster_rows_fwd_kernel, STAGE_SHAPES[:4], SWEEP_FWD, False, 'nchw'),
              (ss._raster_rows_bwd_kernel, STAGE_SHAPES[:2], SWEEP_BWD, True, 'nchw'))
    for kernel, stages, programs, backward, layout in sweeps:
        every_config = list(kernel.configs)
        for dim, height, width, state_dim in stages:
            args = bs.make_inputs(dim, height, width, state_dim, torch.bfloat16, requires_grad=backward,
                                  channels_last=layout == 'nhwc')

            def forward():
                return kernels.multi_scan_2d(*args[:6], delta_bias=args[6], delta_softplus=True)

            if backward:
                y = forward()
                grad = torch.randn_like(y)
                run = lambda: torch.autograd.grad(y, args, grad, retain_graph=True)  # noqa: E731
            else:
                run = forward
            for block_d, warps in programs:
                if time.time() - start > budget_s:
                    break
                kernel.configs = [c for c in every_config if c.kwargs['BLOCK_D'] == block_d and c.num_warps == warps
                                  and c.kwargs['NUM_STAGES'] == 1]
                kernel.cache = {}
                key = f"{'bwd' if backward else 'fwd'}_{layout}_D{dim}_{height}x{width}_channels{block_d}_warps{warps}"
                with torch.enable_grad() if backward else torch.no_grad():
                    timings[key] = bench(run)
                print('sweep', key, f'{timings[key]:.3f}', flush=True)
        kernel.configs, kernel.cache = every_config, {}
    ss.WHOLE_MAP_FWD_MAX_TILE, ss.WHOLE_MAP_BWD_MAX_TILE, ss.ROW_WALK_BACKWARD = saved
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='')
    parser.add_argument('--no-checks', action='store_true', help='skip the float64 checks (they compile 8 kernels)')
    parser.add_argument('--sweep', type=float, default=0, metavar='SECONDS',
                        help='then time the row-walk kernels one configuration at a time, for up to SECONDS')
    args_cli = parser.parse_args()
    import triton
    import triton.testing
    kernels = bs.import_kernels()
    from vmamba_zoo.kernels import selective_scan as ss
    defaults = (ss.WHOLE_MAP_FWD_MAX_TILE, ss.WHOLE_MAP_BWD_MAX_TILE, ss.ROW_WALK_BACKWARD)
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  batch=bs.BATCH, routes=bs.ROUTES, checks={}, timings={})
    start = time.time()
    for height, width, state_dim, dtype, tile, channels_last in () if args_cli.no_checks else CHECKS:
        set_whole_map_limit(ss, tile)
        ss.ROW_WALK_BACKWARD = tile == 0
        args = bs.make_inputs(8, height, width, state_dim, dtype, batch=2, requires_grad=True,
                              channels_last=channels_last)
        y = kernels.multi_scan_2d(*args[:6], delta_bias=args[6], delta_softplus=True)
        ref_args = [a.detach().double().requires_grad_() for a in args]
        y_ref = kernels.multi_scan_2d(*ref_args[:6], delta_bias=ref_args[6], delta_softplus=True, backend='torch')
        grad = torch.randn_like(y_ref)
        errs = [bs.rel_err(y, y_ref)] + [bs.rel_err(a, b) for a, b in zip(
            torch.autograd.grad(y, args, grad.float()), torch.autograd.grad(y_ref, ref_args, grad))]
        key = f'{height}x{width}_N{state_dim}_{str(dtype)[6:]}_whole_map_limit{tile}'
        key += '_nhwc' if channels_last else ''
        result['checks'][key] = errs
        print(f'check {key}: y {errs[0]:.1e} grads ' + ' '.join(f'{e:.1e}' for e in errs[1:]), flush=True)
    bandwidth = bs.measure_copy_bandwidth()
    result['copy_bandwidth_GBps'] = bandwidth

    def bench(fn, rep=40):
        return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode='median')

    for (dim, height, width, state_dim), layout in [(shape, layout) for shape in STAGE_SHAPES for layout in LAYOUTS]:
        if layout == 'nhwc' and state_dim > ss.RASTER_MAX_STATE_DIM:
            continue  # the chunked kernels copy a channel-last input to contiguous
        args = bs.make_inputs(dim, height, width, state_dim, torch.bfloat16, requires_grad=True,
                              channels_last=layout == 'nhwc')

        def forward():
            return kernels.multi_scan_2d(*args[:6], delta_bias=args[6], delta_softplus=True)

        row = {}
        for name, tile, vector in (('vector_row_walk_fwd_ms', 0, True), ('row_walk_fwd_ms', 0, False),
                                   ('whole_map_fwd_ms', 1 << 20, False)):
            if state_dim > ss.RASTER_MAX_STATE_DIM or (layout == 'nhwc' and name.startswith('whole')):
                break  # the chunked kernels run
            if name.startswith('whole') and height >= 28:
                continue  # 1 to 6 ms on the larger maps (first measurement, benchmarks/results/README.md)
            if vector and layout == 'nhwc':
                continue  # the vectorised walk reads NCHW maps only
            set_whole_map_limit(ss, tile)
            ss.VECTOR_ROW_WALK = vector
            with torch.no_grad():
                row[name] = bench(forward)
            if vector and state_dim == 1 and args_cli.sweep:
                default_lanes = ss.VECTOR_WALK_LANES
                for lanes, channels in VECTOR_SWEEP:
                    ss.VECTOR_WALK_LANES, ss.VECTOR_WALK_CHANNELS = lanes, channels
                    with torch.no_grad():
                        row[f'vector_row_walk_fwd_ms_lanes{lanes}_channels{channels}'] = bench(forward)
                ss.VECTOR_WALK_LANES, ss.VECTOR_WALK_CHANNELS = default_lanes, None
        ss.VECTOR_ROW_WALK = True
        ss.WHOLE_MAP_FWD_MAX_TILE, ss.WHOLE_MAP_BWD_MAX_TILE, ss.ROW_WALK_BACKWARD = defaults
        grad = torch.randn(bs.BATCH, dim, height, width, device='cuda')
        if layout == 'nhwc':
            grad = grad.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            row['default_fwd_ms'] = bench(forward)
        row['default_fwd_bwd_ms'] = bench(lambda: forward().backward(grad), rep=30)
        if state_dim <= ss.RASTER_MAX_STATE_DIM:  # the row-walk backward, whatever the default dispatch
            set_whole_map_limit(ss, 0)
            ss.ROW_WALK_BACKWARD = True
            row['row_walk_fwd_bwd_ms'] = bench(lambda: forward().backward(grad), rep=30)
            ss.VECTOR_ROW_WALK_BWD = False
            row['aligned_row_walk_bwd_fwd_bwd_ms'] = bench(lambda: forward().backward(grad), rep=30)
            ss.VECTOR_ROW_WALK = ss.ROW_WALK_BWD_ALIGNED = False
            row['scalar_row_walk_fwd_bwd_ms'] = bench(lambda: forward().backward(grad), rep=30)
            ss.VECTOR_ROW_WALK = ss.ROW_WALK_BWD_ALIGNED = ss.VECTOR_ROW_WALK_BWD = True
            ss.ROW_WALK_BACKWARD = defaults[2]
            ss.WHOLE_MAP_FWD_MAX_TILE, ss.WHOLE_MAP_BWD_MAX_TILE = defaults[:2]
        row['floor_ms_fwd'] = bs.bytes_floor(dim, height, width, state_dim, 2, False) / bandwidth / 1e6
        row['floor_ms_fwd_bwd'] = bs.bytes_floor(dim, height, width, state_dim, 2, True) / bandwidth / 1e6
        row['row_walk_config'] = str(getattr(ss._raster_rows_fwd_kernel, 'best_config', None))
        key = f'D{dim}_{height}x{width}_N{state_dim}' + ('_nhwc' if layout == 'nhwc' else '')
        result['timings'][key] = row
        print(key, ' '.join(f'{k} {v:.3f}' for k, v in row.items() if isinstance(v, float)), flush=True)
        for a in args:
            a.grad = None
        torch.cuda.empty_cache()
    if args_cli.sweep:
        result['sweep_ms'] = sweep_row_walk(kernels, ss, bench, args_cli.sweep)
    result['wall_s'] = time.time() - start
    bs.write_result(result, args_cli.out, 'bench_raster')


if __name__ == '__main__':
    main()
