"""GPU check of the VSS blocks' residual sums and drop-path factors folded into their layers.

One VMamba-T[s1l8] training step (batch 8, 224², drop-path 0.2, loss = mean square of the logits) with the residual
sums and timm's drop-path factors inside ``SS2D``/``Mlp`` (the default) and with the blocks summing ``x +
drop_path(layer(x, norm))`` themselves (``VSSBlock.residual_in_layer = False``), under the same seeds, in float32 (TF32
off) and under bf16 autocast. Prints and writes the logits' relative L2 distance and each parameter gradient's
(median and the three largest).

Usage: python benchmarks/residual_check.py OUT.json   (on a CUDA machine)
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compile_check import relative_distance  # noqa: E402


def main():
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    from vmamba_zoo.models.vmamba import VSSBlock
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__}
    torch.manual_seed(0)
    model = timm.create_model('vmamba_tiny_s1l8', drop_path_rate=0.2).cuda().train()
    images = torch.randn(8, 3, 224, 224, device='cuda')
    for amp in (False, True):
        runs = {}
        for in_layer in (True, False):
            VSSBlock.residual_in_layer = in_layer
            model.zero_grad(set_to_none=True)
            torch.manual_seed(1)
            with torch.autocast('cuda', dtype=torch.bfloat16, enabled=amp):
                logits = model(images)
            logits.float().square().mean().backward()
            runs[in_layer] = logits.detach().float(), {name: p.grad.detach().float().clone()
                                                       for name, p in model.named_parameters()}
        VSSBlock.residual_in_layer = True
        (logits, grads), (logits_ref, grads_ref) = runs[True], runs[False]
        distance = {name: relative_distance(grads[name], ref) for name, ref in grads_ref.items()}
        key = f'drop_path=0.2 amp={amp}'
        result[key] = {'logits_rel': relative_distance(logits, logits_ref),
                       'median_grad_rel': sorted(distance.values())[len(distance) // 2],
                       'worst': sorted(distance.items(), key=lambda item: -item[1])[:3]}
        print(key, result[key], flush=True)
    with open(sys.argv[1], 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
