"""Throughput benchmarking for timm, zoo and official-VMamba models (the engine behind ``tools/throughput.py``).

Modelled on timm's ``benchmark.py``: a fresh model per measurement, random input generated once, warm-up then timed
steps, a smaller batch tried after an out-of-memory error. Differences: AMP is autocast over float32 weights (the
way models are trained and usually served), the step timing uses CUDA events recorded between steps (one
synchronisation at the end, so host overhead that the GPU hides is not counted), the training step includes the
optimizer step, and peak memory is recorded twice: through the first step (compilation, autotuning, cuDNN's
benchmark) and over the steps after it (``peak_memory_mib``, what a run holds once it is under way).

Nothing here needs fvcore or matplotlib; plotting imports matplotlib on use.
"""
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    'BenchConfig', 'ModelSpec', 'is_oom_error', 'next_batch_size', 'run_with_oom_fallback', 'benchmark_model',
    'timm_model_spec', 'official_vmamba_specs', 'environment_info', 'write_results', 'plot_results',
    'resolve_gflops', 'AMP_DTYPES', 'MODES',
]

MODES = ('inference', 'train')
AMP_DTYPES = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
CSV_FIELDS = (
    'model', 'source', 'role', 'mode', 'amp_dtype', 'tf32', 'channels_last', 'compile', 'cuda_graph', 'img_size',
    'requested_batch_size', 'batch_size', 'samples_per_sec', 'step_time_ms', 'step_time_ms_median',
    'step_time_ms_std', 'peak_memory_mib', 'first_step_peak_memory_mib', 'param_count_m', 'gflops', 'gflops_source',
    'first_step_s', 'warm_steps', 'oom_retries', 'error',
)


@dataclasses.dataclass
class BenchConfig:
    """One measurement setting (a model is timed once per setting and batch size).

    Attributes:
        mode: 'inference' (forward under ``torch.inference_mode``) or 'train' (forward, cross-entropy loss,
            backward and optimizer step).
        amp_dtype: 'float32' (no autocast), 'bfloat16' or 'float16' (autocast; weights stay float32).
        tf32: allow TF32 for float32 matmuls and convolutions.
        channels_last: model and input in channels_last memory format.
        compile: wrap the model in ``torch.compile``.
        compile_mode: ``torch.compile`` mode (None = default).
        cuda_graph: capture the whole step (training: forward, loss, backward and optimizer step) in one CUDA graph
            after three eager warm-up steps on a side stream, and time its replays. This takes the host's time to
            issue the kernels out of the measurement: what any model's kernels reach when the host is not the limit.
            CUDA only; not with ``compile`` (whose 'reduce-overhead' mode does the same), nor for float16 training
            (its gradient scaler synchronises with the host).
        img_size: (H, W), or None for each model's default input size.
        num_warm_iter: untimed steps before timing (the first also compiles and autotunes).
        min_warm_s: keep warming up (past ``num_warm_iter``) until this many seconds of warm-up have passed after
            the first step (which compiles and autotunes, and does not count). On the
            H200 (2026-11-30) VMamba-T's bf16 inference, measured first in its process, took 5,572 img/s after 3
            warm-up steps and 7,821 after 10, and 8,124 when measured after another model. The cause was not
            isolated; a time floor makes the warm-up independent of how long one step takes.
        num_bench_iter: timed steps.
        opt: optimizer for training: 'sgd' (momentum 0.9) or 'adamw'.
        lr: learning rate of that optimizer.
        drop_path: drop-path rate for training; None keeps each model's default.
        device: 'cuda' or 'cpu' (or 'cuda:N').
        profile_steps: after timing, run this many more steps under ``torch.profiler`` and add the kernels (CUDA)
            or operators (CPU) that took the most time per step to the result row (0: no profile).
    """
    mode: str = 'inference'
    amp_dtype: str = 'bfloat16'
    tf32: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_mode: Optional[str] = None
    cuda_graph: bool = False
    img_size: Optional[Tuple[int, int]] = None
    num_warm_iter: int = 10
    num_bench_iter: int = 40
    min_warm_s: float = 0.0
    opt: str = 'sgd'
    lr: float = 1e-4
    drop_path: Optional[float] = None
    device: str = 'cuda'
    profile_steps: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{self.mode}'")
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f'amp_dtype must be one of {tuple(AMP_DTYPES)}, got {self.amp_dtype!r}')
        if self.num_bench_iter < 1 or self.num_warm_iter < 0 or self.profile_steps < 0 or self.min_warm_s < 0:
            raise ValueError('num_bench_iter must be >= 1, num_warm_iter, min_warm_s and profile_steps >= 0')
        if self.cuda_graph:
            if not str(self.device).startswith('cuda'):
                raise ValueError(f"cuda_graph needs a CUDA device, got device '{self.device}'")
            if self.compile:
                raise ValueError("cuda_graph and compile exclude each other (torch.compile's 'reduce-overhead' mode "
                                 'captures CUDA graphs itself)')
            if self.mode == 'train' and self.amp_dtype == 'float16':
                raise ValueError('cuda_graph does not capture float16 training: its gradient scaler synchronises '
                                 'with the host')


