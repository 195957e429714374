"""``linear_act`` (kernels/fused_linear.py) against cuBLAS + PyTorch's GELU at VMamba-T's MLP shapes, bf16, B = 128.

Per stage (C channels, 4C hidden, B * H * W rows), ms of (``triton.testing.do_bench`` medians):

* fc1 + GELU: ``addmm`` on the cast weight, then ``F.gelu`` (the composite path; the weight casts not counted)
  against ``linear_act_forward(..., 'gelu', store_pre=True)``, which reads the float32 weight;
* fc2: ``addmm`` against ``linear_act_forward``;
* fc2's input gradient with GELU's derivative: ``mm`` then ``gelu_backward`` against ``linear_input_grad(..., 'gelu')``;
* fc1's input gradient: ``mm`` against ``linear_input_grad``;

with each kernel's bytes floor (its reads and writes once, at the measured copy bandwidth), the largest relative
difference of the Triton outputs from the composite ones, and the configuration the autotuner picked.

Usage: python benchmarks/bench_fused_linear.py [--out OUT.json]
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402

STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))  # VMamba-T: channels, map side
BATCH = 128


def rel_diff(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    from triton.testing import do_bench
    from vmamba_zoo.kernels import fused_linear as fl
    bandwidth = bs.measure_copy_bandwidth()
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'copy_bandwidth_gb_s': round(bandwidth, 1), 'batch': BATCH, 'stages': []}
    bf16 = torch.bfloat16
    for channels, side in STAGES:
        rows, hidden_dim = BATCH * side * side, 4 * channels
        x = torch.randn(rows, channels, device='cuda', dtype=bf16)
        w1 = torch.randn(hidden_dim, channels, device='cuda') * channels ** -0.5
        b1 = torch.randn(hidden_dim, device='cuda') * 0.1
        w2 = torch.randn(channels, hidden_dim, device='cuda') * hidden_dim ** -0.5
        b2 = torch.randn(channels, device='cuda') * 0.1
        w1h, b1h, w2h, b2h = w1.to(bf16), b1.to(bf16), w2.to(bf16), b2.to(bf16)
        grad = torch.randn(rows, channels, device='cuda', dtype=bf16)
        pre = torch.addmm(b1h, x, w1h.t())
        act = F.gelu(pre)
        dhidden = torch.randn(rows, hidden_dim, device='cuda', dtype=bf16)

        def floor_ms(*tensors):
            return sum(t.numel() * t.element_size() for t in tensors) / bandwidth / 1e6

        cases = {
            'fc1_gelu': (lambda: F.gelu(torch.addmm(b1h, x, w1h.t())),
                         lambda: fl.linear_act_forward(x, w1, b1, 'gelu', store_pre=True),
                         floor_ms(x, pre, act)),
            'fc2': (lambda: torch.addmm(b2h, act, w2h.t()), lambda: fl.linear_act_forward(act, w2, b2),
                    floor_ms(act, grad)),
            'fc2_input_grad_gelu': (lambda: torch.ops.aten.gelu_backward(grad.mm(w2h), pre),
                                    lambda: fl.linear_input_grad(grad, w2, pre, 'gelu'), floor_ms(grad, pre, act)),
            'fc1_input_grad': (lambda: dhidden.mm(w1h), lambda: fl.linear_input_grad(dhidden, w1),
                               floor_ms(dhidden, x)),
        }
        row = {'channels': channels, 'side': side, 'rows': rows}
        for name, (composite, fused, floor) in cases.items():
            reference = composite()
            tested = fused()
            tested = tested[0] if isinstance(tested, tuple) else tested
            row[name] = dict(composite_ms=round(do_bench(composite, warmup=10, rep=60), 4),
                             triton_ms=round(do_bench(fused, warmup=10, rep=60), 4), floor_ms=round(floor, 4),
                             rel_diff=rel_diff(tested, reference))
            print(channels, name, row[name], flush=True)
        result['stages'].append(row)
    kernel = fl._linear_act_kernel
    result['autotuned'] = {str(key): str(config) for key, config in getattr(kernel, 'cache', {}).items()}
    bs.write_result(result, args.out, 'bench_fused_linear')


if __name__ == '__main__':
    main()
