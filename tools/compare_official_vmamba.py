"""Compare vmamba_zoo's VMamba logits with the official implementation, fed the same random weights.

The official ``classification/models/vmamba.py`` is imported from a user-given checkout of MzeroMiko/VMamba (it is
not vendored). Without its CUDA extensions it falls back to its own PyTorch selective scan; its cross-scan/merge
wrappers enter ``torch.cuda.device(x.device)``, which fails for CPU tensors, so this script points the official
module at its own PyTorch ``CrossScanF``/``CrossMergeF`` at runtime.

Usage::

    python tools/compare_official_vmamba.py --official-repo /tmp/official_vmamba --model vmamba_tiny_s1l8
"""
import argparse
import importlib
import os
import sys
import warnings

import torch

import timm

import vmamba_zoo  # noqa: F401  (registers the models)
from vmamba_zoo.models.vmamba import checkpoint_filter_fn


def import_official(repo: str):
    """Import the official ``classification/models/vmamba.py`` with CPU-safe cross-scan/merge."""
    models_dir = os.path.join(repo, 'classification', 'models')
    if not os.path.isfile(os.path.join(models_dir, 'vmamba.py')):
        raise FileNotFoundError(f'{models_dir}/vmamba.py not found; pass the root of a MzeroMiko/VMamba checkout')
    sys.path.insert(0, models_dir)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        official = importlib.import_module('vmamba')
        csm = importlib.import_module('csm_triton')

    def cross_scan_cpu(x, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0, **_):
        return csm.CrossScanF.apply(x, in_channel_first, out_channel_first, one_by_one, scans)

    def cross_merge_cpu(y, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0, **_):
        return csm.CrossMergeF.apply(y, in_channel_first, out_channel_first, one_by_one, scans)

    official.cross_scan_fn = cross_scan_cpu
    official.cross_merge_fn = cross_merge_cpu
    return official


@torch.no_grad()
def randomize_(model: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> None:
    """Perturb every parameter and buffer so that no norm is the identity and no bias is zero."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=gen) * scale
        if name.endswith('A_logs'):
            tensor.add_(noise * 10)  # keep A = -exp(A_logs) in the trained range
        else:
            tensor.add_(noise)


def compare(official, name: str, input_size, batch: int = 2, seed: int = 0):
    """Build both models, copy the official random weights into ours, return (max abs diff, max abs logit)."""
    torch.manual_seed(seed)
    ref = getattr(official, name)().eval()
    randomize_(ref, seed=seed)
    ours = timm.create_model(name).eval()
    state = checkpoint_filter_fn({'model': ref.state_dict()}, ours)
    result = ours.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    x = torch.randn(batch, 3, *input_size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        y_ref = ref(x)
        y_ours = ours(x)
    return (y_ref - y_ours).abs().max().item(), y_ref.abs().max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official-repo', required=True, help='root of a MzeroMiko/VMamba checkout')
    parser.add_argument('--model', action='append', required=True,
                        help='model name, e.g. vmamba_tiny_s1l8 (repeat for several)')
    parser.add_argument('--input-size', type=int, nargs=2, default=(64, 96), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    official = import_official(args.official_repo)
    for name in args.model:
        diff, scale = compare(official, name, tuple(args.input_size), args.batch, args.seed)
        print(f'{name}: input {args.batch}x3x{args.input_size[0]}x{args.input_size[1]}, '
              f'max |logit official - ours| = {diff:.3e} (max |logit| = {scale:.3e})', flush=True)


if __name__ == '__main__':
    main()
