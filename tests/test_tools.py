"""Tests of the tools: FLOP counting, throughput benchmarking, OOM fallback, the model-card index.

CPU only, random weights, tiny inputs. Zoo models are used when some are registered (the cheapest one); the scan
checks also run on a small module built on the kernel core, so they hold whatever families exist.
"""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vmamba_zoo  # noqa: F401  (registers the zoo's models)
from vmamba_zoo.kernels import multi_scan_2d, selective_scan_flops
from vmamba_zoo.utils import benchmark as bench
from vmamba_zoo.utils import model_index
from vmamba_zoo.utils.flops import measure_flops
from vmamba_zoo.utils.registry import count_params, count_params_by_name, create_model_at_size, list_zoo_models

REPO = Path(__file__).resolve().parents[1]
TIMM_ATTN_MODEL = 'test_vit'  # conv stem + linear + scaled_dot_product_attention, 0.37 M params
TIMM_CONV_MODEL = 'test_convnext'


def _load_tool(name, folder='tools'):
    spec = importlib.util.spec_from_file_location(f'{folder}_{name}', REPO / folder / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cheapest_zoo_model():
    names = list_zoo_models()
    if not names:
        return None
    counts = count_params_by_name(names)
    return min(names, key=counts.get)


ZOO_MODEL = _cheapest_zoo_model()


class TinyScanNet(nn.Module):
    """A VMamba-like token mixer on the kernel core: 1x1 projections on the map, the fused (or plain) cross scan."""

    def __init__(self, dim=8, d_state=2, fused=True, num_classes=5):
        super().__init__()
        self.dim, self.d_state, self.fused, self.num_classes = dim, d_state, fused, num_classes
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.x_proj = nn.Conv2d(dim, 4 * 2 * d_state, 1)
        self.dt_proj = nn.Conv2d(dim, 4 * dim, 1)
        self.A_log = nn.Parameter(torch.rand(4 * dim, d_state).log())
        self.D = nn.Parameter(torch.ones(4 * dim))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x)
        batch, dim, height, width = x.shape
        bc = self.x_proj(x).view(batch, 4, 2 * self.d_state, height, width)
        delta = self.dt_proj(x).view(batch, 4, dim, height, width)
        y = multi_scan_2d(x, delta, -self.A_log.exp(), bc[:, :, :self.d_state].contiguous(),
                          bc[:, :, self.d_state:].contiguous(), D=self.D, delta_softplus=True, fused=self.fused)
        return self.head(nn.functional.silu(y).mean((2, 3)))


def _check_counters_agree(report):
    """flop_counter is 2x fvcore for conv/linear/attention; the scan is counted identically by both."""
    assert report['fvcore_matmul'] > 0
    assert report['flop_counter_matmul'] == 2 * report['fvcore_matmul']
    assert report['flop_counter_scan'] == report['fvcore_scan']
    assert report['flop_counter_other'] == 0
    assert report['fvcore_g'] == pytest.approx(report['fvcore_total'] / 1e9)
    assert report['gmacs'] == pytest.approx(report['fvcore_matmul'] / 1e9)
    assert not report['fvcore_unsupported'], report['fvcore_unsupported']


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------------
def test_flops_cli_json_on_timm_model():
    out = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'flops.py'), '--model', TIMM_ATTN_MODEL, '--img-size', '64', '64',
         '--json'], capture_output=True, text=True, check=True, timeout=300,
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))})
    report = json.loads(out.stdout)
    assert report['model'] == TIMM_ATTN_MODEL and report['input_size'] == [3, 64, 64]
    assert report['params'] == count_params(create_model_at_size(TIMM_ATTN_MODEL, (64, 64)))
    _check_counters_agree(report)
    assert report['fvcore_scan'] == 0
    # attention is counted: fvcore through our SDPA handle, flop_counter through the CPU flash kernel's formula
    assert report['fvcore_by_operator']['scaled_dot_product_attention'] > 0
    assert '1 fused multiply-add = 1 flop' in report['convention']


