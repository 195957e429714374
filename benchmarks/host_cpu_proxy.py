"""Host cost of an eager training step without a GPU: Triton launches replaced by no-ops, narrow models, tiny input.

An eager VMamba-T training step on the H200 was partly bound by the host issuing it (2026-11-30), and the lent GPU
machine's host speed varies from run to run. This measures the host side on any CPU, under bf16 autocast:

* the autograd nodes one training step records, by type (``AccumulateGrad`` is one per parameter);
* CPU ms per training step (forward, cross-entropy, backward, SGD step) of a copy of each model with narrow stages
  (``dims=(16, 32, 64, 128)``, 10 classes) on one 32x32 image, so that the CPU's arithmetic is small next to the
  Python and dispatcher work. The zoo's Triton launches go through ``CachedLaunch`` into a no-op launcher, so the
  host work up to the launch is counted, not Triton's interpreter. Best of 7 repeats of 10 steps;
* the operators of a training step that launch a kernel, counted on the CPU path (``kernels_per_step``): the Triton
  launches, and the ATen operators that compute (not views, allocations or dtype-conversion wrappers, whose
  ``copy_`` counts), a multi-tensor ``_foreach`` operator as one. An estimate of the CUDA step's kernels, which
  differ: cuDNN and cuBLAS may launch several per call, and some CPU paths take more operators (a float32 weight
  gradient is a GEMM and a cast on CPU, one GEMM on CUDA; a bias gradient a cast and a sum, one GEMV on CUDA;
  ``addmm`` first copies its bias);
* with ``--ab``, the same with ``SS2D.fused_scan_node`` (which the whole-branch node needs too) and
  ``Mlp.fused_node`` on and off, alternating;
* with ``--ab-residual``, the autograd nodes, kernels and ms per step with the VSS blocks' residual sums and
  drop-path factors in their layers (``VSSBlock.residual_in_layer``) and in the blocks, alternating.

``--drop-path`` builds every model at that drop-path rate (default 0; VMamba-T trains at 0.2). ``--infer`` also
counts and times bf16 inference steps (no gradients, best of 7 repeats of 30 steps).

``--instructions STEPS`` instead counts the instructions the process executes per training step (and per inference
step with ``--infer``) under valgrind's callgrind, instrumented only around STEPS steps after a warm-up: a host
cost that, unlike the times above, does not move with the machine's load (two runs of the same tree agree within
0.1 %). It needs ``valgrind`` on the PATH and takes about a minute and a half per model and mode. A/B two trees by
running it with each on ``PYTHONPATH``. Compare a tree with itself, not models with each other: the zoo's Triton
launches do nothing here while a timm model's operators compute on the CPU (ConvNeXt-T counts 269 M instructions per
training step against VMamba-T's 211 M, though its host work on the GPU machine is half of ours).

Usage: python benchmarks/host_cpu_proxy.py [--ab | --ab-residual | --instructions STEPS] [--drop-path 0.2] [--infer]
       [MODEL ...]  (default: vmamba_tiny_s1l8 convnext_tiny)
"""
import argparse
import collections
import copy
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch


TRITON_LAUNCHES = [0]


class _NoOpCompiled:
    """A compiled kernel whose launcher does nothing (``CachedLaunch`` calls ``run``) but count."""
    packed_metadata = function = None

    def run(self, *args):
        TRITON_LAUNCHES[0] += 1


class _NoOpKernel:
    """Stands in for a ``@triton.jit`` (or autotuned) kernel: binds like one, compiles to ``_NoOpCompiled``."""

    def __init__(self, real):
        self.arg_names = real.arg_names
        configs = getattr(real, 'configs', None)
        self.best_config = configs[0] if configs else None

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            TRITON_LAUNCHES[0] += 1
            if callable(grid):
                config = self.best_config.all_kwargs() if self.best_config is not None else {}
                grid({**dict(zip(self.arg_names, args)), **kwargs, **config})
            return _NoOpCompiled()
        return run


