"""How far a zoo model's bf16 gradients are from float32 ones, per eager variant (and compiled with ``--compile``).

``compile_check.py`` found on the H200 (2026-11-30) that the compiled VMamba-T's bf16 gradient of stage 0 block 0's
``dt_projs_bias`` was 11.3 % (relative norm) from eager float32's, where eager bf16's was 1.2 %, while the median
parameter was as close compiled as eager. Compiled, SS2D runs its composite path (op by op, the scan through its
custom ops). This runs the eager variants (``bench_layout.set_variant``: '' the fused branch nodes, 'scan_node',
'composite' op by op) from the same weights and input, and reports each parameter's relative distance from eager
float32 (default variant, no autocast): the median, the worst parameters, the ``dt_projs_bias`` of every block, and
the parameters whose distance grew most against the default variant's. Whether the composite path is as close as the
fused nodes tells an eager-path difference from one of the compiler.

Usage: python benchmarks/grad_precision.py [--batch 16] [--variants '' scan_node composite] [--compile]
           [--backends inductor aot_eager aot_eager_decomp_partition] [--out OUT.json] [MODEL]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402
from compile_check import logits_and_grads, relative_distance  # noqa: E402


def gradients(runner, model, images, autocast: bool) -> dict:
    """Every parameter's gradient (float32) of the mean squared logit, under bf16 autocast or in float32."""
    return logits_and_grads(runner, model, images, autocast)[1]


def distances(grads: dict, reference: dict) -> dict:
    return {name: relative_distance(grads[name], reference[name]) for name in reference}


def summary(errors: dict, baseline: dict, top: int = 6) -> dict:
    ratio = {name: errors[name] / max(baseline[name], 1e-30) for name in errors}
    return dict(median=statistics.median(errors.values()),
                worst=sorted(((round(e, 5), name) for name, e in errors.items()), reverse=True)[:top],
                dt_projs_bias={name: round(e, 5) for name, e in errors.items() if name.endswith('dt_projs_bias')},
                largest_ratio_to_default=sorted(((round(r, 2), name) for name, r in ratio.items()), reverse=True)[:top])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', nargs='?', default='vmamba_tiny_s1l8')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--variants', nargs='+', default=['', 'scan_node', 'composite'])
    parser.add_argument('--compile', action='store_true', help='also the compiled model (default variant)')
    parser.add_argument('--backends', nargs='+', default=['inductor'],
                        help="torch.compile backends with --compile: 'aot_eager' (AOTAutograd, no inductor) and "
                             "'aot_eager_decomp_partition' (also inductor's decompositions and partitioner) tell "
                             "the code generator from the graph transformations")
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.manual_seed(0)
    model = timm.create_model(args.model, drop_path_rate=0.0).cuda().train()
    images = torch.randn(args.batch, 3, 224, 224, device='cuda')
    bl.set_variant('')
    reference = gradients(model, model, images, autocast=False)
    bl.set_variant('composite')
    fp32_composite = distances(gradients(model, model, images, autocast=False), reference)
    rows = {}
    errors = {}
    for variant in args.variants:
        bl.set_variant(variant)
        errors[variant or 'default'] = distances(gradients(model, model, images, autocast=True), reference)
    bl.set_variant('')
    for backend in args.backends if args.compile else ():
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend)
        start = time.perf_counter()
        gradients(compiled, model, images, autocast=True)
        name = 'compiled' if backend == 'inductor' else f'compiled_{backend}'
        rows[f'{name}_first_step_s'] = round(time.perf_counter() - start, 1)
        errors[name] = distances(gradients(compiled, model, images, autocast=True), reference)
    baseline = errors.get('default', next(iter(errors.values())))
    for name, errs in errors.items():
        rows[name] = summary(errs, baseline)
        print(f"{name}: median {rows[name]['median']:.5f}, worst {rows[name]['worst'][:3]}, largest ratio to "
              f"default {rows[name]['largest_ratio_to_default'][:3]}", flush=True)
    result = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime('%Y-%m-%d'),
                  model=args.model, batch=args.batch, loss='mean squared logit',
                  fp32_composite_vs_default_worst=max(fp32_composite.values()), variants=rows)
    bs.write_result(result, args.out, 'grad_precision')


if __name__ == '__main__':
    main()
