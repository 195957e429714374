"""GPU evidence for the two-layout SiLU (``kernels/silu_layouts.py``) at VMamba-T's stage shapes, B = 128, bf16.

Per stage (C, H, W): the forward (``silu_dual_layout_forward``) against what the SS2D branch ran before it
(``F.silu`` on the channel-last conv output, then ``contiguous()`` for the scan), and the backward
(``silu_dual_layout_backward`` of the GEMM's channel-last bf16 gradient and the scan's NCHW float32 gradient)
against the ops it replaced (the scan gradient cast and transposed, added to the GEMM's, then ``silu_backward``),
with the bytes floor of each at the measured copy bandwidth. First it checks both against the PyTorch ops.

Usage: python benchmarks/bench_silu_layouts.py [--out OUT.json]
"""
import argparse
import datetime
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402
from bench_layer_norm import BATCH, STAGES  # noqa: E402  (VMamba-T's stages at batch 128)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    import triton
    import triton.testing
    bs.import_kernels()
    from vmamba_zoo.kernels import silu_dual_layout_backward, silu_dual_layout_forward
    result = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                  gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, batch=BATCH,
                  copy_bandwidth_GBps=bs.measure_copy_bandwidth(), stages={})

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode='median')

    for channels, height, width in STAGES:
        shape = (BATCH, channels, height, width)
        conv = torch.randn(shape, device='cuda', dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        d_rows = torch.randn(shape, device='cuda', dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        d_scan = torch.randn(shape, device='cuda')

        def before_fwd():
            y = F.silu(conv)
            return y, y.contiguous()

        def before_bwd():
            return torch.ops.aten.silu_backward(d_rows + d_scan.to(torch.bfloat16), conv)

        y, y_cf = silu_dual_layout_forward(conv)
        y_ref, y_cf_ref = before_fwd()
        dx = silu_dual_layout_backward(conv, d_rows, d_scan)
        dx_ref = torch.ops.aten.silu_backward(d_rows.float() + d_scan, conv.float())
        row = dict(fwd_max_abs_diff=max((y.float() - y_ref.float()).abs().max().item(),
                                        (y_cf.float() - y_cf_ref.float()).abs().max().item()),
                   bwd_rel_err=bs.rel_err(dx, dx_ref), bwd_before_rel_err=bs.rel_err(before_bwd(), dx_ref))
        row['ours_fwd_ms'] = bench(lambda: silu_dual_layout_forward(conv))
        row['before_fwd_ms'] = bench(before_fwd)
        row['ours_bwd_ms'] = bench(lambda: silu_dual_layout_backward(conv, d_rows, d_scan))
        row['before_bwd_ms'] = bench(before_bwd)
        elements = conv.numel()
        bandwidth = result['copy_bandwidth_GBps']
        row['floor_fwd_ms'] = elements * (2 + 2 + 2) / bandwidth / 1e6  # read x, write both layouts
        row['floor_bwd_ms'] = elements * (2 + 2 + 4 + 2) / bandwidth / 1e6  # read x and both gradients, write dx
        key = f'C{channels}_{height}x{width}'
        result['stages'][key] = row
        print(key, ' '.join(f'{k} {v:.3g}' for k, v in row.items()), flush=True)
    bs.write_result(result, args.out, 'bench_silu_layouts')


if __name__ == '__main__':
    main()
