"""What Triton's autotuners do in a model's first steps: per autotuned kernel and key, the configurations timed, their
times, the pick and the seconds spent compiling and timing them; and the wall time of the first and second steps.

On a fresh machine (an empty Triton cache) VMamba-T[s1l8]'s first bf16 training step at batch 128 took 74.6 s on
the H200 (2026-11-30 headline run). This tells how much of that the autotuners' candidates cost, and which candidate
wins at each stage in the model (where the scan's inputs have the model's layouts), to fix one program per stage.

Usage: python benchmarks/autotune_picks.py [--model vmamba_tiny_s1l8] [--batch 128] [--out OUT.json]
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402


def watch_autotuners(modules) -> list:
    """Wrap every autotuner in ``modules`` so that each newly tuned key is logged."""
    from triton.runtime.autotuner import Autotuner
    log = []
    for module in modules:
        for name, kernel in vars(module).items():
            if not isinstance(kernel, Autotuner):
                continue

            def run(*args, _kernel=kernel, _name=name, _run=kernel.run, **kwargs):
                before = set(_kernel.cache)
                start = time.perf_counter()
                out = _run(*args, **kwargs)
                for key in set(_kernel.cache) - before:
                    timings = getattr(_kernel, 'configs_timings', None) or {}
                    log.append({'kernel': _name, 'key': [str(k) for k in key], 'pick': str(_kernel.cache[key]),
                                'timings_ms': {str(c): [round(float(t), 4) for t in (v if isinstance(v, list) else [v])]
                                               for c, v in timings.items()},
                                'seconds': round(time.perf_counter() - start, 2)})
                    print(log[-1], flush=True)
                return out
            kernel.run = run
    return log


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='vmamba_tiny_s1l8')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.kernels import layer_norm, selective_scan, silu_layouts
    torch.backends.cudnn.benchmark = True
    log = watch_autotuners((selective_scan, layer_norm, silu_layouts))
    model = timm.create_model(args.model, drop_path_rate=0.0).cuda().train()
    images = torch.randn(args.batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (args.batch,), device='cuda')
    _, _, train = bl.steps(model, images, target)
    steps_s = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        train()
        torch.cuda.synchronize()
        steps_s.append(round(time.perf_counter() - start, 3))
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'model': args.model, 'batch': args.batch, 'first_training_steps_s': steps_s, 'autotuned': log,
              'autotune_seconds': round(sum(entry['seconds'] for entry in log), 2)}
    print('training steps (s):', steps_s, 'of which autotuning', result['autotune_seconds'], flush=True)
    bs.write_result(result, args.out, 'autotune_picks')


if __name__ == '__main__':
    main()