@dataclasses.dataclass
class ModelSpec:
    """A model to time: ``factory(img_size, drop_path)`` builds it on CPU with random weights.

    Attributes:
        name: name in the results ('official:' prefix for the official implementation).
        factory: callable ``(img_size or None, drop_path or None) -> nn.Module``.
        source: 'zoo', 'timm' or 'official'.
        role: 'model' (the subject) or 'peer' (a comparison model).
        flops_name: the name whose FLOPs to use (an official model uses its zoo twin's figure).
        default_img_size: (H, W) used when the config has no img_size.
        extra: fields copied into every result row of this model.
    """
    name: str
    factory: Callable[[Optional[Tuple[int, int]], Optional[float]], nn.Module]
    source: str = 'timm'
    role: str = 'model'
    flops_name: Optional[str] = None
    default_img_size: Tuple[int, int] = (224, 224)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Out-of-memory fallback.
# ---------------------------------------------------------------------------------------------------------------------
def is_oom_error(error: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA caching allocator, cuBLAS/cuDNN allocation failures)."""
    if isinstance(error, getattr(torch, 'OutOfMemoryError', ())) or isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ('out of memory' in message or 'cublas_status_alloc_failed' in message
                                                or 'cudnn_status_alloc_failed' in message)


def next_batch_size(batch_size: int) -> int:
    """The batch tried after an out-of-memory error: half, rounded down (0 means give up)."""
    return batch_size // 2


def _free_device_memory():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # drop reference cycles that hold device tensors before returning blocks to the driver
        torch.cuda.empty_cache()


def run_with_oom_fallback(run: Callable[[int], Dict[str, Any]], batch_size: int, min_batch_size: int = 1,
                          on_retry: Optional[Callable[[int, str], None]] = None) -> Dict[str, Any]:
    """Call ``run(batch)`` and, after each out-of-memory error, again with half the batch.

    Args:
        run: measures one batch size and returns a result dict.
        batch_size: the batch to try first.
        min_batch_size: give up below this batch.
        on_retry: called as ``on_retry(new_batch, error_message)`` before each retry.

    Returns:
        ``run``'s result with ``requested_batch_size``, ``batch_size`` and ``oom_retries`` set; if every batch ran
        out of memory, a dict with ``error`` and ``batch_size`` None. Errors other than out-of-memory propagate.
    """
    batch, retries, last_error = batch_size, 0, ''
    while batch >= max(1, min_batch_size):
        error_message = None
        try:
            result = run(batch)
        except Exception as error:  # noqa: BLE001 - filtered just below
            if not is_oom_error(error):
                raise
            error_message = f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'
        if error_message is None:
            result.update(requested_batch_size=batch_size, batch_size=batch, oom_retries=retries)
            return result
        # Outside the except block, so the traceback (and the tensors its frames hold) can be freed.
        _free_device_memory()
        last_error = error_message
        batch, retries = next_batch_size(batch), retries + 1
        if on_retry is not None and batch >= max(1, min_batch_size):
            on_retry(batch, last_error)
    return dict(requested_batch_size=batch_size, batch_size=None, oom_retries=retries,
                error=f'out of memory down to batch {max(1, min_batch_size)}: {last_error}')


# ---------------------------------------------------------------------------------------------------------------------
# Model specs.
# ---------------------------------------------------------------------------------------------------------------------
def timm_model_spec(name: str, role: str = 'model') -> ModelSpec:
    """Spec for a timm-registered model (zoo or timm), built with ``create_model_at_size``."""
    from .registry import create_model_at_size, default_input_size, is_zoo_model

    def factory(img_size, drop_path):
        if drop_path is None:
            return create_model_at_size(name, img_size)
        try:
            return create_model_at_size(name, img_size, drop_path_rate=drop_path)
        except TypeError:  # a model without the argument: rescale its DropPath modules instead
            model = create_model_at_size(name, img_size)
            _scale_drop_path(model, drop_path)
            return model

    return ModelSpec(name=name, factory=factory, source='zoo' if is_zoo_model(name) else 'timm', role=role,
                     flops_name=name, default_img_size=tuple(default_input_size(name)[1:]))


def _scale_drop_path(model: nn.Module, rate: float):
    """Rescale a model's DropPath probabilities so that the largest equals ``rate`` (0 disables them)."""
    modules = [m for m in model.modules() if hasattr(m, 'drop_prob') and isinstance(m.drop_prob, (int, float))]
    largest = max((m.drop_prob for m in modules), default=0.0)
    for module in modules:
        module.drop_prob = 0.0 if largest == 0 else module.drop_prob * rate / largest


