"""GPU check of EfficientVMamba and MSVMamba: Triton vs PyTorch scan path (outputs and gradients), then throughput.

Usage (on a CUDA machine)::

    python benchmarks/effms_gpu_check.py                # all six models
    python benchmarks/effms_gpu_check.py --models msvmamba_tiny --batch 128

Prints, per model: the max |logit| and max relative gradient difference between ``backend='triton'`` and
``backend='torch'`` (both on the GPU), then inference images/s (fp32 and bf16 autocast) and training step images/s.
"""
import argparse
import time

import timm
import torch

import vmamba_zoo  # noqa: F401  (registers the models)

MODELS = ['efficient_vmamba_tiny', 'efficient_vmamba_small', 'efficient_vmamba_base',
          'msvmamba_nano', 'msvmamba_micro', 'msvmamba_tiny']


def set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if hasattr(module, 'backend') and hasattr(module, 'x_proj_weight'):
            module.backend = backend


def compare_backends(model: torch.nn.Module, device: torch.device) -> tuple:
    x = torch.randn(2, 3, 224, 224, device=device)
    results = {}
    for backend in ('torch', 'triton'):
        set_backend(model, backend)
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    set_backend(model, 'auto')
    (ref, ref_grads), (tri, tri_grads) = results['torch'], results['triton']
    logit_diff = (ref - tri).abs().max().item()
    grad_diff = max(((ref_grads[n] - tri_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-12)).item()
                    for n in ref_grads)
    return logit_diff, grad_diff


def throughput(model, device, batch, train=False, amp=False, steps=20, warmup=5):
    x = torch.randn(batch, 3, 224, 224, device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4) if train else None
    model.train(train)

    def step():
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
            if train:
                optimizer.zero_grad(set_to_none=True)
                model(x).float().mean().backward()
                optimizer.step()
            else:
                with torch.no_grad():
                    model(x)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', nargs='*', default=MODELS)
    parser.add_argument('--batch', type=int, default=128)
    args = parser.parse_args()
    device = torch.device('cuda')
    for name in args.models:
        model = timm.create_model(name).to(device).train()
        for module in model.modules():  # identical BatchNorm behaviour in both backends
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        logit_diff, grad_diff = compare_backends(model, device)
        infer = throughput(model, device, args.batch)
        infer_amp = throughput(model, device, args.batch, amp=True)
        train = throughput(model, device, args.batch // 2, train=True)
        print(f'{name}: triton vs torch max|logit diff| {logit_diff:.2e}, max rel grad diff {grad_diff:.2e}; '
              f'inference {infer:.0f} img/s fp32, {infer_amp:.0f} img/s bf16 (batch {args.batch}); '
              f'train {train:.0f} img/s fp32 (batch {args.batch // 2})')
        del model
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