def no_op_triton():
    """Route every zoo Triton launch to a no-op on CPU tensors, through the GPU code paths."""
    from vmamba_zoo.kernels import _triton_utils, layer_norm, multi_scan, selective_scan, silu_layouts
    from vmamba_zoo.layers import SS2D
    from vmamba_zoo.layers.norm import ChannelLastLayerNorm, LayerNorm2d
    _triton_utils.CachedLaunch.enabled = True
    _triton_utils._launch_hooks_installed = lambda: False
    for module in (layer_norm, selective_scan, silu_layouts):
        for launch in list(vars(module).values()) + list(getattr(module, '_LAUNCH', {}).values()):
            if isinstance(launch, _triton_utils.CachedLaunch):
                launch.kernel, launch._compiled = _NoOpKernel(launch.kernel), {}
    selective_scan._resolve_backend = multi_scan._resolve_backend = lambda backend, *tensors: 'triton'
    LayerNorm2d.backend = ChannelLastLayerNorm.backend = 'triton'
    return SS2D


def narrow_model(name: str, drop_path: float = 0.) -> torch.nn.Module:
    """``name`` with narrow stages and 10 classes, its SS2D layers on the Triton path (``no_op_triton`` first)."""
    import timm
    from vmamba_zoo.layers import SS2D
    model = timm.create_model(name, drop_path_rate=drop_path, dims=(16, 32, 64, 128), num_classes=10)
    for module in model.modules():
        if isinstance(module, SS2D):
            module.backend = 'triton'
    return model