def _load_official_vmamba_module(repo: Path, ext_dirs: Sequence[str] = ()) -> types.ModuleType:
    """Import ``classification/models/vmamba.py`` of an official VMamba checkout (its fallbacks for running outside
    the package import ``csm_triton``/``csms6s``/``mamba2`` from its folder). fvcore is imported at its top but only
    used by ``VSSM.flops``; where fvcore is missing a stub stands in while the file is imported."""
    models_dir = repo / 'classification' / 'models'
    source = models_dir / 'vmamba.py'
    if not source.is_file():
        raise FileNotFoundError(f'{source} not found: pass the root of a MzeroMiko/VMamba checkout')
    for path in [str(models_dir), *map(str, ext_dirs)]:
        if path not in sys.path:
            sys.path.insert(0, path)
    stubbed = []
    try:
        import fvcore.nn  # noqa: F401
    except ImportError:
        def _unavailable(*args, **kwargs):
            raise RuntimeError('fvcore is not installed')
        for module_name in ('fvcore', 'fvcore.nn'):
            stub = types.ModuleType(module_name)
            stub.FlopCountAnalysis = stub.flop_count_str = stub.flop_count = stub.parameter_count = _unavailable
            sys.modules[module_name] = stub
            stubbed.append(module_name)
    try:
        spec = importlib.util.spec_from_file_location('official_vmamba', source)
        module = importlib.util.module_from_spec(spec)
        sys.modules['official_vmamba'] = module
        spec.loader.exec_module(module)
    finally:
        for module_name in stubbed:
            sys.modules.pop(module_name, None)
    return module


def official_vmamba_specs(repo: str, names: Optional[Sequence[str]] = None, ext_dirs: Sequence[str] = (),
                          candidates: Sequence[str] = (), allow_torch_scan: bool = False) -> List[ModelSpec]:
    """Specs for official VMamba models (factory functions of the official ``vmamba.py``, e.g.
    'vmamba_tiny_s1l8'), named 'official:<name>' and sharing FLOPs with the zoo model of the same name.

    Args:
        repo: root of a MzeroMiko/VMamba checkout.
        names: official factory names to time; None takes those of ``candidates`` the official file defines.
        ext_dirs: folders added to ``sys.path`` so the compiled scan extensions (``selective_scan_cuda_oflex``...)
            import. Which of them imported is recorded in each result (``official_kernels``).
        candidates: names to look for when ``names`` is None (typically the zoo models being timed).
        allow_torch_scan: build the models even if no compiled kernel imported (else each build raises).
    """
    module = _load_official_vmamba_module(Path(repo), ext_dirs)
    scan_module = sys.modules.get('csms6s')
    kernels = {flag: bool(getattr(scan_module, flag, False)) for flag in (
        'WITH_SELECTIVESCAN_OFLEX', 'WITH_SELECTIVESCAN_CORE', 'WITH_SELECTIVESCAN_MAMBA')}
    if names is None:
        names = [name for name in candidates if callable(getattr(module, name, None))]
    specs = []
    for name in names:
        factory_fn = getattr(module, name, None)
        if not callable(factory_fn):
            raise ValueError(f"official vmamba.py has no model function '{name}'")

        # Vanilla VMamba (forward_type v0) hard-codes mamba_ssm's selective_scan_cuda; the others pick oflex.
        needed = 'WITH_SELECTIVESCAN_MAMBA' if name.startswith('vanilla_') else 'WITH_SELECTIVESCAN_OFLEX'

        def factory(img_size, drop_path, factory_fn=factory_fn, needed=needed):
            if not kernels[needed] and not allow_torch_scan:
                raise RuntimeError(f'the official compiled scan kernel this model uses did not import ({needed} is '
                                   'False); pass its folder with ext_dirs (timing the official PyTorch fallback scan '
                                   'would be meaningless)')
            model = factory_fn()
            if drop_path is not None:
                _scale_drop_path(model, drop_path)
            return model

        specs.append(ModelSpec(name=f'official:{name}', factory=factory, source='official', role='model',
                               flops_name=name, default_img_size=(224, 224), extra=dict(official_kernels=kernels)))
    return specs


