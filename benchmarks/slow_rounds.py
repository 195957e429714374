"""Where VMamba-T's slow periods go: device-side or host-side, and in which code.

Earlier interleaved runs (``ab_nodes.py``) found rounds in which VMamba-T[s1l8]'s bf16 inference step took 20-25 ms
instead of 15 ms, with the host's issue time equal to the step time, while ConvNeXt-T's rounds in between stayed
within 1 %. Two explanations fit those numbers: the host computes more slowly, or the device runs our kernels more
slowly and the host spins in the driver on a full launch queue. This script tells them apart, in two phases over the
same interleaved rounds (VMamba-T, then ConvNeXt-T; bf16 inference, then bf16 training with SGD, at batch 128).
The host-stack phase runs first: once the profiler has run, its CUPTI callbacks stay active in the process and slow
the host (2026-11-30 run 1).

1. **Host stacks.** The rounds run unprofiled while py-spy samples the process, one recording per round. Per round:
   step and issue ms, the main thread's CPU and that CPU's clock, and the most frequent innermost native frames and
   innermost Python frames of the samples taken inside the round's steps. By default py-spy samples Python stacks
   without stopping the process (``--nonblocking``); ``--native`` adds native frames, but py-spy then stops the
   process for every sample, which slowed it about 50-fold in run 1.
2. **Device trace.** The rounds run under ``torch.profiler`` (CUDA activity only). A spin kernel
   (``torch.cuda._sleep``) launched before each step marks the step's boundary in the device trace. Per step: the
   device time between markers, the sum of kernel durations in it (the rest is idle device time), the kernel count,
   and the host's issue time. Per round: the mean of those and each kernel's ms per step, and the kernels whose time
   changed most between the model's fastest and slowest round.

Usage: python benchmarks/slow_rounds.py [--rounds 4] [--pyspy-rounds 6] [--native] [--out OUT.json]
"""
import argparse
import collections
import ctypes
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402

MODELS = ('vmamba_tiny_s1l8', 'convnext_tiny')
MODES = (('infer_bf16', 20), ('train_bf16', 8))
MARKER = 'spin_kernel'


def main_thread_cpu() -> dict:
    """The CPU the calling thread last ran on, and that CPU's current clock in MHz where the kernel exposes it."""
    fields = Path('/proc/thread-self/stat').read_text().rsplit(')', 1)[1].split()
    cpu = int(fields[36])
    try:
        khz = int(Path(f'/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq').read_text())
        return {'cpu': cpu, 'mhz': khz / 1e3}
    except OSError:
        return {'cpu': cpu, 'mhz': None}


def run_round(step, iters: int, mark: bool) -> dict:
    """Run ``iters`` steps after one warm step; host issue ms per step, and ms per step between CUDA events."""
    step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    issue = []
    thread_before = time.thread_time()
    start.record()
    for _ in range(iters):
        begin = time.perf_counter()
        if mark:
            torch.cuda._sleep(1000)
        step()
        issue.append((time.perf_counter() - begin) * 1e3)
    end.record()
    thread_ms = (time.thread_time() - thread_before) * 1e3 / iters
    torch.cuda.synchronize()
    return {'step_ms': start.elapsed_time(end) / iters, 'issue_ms': statistics.mean(issue),
            'issue_ms_per_step': [round(x, 2) for x in issue], 'thread_cpu_ms': thread_ms, **main_thread_cpu()}


def device_steps(trace_path: Path) -> list:
    """The profiler trace's kernels split at the marker kernels: one dict per step, in launch order."""
    events = json.loads(trace_path.read_text())['traceEvents']
    kernels = sorted((e for e in events if e.get('cat') == 'kernel'), key=lambda e: e['ts'])
    steps, current = [], None
    for kernel in kernels:
        if MARKER in kernel['name']:
            if current is not None:
                current['span_us'] = kernel['ts'] - current['start']
                steps.append(current)
            current = {'start': kernel['ts'] + kernel['dur'], 'busy_us': 0.0, 'count': 0,
                       'by_kernel': collections.Counter()}
        elif current is not None:
            current['busy_us'] += kernel['dur']
            current['count'] += 1
            current['by_kernel'][kernel['name'][:100]] += kernel['dur']
            current['end'] = kernel['ts'] + kernel['dur']
    if current is not None and 'end' in current:
        current['span_us'] = current['end'] - current['start']
        steps.append(current)
    return steps


