"""What the host pays per call, and where a host-bound training step's time goes, on the GPU machine's host.

An eager VMamba-T training step at batch 128 costs the lent H200 machine's host about as much time as its kernels take
on the GPU (2026-11-30 sessions), so the host decides the step time. This measures, in one process:

1. **Per-call host cost** of the operators such a step is made of, on tensors small enough that the GPU keeps up: a
   view (the dispatcher's floor), an elementwise add, a weight cast, the GEMMs (``mm``, ``mm`` writing float32,
   ``addmm``, ``F.linear`` under autocast as timm models call it), the depthwise convolution and its backward, GELU
   and its backward, the zoo's LayerNorm launched through ``CachedLaunch``, and an ``autograd.Function``'s
   ``apply``. Median of 5 repeats of 300 calls, µs per call from ``time.perf_counter``.
2. **Host ms per step** at ``--batch`` (8: the GPU finishes every kernel before the host issues the next), bf16
   training and inference, for each model: the median of 5 rounds of 20 steps, and the main thread's CPU time.
3. **Sampled stacks** (``--pyspy``): py-spy samples VMamba-T's training steps without stopping the process; per
   thread kind (the main thread, others such as the autograd engine's), the innermost Python frames by samples.
   With ``--blocks``, also per block: host µs of a training forward and of forward + backward of VMamba-T's
   first block (SS2D branch and MLP) and ConvNeXt-T's, and py-spy's innermost frames over a loop of VMamba-T block
   steps, which resolves our nodes' lines with many more samples than whole model steps.
4. **Profiled step**, last (the profiler's callbacks slow the host for the rest of the process): one training step
   of each model under ``torch.profiler`` (CPU and CUDA activity); the host operators and CUDA runtime/driver calls
   by self CPU time and count, which gives the launch calls' own cost.

Usage: python benchmarks/host_costs.py [--batch 8] [--pyspy] [--blocks] [--out OUT.json] [MODEL ...]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402


def per_call_us(call, calls: int = 300, repeats: int = 5) -> float:
    """Median over ``repeats`` of the host µs per call of ``call`` (the GPU is synchronised between repeats only)."""
    for _ in range(20):
        call()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        samples.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return round(statistics.median(samples), 2)


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def op_costs() -> dict:
    """Host µs per call of the operators a VMamba-T / ConvNeXt-T training step is made of (stage-1 widths, 512 rows:
    a few µs of GPU work each)."""
    from vmamba_zoo.kernels import layer_norm_forward
    from vmamba_zoo.layers.mlp import bias_grad_float32, mm_float32
    cuda, bf16 = 'cuda', torch.bfloat16
    rows, dim = 512, 96
    x16 = torch.randn(rows, dim, device=cuda, dtype=bf16)
    w32 = torch.randn(4 * dim, dim, device=cuda)
    w16 = w32.to(bf16)
    b32 = torch.randn(4 * dim, device=cuda)
    b16 = b32.to(bf16)
    h16 = torch.randn(rows, 4 * dim, device=cuda, dtype=bf16)
    x3d = torch.randn(2, rows // 2, dim, device=cuda)
    ln_w, ln_b = torch.ones(dim, device=cuda), torch.zeros(dim, device=cuda)
    image = torch.randn(2, dim, 16, 16, device=cuda, dtype=bf16)
    dw16 = torch.randn(dim, 1, 3, 3, device=cuda, dtype=bf16)
    conv_out = F.conv2d(image, dw16, padding=1, groups=dim)
    grad_leaf = torch.randn(rows, dim, device=cuda, requires_grad=True)
    costs = {
        'view (no kernel)': lambda: x16.view(-1),
        'torch.empty': lambda: torch.empty(rows, dim, device=cuda, dtype=bf16),
        'add bf16': lambda: x16 + x16,
        'weight cast fp32->bf16': lambda: w32.to(bf16),
        'mm bf16': lambda: torch.mm(x16, w16.t()),
        'mm bf16 -> fp32 (mm_float32)': lambda: mm_float32(h16.t(), x16),
        'bias grad GEMV (bias_grad_float32)': lambda: bias_grad_float32(h16),
        'addmm bf16': lambda: torch.addmm(b16, x16, w16.t()),
        'F.linear fp32 weight under autocast (timm)': lambda: _autocast(lambda: F.linear(x3d, w32, b32)),
        'depthwise conv2d bf16': lambda: F.conv2d(image, dw16, padding=1, groups=dim),
        'depthwise convolution_backward bf16': lambda: torch.ops.aten.convolution_backward(
            conv_out, image, dw16, [dim], [1, 1], [1, 1], [1, 1], False, [0, 0], dim, [True, True, True]),
        'gelu bf16': lambda: F.gelu(h16),
        'gelu_backward bf16': lambda: torch.ops.aten.gelu_backward(h16, h16),
        'zoo LayerNorm forward (CachedLaunch)': lambda: layer_norm_forward(x16, ln_w, ln_b, 1e-6, bf16),
        'autograd.Function apply': lambda: _Identity.apply(grad_leaf),
        'F.layer_norm fp32 under autocast (timm)': lambda: _autocast(lambda: F.layer_norm(x3d, (dim,), ln_w, ln_b)),
    }
    return {name: per_call_us(call) for name, call in costs.items()}


def _autocast(call):
    with torch.autocast('cuda', torch.bfloat16):
        return call()


def host_loop(step, iters: int) -> tuple:
    """ms per step (perf_counter, synchronised at the end) and the main thread's CPU ms per step."""
    torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters * 1e3, (time.thread_time() - cpu) / iters * 1e3


