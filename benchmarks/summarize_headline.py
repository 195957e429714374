#!/usr/bin/env python3
"""Turn the headline throughput JSON (``benchmarks/run_headline.sh``) into a markdown table for the README.

    python benchmarks/summarize_headline.py benchmarks/results/headline.json [more.json ...] > table.md

One row per model: params, GFLOPs, images/s for bf16 inference, fp32 (TF32) inference and bf16 training, and the
training peak memory; then our models against the official ones and the targets of the headline (VMamba-T[s1l8] at
least as fast as ConvNeXt-T in every mode, >= 2.5x the official VMamba-T, training peak memory no higher than the
official), each marked met or missed from the measured figures; and, for rows measured with ``--profile-steps``, the
kernels VMamba-T[s1l8] and ConvNeXt-T spend their time in.
"""
import argparse
import json
import sys
from typing import Any, Dict, List, Optional

COLUMNS = (('inference', 'bfloat16', 'Infer bf16'), ('inference', 'float32', 'Infer fp32/TF32'),
           ('train', 'bfloat16', 'Train bf16'))
SOURCE_ORDER = {'zoo': 0, 'official': 1, 'timm': 2}
TARGET_MODEL, TARGET_PEER, TARGET_OFFICIAL = 'vmamba_tiny_s1l8', 'convnext_tiny', 'official:vmamba_tiny_s1l8'


def load(paths: List[str]) -> Dict[str, Any]:
    """Merge result files (the first file's meta is kept; a later row replaces an earlier one for the same key)."""
    meta, rows = None, {}
    for path in paths:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        meta = meta or data.get('meta', {})
        for row in data['results']:
            rows[(row['model'], row['mode'], row['amp_dtype'])] = row
    return dict(meta=meta or {}, rows=list(rows.values()))


def _fmt(value: Optional[float], spec: str = '{:,.0f}') -> str:
    return '—' if value is None else spec.format(value)


def _cell(row: Optional[Dict[str, Any]], notes: List[str]) -> str:
    if row is None:
        return '—'
    if row.get('error') or not row.get('samples_per_sec'):
        notes.append(f"{row['model']} {row['mode']} {row['amp_dtype']}: {row.get('error', 'no result')}")
        return f'n/a[^{len(notes)}]'
    text = _fmt(row['samples_per_sec'])
    if row.get('batch_size') != row.get('requested_batch_size'):
        text += f" (b{row['batch_size']})"
    return text


def _ratio(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]], key: str = 'samples_per_sec') -> Optional[float]:
    if not a or not b or not a.get(key) or not b.get(key):
        return None
    return a[key] / b[key]


