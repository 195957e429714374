"""Host cost of an eager training step without a GPU: Triton launches replaced by no-ops, narrow models, tiny input.

An eager VMamba-T training step on the H200 was partly bound by the host issuing it (2026-11-30), and the lent GPU
machine's host speed varies from run to run. This measures the host side on any CPU, under bf16 autocast:

* the autograd nodes one training step records, by type (``AccumulateGrad`` is one per parameter);
* ms per training step (forward, cross-entropy, backward, SGD step) of a copy of each model with narrow stages
  (``dims=(16, 32, 64, 128)``, 10 classes) on one 32x32 image, so that the CPU's arithmetic is small next to the
  Python and dispatcher work. The zoo's Triton launches go through ``CachedLaunch`` into a no-op launcher, so the
  host work up to the launch is counted, not Triton's interpreter. Best of 7 repeats of 10 steps;
* with ``--ab``, the same with ``SS2D.fused_scan_node`` (which the whole-branch node needs too) and
  ``Mlp.fused_node`` on and off, alternating.

Usage: python benchmarks/host_cpu_proxy.py [--ab] [MODEL ...]   (default: vmamba_tiny_s1l8 convnext_tiny)
"""
import argparse
import collections
import time

import torch


class _NoOpCompiled:
    """A compiled kernel whose launcher does nothing (``CachedLaunch`` calls ``run``)."""
    packed_metadata = function = None

    def run(self, *args):
        pass


class _NoOpKernel:
    """Stands in for a ``@triton.jit`` (or autotuned) kernel: binds like one, compiles to ``_NoOpCompiled``."""

    def __init__(self, real):
        self.arg_names = real.arg_names
        configs = getattr(real, 'configs', None)
        self.best_config = configs[0] if configs else None

    def __getitem__(self, grid):
        def run(*args, **kwargs):
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


def build(name: str):
    import timm
    from vmamba_zoo.layers import SS2D
    model = timm.create_model(name, drop_path_rate=0., dims=(16, 32, 64, 128), num_classes=10)
    for module in model.modules():
        if isinstance(module, SS2D):
            module.backend = 'triton'
    images, target = torch.randn(1, 3, 32, 32), torch.randint(0, 10, (1,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, foreach=True)  # as on CUDA, where foreach is the default

    def forward():
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return torch.nn.functional.cross_entropy(model(images), target)

    def train():
        forward().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return forward, train


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


def step_ms(train, repeats=7, steps=10) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            train()
        times.append((time.perf_counter() - start) / steps * 1e3)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=['vmamba_tiny_s1l8', 'convnext_tiny'])
    parser.add_argument('--ab', action='store_true', help='also time the node switches off, alternating')
    args = parser.parse_args()
    torch.set_num_threads(1)
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.layers import Mlp
    SS2D = no_op_triton()
    for name in args.models:
        forward, train = build(name)
        nodes = autograd_nodes(forward())
        for _ in range(3):
            train()
        print(f"{name}: {sum(nodes.values())} autograd nodes per step "
              f"({', '.join(f'{k} {v}' for k, v in nodes.most_common(8))})")
        if not args.ab:
            print(f'    {step_ms(train):.2f} ms per training step')
            continue
        best = {True: [], False: []}
        for _ in range(4):
            for on in (True, False):
                SS2D.fused_scan_node = Mlp.fused_node = on
                best[on].append(step_ms(train, repeats=2))
        SS2D.fused_scan_node = Mlp.fused_node = True
        print(f'    nodes on {min(best[True]):.2f} ms, off {min(best[False]):.2f} ms per training step')


if __name__ == '__main__':
    main()
