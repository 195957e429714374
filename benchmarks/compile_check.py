"""torch.compile (inductor) on a zoo model on the GPU: whether it compiles in one graph, how long that takes, and how
far its bf16 logits and gradients are from eager mode, and from eager float32 against eager bf16's distance.

Compiled, the scan runs through its custom ops (``vmamba_zoo::scan_routes_fwd`` / ``_bwd``) and the LayerNorm and
SiLU through PyTorch ops that inductor fuses; eager mode runs the zoo's Triton kernels and fused autograd nodes. Both
should agree to bf16 rounding.

With ``--profile`` it also lists the CUDA kernels with the most time in one compiled bf16 inference step and one
training step, with the host's busiest operators (``bench_layout.kernel_breakdown``, ms per step). With ``--pyspy``
py-spy samples 8 s of compiled bf16 inference steps (``host_costs.sampled_stacks``): where the host spends a compiled
step, which took 23.1 ms at batch 128 on the H200 while its kernels took 15.4 ms (2026-11-30).

Usage: python benchmarks/compile_check.py [--batch 16] [--mode MODE] [--profile] [--pyspy] [--out OUT.json] [MODEL ...]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
import timm

import vmamba_zoo  # noqa: F401  (registers the models)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402


def logits_and_grads(runner, model, x, autocast: bool = True):
    """Logits and every parameter's gradient (float32) of the mean squared logit, under bf16 autocast or in
    float32; ``runner`` is the model or its compiled form."""
    model.zero_grad(set_to_none=True)
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        logits = runner(x)
    logits.float().square().mean().backward()
    torch.cuda.synchronize()
    return logits.detach().float(), {name: p.grad.detach().float().clone() for name, p in model.named_parameters()
                                     if p.grad is not None}


def relative_distance(a, b):
    """|a - b| / |b| (Frobenius norms)."""
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check(name: str, batch: int, mode, profile_kernels: bool = False, pyspy: bool = False) -> dict:
    rel = relative_distance
    torch.manual_seed(0)
    model = timm.create_model(name, drop_path_rate=0.0).cuda().train()
    x = torch.randn(batch, 3, 224, 224, device='cuda')
    eager_logits, eager_grads = logits_and_grads(model, model, x)
    # Eager float32 as the yardstick: compiled, bf16 rounds in other places (inductor keeps fused intermediates in
    # float32), so compiled-vs-eager differences are judged against eager bf16's own distance from float32.
    fp32_logits, fp32_grads = logits_and_grads(model, model, x, autocast=False)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, mode=mode)
    start = time.perf_counter()
    logits, grads = logits_and_grads(compiled, model, x)
    first_step_s = time.perf_counter() - start
    start = time.perf_counter()
    logits, grads = logits_and_grads(compiled, model, x)
    second_step_s = time.perf_counter() - start
    breaks = dict(torch._dynamo.utils.counters['graph_break'])

    def inference():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
            return compiled.eval()(x)

    start = time.perf_counter()
    inference()
    torch.cuda.synchronize()
    first_inference_s = time.perf_counter() - start
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        inference_rel = rel(inference().float(), model.eval()(x).float())
    worst = max(grads, key=lambda key: rel(grads[key], eager_grads[key]))
    # Per parameter: compiled bf16's distance from float32 over eager bf16's (1: as close as eager).
    ratio = {key: rel(grads[key], fp32_grads[key]) / max(rel(eager_grads[key], fp32_grads[key]), 1e-12)
             for key in grads}
    worst_ratio = max(ratio, key=ratio.get)
    profiles = {}
    if profile_kernels:
        def training():
            compiled.train()
            logits_and_grads(compiled, model, x)

        # CUDA kernels and the host's busiest operators per step (bench_layout.kernel_breakdown).
        profiles = dict(inference_kernels=bl.kernel_breakdown(inference),
                        training_kernels=bl.kernel_breakdown(training))
    if pyspy:
        from host_costs import sampled_stacks
        profiles['pyspy_inference'] = sampled_stacks(inference, seconds=8.0)
    return dict(**profiles, model=name, batch=batch, mode=mode, first_training_step_s=round(first_step_s, 2),
                second_training_step_s=round(second_step_s, 3), first_inference_step_s=round(first_inference_s, 2),
                graph_breaks=breaks, logits_rel_diff=rel(logits, eager_logits),
                inference_logits_rel_diff=inference_rel,
                worst_grad=worst, worst_grad_rel_diff=rel(grads[worst], eager_grads[worst]),
                worst_grad_eager_vs_fp32=rel(eager_grads[worst], fp32_grads[worst]),
                worst_grad_compiled_vs_fp32=rel(grads[worst], fp32_grads[worst]),
                logits_eager_vs_fp32=rel(eager_logits, fp32_logits), logits_compiled_vs_fp32=rel(logits, fp32_logits),
                largest_error_ratio=dict(param=worst_ratio, ratio=ratio[worst_ratio],
                                         compiled_vs_fp32=rel(grads[worst_ratio], fp32_grads[worst_ratio]),
                                         eager_vs_fp32=rel(eager_grads[worst_ratio], fp32_grads[worst_ratio])),
                median_error_ratio=sorted(ratio.values())[len(ratio) // 2],
                grads_compared=len(grads))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*', default=['vmamba_tiny_s1l8'])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--mode', default=None, help="torch.compile mode (default: inductor's default)")
    parser.add_argument('--profile', action='store_true', help='list the top CUDA kernels of compiled steps')
    parser.add_argument('--pyspy', action='store_true', help='sample compiled inference steps with py-spy')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    results = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime('%Y-%m-%d'),
                   checks=[])
    for name in args.models:
        row = check(name, args.batch, args.mode, args.profile, args.pyspy)
        print(json.dumps(row), flush=True)
        results['checks'].append(row)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