def test_flops_cli_on_zoo_model_states_convention():
    """Text output of tools/flops.py on the cheapest zoo model (the tiny scan net if none is registered yet)."""
    tool = _load_tool('flops')
    stdout = io.StringIO()
    if ZOO_MODEL is not None:
        with contextlib.redirect_stdout(stdout):
            tool.main(['--model', ZOO_MODEL, '--img-size', '64', '64', '--json'])
        report = json.loads(stdout.getvalue())
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            tool.main(['--model', ZOO_MODEL, '--img-size', '64', '64'])
    else:
        report = measure_flops(TinyScanNet(), img_size=(16, 16))
    _check_counters_agree(report)
    assert report['fvcore_scan'] > 0, 'a zoo model runs the scan through the custom op'
    if ZOO_MODEL is not None:
        text = stdout.getvalue()
        assert 'convention:' in text and '1 multiply-add = 2 flops' in text and '9*B*L*D*N + B*D*L' in text


def test_scan_counted_same_on_fused_and_plain_path():
    dim, d_state, height, width = 8, 2, 6, 5
    reports = {}
    for fused in (True, False):
        model = TinyScanNet(dim=dim, d_state=d_state, fused=fused)
        reports[fused] = measure_flops(model, img_size=(height, width))
        _check_counters_agree(reports[fused])
    # the plain path adds gathers/index_add (elementwise, not counted); everything counted is identical
    for key in ('fvcore_total', 'fvcore_scan', 'flop_counter_total', 'flop_counter_scan'):
        assert reports[True][key] == reports[False][key], key
    expected_scan = selective_scan_flops(1, height * width, 4 * dim, d_state, with_D=True)
    assert expected_scan == 9 * height * width * 4 * dim * d_state + height * width * 4 * dim
    assert reports[True]['fvcore_scan'] == expected_scan


# ---------------------------------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------------------------------
def test_throughput_cpu_writes_csv_json_png(tmp_path):
    tool = _load_tool('throughput')
    model = ZOO_MODEL or TIMM_CONV_MODEL
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        results = tool.main(['--model', model, '--compare', TIMM_ATTN_MODEL, '--device', 'cpu', '--img-size', '32',
                             '32', '--runs', 'inference:bfloat16', 'train:float32', '--num-bench-iter', '1',
                             '--output-dir', str(tmp_path), '--tag', 'cpu', '--no-progress'])
    json_path, csv_path, png_path = (tmp_path / f'cpu.{suffix}' for suffix in ('json', 'csv', 'png'))
    saved = json.loads(json_path.read_text())
    assert saved == json.loads(json.dumps(results))
    meta = saved['meta']
    for key in ('date', 'torch', 'triton', 'timm', 'device', 'settings', 'timing'):
        assert key in meta
    assert meta['settings']['runs'] == ['inference:bfloat16', 'train:float32']
    assert meta['settings']['batch_size'] == [2] and meta['settings']['img_size'] == [32, 32]
    rows = saved['results']
    assert [(r['model'], r['mode']) for r in rows] == [
        (model, 'inference'), (TIMM_ATTN_MODEL, 'inference'), (model, 'train'), (TIMM_ATTN_MODEL, 'train')]
    for row in rows:
        assert row.get('error') is None, row['error']
        assert row['samples_per_sec'] > 0 and row['batch_size'] == 2 and row['img_size'] == [32, 32]
        assert row['gflops'] > 0 and row['gflops_source'] in ('index', 'fvcore', 'flop_counter')
    assert {r['role'] for r in rows} == {'model', 'peer'}
    header = csv_path.read_text().splitlines()[0].split(',')
    assert header[:3] == ['model', 'source', 'role'] and 'samples_per_sec' in header
    assert len(csv_path.read_text().strip().splitlines()) == 1 + len(rows)
    assert png_path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert model in stdout.getvalue()
    replot = tmp_path / 'replot.png'
    with contextlib.redirect_stdout(io.StringIO()):
        tool.main(['--plot-from', str(json_path), '--plot', str(replot), '--plot-x', 'params'])
    assert replot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_throughput_profile_steps_keep_the_top_operators(tmp_path):
    tool = _load_tool('throughput')
    with contextlib.redirect_stdout(io.StringIO()):
        results = tool.main(['--model', TIMM_CONV_MODEL, '--device', 'cpu', '--img-size', '32', '32', '--runs',
                             'inference:float32', '--num-bench-iter', '1', '--profile-steps', '1', '--no-flops',
                             '--results-json', str(tmp_path / 'p.json'), '--no-progress'])
    profile = results['results'][0]['profile']
    assert profile['activity'] == 'cpu' and profile['total_ms_per_step'] > 0
    names = [name for name, ms, share in profile['top']]
    assert any('conv' in name for name in names), names
    assert all(ms >= 0 and 0 <= share <= 1 for name, ms, share in profile['top'])
    top_ms = [ms for name, ms, share in profile['top']]
    assert top_ms == sorted(top_ms, reverse=True)


