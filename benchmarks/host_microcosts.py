"""Host microseconds per call of the Python around our kernels, on any CPU: what an eager step pays per kernel.

An eager VMamba-T step launched about as many kernels as ConvNeXt-T's (967 against 962 at batch 8 on the H200) and
cost its host twice the time (2026-11-30, ``benchmarks/results/README.md``): the Python of the fused nodes and of
the kernel launches. This times, in one process, best of 5 repeats of 20,000 calls in thread CPU time:

* a cached Triton launch (``CachedLaunch``) of 15 tensors, a None and 20 scalars, through a stub compiled kernel
  whose launcher does nothing, so that only the key, the lookup and the argument handling are counted;
* ``SS2D._branch_spec`` and ``SS2D._branch_params`` (which decide and gather a fused SS2D branch's call) and
  ``Mlp._node``, on a narrow VMamba-T block under bf16 autocast, with the Triton launches routed to no-ops as in
  ``host_cpu_proxy.py``;
* for scale: attribute access to a submodule's parameter (``nn.Module.__getattr__``) and a tiny ``torch.add``.

Usage: python benchmarks/host_microcosts.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import host_cpu_proxy  # noqa: E402


def per_call_us(call, calls: int = 20000, repeats: int = 5) -> float:
    """Best over ``repeats`` of thread CPU us per call (``host_cpu_proxy.step_ms``)."""
    return round(host_cpu_proxy.step_ms(call, repeats=repeats, steps=calls) * 1e3, 2)


class _StubCompiled:
    packed_metadata = function = None

    def run(self, *args):
        pass


class _StubKernel:
    arg_names = [f'arg{i}' for i in range(40)]
    best_config = None

    def __getitem__(self, grid):
        return lambda *args, **kwargs: _StubCompiled()


def main():
    torch.set_num_threads(1)
    from vmamba_zoo.kernels import _triton_utils
    _triton_utils._launch_hooks_installed = lambda: False
    _triton_utils.CachedLaunch.enabled = True
    launch = _triton_utils.CachedLaunch(_StubKernel())
    args = [torch.empty(64) for _ in range(15)] + [None] + list(range(19)) + [1e-5]
    constexprs = {f'arg{i}': 1 for i in range(36, 40)}
    results = {'cached launch, 15 tensors + None + 20 scalars': per_call_us(lambda: launch((4,), *args, **constexprs))}

    import vmamba_zoo  # noqa: F401  (registers the models)
    host_cpu_proxy.no_op_triton()
    block = host_cpu_proxy.narrow_model('vmamba_tiny_s1l8').stages[0].blocks[0]
    layer, norm, mlp, norm2 = block.op, block.norm, block.mlp, block.norm2
    x = torch.randn(1, 8, 8, 16)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        results['SS2D._branch_spec'] = per_call_us(lambda: layer._branch_spec(x, norm, True))
        if hasattr(layer, '_branch_params'):  # absent before 967547e, which gathered them by attribute access
            results['SS2D._branch_params'] = per_call_us(lambda: layer._branch_params(norm))
        results['Mlp._node'] = per_call_us(lambda: mlp._node(x, norm2))
    results['module attribute: layer.in_proj.weight'] = per_call_us(lambda: layer.in_proj.weight)
    small = torch.ones(4)
    results['torch.add of 4 elements'] = per_call_us(lambda: torch.add(small, small))
    for name, micros in results.items():
        print(f'{micros:8.2f} us  {name}')


if __name__ == '__main__':
    main()
