"""Optional-Triton plumbing shared by the kernel files.

Every kernel file must import on a machine without Triton or without a GPU, so Triton is imported here once, in a
guarded way, and the kernel files define their ``@triton.jit`` functions only when ``HAS_TRITON`` is true.
"""
import operator
import os

import torch

try:  # Triton is optional: CPU-only installs and macOS have none.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ['HAS_TRITON', 'triton', 'tl', 'triton_interpreting', 'use_triton_for', 'backend_runs_triton', 'cdiv',
           'next_power_of_2', 'plain_eager', 'cast_to', 'CachedLaunch', 'ConfigGrid']


def triton_interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def use_triton_for(*tensors) -> bool:
    """Whether the automatic dispatch should launch Triton for these tensors.

    Triton runs on CUDA tensors; on CPU tensors it runs only in the interpreter, which callers must request with
    ``backend='triton'`` because it is orders of magnitude slower than the vectorised PyTorch path.
    """
    return HAS_TRITON and all(t.is_cuda for t in tensors if t is not None)


def backend_runs_triton(backend: str, *tensors) -> bool:
    """Whether an op's ``backend`` argument selects its Triton kernels: 'triton' always (also in the interpreter),
    'auto' for CUDA tensors outside tracing, scripting and compiling (where the PyTorch path is what the tracer
    records and inductor fuses)."""
    return backend == 'triton' or (
        backend == 'auto' and use_triton_for(*tensors) and not torch.jit.is_tracing()
        and not torch.jit.is_scripting() and not torch.compiler.is_compiling())


# Host-side integer helpers. ``triton.cdiv`` and ``triton.next_power_of_2`` are ``@triton.jit`` functions in recent
# Triton releases, whose Python call costs microseconds per launch; these are plain Python.
def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for positive integers (also for the interpreter's integer arguments, whose floor division
    of a negative number truncates)."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


_RUNTIME_KNOBS = getattr(getattr(triton, 'knobs', None), 'runtime', None)


def plain_eager() -> bool:
    """Eager execution: no tracing, scripting or compiling, and no dispatch mode (FLOP counters) watching. The zoo's
    eager shortcuts (the scan without its custom op, one autograd node for several ops) apply only then."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return torch._C._len_torch_dispatch_stack() == 0


def cast_to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)`` without the call when t has that dtype already: ``.to`` would return t too, after a dispatch
    (about a microsecond on the host that paces eager steps, where the fused nodes make dozens of such calls)."""
    return t if t.dtype == dtype else t.to(dtype)


def _launch_hooks_installed() -> bool:
    """Whether a launch hook (a profiler such as proton) wants to see every launch through the JIT path."""
    hooks = (getattr(_RUNTIME_KNOBS, 'launch_enter_hook', None), getattr(_RUNTIME_KNOBS, 'launch_exit_hook', None))
    # Recent releases hold each hook as a chain that is empty when nothing is installed.
    return any(hook is not None and getattr(hook, 'calls', True) for hook in hooks)


_raw_stream = getattr(torch._C, '_cuda_getCurrentRawStream', None)


def _current_stream(device_index: int) -> int:
    """The raw handle of the current CUDA stream of a device (0 for CPU tensors, which only test doubles launch)."""
    return _raw_stream(device_index) if device_index >= 0 else 0


_dtype_of = operator.attrgetter('dtype')
_low_address_bits = (15).__and__
# Per tuple of argument types: getters of the tensor arguments and of the keyed scalars (not floats, which Triton does
# not specialise), and the tensors' positions. A few entries: one per kernel signature and pattern of None arguments.
_ARGUMENT_LAYOUTS = {}


def _getter(positions: tuple):
    """``operator.itemgetter`` of ``positions`` that always returns a tuple."""
    if len(positions) == 1:
        return lambda args, position=positions[0]: (args[position],)
    return operator.itemgetter(*positions) if positions else lambda args: ()


def _argument_layout(types: tuple) -> tuple:
    layout = _ARGUMENT_LAYOUTS.get(types)
    if layout is None:
        tensors = tuple(i for i, kind in enumerate(types) if issubclass(kind, torch.Tensor))
        scalars = tuple(i for i, kind in enumerate(types) if not issubclass(kind, torch.Tensor) and kind is not float)
        layout = _ARGUMENT_LAYOUTS[types] = _getter(tensors), _getter(scalars), tensors
    return layout


def _specialization_key(args) -> tuple:
    """A key stricter than Triton's specialization, the tensors' addresses and their positions among ``args``.

    The key holds the argument types, the exact values of the non-float scalars, each tensor's dtype and the low
    four bits of its address (Triton specialises pointers on 16-byte alignment), and the first tensor's device (a
    compiled kernel's handle belongs to the device it was loaded on; one launch's tensors share a device). It runs on
    every launch, about 40 arguments each, so the per-argument work is C-level ``map``/``itemgetter`` calls, not a
    Python loop: 11.1 instead of 20.9 us per launch of 36 arguments on the CPU (``benchmarks/host_microcosts.py``,
    2026-11-30; the host's time per kernel was twice ConvNeXt-T's in eager VMamba-T steps)."""
    types = tuple(map(type, args))
    tensors_of, scalars_of, positions = _argument_layout(types)
    tensors = tensors_of(args)
    addresses = list(map(torch.Tensor.data_ptr, tensors))
    device = tensors[0].get_device() if tensors else -1
    key = (device, types, scalars_of(args), tuple(map(_dtype_of, tensors)), tuple(map(_low_address_bits, addresses)))
    return key, addresses, positions, device