# ---------------------------------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------------------------------
class _StepTimer:
    """Step times from CUDA events recorded between steps (one synchronisation at the end), or perf_counter."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.marks: List[Any] = []

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def step_times_ms(self) -> List[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks[:-1], self.marks[1:])]
        return [1000.0 * (b - a) for a, b in zip(self.marks[:-1], self.marks[1:])]


def _synchronize(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _tf32(enabled: bool):
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _make_optimizer(model: nn.Module, name: str, lr: float, device: torch.device):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == 'sgd':
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == 'adamw':
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.05, fused=device.type == 'cuda')
    raise ValueError(f"opt must be 'sgd' or 'adamw', got '{name}'")


PROFILE_TOP = 25  # kernels (or operators) kept per profiled row


def profile_steps(step: Callable[[], None], steps: int, device: torch.device) -> Dict[str, Any]:
    """Run ``step`` ``steps`` times under ``torch.profiler`` and sum the time of each kernel (CUDA) or of each
    operator's own CPU time (CPU), per step.

    Returns:
        ``{'activity': 'cuda' | 'cpu', 'total_ms_per_step': ..., 'top': [[name, ms per step, share], ...]}`` with
        the ``PROFILE_TOP`` largest, names cut to 100 characters.
    """
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _synchronize(device)
    totals: Dict[str, float] = {}
    for event in prof.events():
        on_device = event.device_type == torch.autograd.DeviceType.CUDA
        if cuda != on_device:
            continue
        micros = event.device_time if cuda else event.self_cpu_time_total
        totals[event.name[:100]] = totals.get(event.name[:100], 0.0) + micros / 1e3 / steps
    total = sum(totals.values())
    top = sorted(totals.items(), key=lambda item: -item[1])[:PROFILE_TOP]
    return dict(activity='cuda' if cuda else 'cpu', total_ms_per_step=round(total, 3),
                top=[[name, round(ms, 4), round(ms / total, 4) if total else 0.0] for name, ms in top])


def _graph_replay(warm_step: Callable[[], None], captured: Callable[[], None], before_capture: Callable[[], None],
                  device: torch.device, warmup: int = 3) -> Callable[[], None]:
    """Run ``warm_step`` ``warmup`` times on a side stream (autotuning, cuDNN benchmarks and lazily made state such
    as optimizer buffers happen there), call ``before_capture``, capture ``captured`` in a CUDA graph, and return
    the graph's ``replay``."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            warm_step()
    torch.cuda.current_stream(device).wait_stream(stream)
    before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured()
    return graph.replay