def test_throughput_run_list():
    tool = _load_tool('throughput')
    args = tool.parse_args(['--model', 'resnet18', '--device', 'cpu', '--bench', 'both', '--amp-dtype', 'float32',
                            'bfloat16'])
    assert tool.resolve_runs(args) == [('inference', 'float32'), ('inference', 'bfloat16'), ('train', 'float32'),
                                       ('train', 'bfloat16')]
    args = tool.parse_args(['--device', 'cpu', '--runs', 'infer:bfloat16', 'train:float32'])
    assert tool.resolve_runs(args) == [('inference', 'bfloat16'), ('train', 'float32')]
    assert (args.batch_size, args.img_size, args.num_warm_iter, args.num_bench_iter) == ([2], [64, 64], 1, 2)
    with pytest.raises(SystemExit):
        tool.resolve_runs(tool.parse_args(['--device', 'cpu', '--runs', 'inference:int8']))


def _fake_oom():
    return torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')


def test_oom_fallback_halves_batch():
    tried = []

    def run(batch):
        tried.append(batch)
        if batch > 24:
            raise _fake_oom()
        return dict(samples_per_sec=float(batch))

    result = bench.run_with_oom_fallback(run, 128)
    assert tried == [128, 64, 32, 16]
    assert (result['requested_batch_size'], result['batch_size'], result['oom_retries']) == (128, 16, 3)
    assert result['samples_per_sec'] == 16.0 and 'error' not in result


def test_oom_fallback_gives_up_and_keeps_other_errors():
    def always_oom(batch):
        raise RuntimeError('CUDA error: out of memory')

    result = bench.run_with_oom_fallback(always_oom, 8, min_batch_size=2)
    assert result['batch_size'] is None and result['oom_retries'] == 3 and 'out of memory' in result['error']

    def broken(batch):
        raise ValueError('bad input')

    with pytest.raises(ValueError):
        bench.run_with_oom_fallback(broken, 8)
    assert bench.is_oom_error(_fake_oom()) and not bench.is_oom_error(RuntimeError('shape mismatch'))
    assert [bench.next_batch_size(b) for b in (256, 3, 1)] == [128, 1, 0]