def build(name: str, drop_path: float = 0.):
    model = narrow_model(name, drop_path)
    images, target = torch.randn(1, 3, 32, 32), torch.randint(0, 10, (1,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)  # as on CUDA, where foreach is the default

    def forward():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return torch.nn.functional.cross_entropy(model(images), target)

    def train():
        forward().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    evaluated = copy.deepcopy(model).eval()

    def infer():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            return evaluated(images)
    return forward, train, infer


def autograd_nodes(loss: torch.Tensor) -> collections.Counter:
    counts, seen, stack = collections.Counter(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        counts[type(node).__name__] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    return counts


# ATen operators that launch no kernel of their own on CUDA: views, metadata, allocations, and wrappers whose work is
# a child operator (``to`` -> ``copy_``, ``linear`` -> ``addmm``, ...).
_NO_KERNEL = {
    'view', 'as_strided', 'select', 'permute', 'reshape', 'transpose', 't', 'expand', 'unbind', 'split',
    'split_with_sizes', 'chunk', 'slice', 'narrow', 'diagonal', 'detach', 'resolve_conj', 'resolve_neg',
    '_unsafe_view', 'flatten', 'empty', 'empty_strided', 'empty_like', 'new_empty_strided', 'new_empty', 'to',
    '_to_copy', 'contiguous', 'alias', 'lift_fresh', 'unsqueeze', 'squeeze', 'as_strided_', 'resize_',
    '_reshape_alias', 'view_as', 'linear', 'conv2d', 'convolution', '_convolution', 'matmul', 'dropout', 'layer_norm',
    'clone', 'stack', 'cross_entropy_loss', 'log_softmax', 'nll_loss', 'nll_loss_nd', 'zeros', 'zeros_like', 'ones',
    'ones_like', 'lift_fresh_copy', 'result_type', 'is_nonzero', 'item', '_local_scalar_dense',
}


def kernels_per_step(train) -> collections.Counter:
    """Operators of one training step that would launch a CUDA kernel, by name ('triton' for the Triton launches)."""
    from torch.profiler import ProfilerActivity, profile
    TRITON_LAUNCHES[0] = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train()
    counts = collections.Counter({'triton': TRITON_LAUNCHES[0]})
    for event in prof.events():
        name = event.name[6:] if event.name.startswith('aten::') else None
        if name is None or name in _NO_KERNEL:
            continue
        parent, inside_foreach = event.cpu_parent, False
        while parent is not None:
            inside_foreach |= parent.name.startswith('aten::_foreach')
            parent = parent.cpu_parent
        if inside_foreach:
            continue
        if any(child.name.startswith('aten::') and child.name[6:] not in _NO_KERNEL for child in event.cpu_children):
            continue  # its children launch the kernels
        counts[name] += 1
    return counts


def step_ms(train, repeats=7, steps=10) -> float:
    """Best over ``repeats`` of the main thread's CPU ms per step (``time.thread_time``: the lent CPU machine's
    wall-clock rounds varied by 30 % from stolen time and preemption; on CPU tensors the backward runs on the
    calling thread too)."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        for _ in range(steps):
            train()
        times.append((time.thread_time() - start) / steps * 1e3)
    return min(times)


def _callgrind_toggle(on: bool):
    """Switch callgrind's instrumentation of this process on or off (it polls for the command)."""
    subprocess.run(['callgrind_control', '-i', 'on' if on else 'off', str(os.getpid())], capture_output=True,
                   check=True)
    time.sleep(0.2)  # callgrind applies the command at its next poll; sleeping executes nothing


def callgrind_child(name: str, drop_path: float, steps: int, infer: bool):
    """Runs under callgrind with instrumentation off: warms up, then instruments ``steps`` training (or inference)
    steps."""
    forward, train, infer_step = build(name, drop_path)
    step = infer_step if infer else train
    for _ in range(3):
        step()
    _callgrind_toggle(True)
    for _ in range(steps):
        step()
    _callgrind_toggle(False)


def instructions_per_step(name: str, drop_path: float, steps: int, infer: bool = False) -> float:
    """Instructions executed per step of ``name`` (callgrind's instruction count over ``steps`` steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'callgrind.out')
        command = ['valgrind', '--tool=callgrind', '--instr-atstart=no', f'--callgrind-out-file={out}',
                   os.path.realpath(sys.executable), os.path.abspath(__file__), name, '--callgrind-child', str(steps),
                   '--drop-path', str(drop_path)] + (['--infer'] if infer else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f'callgrind run failed ({done.returncode}): {done.stderr[-2000:]}')
        totals = re.search(r'^totals: (\d+)', open(out).read(), re.M)
        return int(totals.group(1)) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=['vmamba_tiny_s1l8', 'convnext_tiny'])
    parser.add_argument('--ab', action='store_true', help='also time the node switches off, alternating')
    parser.add_argument('--ab-residual', action='store_true',
                        help="also time the VSS blocks summing their residuals themselves, alternating")
    parser.add_argument('--drop-path', type=float, default=0.)
    parser.add_argument('--infer', action='store_true',
                        help='also count the kernels of a bf16 inference step (no gradients) and time it')
    parser.add_argument('--instructions', type=int, default=0, metavar='STEPS',
                        help='count instructions per step under callgrind over STEPS steps (needs valgrind)')
    parser.add_argument('--callgrind-child', type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.layers import Mlp
    from vmamba_zoo.models.vmamba import VSSBlock
    SS2D = no_op_triton()
    if args.callgrind_child:
        callgrind_child(args.models[0], args.drop_path, args.callgrind_child, args.infer)
        return
    if args.instructions:
        print(f'vmamba_zoo from {os.path.dirname(vmamba_zoo.__file__)}')
        for name in args.models:
            line = f'{name}: {instructions_per_step(name, args.drop_path, args.instructions) / 1e6:.1f} M ' \
                'instructions per training step'
            if args.infer:
                line += f', {instructions_per_step(name, args.drop_path, args.instructions, True) / 1e6:.1f} M per ' \
                    'bf16 inference step'
            print(line, flush=True)
        return

    def set_nodes(on):
        SS2D.fused_scan_node = Mlp.fused_node = on

    def set_residual_in_layer(on):
        VSSBlock.residual_in_layer = on

    switch = set_nodes if args.ab else set_residual_in_layer if args.ab_residual else None
    for name in args.models:
        forward, train, infer = build(name, args.drop_path)
        for on in (True, False) if switch else (True,):
            if switch:
                switch(on)
            nodes = autograd_nodes(forward())
            for _ in range(3):
                train()
            print(f"{name}{'' if switch is None else f' (switch {on})'}: {sum(nodes.values())} autograd nodes per "
                  f"step ({', '.join(f'{k} {v}' for k, v in nodes.most_common(8))})")
            kernels = kernels_per_step(train)
            print(f"    at least {sum(kernels.values())} kernels per step on CUDA "
                  f"({', '.join(f'{k} {v}' for k, v in kernels.most_common(10))})")
        if switch is None:
            print(f'    {step_ms(train):.2f} ms per training step')
            if args.infer:
                for _ in range(3):
                    infer()
                print(f'    at least {sum(kernels_per_step(infer).values())} kernels per bf16 inference step, '
                      f'{step_ms(infer, steps=30):.2f} ms per step')
            continue
        times = {True: [], False: []}
        for _ in range(6):
            for on in (True, False):
                switch(on)
                times[on].append(step_ms(train, repeats=2))
        switch(True)
        print(f"    switch on {min(times[True]):.2f} ms (median {statistics.median(times[True]):.2f}), off "
              f"{min(times[False]):.2f} ms (median {statistics.median(times[False]):.2f}) per training step")


if __name__ == '__main__':
    main()
