#!/usr/bin/env python3
"""Inference and training throughput of zoo models next to timm peers (and the official VMamba), timm-style.

    # bf16 inference and training of every zoo model against three timm peers, on the GPU
    python tools/throughput.py --model zoo --compare convnext_tiny deit_small_patch16_224 \\
        --runs inference:bfloat16 train:bfloat16 --batch-size 128 --output-dir benchmarks/results --tag h200

    # the same with each step captured in a CUDA graph: the kernels without the host's time to issue them
    python tools/throughput.py --model vmamba_tiny_s1l8 --compare convnext_tiny --runs train:bfloat16 --cuda-graph

    # a quick CPU check (small defaults: batch 2, 64x64, 1 warm-up + 2 timed steps)
    python tools/throughput.py --model resnet18 --device cpu

Each (model, mode, AMP dtype, batch) is measured on a fresh model with random weights: warm-up steps, then timed
steps (CUDA events on GPU, perf_counter on CPU). After an out-of-memory error the batch is halved and retried.
Peak memory ("peak MiB", ``peak_memory_mib``) is that of the steps after the first; the first step's, which also
holds what compiling, autotuning and cuDNN's benchmark try once, is ``first_step_peak_memory_mib``.
Results go to JSON (with date, GPU, versions and all settings), CSV and a PNG of throughput against GFLOPs (from
``model_cards/index.json``, else counted) or params. fvcore is not needed unless FLOPs must be counted with it.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_DEFAULTS = dict(batch_size=[2], img_size=[64, 64], num_warm_iter=1, num_bench_iter=2, min_warm_s=0.0)
GPU_DEFAULTS = dict(batch_size=[256], img_size=None, num_warm_iter=10, num_bench_iter=40, min_warm_s=1.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    group = parser.add_argument_group('models')
    group.add_argument('--model', '-m', nargs='+', default=['zoo'],
                       help="model names or wildcards (timm or zoo); 'zoo' = every registered zoo model")
    group.add_argument('--compare', nargs='*', default=[], help='timm model names timed as peers in the same run')
    group.add_argument('--official-vmamba', default=None, metavar='PATH',
                       help='root of a MzeroMiko/VMamba checkout: also time its models (named official:<name>)')
    group.add_argument('--official-models', nargs='*', default=None,
                       help='official factory names (default: the --model names the official vmamba.py defines)')
    group.add_argument('--official-ext-dir', nargs='*', default=[],
                       help='folders holding the compiled official scan extensions (added to sys.path)')
    group.add_argument('--first', nargs='*', default=[],
                       help="measure these models (result names, e.g. official:vmamba_tiny_s1l8) before the others")
    group.add_argument('--order', default='config', choices=['config', 'model'],
                       help='loop order: every model per setting (config), or every setting per model (model)')
    group.add_argument('--skip-missing', action='store_true',
                       help='warn about and skip model names that are not registered (default: error)')
    group = parser.add_argument_group('settings')
    group.add_argument('--bench', nargs='+', default=['inference'], choices=['inference', 'train', 'both'],
                       help='modes to time (default: inference)')
    group.add_argument('--amp-dtype', nargs='+', default=['bfloat16'], choices=['float32', 'bfloat16', 'float16'],
                       help='autocast dtypes; float32 = no autocast (default: bfloat16)')
    group.add_argument('--runs', nargs='+', default=None, metavar='MODE:DTYPE',
                       help='explicit (mode, dtype) pairs, e.g. inference:bfloat16 inference:float32 train:bfloat16; '
                            'replaces the product of --bench and --amp-dtype')
    group.add_argument('--batch-size', '-b', type=int, nargs='+', default=None,
                       help='batch sizes to time (default: 256 on GPU, 2 on CPU)')
    group.add_argument('--min-batch-size', type=int, default=1, help='smallest batch tried after out-of-memory')
    group.add_argument('--img-size', type=int, nargs=2, default=None, metavar=('H', 'W'),
                       help="input size (default: each model's own on GPU, 64x64 on CPU)")
    group.add_argument('--num-warm-iter', type=int, default=None, help='warm-up steps (default: 10 GPU, 1 CPU)')
    group.add_argument('--min-warm-s', type=float, default=None,
                       help='warm up for at least this many seconds after the first step too (default: 1 GPU, 0 CPU)')
    group.add_argument('--num-bench-iter', type=int, default=None, help='timed steps (default: 40 GPU, 2 CPU)')
    group.add_argument('--train-num-warm-iter', type=int, default=None,
                       help='warm-up steps of training runs (default: --num-warm-iter)')
    group.add_argument('--train-num-bench-iter', type=int, default=None,
                       help='timed steps of training runs (default: --num-bench-iter)')
    group.add_argument('--time-budget-s', type=float, default=None,
                       help='start no new measurement after this many seconds (the rest are recorded as skipped)')
    group.add_argument('--channels-last', action='store_true', help='channels_last model and input')
    group.add_argument('--compile', action='store_true', help='torch.compile the model (off by default)')
    group.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune'")
    group.add_argument('--cuda-graph', action='store_true',
                       help='capture each step in a CUDA graph and time its replays: the kernels without the '
                            "host's issue time (CUDA only)")
    group.add_argument('--tf32', action=argparse.BooleanOptionalAction, default=True,
                       help='allow TF32 for float32 matmuls/convolutions (default: on)')
    group.add_argument('--opt', default='sgd', choices=['sgd', 'adamw'], help='optimizer of the training step')
    group.add_argument('--lr', type=float, default=1e-4)
    group.add_argument('--drop-path', type=float, default=None,
                       help="training drop-path rate for every model (default: each model's own)")
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--profile-steps', type=int, default=0, metavar='N',
                       help='after timing, profile N more steps and store the top kernels (CPU: operators) per row')
    group = parser.add_argument_group('output')
    group.add_argument('--output-dir', default=None, help='write <tag>.json, <tag>.csv and <tag>.png here')
    group.add_argument('--tag', default=None, help='file name stem in --output-dir (default: throughput-<device>)')
    group.add_argument('--results-json', default=None, help='JSON results path (overrides --output-dir)')
    group.add_argument('--results-csv', default=None, help='CSV results path (overrides --output-dir)')
    group.add_argument('--plot', default=None, help='PNG plot path (overrides --output-dir)')
    group.add_argument('--plot-x', default='gflops', choices=['gflops', 'params'], help='x axis of the plot')
    group.add_argument('--plot-from', default=None, metavar='JSON', help='only plot an existing results JSON')
    group.add_argument('--flops-index', default=str(REPO_ROOT / 'model_cards' / 'index.json'),
                       help='model-card index JSON with cached GFLOPs')
    group.add_argument('--no-flops', action='store_true', help='do not count GFLOPs of models missing from the index')
    group.add_argument('--progress', default='auto', choices=['auto', 'bar', 'lines', 'none'],
                       help='tqdm bar, one line per measurement, or nothing (auto: bar on a terminal, else lines)')
    group.add_argument('--no-progress', dest='progress', action='store_const', const='none', help='--progress none')
    args = parser.parse_args(argv)
    defaults = CPU_DEFAULTS if torch.device(args.device).type == 'cpu' else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def resolve_runs(args):
    """(mode, amp_dtype) pairs from --runs, else the product of --bench and --amp-dtype."""
    if args.runs:
        runs = []
        for item in args.runs:
            mode, _, dtype = item.partition(':')
            mode = {'infer': 'inference'}.get(mode, mode)
            if mode not in ('inference', 'train') or dtype not in ('float32', 'bfloat16', 'float16'):
                raise SystemExit(f"--runs: '{item}' is not MODE:DTYPE with MODE in inference/train and DTYPE in "
                                 'float32/bfloat16/float16')
            runs.append((mode, dtype))
        return runs
    modes = ['inference', 'train'] if 'both' in args.bench else list(dict.fromkeys(args.bench))
    return [(mode, dtype) for mode in modes for dtype in dict.fromkeys(args.amp_dtype)]


def resolve_model_names(patterns, skip_missing=False):
    """Expand 'zoo' and wildcards; unknown names are an error (a warning with ``skip_missing``)."""
    import timm
    from vmamba_zoo.utils.registry import list_zoo_models

    names = []
    for pattern in patterns:
        if pattern == 'zoo':
            found = list_zoo_models()
        elif timm.is_model(pattern):
            found = [pattern]
        else:
            found = timm.list_models(pattern)
        if not found:
            message = f"no model matches '{pattern}'" + (' (no zoo model is registered)' if pattern == 'zoo' else '')
            if not skip_missing:
                raise SystemExit(message)
            print(f'warning: {message}; skipped', file=sys.stderr)
        names.extend(name for name in found if name not in names)
    return names


class _Progress:
    """A tqdm bar over the measurements, or one line per measurement on stderr (logs, non-terminals)."""

    def __init__(self, total, style):
        self.bar, self.count, self.total = None, 0, total
        if style == 'auto':
            style = 'bar' if sys.stderr.isatty() else 'lines'
        if style == 'bar':
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                style = 'lines'
        self.style, self.label = style, ''

    def describe(self, text):
        self.label = text
        if self.bar is not None:
            self.bar.set_description(text)

    def note(self, text):
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        elif self.style == 'lines' and 'retrying' in text:
            print(f'    {self.label}: {text}', file=sys.stderr, flush=True)

    def advance(self, text):
        self.count += 1
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.update(1)
        elif self.style == 'lines':
            print(f'[{self.count}/{self.total}] {self.label}: {text}', file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def output_paths(args):
    stem = None
    if args.output_dir:
        tag = args.tag or f"throughput-{torch.device(args.device).type}"
        stem = Path(args.output_dir) / tag
    pick = lambda explicit, suffix: explicit or (str(stem.with_suffix(suffix)) if stem else None)  # noqa: E731
    return pick(args.results_json, '.json'), pick(args.results_csv, '.csv'), pick(args.plot, '.png')


def print_table(rows):
    header = f"{'model':42s} {'mode':9s} {'dtype':8s} {'batch':>5s} {'img/s':>10s} {'ms/step':>9s} {'peak MiB':>9s}"
    print(header)
    print('-' * len(header))
    for row in rows:
        if row.get('error'):
            print(f"{row['model']:42s} {row['mode']:9s} {row['amp_dtype']:8s} {'':>5s} ERROR {row['error'][:80]}")
            continue
        peak = '' if row.get('peak_memory_mib') is None else f"{row['peak_memory_mib']:.0f}"
        print(f"{row['model']:42s} {row['mode']:9s} {row['amp_dtype']:8s} {row['batch_size']:>5d} "
              f"{row['samples_per_sec']:>10.1f} {row['step_time_ms']:>9.2f} {peak:>9s}")


def main(argv=None):
    args = parse_args(argv)
    from vmamba_zoo.utils import benchmark as bench

    json_path, csv_path, plot_path = output_paths(args)
    if args.plot_from:
        with open(args.plot_from, encoding='utf-8') as f:
            results = json.load(f)
        target = plot_path or str(Path(args.plot_from).with_suffix('.png'))
        used = bench.plot_results(results, target, args.plot_x)
        print(f'plot ({used}) -> {target}')
        return results

    import vmamba_zoo  # noqa: F401  (registers the zoo's models with timm)

    names = resolve_model_names(args.model, args.skip_missing)
    peers = [n for n in resolve_model_names(args.compare, args.skip_missing) if n not in names] if args.compare else []
    specs = [bench.timm_model_spec(name) for name in names]
    if args.official_vmamba:
        specs += bench.official_vmamba_specs(args.official_vmamba, args.official_models, args.official_ext_dir,
                                             candidates=names)
    specs += [bench.timm_model_spec(name, role='peer') for name in peers]
    runs = resolve_runs(args)
    img_size = tuple(args.img_size) if args.img_size else None
    train_warm = args.num_warm_iter if args.train_num_warm_iter is None else args.train_num_warm_iter
    train_iters = args.num_bench_iter if args.train_num_bench_iter is None else args.train_num_bench_iter
    try:
        configs = [bench.BenchConfig(
            mode=mode, amp_dtype=dtype, tf32=args.tf32, channels_last=args.channels_last, compile=args.compile,
            compile_mode=args.compile_mode, cuda_graph=args.cuda_graph, img_size=img_size,
            num_warm_iter=train_warm if mode == 'train' else args.num_warm_iter, min_warm_s=args.min_warm_s,
            num_bench_iter=train_iters if mode == 'train' else args.num_bench_iter, opt=args.opt, lr=args.lr,
            drop_path=args.drop_path, device=args.device, profile_steps=args.profile_steps) for mode, dtype in runs]
    except ValueError as error:  # settings that exclude each other: a usage error, not a traceback
        raise SystemExit(f'throughput.py: error: {error}') from None
    torch.backends.cudnn.benchmark = True

    settings = dict(vars(args), runs=[f'{mode}:{dtype}' for mode, dtype in runs])
    meta = dict(bench.environment_info(args.device, str(REPO_ROOT)), settings=settings,
                timing='CUDA events between steps, one synchronisation at the end' if torch.device(
                    args.device).type == 'cuda' else 'time.perf_counter per step')
    first = [name for name in args.first if name in {spec.name for spec in specs}]
    specs.sort(key=lambda spec: first.index(spec.name) if spec.name in first else len(first))  # stable
    if args.order == 'config':
        jobs = [(config, spec, batch) for config in configs for spec in specs for batch in args.batch_size]
    else:
        jobs = [(config, spec, batch) for spec in specs for config in configs for batch in args.batch_size]
    progress = _Progress(len(jobs), args.progress)
    rows, start = [], time.perf_counter()
    for config, spec, batch_size in jobs:
        progress.describe(f'{spec.name} {config.mode} {config.amp_dtype} b{batch_size}')
        if args.time_budget_s is not None and time.perf_counter() - start > args.time_budget_s:
            row = dict(model=spec.name, source=spec.source, role=spec.role, mode=config.mode,
                       amp_dtype=config.amp_dtype, requested_batch_size=batch_size, batch_size=None,
                       error=f'skipped: time budget of {args.time_budget_s:.0f} s used up')
        else:
            row = bench.benchmark_model(spec, config, batch_size, args.min_batch_size, progress.note)
        rows.append(row)
        progress.advance(row['error'][:80] if row.get('error') else
                         f"{row['samples_per_sec']:.1f} img/s, {row['step_time_ms']:.1f} ms/step")
        # Saved after every measurement: a run stopped half-way keeps what it measured.
        bench.write_results(dict(meta=meta, results=rows), json_path)
    progress.close()

    if not args.no_flops or Path(args.flops_index).is_file():
        index = bench.load_index(args.flops_index)
        cache = {}
        for spec in sorted(specs, key=lambda sp: sp.source == 'official'):
            size = img_size or spec.default_img_size
            gflops = bench.resolve_gflops(spec, size, index, measure=not args.no_flops)
            twin = cache.get(spec.flops_name)
            if spec.source == 'official' and gflops[0] is None and twin is not None and twin[0] is not None:
                gflops = (twin[0], f'{twin[1]} (zoo {spec.flops_name})')  # same architecture as our model
            cache[spec.name] = gflops
        for row in rows:
            row['gflops'], row['gflops_source'] = cache[row['model']]
            if row['gflops'] is not None:
                row['gflops'] = round(row['gflops'], 3)

    meta['elapsed_s'] = round(time.perf_counter() - start, 1)
    results = dict(meta=meta, results=rows)
    bench.write_results(results, json_path, csv_path)
    print_table(rows)
    for label, path in (('json', json_path), ('csv', csv_path)):
        if path:
            print(f'{label} -> {path}')
    if plot_path:
        try:
            used = bench.plot_results(results, plot_path, args.plot_x)
            print(f'plot ({used}) -> {plot_path}')
        except ImportError as error:
            print(f'no plot ({error}); re-plot later with --plot-from {json_path}', file=sys.stderr)
    return results


if __name__ == '__main__':
    main()
