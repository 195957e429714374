"""Aten operators dispatched per inference and per training step, for zoo models and timm peers, on CPU.

An eager step whose GPU idles between kernels is bound by host time, which grows with the number of operators
dispatched. This counts them with a dispatch mode (PyTorch paths, batch 1, 64x64 input), with the most frequent ones.

Usage: python benchmarks/count_ops.py [MODEL ...]   (default: vmamba_tiny_s1l8 convnext_tiny)
"""
import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts every aten operator that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(name: str) -> dict:
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    model = timm.create_model(name, drop_path_rate=0.)
    images = torch.randn(1, 3, 64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with OpCounter() as train:
        model(images).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), OpCounter() as infer:
        model(images)
    return dict(train_ops=sum(train.counts.values()), infer_ops=sum(infer.counts.values()),
                train_top=train.counts.most_common(8))


def main():
    for name in sys.argv[1:] or ['vmamba_tiny_s1l8', 'convnext_tiny']:
        result = count(name)
        print(f"{name}: {result['train_ops']} ops per training step, {result['infer_ops']} per inference")
        print('   ', ', '.join(f'{op} {n}' for op, n in result['train_top']))


if __name__ == '__main__':
    main()