def profiled_phase(models, all_steps, rounds: int) -> list:
    """Phase 2: interleaved rounds under the profiler, with each step's device span and busy time."""
    from torch.profiler import ProfilerActivity, profile
    order = []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for round_index in range(rounds):
            for name in MODELS:
                for mode, iters in MODES:
                    models[name].train(mode == 'train_bf16')
                    step = all_steps[name][mode]
                    row = run_round(step, iters, mark=True)
                    # the warm step before the round carries no marker, so it joins the previous round's last step
                    row.update(round=round_index, model=name, mode=mode, iters=iters)
                    order.append(row)
                    print(f"profiled round {round_index} {name} {mode}: {row['step_ms']:.2f} ms, issue "
                          f"{row['issue_ms']:.2f}, thread CPU {row['thread_cpu_ms']:.2f}", flush=True)
        torch.cuda._sleep(1000)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / 'trace.json'
        prof.export_chrome_trace(str(trace))
        steps = device_steps(trace)
    expected = sum(row['iters'] for row in order)
    print(f'device trace: {len(steps)} marked steps (expected {expected})', flush=True)
    cursor = 0
    for row in order:
        mine = steps[cursor:cursor + row['iters']]
        cursor += row['iters']
        # the last step of a round also holds the next round's unmarked warm step, so it is left out
        body = mine[:-1] if len(mine) > 1 else mine
        row['device_span_ms'] = statistics.mean(s['span_us'] for s in body) / 1e3
        row['device_busy_ms'] = statistics.mean(s['busy_us'] for s in body) / 1e3
        row['kernels_per_step'] = statistics.mean(s['count'] for s in body)
        total = collections.Counter()
        for s in body:
            total.update(s['by_kernel'])
        row['kernel_ms_per_step'] = {k: v / 1e3 / len(body) for k, v in total.most_common()}
        print(f"round {row['round']} {row['model']} {row['mode']}: device span {row['device_span_ms']:.2f} ms, "
              f"busy {row['device_busy_ms']:.2f} ms, {row['kernels_per_step']:.0f} kernels", flush=True)
    return order


def changed_kernels(rows: list) -> dict:
    """Per model and mode: the kernels whose ms per step differ most between the slowest and fastest round."""
    out = {}
    for name in MODELS:
        for mode, _ in MODES:
            mine = [r for r in rows if r['model'] == name and r['mode'] == mode]
            fast, slow = min(mine, key=lambda r: r['step_ms']), max(mine, key=lambda r: r['step_ms'])
            names = set(fast['kernel_ms_per_step']) | set(slow['kernel_ms_per_step'])
            delta = {k: slow['kernel_ms_per_step'].get(k, 0.0) - fast['kernel_ms_per_step'].get(k, 0.0)
                     for k in names}
            out[f'{name}/{mode}'] = {
                'fast_round': fast['round'], 'slow_round': slow['round'],
                'fast': {k: fast[k] for k in ('step_ms', 'issue_ms', 'device_span_ms', 'device_busy_ms')},
                'slow': {k: slow[k] for k in ('step_ms', 'issue_ms', 'device_span_ms', 'device_busy_ms')},
                'kernel_delta_ms': dict(sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:12])}
    return out


def allow_tracing_by_children():
    """Let a child process (py-spy) attach to this one under Yama's ptrace_scope 1."""
    try:
        ctypes.CDLL(None).prctl(0x59616d61, ctypes.c_ulong(-1), 0, 0, 0)  # PR_SET_PTRACER, PR_SET_PTRACER_ANY
    except (OSError, AttributeError):
        pass


def summarise_stacks(raw: Path, marker: str = 'run_round', top: int = 15) -> dict:
    """Per thread kind (the main thread inside ``marker``; any other busy thread, such as autograd's device thread):
    the sample count, the libraries of the innermost frames, and the most frequent innermost frames (native ones
    with ``--native``) and innermost Python frames. py-spy leaves idle threads out, so the main thread's sleep
    between recordings does not count."""
    kinds = {kind: {'samples': 0, 'native': collections.Counter(), 'python': collections.Counter(),
                    'library': collections.Counter()} for kind in ('main', 'other')}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(' ')
        if not count.isdigit():
            continue
        frames, count = stack.split(';'), int(count)
        if marker not in stack and 'MainThread' in frames[0]:
            continue
        kind = kinds['main' if marker in stack else 'other']
        kind['library'][frames[-1].rpartition('(')[2].rstrip(')')] += count
        kind['samples'] += count
        kind['native'][frames[-1][:120]] += count
        python = [f for f in frames if '.py:' in f]
        if python:
            kind['python'][python[-1][:120]] += count
    return {kind: {'samples': v['samples'], 'leaf_libraries': dict(v['library'].most_common(8)),
                   'native_leaves': dict(v['native'].most_common(top)),
                   'python_leaves': dict(v['python'].most_common(top))} for kind, v in kinds.items()}


