"""Layout A/B on VMamba-T[s1l8] at batch 128 on one GPU, in one process.

* The channel-last model (the zoo's default) against the same weights run channel-first (the official 'ln2d'
  layout): relative error of the logits in fp32 and bf16 on 16 images.
* Images/s of bf16 inference, fp32 (TF32) inference and bf16 training (SGD step), and training peak memory, for
  both layouts and for timm's ConvNeXt-T (cudnn.benchmark on; 3 warm-up steps, then 20 / 10 / 8 timed steps).
* The CUDA kernel breakdown (top 30 kernels, ms per step) of the channel-last model's inference and training, and
  the host operators with the most self CPU time (where a host-bound step goes).

Usage: python benchmarks/bench_layout.py [--out OUT.json]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scan as bs  # noqa: E402

BATCH = 128
VARIANTS = (('vmamba_tiny_s1l8_channel_last', 'vmamba_tiny_s1l8', {}),
            ('vmamba_tiny_s1l8_channel_first', 'vmamba_tiny_s1l8', dict(channel_first=True)),
            ('convnext_tiny', 'convnext_tiny', {}))


def set_variant(variant: str):
    """Switch the zoo's host-time shortcuts for a model variant: '' all on, 'scan_node' (SS2D's core and the MLP as
    nodes, without the pre-norms and SS2D's other layers), 'composite' (op by op), 'tensor_args' (all on, but the
    cached Triton launches hand the launcher tensors instead of addresses), 'fresh_casts' (all on, but inference
    casts the weights on every call), 'block_residual' (all on, but the VSS blocks sum their residuals themselves),
    'scalar_walk' (all on, but the scans run the row walks with one lane per thread, not the vectorised ones)."""
    from vmamba_zoo.kernels import selective_scan
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    from vmamba_zoo.layers import SS2D, Mlp
    from vmamba_zoo.layers.eager import kept_casts
    from vmamba_zoo.models.vmamba import VSSBlock
    VSSBlock.residual_in_layer = variant not in ('composite', 'block_residual')
    SS2D.fused_scan_node = Mlp.fused_node = variant != 'composite'
    SS2D.fused_branch_node = variant in ('', 'tensor_args', 'fresh_casts', 'block_residual', 'scalar_walk')
    selective_scan.VECTOR_ROW_WALK = selective_scan.VECTOR_ROW_WALK_BWD = variant != 'scalar_walk'
    selective_scan.ROW_WALK_BWD_ALIGNED = variant != 'scalar_walk'
    CachedLaunch.addresses = variant != 'tensor_args'
    kept_casts.enabled = variant != 'fresh_casts'


def timed_ms(step, iters, warm=3):
    """Mean ms per step between CUDA events, after ``warm`` untimed steps."""
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def steps(model, images, target):
    """bf16 inference, fp32 inference and bf16 training steps of ``model``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def infer_bf16():
        with torch.no_grad(), torch.autocast('cuda', torch.bfloat16):
            model(images)

    def infer_fp32():
        with torch.no_grad():
            model(images)

    def train_bf16():
        with torch.autocast('cuda', torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return infer_bf16, infer_fp32, train_bf16


def kernel_breakdown(step, iters=2):
    """ms per step of each CUDA kernel (top 30) under the profiler, and of the host's busiest operators (top 30 by
    self CPU time: where a host-bound step spends its time)."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    rows = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            rows[event.name[:90]] = rows.get(event.name[:90], 0.0) + event.device_time / 1e3 / iters
    host = {event.key[:90]: event.self_cpu_time_total / 1e3 / iters for event in prof.key_averages()}
    return {'kernel_ms_total': sum(rows.values()), 'top': dict(sorted(rows.items(), key=lambda kv: -kv[1])[:30]),
            'host_ms_total': sum(host.values()),
            'host_top': dict(sorted(host.items(), key=lambda kv: -kv[1])[:30])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='')
    args = parser.parse_args()
    bs.import_kernels()  # makes vmamba_zoo importable from an uninstalled checkout
    import timm
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'ab': {}}
    images = torch.randn(BATCH, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (BATCH,), device='cuda')
    start = time.time()
    with torch.no_grad():
        first = timm.create_model('vmamba_tiny_s1l8', channel_first=True).cuda().eval()
        last = timm.create_model('vmamba_tiny_s1l8').cuda().eval()
        last.load_state_dict(first.state_dict())
        for dtype in (torch.float32, torch.bfloat16):
            with torch.autocast('cuda', dtype, enabled=dtype != torch.float32):
                a, b = first(images[:16]).float(), last(images[:16]).float()
            result[f'channel_last_vs_first_rel_err_{dtype}'] = err = ((a - b).norm() / a.norm()).item()
            print('channel-last vs channel-first logits, relative error', dtype, err, flush=True)
        del first, last
    for key, name, kwargs in VARIANTS:
        model = timm.create_model(name, drop_path_rate=0.0, **kwargs).cuda()
        infer_bf16, infer_fp32, train_bf16 = steps(model, images, target)
        model.eval()
        row = {'infer_bf16_img_s': BATCH * 1e3 / timed_ms(infer_bf16, 20),
               'infer_fp32_img_s': BATCH * 1e3 / timed_ms(infer_fp32, 10)}
        model.train()
        torch.cuda.reset_peak_memory_stats()
        row['train_bf16_img_s'] = BATCH * 1e3 / timed_ms(train_bf16, 8)
        row['train_peak_gib'] = torch.cuda.max_memory_allocated() / 2 ** 30
        result['ab'][key] = row
        print(key, json.dumps(row), f'{time.time() - start:.0f} s', flush=True)
        if key.endswith('channel_last'):
            for mode, step in (('infer', infer_bf16), ('train', train_bf16)):
                model.train(mode == 'train')
                result[f'profile_{key}_{mode}'] = breakdown = kernel_breakdown(step)
                print(mode, 'kernel ms per step', round(breakdown['kernel_ms_total'], 2))
                for kernel, ms in list(breakdown['top'].items())[:18]:
                    print(f'  {ms:8.3f} {kernel}')
                print(mode, 'host ms per step (self CPU time, profiled)', round(breakdown['host_ms_total'], 2))
                for op, ms in list(breakdown['host_top'].items())[:12]:
                    print(f'  {ms:8.3f} {op}')
        del model, infer_bf16, infer_fp32, train_bf16
        torch.cuda.empty_cache()
    bs.write_result(result, args.out, 'bench_layout')


if __name__ == '__main__':
    main()
