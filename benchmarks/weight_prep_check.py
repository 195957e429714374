"""GPU check of the training nodes' one-launch weight casts and derived SSM weights (``weight_prep_launch``).

1. For every SS2D and MLP layer of VMamba-T[s1l8], the kernel's casts, ``A = -exp(A_logs)`` and block-diagonal
   dt_proj matrix against the reference's PyTorch ops, in bf16 and fp16: casts and matrix must be equal bit for bit,
   A within float32 rounding.
2. One bf16-autocast training step (batch 8, 224², loss = mean square of the logits) with the kernel and with the
   ops (``weight_prep_launch.enabled = False``), same seed: the logits' relative L2 distance and each parameter
   gradient's (median and the three largest).

Usage: python benchmarks/weight_prep_check.py OUT.json   (on a CUDA machine)
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile_check import relative_distance  # noqa: E402


def layer_inputs(module):
    """The casts (and SS2D's derived-weight inputs) that the module's training node hands ``weight_prep_launch``."""
    from vmamba_zoo.layers import SS2D, Mlp
    if isinstance(module, SS2D):
        casts = (module.in_proj.weight, module.in_proj.bias, module.conv2d.weight, module.conv2d.bias,
                 module.x_proj_weight.reshape(-1, module.d_inner), module.out_proj.weight, module.out_proj.bias)
        return casts, module.A_logs, module.dt_projs_weight, module.x_proj_weight.shape[1]
    if isinstance(module, Mlp):
        return (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias), None, None, 0
    return None


def main():
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.kernels import weight_prep_launch, weight_prep_ref
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'layers': []}
    torch.manual_seed(0)
    model = timm.create_model('vmamba_tiny_s1l8').cuda().train()
    worst_a, all_equal = 0.0, True
    for name, module in model.named_modules():
        inputs = layer_inputs(module)
        if inputs is None:
            continue
        casts, a_logs, dt, width = inputs
        for dtype in (torch.bfloat16, torch.float16):
            (out, A, blocks), (ref, A_ref, blocks_ref) = (weight_prep_launch(casts, dtype, a_logs, dt, width),
                                                          weight_prep_ref(casts, dtype, a_logs, dt, width))
            equal = all((c is None and r is None) or torch.equal(c, r) for c, r in zip(out, ref))
            equal &= blocks is None or torch.equal(blocks, blocks_ref)
            a_rel = 0.0 if A is None else ((A - A_ref).abs() / A_ref.abs()).max().item()
            worst_a, all_equal = max(worst_a, a_rel), all_equal and equal
            result['layers'].append({'layer': name, 'dtype': str(dtype), 'bitwise_equal': equal, 'A_max_rel': a_rel})
    result['all_bitwise_equal'], result['A_max_rel'] = all_equal, worst_a
    print(f"{len(result['layers'])} layer/dtype checks, casts and blocks bit for bit: {all_equal}, "
          f"A max rel {worst_a:.2e}", flush=True)
    images = torch.randn(8, 3, 224, 224, device='cuda')
    runs = {}
    for enabled in (True, False):
        weight_prep_launch.enabled = enabled
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            logits = model(images)
        logits.float().square().mean().backward()
        runs[enabled] = logits.detach().float(), {n: p.grad.detach().float().clone()
                                                  for n, p in model.named_parameters()}
    weight_prep_launch.enabled = True
    (logits, grads), (logits_ref, grads_ref) = runs[True], runs[False]
    distance = {n: relative_distance(grads[n], ref) for n, ref in grads_ref.items()}
    result['training_step_bf16'] = {
        'logits_rel': relative_distance(logits, logits_ref),
        'median_grad_rel': sorted(distance.values())[len(distance) // 2],
        'worst': sorted(distance.items(), key=lambda item: -item[1])[:3]}
    print('training step, kernel vs ops:', result['training_step_bf16'], flush=True)
    with open(sys.argv[1], 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