def summarize(data: Dict[str, Any]) -> str:
    """Markdown: context line, the table, ours vs official, and the targets."""
    meta, rows = data['meta'], data['rows']
    settings = meta.get('settings', {})
    by_key = {(r['model'], r['mode'], r['amp_dtype']): r for r in rows}
    # zoo, official, timm; run order within each
    models = sorted(dict.fromkeys((r['model'], r['source']) for r in rows), key=lambda m: SOURCE_ORDER.get(m[1], 3))
    notes: List[str] = []
    batch = settings.get('batch_size')
    img = settings.get('img_size')
    train_warm = settings.get('train_num_warm_iter') or settings.get('num_warm_iter')
    train_iters = settings.get('train_num_bench_iter') or settings.get('num_bench_iter')
    lines = [
        f"Measured {(meta.get('date') or '')[:10]} on {meta.get('gpu_name') or meta.get('device')} "
        f"(torch {meta.get('torch')}, CUDA {meta.get('cuda')}, triton {meta.get('triton')}, timm {meta.get('timm')}) "
        f"with `tools/throughput.py`: batch {batch[0] if isinstance(batch, list) and batch else batch}, "
        f"{'x'.join(map(str, img)) if img else 'default size'}, NCHW, "
        f"torch.compile {'on' if settings.get('compile') else 'off'}; {settings.get('num_warm_iter')} warm-up + "
        f"{settings.get('num_bench_iter')} timed steps for inference, {train_warm} + {train_iters} for training, "
        f"timed with {meta.get('timing', 'CUDA events')}. "
        'Training = forward + cross-entropy + backward + SGD step under bf16 autocast (float32 weights), drop path '
        f"{settings.get('drop_path')}. Images/s; peak memory = `torch.cuda.max_memory_allocated`.",
        '',
        '| Model | Source | Params (M) | GFLOPs | ' + ' | '.join(c[2] + ' (img/s)' for c in COLUMNS)
        + ' | Train peak mem (GiB) |',
        '|---|---|---:|---:|' + '---:|' * len(COLUMNS) + '---:|',
    ]
    for model, source in models:
        cells = [by_key.get((model, mode, dtype)) for mode, dtype, _ in COLUMNS]
        any_row = next((r for r in cells if r), None) or {}
        params = next((r.get('param_count_m') for r in cells if r and r.get('param_count_m')), None)
        gflops = next((r.get('gflops') for r in cells if r and r.get('gflops') is not None), None)
        train = by_key.get((model, 'train', 'bfloat16')) or {}
        memory = train.get('peak_memory_mib')
        lines.append(f"| `{model}` | {source if any_row.get('role') != 'peer' else 'timm (peer)'} | "
                     f"{_fmt(params, '{:.1f}')} | {_fmt(gflops, '{:.2f}')} | "
                     + ' | '.join(_cell(r, notes) for r in cells)
                     + f" | {_fmt(None if memory is None else memory / 1024, '{:.2f}')} |")

    official = [m for m, s in models if s == 'official']
    if official:
        lines += ['', '| Ours vs official | ' + ' | '.join(c[2] for c in COLUMNS) + ' | Train peak mem |',
                  '|---|' + '---:|' * (len(COLUMNS) + 1)]
        for name in official:
            ours = name.split(':', 1)[1]
            speedups = [_ratio(by_key.get((ours, m, d)), by_key.get((name, m, d))) for m, d, _ in COLUMNS]
            memory = _ratio(by_key.get((ours, 'train', 'bfloat16')), by_key.get((name, 'train', 'bfloat16')),
                            'peak_memory_mib')
            lines.append(f'| `{ours}` | ' + ' | '.join(_fmt(s, '{:.2f}x') for s in speedups)
                         + f" | {_fmt(memory, '{:.2f}x')} |")

    lines += ['', f'Targets for `{TARGET_MODEL}`:', '']
    for mode, dtype, label in COLUMNS:
        ours, peer, off = (by_key.get((m, mode, dtype)) for m in (TARGET_MODEL, TARGET_PEER, TARGET_OFFICIAL))
        vs_peer, vs_official = _ratio(ours, peer), _ratio(ours, off)
        lines.append(f'- {label}: {_verdict(vs_peer, 1.0)} vs `{TARGET_PEER}` ({_fmt(vs_peer, "{:.2f}x")}); '
                     f'{_verdict(vs_official, 2.5)} vs official ({_fmt(vs_official, "{:.2f}x")}, target >= 2.5x)')
    memory = _ratio(by_key.get((TARGET_MODEL, 'train', 'bfloat16')),
                    by_key.get((TARGET_OFFICIAL, 'train', 'bfloat16')), 'peak_memory_mib')
    met = None if memory is None else memory <= 1.0
    lines.append(f"- Training peak memory vs official: {_fmt(memory, '{:.2f}x')} "
                 f"({'met' if met else 'not measured' if met is None else 'MISSED'}, target <= 1.00x)")
    lines += _profile_lines(by_key)
    if notes:
        lines.append('')
        lines += [f'[^{i}]: {note}' for i, note in enumerate(notes, 1)]
    return '\n'.join(lines) + '\n'


PROFILE_ROWS = 10  # kernels listed per profiled measurement


def _profile_lines(by_key: Dict[Any, Dict[str, Any]]) -> List[str]:
    """Where the time goes: the top kernels of the target model and its peer, for rows run with --profile-steps."""
    lines: List[str] = []
    for model in (TARGET_MODEL, TARGET_PEER):
        for mode, dtype, label in COLUMNS:
            profile = (by_key.get((model, mode, dtype)) or {}).get('profile')
            if not profile:
                continue
            if not lines:
                lines += ['', 'Where the time goes (`--profile-steps`; time per step of each kernel, or CPU operator):']
            lines += ['', f"`{model}`, {label}: {profile['total_ms_per_step']:.1f} ms of {profile['activity']} time "
                          'per step', '', '| Kernel | ms / step | Share |', '|---|---:|---:|']
            lines += [f"| `{name}` | {ms:.2f} | {share:.0%} |" for name, ms, share in profile['top'][:PROFILE_ROWS]]
    return lines


def _verdict(ratio: Optional[float], target: float) -> str:
    if ratio is None:
        return 'not measured'
    return 'met' if ratio >= target else 'MISSED'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('results', nargs='+', help='results JSON file(s) of tools/throughput.py')
    args = parser.parse_args(argv)
    sys.stdout.write(summarize(load(args.results)))


if __name__ == '__main__':
    main()
