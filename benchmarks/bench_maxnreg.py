"""Row-walk kernels with their registers capped: more resident programs per SM against spills, in VMamba-T's step.

The row-walk backward's programs are one warp each and use 96 / 105 / 80 / 80 registers per thread at VMamba-T's four
stages (sm_90, ``benchmarks/sass_counts.py``), which lets 21 / 19 / 25 / 25 of them reside on an SM. Cutting its
SASS instructions per row by 8-12 % left its time unchanged on the H200 (2026-11-30), so issue is not its limit;
more resident warps may hide more of its serial chains' latency. Compiled on the CPU machine, a cap of 80 registers
spills 56 / 40 / 0 / 0 bytes and a cap of 64 spills 360 / 260 / 28 / 24 bytes
(``sass_counts.py --kernel bwd --layout nchw --maxnreg N``).

For each cap (``None`` = the compiler's choice) this recompiles the row-walk kernel's fixed programs with Triton's
``maxnreg`` option, runs bf16 training steps of VMamba-T at batch 128, and reports the kernel's GPU time per stage
(profiler, the step's calls in launch order mapped to the blocks) and the gradients' largest relative difference to
the first cap's, with a repeat of the first cap as the floor (the backward's atomics sum in no fixed order). Caps are
interleaved over ``--rounds`` rounds. The backward runs capped at ``ROW_WALK_BWD_MAX_REGISTERS`` = 80 since this
benchmark's first run (2026-11-30: 11.21 against 11.81 ms per training step).

Usage: python benchmarks/bench_maxnreg.py [--kernel bwd|fwd] [--caps none 80 64] [--rounds 2] [--out OUT.json]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402

KERNELS = {'bwd': '_raster_rows_bwd_kernel', 'fwd': '_raster_rows_fwd_kernel'}


def set_register_cap(ss, kernel_name: str, original_configs, cap):
    """Give the autotuned kernel ``original_configs`` with ``maxnreg=cap`` and forget every compiled pick. The
    backward's programs carry their own cap (``ROW_WALK_BWD_MAX_REGISTERS``), which is set to ``cap`` too."""
    import triton
    if kernel_name == KERNELS['bwd']:
        ss.ROW_WALK_BWD_MAX_REGISTERS = cap
    tuner = getattr(ss, kernel_name)
    tuner.configs = [triton.Config(dict(config.kwargs), num_warps=config.num_warps, num_stages=config.num_stages,
                                   maxnreg=cap) for config in original_configs]
    tuner.cache.clear()
    ss._LAUNCH[kernel_name]._compiled.clear()


def stage_times(step, kernel_name: str, depths) -> list:
    """ms of ``kernel_name`` per call, averaged per stage, from one profiled step. The backward visits the blocks in
    reverse order, the forward in order."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    calls = sorted((event.time_range.start, event.device_time / 1e3) for event in prof.events()
                   if event.device_type == torch.autograd.DeviceType.CUDA and event.name == kernel_name)
    stages = [stage for stage, depth in enumerate(depths) for _ in range(depth)]
    if kernel_name.endswith('_bwd_kernel'):
        stages = stages[::-1]
    if len(calls) != len(stages):
        return [None] * len(depths)
    per_stage = [[ms for (_, ms), stage in zip(calls, stages) if stage == s] for s in range(len(depths))]
    return [round(statistics.mean(times), 4) for times in per_stage]


def gradients(model, images, target):
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images), target)
    loss.backward()
    return {name: p.grad.detach().float().clone() for name, p in model.named_parameters() if p.grad is not None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kernel', choices=sorted(KERNELS), default='bwd')
    parser.add_argument('--caps', nargs='+', default=['none', '80', '64'])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.kernels import selective_scan as ss
    kernel_name = KERNELS[args.kernel]
    original = list(getattr(ss, kernel_name).configs)
    default_cap = ss.ROW_WALK_BWD_MAX_REGISTERS
    caps = [None if cap == 'none' else int(cap) for cap in args.caps]
    torch.manual_seed(0)
    model = timm.create_model('vmamba_tiny_s1l8', drop_path_rate=0.0).cuda().train()
    depths = [len(stage.blocks) for stage in model.stages]
    images = torch.randn(args.batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    _, _, train = bl.steps(model, images, target)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    reference = None
    rows = {str(cap): dict(stage_ms=[], kernel_ms_per_step=[], step_ms=[]) for cap in caps}
    for round_index in range(args.rounds):
        for cap in caps:
            set_register_cap(ss, kernel_name, original, cap)
            start = time.perf_counter()
            train()  # compiles the capped programs
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
            row = rows[str(cap)]
            if round_index == 0:
                row['first_step_s'] = round(compile_s, 2)
                # Every cap's gradients at the initial weights (the training steps in between move them).
                current = {k: v.clone() for k, v in model.state_dict().items()}
                model.load_state_dict(initial)
                grads = gradients(model, images, target)
                model.load_state_dict(current)
                if reference is None:
                    reference = grads
                    # The backward sums dB, dC, dA and the biases' gradients with atomics, in no fixed order, so two
                    # runs of one kernel differ too: this is the floor for the caps' differences.
                    model.load_state_dict(initial)
                    repeat = gradients(model, images, target)
                    model.load_state_dict(current)
                    rows[str(cap)]['repeat_max_rel_grad_diff'] = max(
                        ((repeat[k] - grads[k]).norm() / grads[k].norm().clamp_min(1e-30)).item() for k in grads)
                row['max_rel_grad_diff'] = max(
                    ((grads[k] - reference[k]).norm() / reference[k].norm().clamp_min(1e-30)).item() for k in reference)
            row['step_ms'].append(round(bl.timed_ms(train, 10, warm=2), 3))
            row['stage_ms'].append(stage_times(train, kernel_name, depths))
            per_stage = row['stage_ms'][-1]
            row['kernel_ms_per_step'].append(None if None in per_stage else
                                             round(sum(ms * d for ms, d in zip(per_stage, depths)), 3))
            print(f'round {round_index} maxnreg={cap}: {kernel_name} ms per call by stage {per_stage}, '
                  f'{row["kernel_ms_per_step"][-1]} ms per step; step {row["step_ms"][-1]} ms', flush=True)
    set_register_cap(ss, kernel_name, original, None)
    ss.ROW_WALK_BWD_MAX_REGISTERS = default_cap
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'batch': args.batch, 'kernel': kernel_name, 'depths': depths, 'caps': rows}
    bs.write_result(result, args.out, 'bench_maxnreg')


if __name__ == '__main__':
    main()