class ConfigGrid:
    """A launch grid computed from the launch's constexprs alone (an autotuned block size), not from its other
    arguments. ``CachedLaunch`` calls it with the constexprs only: the mapping of every argument name that a grid
    function of ``kernel[grid]`` gets cost 14 us per launch to build on the CPU (the raster scans, two per SS2D layer
    and training step)."""
    __slots__ = ('grid',)

    def __init__(self, grid):
        self.grid = grid

    def __call__(self, meta):
        return self.grid(meta)


class CachedLaunch:
    """Launches a ``@triton.jit`` kernel through its compiled launcher when a call repeats a specialization.

    ``JITFunction.run`` binds and specialises every argument, builds a cache-key string and checks the kernel's
    globals on every launch; the compiled kernel's ``kernel[grid](...)`` then looks up the device and stream through
    Triton's driver object. The first call of each key goes through ``kernel[grid](...)``, which compiles and returns
    the compiled kernel; later calls with the same key hand the arguments straight to its launcher, on the current
    stream of the tensors' device. The key is stricter than Triton's (``_specialization_key``: argument types, exact
    integer values, dtype and address alignment of every tensor, the device, every keyword), so a cached kernel never
    receives arguments it was not specialised for, nor runs on another GPU. The JIT path runs instead under the
    interpreter, while a launch hook is installed (profilers), with ``CachedLaunch.enabled = False`` (environment
    ``VMAMBA_ZOO_CACHED_LAUNCH=0``), and from then on if a compiled kernel's launcher rejects the call (a Triton
    release whose launcher takes other arguments).

    An autotuned kernel is launched with the configuration its autotuner picked on the first call of the key. Call
    as ``launch(grid, *args, **constexprs_and_options)``, with the constexprs as keywords; ``grid`` may be a tuple or
    a function of the arguments and constexprs, as for ``kernel[grid]``.
    """

    enabled = os.environ.get('VMAMBA_ZOO_CACHED_LAUNCH', '1') != '0'
    # Hand tensors to the compiled launcher as their device addresses (see ``__call__``); False hands the tensors,
    # for timing the difference.
    addresses = True

    def __init__(self, kernel):
        self.kernel = kernel
        self._compiled = {}

    def __call__(self, grid, *args, **kwargs):
        if not CachedLaunch.enabled or _launch_hooks_installed():
            return self.kernel[grid](*args, **kwargs)
        key, addresses, positions, device = _specialization_key(args)
        key += tuple(kwargs.items())
        entry = self._compiled.get(key)
        if entry is None:
            compiled = self.kernel[grid](*args, **kwargs)
            # An autotuner's pick for this call; the stricter key implies the autotuner's key, so it stays the pick.
            config = getattr(self.kernel, 'best_config', None)
            merged = {**kwargs, **config.all_kwargs()} if config is not None else kwargs
            names = self.kernel.arg_names
            # Only a compiled GPU kernel is kept (the interpreter returns none), only when every remaining parameter
            # came as a keyword (its launcher takes all of them in signature order) and without config pre-hooks.
            if hasattr(compiled, 'packed_metadata') and all(name in merged for name in names[len(args):]) and \
                    getattr(config, 'pre_hook', None) is None:
                self._compiled[key] = compiled, tuple(merged[name] for name in names[len(args):]), merged
            return compiled
        compiled, constants, merged = entry
        if type(grid) is ConfigGrid:
            grid = grid.grid(merged)
        elif callable(grid):
            grid = grid({**dict(zip(self.kernel.arg_names, args)), **merged})
        grid_x, grid_y, grid_z = tuple(grid) + (1,) * (3 - len(grid))
        if CachedLaunch.addresses:
            launch_args = list(args)
            for position, address in zip(positions, addresses):
                launch_args[position] = address
        else:
            launch_args = args
        try:
            # What ``compiled[grid](*args)`` runs, without its per-call closure and driver lookups; no launch hook is
            # installed (checked above), so there is no launch metadata. Tensors go as their device addresses: the
            # launcher takes an integer as is, where for a tensor it calls ``data_ptr`` and asks the driver
            # (``cuPointerGetAttribute``) whether the address is device memory, once per pointer argument and launch.
            # The first call of this key went through the JIT path, which made those checks on the same devices.
            compiled.run(grid_x, grid_y, grid_z, _current_stream(device), compiled.function, compiled.packed_metadata,
                         None, None, None, *launch_args, *constants)
        except TypeError:  # the launcher parses its arguments before launching: nothing ran
            CachedLaunch.enabled = False
            self.kernel[grid](*args, **kwargs)
        return compiled