def sampled_phase(models, all_steps, rounds: int, rate: int, native: bool) -> dict:
    """Phase 1: interleaved rounds, unprofiled, each sampled by its own py-spy recording."""
    pyspy = shutil.which('py-spy')
    if pyspy is None:
        return {'error': 'py-spy not found'}
    allow_tracing_by_children()
    out = {'rows': []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for name in MODELS:
                for mode, iters in MODES:
                    models[name].train(mode == 'train_bf16')
                    raw = Path(tmp) / f'{round_index}_{name}_{mode}.txt'
                    recorder = subprocess.Popen(
                        [pyspy, 'record', '--pid', str(os.getpid()), '--native' if native else '--nonblocking',
                         '--threads', '--rate', str(rate), '--format', 'raw', '--output', str(raw)],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    time.sleep(1.5)
                    row = run_round(all_steps[name][mode], iters * 2, mark=False)
                    recorder.send_signal(signal.SIGINT)
                    try:
                        log = recorder.communicate(timeout=60)[0]
                    except subprocess.TimeoutExpired:
                        recorder.kill()
                        log = 'py-spy did not stop'
                    row.update(round=round_index, model=name, mode=mode)
                    row['stacks'] = summarise_stacks(raw) if raw.exists() else {'error': log[-2000:]}
                    out['rows'].append(row)
                    main_stacks = row['stacks'].get('main', {})
                    top = list(main_stacks.get('native_leaves', {}).items())[:3]
                    print(f"sampled round {round_index} {name} {mode}: {row['step_ms']:.2f} ms, issue "
                          f"{row['issue_ms']:.2f}, thread CPU {row['thread_cpu_ms']:.2f}, cpu {row['cpu']} "
                          f"{row['mhz']} MHz, main samples {main_stacks.get('samples')}, other samples "
                          f"{row['stacks'].get('other', {}).get('samples')}, top {top}", flush=True)
                    if 'error' in row['stacks']:
                        print(row['stacks']['error'], flush=True)
                        return out
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=4)
    parser.add_argument('--pyspy-rounds', type=int, default=6)
    parser.add_argument('--rate', type=int, default=200, help='py-spy samples per second')
    parser.add_argument('--native', action='store_true',
                        help='py-spy with native frames (stops the process for every sample)')
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.backends.cudnn.benchmark = True
    scope = Path('/proc/sys/kernel/yama/ptrace_scope')
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'host_cpus': os.cpu_count(), 'ptrace_scope': scope.read_text().strip() if scope.exists() else None}
    images = torch.randn(bl.BATCH, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (bl.BATCH,), device='cuda')
    models, all_steps = {}, {}
    for name in MODELS:
        models[name] = timm.create_model(name, drop_path_rate=0.0).cuda()
        infer, _, train = bl.steps(models[name], images, target)
        all_steps[name] = {'infer_bf16': infer, 'train_bf16': train}
        for mode, step in all_steps[name].items():
            models[name].train(mode == 'train_bf16')
            for _ in range(3):
                step()
    torch.cuda.synchronize()
    result['sampled'] = sampled_phase(models, all_steps, args.pyspy_rounds, args.rate, args.native)
    rows = profiled_phase(models, all_steps, args.rounds)
    result['profiled_rounds'] = [{k: v for k, v in r.items() if k != 'kernel_ms_per_step'} for r in rows]
    result['profiled_top_kernels'] = {f"{r['round']}/{r['model']}/{r['mode']}": dict(
        list(r['kernel_ms_per_step'].items())[:25]) for r in rows}
    result['changed_kernels'] = changed_kernels(rows)
    print(json.dumps(result['changed_kernels'], indent=1), flush=True)
    bs.write_result(result, args.out, 'slow_rounds')


if __name__ == '__main__':
    main()