def _measure(spec: ModelSpec, config: BenchConfig, batch_size: int,
             progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Time one model at one batch size (raises on out-of-memory; ``run_with_oom_fallback`` retries)."""
    device = torch.device(config.device)
    img_size = tuple(config.img_size) if config.img_size else tuple(spec.default_img_size)
    train = config.mode == 'train'
    amp_dtype = AMP_DTYPES[config.amp_dtype]
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    if device.type == 'cuda':
        _free_device_memory()
        torch.cuda.reset_peak_memory_stats(device)

    drop_path = config.drop_path if train else None
    try:
        # Built under the device context: initialising a large model on the GPU is far faster than on the CPU.
        with torch.device(device):
            model = spec.factory(img_size, drop_path)
    except Exception as error:  # noqa: BLE001 - some constructors need CPU tensors (numpy, .item() loops)
        if is_oom_error(error) or device.type == 'cpu':
            raise
        model = spec.factory(img_size, drop_path)
    param_count = sum(p.numel() for p in model.parameters())
    model = model.to(device=device, memory_format=memory_format).train(train)
    num_classes = getattr(model, 'num_classes', None) or 1000
    in_chans = getattr(model, 'in_chans', None) or 3
    inputs = torch.randn(batch_size, in_chans, *img_size, device=device).contiguous(memory_format=memory_format)
    targets = torch.randint(0, num_classes, (batch_size,), device=device)
    runner = torch.compile(model, mode=config.compile_mode) if config.compile else model
    # Under graph capture autocast must not keep its weight casts between calls (they would be made once, outside
    # the graph's memory, and never refreshed after an optimizer step).
    autocast = torch.autocast(device.type, dtype=amp_dtype, cache_enabled=not config.cuda_graph) \
        if amp_dtype is not None else contextlib.nullcontext()
    if train:
        optimizer = _make_optimizer(model, config.opt, config.lr, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        loss_fn = nn.CrossEntropyLoss()

        def forward_backward():
            with autocast:
                output = runner(inputs)
                output = output[0] if isinstance(output, (tuple, list)) else output
                loss = loss_fn(output.float(), targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        def step():
            optimizer.zero_grad(set_to_none=True)
            forward_backward()

        # Captured with the gradients unset: the graph's backward then writes them instead of adding to them.
        captured, before_capture = forward_backward, lambda: optimizer.zero_grad(set_to_none=True)
    else:
        def step():
            with torch.inference_mode(), autocast:
                runner(inputs)

        def captured():
            with torch.no_grad(), autocast:  # inference-mode tensors are not meant to outlive a capture
                runner(inputs)
        before_capture = lambda: None  # noqa: E731
    if config.cuda_graph:
        eager_step, replay = step, []

        def step():  # the first call warms up and captures (timed as the first step)
            if not replay:
                replay.append(_graph_replay(eager_step, captured, before_capture, device))
            replay[0]()

    with _tf32(config.tf32):
        start = time.perf_counter()
        step()  # first step: compilation, autotuning, cudnn benchmark
        _synchronize(device)
        first_step_s = time.perf_counter() - start
        # The first step's peak also holds what is allocated only once: cuDNN's benchmark and Triton's autotuner try
        # their candidates there. An H200 run of EfficientVMamba-T's fp32 inference reported 50 GiB through its first
        # step where a steady forward peaked at 1.7 GiB (fifteenth session; the first step's share not established).
        # peak_memory_mib is the steps' after it, with the model, its inputs and the optimizer state still held.
        first_step_peak = None
        if device.type == 'cuda':
            first_step_peak = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        # The minimum warm-up time counts from after the first step: a first step that compiles for a minute
        # must not stand in for warming up.
        start = time.perf_counter()
        warm_steps = max(1, config.num_warm_iter)
        for _ in range(warm_steps - 1):
            step()
        _synchronize(device)
        while time.perf_counter() - start < config.min_warm_s:
            step()
            _synchronize(device)  # the clock has to see the device's time, not the host's queueing
            warm_steps += 1
        timer = _StepTimer(device)
        timer.mark()
        for index in range(config.num_bench_iter):
            step()
            timer.mark()
            if progress is not None and device.type == 'cpu':
                progress(f'{index + 1}/{config.num_bench_iter}')
        times = timer.step_times_ms()
        profile = profile_steps(step, config.profile_steps, device) if config.profile_steps else None

    total_ms = sum(times)
    mean = total_ms / len(times)
    median = statistics.median(times)
    std = statistics.pstdev(times)
    result = dict(
        samples_per_sec=round(1000.0 * batch_size * len(times) / total_ms, 2),
        step_time_ms=round(mean, 3), step_time_ms_median=round(median, 3), step_time_ms_std=round(std, 3),
        first_step_s=round(first_step_s, 3), warm_steps=warm_steps, param_count_m=round(param_count / 1e6, 3),
        img_size=list(img_size),
        peak_memory_mib=round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == 'cuda'
        else None,
        first_step_peak_memory_mib=None if first_step_peak is None else round(first_step_peak / 2 ** 20, 1),
    )
    if profile is not None:
        result['profile'] = profile
    return result


def benchmark_model(spec: ModelSpec, config: BenchConfig, batch_size: int, min_batch_size: int = 1,
                    progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Time ``spec`` under ``config`` at ``batch_size`` (halved after out-of-memory errors).

    Returns:
        One result row: model, source, role, the config's settings, batch sizes, samples/s, step time (mean,
        median, std in ms), peak memory of the steps after the first and through the first (MiB, CUDA only),
        parameters (M), first-step seconds and ``error`` if any
        error other than out-of-memory (or out-of-memory at every batch) stopped the measurement.
    """
    row = dict(model=spec.name, source=spec.source, role=spec.role, mode=config.mode, amp_dtype=config.amp_dtype,
               tf32=config.tf32, channels_last=config.channels_last, compile=config.compile,
               cuda_graph=config.cuda_graph,
               num_warm_iter=config.num_warm_iter, min_warm_s=config.min_warm_s,
               num_bench_iter=config.num_bench_iter, opt=config.opt if
               config.mode == 'train' else None, drop_path=config.drop_path if config.mode == 'train' else None)
    row.update(spec.extra)

    def on_retry(batch, message):
        if progress is not None:
            progress(f'out of memory, retrying at batch {batch}')

    try:
        row.update(run_with_oom_fallback(lambda batch: _measure(spec, config, batch, progress), batch_size,
                                         min_batch_size, on_retry))
    except Exception as error:  # noqa: BLE001 - one model failing must not stop the others
        row.update(requested_batch_size=batch_size, batch_size=None, error=f'{type(error).__name__}: {error}'[:500])
    _free_device_memory()
    return row


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs for the plot (never needs fvcore on the benchmark machine).
# ---------------------------------------------------------------------------------------------------------------------
def resolve_gflops(spec: ModelSpec, img_size: Optional[Sequence[int]], index: Dict[str, Any],
                   measure: bool = True) -> Tuple[Optional[float], Optional[str]]:
    """GFLOPs (fvcore convention) of a model at ``img_size``: from the model-card index when it holds the model at
    that size, else measured on CPU (fvcore if installed, else ``torch.utils.flop_counter`` converted to the fvcore
    convention, i.e. matmul MACs plus the scan; norms excluded).

    Returns:
        (gflops, source) with source 'index', 'fvcore' or 'flop_counter'; (None, reason) if unavailable.
    """
    name = spec.flops_name or spec.name
    size = list(img_size) if img_size else list(spec.default_img_size)
    entry = index.get('models', {}).get(name)
    if entry and list(entry.get('input_size', [])[1:]) == size and entry.get('fvcore_g') is not None:
        return float(entry['fvcore_g']), 'index'
    if not measure or spec.source == 'official':
        return None, 'not in the model-card index'
    from .flops import has_fvcore, measure_flops
    try:
        model = spec.factory(tuple(size), None)
        if has_fvcore():
            report = measure_flops(model, img_size=size, counters=('fvcore',))
            return report['fvcore_g'], 'fvcore'
        report = measure_flops(model, img_size=size, counters=('flop_counter',))
        return report['fvcore_equivalent_g'], 'flop_counter'
    except Exception as error:  # noqa: BLE001 - a FLOP count is optional for the plot
        return None, f'flops failed: {type(error).__name__}: {error}'[:200]


def load_index(path: Optional[str]) -> Dict[str, Any]:
    """The model-card index JSON (``model_cards/index.json``), or an empty one if absent."""
    if path and Path(path).is_file():
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    return {}


# ---------------------------------------------------------------------------------------------------------------------
# Environment, output files, plot.
# ---------------------------------------------------------------------------------------------------------------------
def _version(package: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001 - not installed / no metadata
        module = sys.modules.get(package)
        return getattr(module, '__version__', None)


def _git_commit(path: Path) -> Optional[str]:
    try:
        out = subprocess.run(['git', '-C', str(path), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                             timeout=10)
        return (out.stdout.strip() or None) if out.returncode == 0 else None
    except Exception:  # noqa: BLE001 - git missing or not a checkout
        return None


def environment_info(device: str, repo: Optional[str] = None) -> Dict[str, Any]:
    """Date, host platform, device name and library versions recorded with every results file.

    Args:
        device: the benchmark device.
        repo: checkout whose git commit to record (default: the one ``vmamba_zoo`` is imported from).
    """
    import vmamba_zoo

    device = torch.device(device)
    repo = Path(repo) if repo else Path(vmamba_zoo.__file__).resolve().parents[1]
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        device=str(device), python=platform.python_version(), platform=platform.platform(),
        torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
        triton=_version('triton'), timm=_version('timm'), vmamba_zoo=getattr(vmamba_zoo, '__version__', None),
        vmamba_zoo_commit=_git_commit(repo), vmamba_zoo_path=str(Path(vmamba_zoo.__file__).resolve().parent),
        cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
    )
    if device.type == 'cuda' and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    gpu_capability=f'{props.major}.{props.minor}')
    return info


def write_results(results: Dict[str, Any], json_path: Optional[str] = None, csv_path: Optional[str] = None):
    """Write ``{'meta': ..., 'results': [...]}`` as JSON and the result rows as CSV (``CSV_FIELDS`` first)."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        with open(json_path, 'w', encoding='utf-8') as f:
            json.dump(results, f, indent=2)
            f.write('\n')
    if csv_path:
        import csv
        rows = results['results']
        fields = list(CSV_FIELDS) + sorted({k for row in rows for k in row} - set(CSV_FIELDS))
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, 'w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})


_SOURCE_STYLE = {
    'zoo': dict(marker='o', color='tab:blue', label='vmamba_zoo'),
    'official': dict(marker='s', color='tab:red', label='official'),
    'timm': dict(marker='^', color='tab:gray', label='timm'),
}


def plot_results(results: Dict[str, Any], path: str, x_axis: str = 'gflops') -> str:
    """Throughput against GFLOPs (or params), one marker per model, one panel per (mode, AMP dtype) setting.

    Args:
        results: the dict written by ``write_results``.
        path: PNG file to write.
        x_axis: 'gflops' or 'params'; rows without GFLOPs fall back to params for the whole plot.

    Returns:
        The x axis used.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = [r for r in results['results'] if r.get('samples_per_sec')]
    if x_axis == 'gflops' and any(r.get('gflops') is None for r in rows):
        x_axis = 'params'
    key, label = ('gflops', 'GFLOPs (fvcore convention)') if x_axis == 'gflops' else ('param_count_m', 'params (M)')
    settings = []
    for row in rows:
        setting = (row['mode'], row['amp_dtype'])
        if setting not in settings:
            settings.append(setting)
    settings = settings or [('inference', 'float32')]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    meta = results.get('meta', {})
    for ax, (mode, amp_dtype) in zip(axes[0], settings):
        seen = set()
        for row in (r for r in rows if (r['mode'], r['amp_dtype']) == (mode, amp_dtype)):
            style = dict(_SOURCE_STYLE.get(row['source'], _SOURCE_STYLE['timm']))
            legend = style.pop('label')
            ax.scatter(row[key], row['samples_per_sec'], s=50, label=None if legend in seen else legend, **style)
            seen.add(legend)
            ax.annotate(row['model'], (row[key], row['samples_per_sec']), fontsize=7, xytext=(4, 3),
                        textcoords='offset points')
        batch = sorted({r['batch_size'] for r in rows if r['mode'] == mode and r.get('batch_size')})
        tf32 = ' tf32' if amp_dtype == 'float32' and meta.get('gpu_name') and any(r.get('tf32') for r in rows) else ''
        ax.set_title(f'{mode}, {amp_dtype}{tf32}, batch {"/".join(map(str, batch))}', fontsize=10)
        ax.set_xlabel(label)
        ax.set_ylabel('images / s')
        ax.margins(x=0.2, y=0.1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{meta.get('gpu_name') or meta.get('device', '')}, torch {meta.get('torch', '')}, "
                 f"{(meta.get('date') or '')[:10]}", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return x_axis