class _OomAboveOne(nn.Module):
    """Raises the allocator's error for batches above one, like a model too large for the device."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 4)
        self.num_classes = 4

    def forward(self, x):
        if x.shape[0] > 1:
            raise _fake_oom()
        return self.head(x.mean((2, 3)))


def test_benchmark_warms_up_for_a_minimum_time():
    """Warm-up runs past num_warm_iter until min_warm_s have passed, and the row says how many steps it took."""
    spec = bench.ModelSpec(name='tiny', default_img_size=(2, 2), factory=lambda img_size, drop_path: nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)))
    steps = {}
    for min_warm_s in (0.0, 0.3):
        config = bench.BenchConfig(mode='inference', amp_dtype='float32', device='cpu', num_warm_iter=2,
                                   num_bench_iter=1, min_warm_s=min_warm_s)
        row = bench.benchmark_model(spec, config, batch_size=1)
        assert row.get('error') is None and row['min_warm_s'] == min_warm_s
        steps[min_warm_s] = row['warm_steps']
    assert steps[0.0] == 2 and steps[0.3] > 2
    with pytest.raises(ValueError, match='min_warm_s'):
        bench.BenchConfig(min_warm_s=-1.0)


@pytest.mark.parametrize('settings, message', [
    (dict(device='cpu'), "cuda_graph needs a CUDA device, got device 'cpu'"),
    (dict(device='cuda', compile=True), 'cuda_graph and compile exclude each other'),
    (dict(device='cuda', mode='train', amp_dtype='float16'), 'does not capture float16 training'),
])
def test_cuda_graph_settings_that_cannot_work_are_refused(settings, message):
    """CUDA-graph timing (``cuda_graph``) needs CUDA, excludes torch.compile and float16 training; the settings are
    refused when made, and ``tools/throughput.py`` reports them as a usage error."""
    with pytest.raises(ValueError, match=message):
        bench.BenchConfig(cuda_graph=True, **settings)
    if settings == dict(device='cpu'):
        throughput = _load_tool('throughput')
        with pytest.raises(SystemExit, match='cuda_graph needs a CUDA device'):
            throughput.main(['--model', 'resnet18', '--device', 'cpu', '--cuda-graph', '--no-progress'])


@pytest.mark.parametrize('mode', ['train', 'inference'])
def test_cuda_graph_step_warms_up_captures_once_and_times_replays(monkeypatch, mode):
    """The plumbing of CUDA-graph timing, with the CUDA calls replaced by stand-ins that count (this machine has no
    GPU): three eager warm-up steps on a side stream, the gradients unset before the capture (training), one
    capture of the forward (and backward and optimizer step), and every later step a replay."""
    calls = {'warm_on_side_stream': 0, 'captures': 0, 'replays': 0}
    on_side_stream = [False]

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other):
            pass

    @contextlib.contextmanager
    def stream(side):
        on_side_stream[0] = True
        yield
        on_side_stream[0] = False

    class Graph:
        def replay(self):
            calls['replays'] += 1

    @contextlib.contextmanager
    def graph(g):
        calls['captures'] += 1
        yield

    monkeypatch.setattr(torch.cuda, 'Stream', Stream)
    monkeypatch.setattr(torch.cuda, 'stream', stream)
    monkeypatch.setattr(torch.cuda, 'current_stream', lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, 'CUDAGraph', Graph)
    monkeypatch.setattr(torch.cuda, 'graph', graph)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    model.num_classes = 4  # the targets' range
    original_forward = model.forward

    def counting_forward(x):
        if on_side_stream[0]:
            calls['warm_on_side_stream'] += 1
        elif mode == 'train':
            # The capture runs with the gradients unset, so that the graph writes them rather than adds to them.
            assert all(p.grad is None for p in model.parameters())
        return original_forward(x)
    model.forward = counting_forward
    spec = bench.ModelSpec(name='tiny', default_img_size=(2, 2), factory=lambda img_size, drop_path: model)
    config = bench.BenchConfig(mode=mode, amp_dtype='float32', device='cpu', num_warm_iter=2, num_bench_iter=3)
    config.cuda_graph = True  # past the CUDA check, to run the plumbing on CPU
    row = bench._measure(spec, config, batch_size=1)
    assert calls == {'warm_on_side_stream': 3, 'captures': 1, 'replays': 2 + 3}
    assert row['warm_steps'] == 2 and row['samples_per_sec'] > 0


def test_benchmark_model_retries_after_oom():
    spec = bench.ModelSpec(name='oom_model', factory=lambda img_size, drop_path: _OomAboveOne(),
                           default_img_size=(8, 8))
    config = bench.BenchConfig(mode='train', amp_dtype='float32', device='cpu', num_warm_iter=1, num_bench_iter=2)
    row = bench.benchmark_model(spec, config, batch_size=4)
    assert (row['requested_batch_size'], row['batch_size'], row['oom_retries']) == (4, 1, 2)
    assert row['samples_per_sec'] > 0 and row.get('error') is None
    assert (row['mode'], row['amp_dtype'], row['opt']) == ('train', 'float32', 'sgd')


def test_official_vmamba_loader_on_a_stand_in_checkout(tmp_path):
    """The loader imports classification/models/vmamba.py the way the official file expects (fallback imports
    from its folder, fvcore imported at the top) and times its factory functions as 'official:<name>'."""
    models_dir = tmp_path / 'classification' / 'models'
    models_dir.mkdir(parents=True)
    (models_dir / 'csms6s.py').write_text('WITH_SELECTIVESCAN_OFLEX = True\nWITH_SELECTIVESCAN_MAMBA = False\n')
    (models_dir / 'vmamba.py').write_text(
        'import torch.nn as nn\n'
        'from timm.layers import DropPath\n'
        'from fvcore.nn import FlopCountAnalysis, flop_count_str, flop_count, parameter_count\n'
        'try:\n    from .csms6s import WITH_SELECTIVESCAN_OFLEX\nexcept ImportError:\n'
        '    from csms6s import WITH_SELECTIVESCAN_OFLEX\n'
        'class Net(nn.Module):\n'
        '    def __init__(self):\n'
        '        super().__init__()\n'
        '        self.conv, self.drop, self.head = nn.Conv2d(3, 4, 3), DropPath(0.2), nn.Linear(4, 10)\n'
        '        self.num_classes = 10\n'
        '    def forward(self, x):\n'
        '        return self.head(self.drop(self.conv(x)).mean((2, 3)))\n'
        'def vmamba_stand_in():\n    return Net()\n')
    specs = bench.official_vmamba_specs(str(tmp_path), None, candidates=['vmamba_stand_in', 'not_official'])
    assert [s.name for s in specs] == ['official:vmamba_stand_in'] and specs[0].source == 'official'
    assert specs[0].flops_name == 'vmamba_stand_in'
    model = specs[0].factory((16, 16), 0.1)
    assert model.drop.drop_prob == pytest.approx(0.1)
    config = bench.BenchConfig(mode='train', amp_dtype='bfloat16', device='cpu', img_size=(16, 16),
                               num_warm_iter=1, num_bench_iter=1)
    row = bench.benchmark_model(specs[0], config, batch_size=2)
    assert row.get('error') is None and row['samples_per_sec'] > 0
    assert row['official_kernels'] == dict(WITH_SELECTIVESCAN_OFLEX=True, WITH_SELECTIVESCAN_CORE=False,
                                           WITH_SELECTIVESCAN_MAMBA=False)
    with pytest.raises(ValueError, match='no model function'):
        bench.official_vmamba_specs(str(tmp_path), ['missing_model'])


# ---------------------------------------------------------------------------------------------------------------------
# Model-card index
# ---------------------------------------------------------------------------------------------------------------------
def test_committed_model_card_index_is_current():
    cards_dir, index_path, readme_path = model_index.default_paths()
    problems = model_index.check_index(index_path, readme_path, cards_dir)
    assert not problems, '\n'.join(problems)
    index = json.loads(index_path.read_text())
    assert sorted([*index['models'], *index['aliases']]) == sorted(list_zoo_models())
    assert all(target in index['models'] for target in index['aliases'].values())
    for entry in index['models'].values():
        assert entry['params'] > 0 and entry['fvcore_g'] > 0


# VMamba README / assets/performance.md @ 2ed52ea (ImageNet-1k, 224x224, FLOPs and params include the head).
PUBLISHED_VMAMBA = {
    'vmamba_tiny_s1l8': (30, 4.9), 'vmamba_small_s1l20': (49, 8.6), 'vmamba_base_s1l20': (87, 15.2),
    'vmamba_tiny_s2l5': (31, 4.9), 'vmamba_small_s2l15': (50, 8.7), 'vmamba_base_s2l15': (89, 15.4),
    'vanilla_vmamba_tiny': (23, 5.6), 'vanilla_vmamba_small': (44, 11.2), 'vanilla_vmamba_base': (76, 18.0),
}


def test_index_figures_match_published_vmamba():
    """Measured (cached in the index, whose currency the test above checks) params and GFLOPs of every registered
    VMamba model within 1% of the published figure, or within its rounding (0.5 M, 0.05 G) where that is larger."""
    _, index_path, _ = model_index.default_paths()
    cached = json.loads(index_path.read_text())['models']
    checked = []
    for name, (params_m, gflops) in PUBLISHED_VMAMBA.items():
        if name not in cached:
            assert name not in list_zoo_models(), f'{name} is registered but not indexed'
            continue
        entry = cached[name]
        assert abs(entry['params_m'] - params_m) <= max(0.01 * params_m, 0.5), (name, entry['params_m'], params_m)
        assert abs(entry['fvcore_g'] - gflops) <= max(0.01 * gflops, 0.05), (name, entry['fvcore_g'], gflops)
        checked.append(name)
    assert checked or not any(name in PUBLISHED_VMAMBA for name in list_zoo_models())


def test_model_card_index_detects_stale_entries(tmp_path):
    names = [TIMM_CONV_MODEL]
    (tmp_path / f'{TIMM_CONV_MODEL}.md').write_text(
        '---\nlicense: apache-2.0\nmodel-index:\n- name: m\n  results:\n  - task: {type: image-classification}\n'
        '    dataset: {name: ImageNet-1k, type: imagenet-1k}\n    metrics:\n    - {type: accuracy, name: Top-1, '
        'value: 71.5}\n    source: {name: paper, url: "https://example.org/paper"}\n---\n# card\n')
    index = model_index.build_index(names, tmp_path)
    entry = index['models'][TIMM_CONV_MODEL]
    assert entry['top1'] == 71.5 and entry['top1_source'] == 'paper https://example.org/paper'
    assert entry['card'] == f'{TIMM_CONV_MODEL}.md' and entry['params'] == count_params_by_name(names)[TIMM_CONV_MODEL]
    assert entry['fvcore_g'] == pytest.approx(measure_flops(TIMM_CONV_MODEL, counters=('fvcore',))['fvcore_g'],
                                              abs=1e-4)
    assert entry['check_fvcore_g'] == pytest.approx(
        measure_flops(TIMM_CONV_MODEL, img_size=(64, 64), counters=('fvcore',))['fvcore_g'], abs=1e-6)
    index_path, readme_path = tmp_path / 'index.json', tmp_path / 'README.md'

    def save(index_data):
        index_path.write_text(json.dumps(index_data))
        readme_path.write_text(model_index.render_readme(index_data))

    save(index)
    assert model_index.check_index(index_path, readme_path, tmp_path, names=names) == []
    assert f'`{TIMM_CONV_MODEL}`' in readme_path.read_text() and '71.5' in readme_path.read_text()

    # a cached figure that no longer matches a fresh measurement
    tampered = json.loads(json.dumps(index))
    tampered['models'][TIMM_CONV_MODEL]['check_fvcore_g'] *= 1.1
    save(tampered)
    problems = model_index.check_index(index_path, readme_path, tmp_path, names=names)
    assert any('GFLOPs at 64x64' in p for p in problems)
    # a card whose accuracy changed, a README edited by hand, a model added without regenerating
    save(index)
    card = tmp_path / f'{TIMM_CONV_MODEL}.md'
    card.write_text(card.read_text().replace('71.5', '72.0'))
    readme_path.write_text(readme_path.read_text() + 'edit\n')
    problems = model_index.check_index(index_path, readme_path, tmp_path, recompute_sample=0,
                                       names=names + [TIMM_ATTN_MODEL])
    assert any('top1' in p for p in problems) and any('README' in p for p in problems)
    assert any(f'{TIMM_ATTN_MODEL} is registered but missing' in p for p in problems)
    # regenerating reuses the cached measurement and picks up the new card
    log = []
    rebuilt = model_index.build_index(names, tmp_path, cached=index, log=log.append)
    assert log == [f'{TIMM_CONV_MODEL}: cached']
    assert rebuilt['models'][TIMM_CONV_MODEL]['top1'] == 72.0
    assert rebuilt['models'][TIMM_CONV_MODEL]['fvcore_g'] == index['models'][TIMM_CONV_MODEL]['fvcore_g']


# ---------------------------------------------------------------------------------------------------------------------
# Headline summary
# ---------------------------------------------------------------------------------------------------------------------
def test_summarize_headline_table_and_targets(tmp_path):
    """Formatting and target verdicts on a hand-written results file (these are inputs, not measurements)."""
    summarize = _load_tool('summarize_headline', folder='benchmarks')

    def row(model, source, mode, dtype, img_s, memory=None, **extra):
        return dict(model=model, source=source, role='peer' if source == 'timm' else 'model', mode=mode,
                    amp_dtype=dtype, samples_per_sec=img_s, requested_batch_size=128, batch_size=128,
                    param_count_m=30.0, gflops=4.9, peak_memory_mib=memory, **extra)

    rows = []
    for mode, dtype, ours, official, peer in (('inference', 'bfloat16', 5000, 1800, 4000),
                                              ('inference', 'float32', 3000, 1000, 3500),
                                              ('train', 'bfloat16', 1500, 500, 1400)):
        rows += [row('vmamba_tiny_s1l8', 'zoo', mode, dtype, ours, 8000 if mode == 'train' else None),
                 row('official:vmamba_tiny_s1l8', 'official', mode, dtype, official,
                     10000 if mode == 'train' else None),
                 row('convnext_tiny', 'timm', mode, dtype, peer)]
    rows.append(dict(row('swin_tiny_patch4_window7_224', 'timm', 'train', 'bfloat16', None),
                     error='skipped: time budget'))
    path = tmp_path / 'headline.json'
    path.write_text(json.dumps(dict(meta=dict(date='2026-11-28T17:00:00+00:00', gpu_name='NVIDIA H200',
                                              settings=dict(batch_size=[128], img_size=[224, 224])),
                                    results=rows)))
    text = summarize.summarize(summarize.load([str(path)]))
    table = [line for line in text.splitlines() if line.startswith('| `')]
    assert [line.split('|')[1].strip() for line in table[:4]] == [
        '`vmamba_tiny_s1l8`', '`official:vmamba_tiny_s1l8`', '`convnext_tiny`', '`swin_tiny_patch4_window7_224`']
    assert '| 5,000 | 3,000 | 1,500 | 7.81 |' in table[0]
    assert 'NVIDIA H200' in text and '2026-11-28' in text
    assert '| `vmamba_tiny_s1l8` | 2.78x | 3.00x | 3.00x | 0.80x |' in text
    assert '- Infer bf16: met vs `convnext_tiny` (1.25x); met vs official (2.78x' in text
    assert '- Infer fp32/TF32: MISSED vs `convnext_tiny` (0.86x); met vs official (3.00x' in text
    assert 'Training peak memory vs official: 0.80x (met' in text
    assert 'n/a[^1]' in text and '[^1]: swin_tiny_patch4_window7_224 train bfloat16: skipped: time budget' in text
    assert 'Where the time goes' not in text  # no row was profiled
    rows[0]['profile'] = dict(activity='cuda', total_ms_per_step=24.0,
                              top=[['_raster_rows_fwd_kernel', 4.87, 0.203], ['layer_norm', 2.15, 0.0896]])
    path.write_text(json.dumps(dict(meta={}, results=rows)))
    text = summarize.summarize(summarize.load([str(path)]))
    assert '`vmamba_tiny_s1l8`, Infer bf16: 24.0 ms of cuda time per step' in text
    assert '| `_raster_rows_fwd_kernel` | 4.87 | 20% |' in text and '| `layer_norm` | 2.15 | 9% |' in text


# ---------------------------------------------------------------------------------------------------------------------
# SASS counts of the chunked kernels
# ---------------------------------------------------------------------------------------------------------------------
def test_sass_counts_attributes_shuffles_to_source_lines():
    """The PTX line table decides which source line a ``shfl.sync`` belongs to (a hand-written PTX excerpt)."""
    sass_counts = _load_tool('sass_counts', folder='benchmarks')
    ptx = '\n'.join([
        '.file 1 "/x/kernels/selective_scan.py"', '.file 2 "/y/triton/language/standard.py"',
        '.loc 1 619 20', 'shfl.sync.up.b32 %r1, %r2, 1, 0, -1;', 'shfl.sync.up.b32 %r3, %r4, 1, 0, -1;',
        'add.f32 %f1, %f2, %f3;', '.loc 2 293 10', 'shfl.sync.bfly.b32 %r5, %r6, 16, 31, -1;',
        '.loc 1 619 20', 'shfl.sync.up.b32 %r7, %r8, 2, 0, -1;'])
    assert sass_counts.shuffles_by_line(ptx) == {'selective_scan.py:619': 3, 'standard.py:293': 1}


@pytest.mark.skipif(importlib.util.find_spec('triton') is None, reason='needs triton (its ptxas compiles for sm_90)')
def test_sass_counts_compiles_the_chunked_forward_kernels(tmp_path):
    """``sass_counts.py --chunked`` compiles the chunk-parallel kernels for sm_90 without a GPU and reports their
    loops, registers and shuffles."""
    out = tmp_path / 'counts.json'
    env = dict(os.environ, TRITON_INTERPRET='0')
    subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'sass_counts.py'), '--chunked', '--kernel', 'fwd',
                    '--json', str(out)], check=True, env=env, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())
    assert [row['kernel'] for row in rows] == ['_chunk_summary_fwd_kernel', '_scan_chunk_fwd_kernel']
    for row in rows:
        assert row['loops'] and row['registers'] and row['total'] > sum(loop['instructions'] for loop in row['loops'])
    assert any(line.startswith('selective_scan.py:') for line in rows[1]['shuffles_by_line'])
    assert not any(row['contiguous'] for row in rows)


def test_profile_scan_patterns_have_four_routes_over_the_map():
    """The GPU profiler's patterns fit ``bench_scan.make_inputs`` (4 routes), each route visiting the whole map."""
    profile_scan = _load_tool('profile_scan', folder='benchmarks')
    for name in profile_scan.PATTERNS:
        pattern = profile_scan.make_pattern(name, 6, 8)
        assert pattern.num_routes == 4, name
        covered = torch.zeros(48, dtype=torch.long).index_add_(0, pattern.routes.reshape(-1),
                                                               torch.ones(pattern.routes.numel(), dtype=torch.long))
        assert (covered == 4).all() if name != 'atrous' else (covered == 1).all(), name