def step_costs(steps_of: dict, rounds: int = 5, iters: int = 20) -> dict:
    """Per model and mode: the median (and best) of ``rounds`` interleaved rounds of ``iters`` steps."""
    samples = {(name, mode): [] for name in steps_of for mode in steps_of[name]}
    for _ in range(rounds):
        for name, modes in steps_of.items():
            for mode, (model, step) in modes.items():
                model.train(mode == 'train_bf16')
                samples[name, mode].append(host_loop(step, iters))
    out = {}
    for (name, mode), rows in samples.items():
        ms = [row[0] for row in rows]
        out.setdefault(name, {})[mode] = dict(median_ms=round(statistics.median(ms), 2), best_ms=round(min(ms), 2),
                                              rounds_ms=[round(v, 2) for v in ms],
                                              thread_cpu_ms=round(statistics.median(row[1] for row in rows), 2))
    return out


def sampled_stacks(step, seconds: float, rate: int = 250, steps_per_round: int = 1) -> dict:
    """py-spy (``--nonblocking``) over ``seconds`` of steps: samples per innermost Python frame, per thread kind."""
    import slow_rounds
    pyspy = shutil.which('py-spy')
    if pyspy is None:
        return {'error': 'py-spy not found'}
    slow_rounds.allow_tracing_by_children()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / 'stacks.txt'
        recorder = subprocess.Popen([pyspy, 'record', '--pid', str(os.getpid()), '--nonblocking', '--threads',
                                     '--rate', str(rate), '--format', 'raw', '--output', str(raw)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        end = time.perf_counter() + seconds
        steps = 0
        while time.perf_counter() < end:
            run_round(step, steps_per_round)
            steps += steps_per_round
        recorder.send_signal(signal.SIGINT)
        log = recorder.communicate(timeout=60)[0]
        if not raw.exists():
            return {'error': log[-2000:]}
        summary = slow_rounds.summarise_stacks(raw, marker='run_round', top=60)
        summary['steps'] = steps
        return summary


def block_costs(batch: int, pyspy: bool) -> dict:
    """Host µs per training forward and per forward + backward of one block at stage 1, at ``batch``."""
    import timm
    out = {}
    for name in ('vmamba_tiny_s1l8', 'convnext_tiny'):
        model = timm.create_model(name, drop_path_rate=0.0).cuda().train()
        block = model.stages[0].blocks[0]
        shape = (batch, 56, 56, 96) if name.startswith('vmamba') else (batch, 96, 56, 56)
        x = torch.randn(shape, device='cuda', requires_grad=True)

        def forward():
            with torch.autocast('cuda', torch.bfloat16):
                return block(x)

        def step():
            forward().float().sum().backward()
        out[name] = dict(forward_us=per_call_us(forward, calls=100), step_us=per_call_us(step, calls=100))
        if pyspy and name.startswith('vmamba'):
            out[name]['pyspy'] = sampled_stacks(step, seconds=6.0, steps_per_round=20)
        print(name, {k: v for k, v in out[name].items() if k != 'pyspy'}, flush=True)
    return out


def run_round(step, steps: int = 1):
    """``steps`` steps; named so that the stack summary can tell the main thread's samples inside steps."""
    for _ in range(steps):
        step()
    torch.cuda.synchronize()


def profiled_step(step, rows: int = 30) -> dict:
    """Host operators and CUDA API calls of one step by self CPU time: ms, calls."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    table = sorted(((event.key, event.self_cpu_time_total / 1e3, event.count) for event in prof.key_averages()),
                   key=lambda row: -row[1])
    kernels = sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    launch = [row for row in table if 'LaunchKernel' in row[0] or row[0].startswith('cuLaunch')]
    return {'kernels': kernels, 'host_self_ms_total': round(sum(row[1] for row in table), 2),
            'launch_calls': {key: dict(ms=round(ms, 3), calls=count, us_per_call=round(ms * 1e3 / max(count, 1), 2))
                             for key, ms, count in launch},
            'top': {key[:90]: dict(ms=round(ms, 3), calls=count) for key, ms, count in table[:rows]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=['vmamba_tiny_s1l8', 'convnext_tiny'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--pyspy', action='store_true', help="sample the first model's training steps with py-spy")
    parser.add_argument('--blocks', action='store_true', help='also time (and with --pyspy sample) single blocks')
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.backends.cudnn.benchmark = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'batch': args.batch, 'host_cpus': os.cpu_count()}
    result['op_costs_us'] = op_costs()
    for name, us in result['op_costs_us'].items():
        print(f'{us:8.2f} us  {name}', flush=True)
    if args.blocks:
        result['blocks'] = block_costs(args.batch, args.pyspy)
    images = torch.randn(args.batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    steps_of = {}
    for name in args.models:
        model = timm.create_model(name, drop_path_rate=0.0).cuda()
        infer, _, train = bl.steps(model, images, target)
        steps_of[name] = {'train_bf16': (model, train), 'infer_bf16': (model, infer)}
        for mode, (_, step) in steps_of[name].items():
            model.train(mode == 'train_bf16')
            for _ in range(3):
                step()
    result['steps'] = step_costs(steps_of)
    for name, modes in result['steps'].items():
        print(name, modes, flush=True)
    if args.pyspy:
        model, train = steps_of[args.models[0]]['train_bf16']
        model.train()
        result['pyspy_train'] = sampled_stacks(train, seconds=8.0)
        for kind in ('main', 'other'):
            print(kind, result['pyspy_train'].get(kind, result['pyspy_train']), flush=True)
    result['profiled_train'] = {}
    for name, modes in steps_of.items():
        model, train = modes['train_bf16']
        model.train()
        result['profiled_train'][name] = profiled_step(train)
        print(name, 'kernels', result['profiled_train'][name]['kernels'], 'launch calls',
              result['profiled_train'][name]['launch_calls'], flush=True)
    bs.write_result(result, args.out, 'host_costs')


if __name__ == '__main__':
    main()
