"""timm-contract checks shared by the tests of the channel-last hierarchical families (EfficientVMamba, MSVMamba)."""
import pytest
import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vmamba_zoo  # noqa: F401  (registers the models)


class ScanOpSpy(TorchDispatchMode):
    """Counts calls of the shared core's scan op (``torch.ops.vmamba_zoo.scan_routes_fwd``)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().startswith('vmamba_zoo::scan_routes_fwd'):
            self.calls += 1
        return func(*args, **(kwargs or {}))


def check_timm_contract(name: str, **small):
    """Shapes and methods of the timm model contract on a small configuration of ``name``."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **small).eval()
    dims = [info['num_chs'] for info in model.feature_info]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        assert features.shape == (2, 2, 3, dims[-1])  # NHWC, stride 32
        assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
        assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
        final, inters = model.forward_intermediates(x)
        assert [t.shape for t in inters] == [(2, d, 16 // 2 ** i, 24 // 2 ** i) for i, d in enumerate(dims)]
        assert torch.allclose(final, features, atol=1e-5)
        only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True, output_fmt='NHWC')
        assert [t.shape for t in only] == [(2, 8, 12, dims[1]), (2, 2, 3, dims[3])]
        assert torch.allclose(model(x.contiguous(memory_format=torch.channels_last)), logits, atol=1e-5)
    assert logits.shape == (2, 7)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, dims[-1])
    model.reset_classifier(5, '')
    with torch.no_grad():
        assert model(x).shape == (2, 2, 3, 5)
    groups = model.group_matcher()
    assert groups['stem'] == r'^stem'
    state = model.state_dict()
    cfg = model.pretrained_cfg
    assert cfg['first_conv'] + '.weight' in state and cfg['classifier'] + '.weight' in state


def check_features_only(name: str, **small):
    model = timm.create_model(name, features_only=True, **small).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 128))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 32), (8, 16), (4, 8), (2, 4)]


def check_grad_checkpointing(name: str, **small):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **small).train()
    for module in model.modules():  # BatchNorm statistics would differ between the two passes
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    x = torch.randn(1, 3, 32, 64)
    reference = model(x)
    reference.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    output = model(x)
    output.sum().backward()
    assert torch.allclose(output, reference, atol=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-4, rtol=1e-3), n


def check_bad_inputs(name: str, **small):
    model = timm.create_model(name, **small).eval()
    with pytest.raises(ValueError, match='expects in_chans=3'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='4-D'):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='divisible by the patch stride'):
        model(torch.randn(1, 3, 66, 64))
