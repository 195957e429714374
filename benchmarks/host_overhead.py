"""Host (CPU) time of an eager step: where a GPU step that waits on Python goes.

For each model, at a batch small enough that the GPU finishes every kernel before the host issues the next one:

* ms per bf16 training step (forward + loss + backward + SGD step) and per bf16 inference step between CUDA events
  (``bench_layout.timed_ms``), which is then the host's time to issue the step;
* CUDA kernels launched per step (profiler count);
* the Python functions with the most own time in one training step (``cProfile``), which names the wrappers, kernel
  launchers and autograd functions that cost host time.

First it checks VMamba-T's logits and gradients with the kernels launched through ``CachedLaunch`` against the JIT
path, and with each fused node (SS2D's core, the whole SS2D branch, the MLP) against the modules.

Usage: python benchmarks/host_overhead.py [--batch 8] [--out OUT.json] [--check-only] [MODEL ...]
    (default models: vmamba_tiny_s1l8 vmamba_tiny_s1l8:scan_node convnext_tiny; ':composite' runs every layer op by
    op, ':scan_node' SS2D's core and the MLP as nodes without the pre-norms and SS2D's other layers)
"""
import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_layout as bl  # noqa: E402
import bench_scan as bs  # noqa: E402


def kernels_per_step(step):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def python_profile(step, rows=35):
    """Functions by own time over 3 steps: (own ms per step, cumulative ms per step, calls per step, name)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    table = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        where = f'{Path(filename).name}:{line}({name})' if line else name
        table.append((own * 1e3 / 3, cumulative * 1e3 / 3, calls / 3, where))
    table.sort(key=lambda row: -row[0])
    return [dict(own_ms=round(own, 3), cum_ms=round(cum, 3), calls=calls, fn=where)
            for own, cum, calls, where in table[:rows]]


def check_switches(batch: int) -> dict:
    """VMamba-T's inference logits, training logits and gradients with each host-time switch on against off: kernels
    launched through ``CachedLaunch`` against the JIT path, SS2D's projections and scan as one autograd node
    (``SS2D.fused_scan_node``), the pre-norm and whole SS2D as one (``SS2D.fused_branch_node``) and the pre-norm and
    MLP as one (``Mlp.fused_node``) against the modules. Also whether the cached path stayed on (it turns itself off
    if the launcher rejects a call)."""
    import timm
    from vmamba_zoo.kernels._triton_utils import CachedLaunch
    from vmamba_zoo.layers import SS2D, Mlp
    torch.manual_seed(0)
    model = timm.create_model('vmamba_tiny_s1l8', drop_path_rate=0.0).cuda()
    images = torch.randn(batch, 3, 224, 224, device='cuda')

    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast('cuda', torch.bfloat16):
            with torch.no_grad():
                inference_logits = model(images)
            logits = model(images)
        logits.float().square().mean().backward()
        return [inference_logits.float(), logits.float()] + [p.grad.float() for p in model.parameters()]

    def max_rel_diff(tested, reference):
        return max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(tested, reference))

    result = {}
    switches = (('cached_launch', CachedLaunch, 'enabled'), ('fused_scan_node', SS2D, 'fused_scan_node'),
                ('fused_branch_node', SS2D, 'fused_branch_node'), ('mlp_fused_node', Mlp, 'fused_node'))
    for switch, owner, attribute in switches:
        setattr(owner, attribute, False)
        reference = run()
        setattr(owner, attribute, True)
        run()  # compiles or finds each specialization through the JIT path, then keeps it
        result[f'{switch}_max_rel_diff_logits_and_grads'] = max_rel_diff(run(), reference)
    result['cached_launch_still_enabled'] = CachedLaunch.enabled
    return result


def measure(name: str, batch: int) -> dict:
    """Host time of ``name`` (a timm or zoo model; ``vmamba_tiny_s1l8:composite`` runs every layer op by op,
    ``vmamba_tiny_s1l8:scan_node`` only SS2D's core and the MLP as nodes, without the pre-norms and SS2D's other
    layers)."""
    import timm
    name, _, variant = name.partition(':')
    bl.set_variant(variant)
    model = timm.create_model(name, drop_path_rate=0.0).cuda()
    images = torch.randn(batch, 3, 224, 224, device='cuda')
    target = torch.randint(0, 1000, (batch,), device='cuda')
    infer, _, train = bl.steps(model, images, target)  # bf16 inference, fp32 inference, bf16 training

    row = {'batch': batch, 'train_ms': bl.timed_ms(train, 20, warm=5), 'train_kernels': kernels_per_step(train)}
    row['python_top_train'] = python_profile(train)
    model.eval()
    row['infer_ms'] = bl.timed_ms(infer, 20, warm=5)
    row['infer_kernels'] = kernels_per_step(infer)
    row['python_top_infer'] = python_profile(infer, rows=20)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('models', nargs='*',
                        default=['vmamba_tiny_s1l8', 'vmamba_tiny_s1l8:scan_node', 'convnext_tiny'])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--out', default='')
    parser.add_argument('--check-only', action='store_true', help='only compare the switches on and off')
    args = parser.parse_args()
    bs.import_kernels()
    import vmamba_zoo  # noqa: F401  (registers the models)
    torch.backends.cudnn.benchmark = True
    result = {'gpu': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d'),
              'models': {}}
    result['switch_checks'] = check = check_switches(args.batch)
    print('switches on vs off:', check, flush=True)
    for name in [] if args.check_only else args.models:
        result['models'][name] = row = measure(name, args.batch)
        print(f"{name}: batch {row['batch']}: train {row['train_ms']:.2f} ms, {row['train_kernels']} kernels; "
              f"infer {row['infer_ms']:.2f} ms, {row['infer_kernels']} kernels", flush=True)
        for entry in row['python_top_train'][:25]:
            print(f"   {entry['own_ms']:8.3f} {entry['cum_ms']:8.3f} {entry['calls']:7.1f} {entry['fn']}")
    bs.write_result(result, args.out, 'host_overhead')


if __name__ == '__main__':
    main()
