"""Two-layout SiLU kernel (kernels/silu_layouts.py) against its reference, in Triton's interpreter."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vmamba_zoo.kernels import silu_layouts as sdl

pytest.importorskip('triton')


def _map(shape, dtype, seed=0, channels_last=True):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# (2, 70, 9, 8): two channel blocks, the second partial, and two pixel blocks per image, the second partial.
@pytest.mark.parametrize('shape', [(1, 1, 1, 1), (2, 5, 3, 7), (2, 70, 9, 8), (1, 16, 1, 65)])
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_forward_and_backward_match_the_reference(shape, dtype, tol):
    x = _map(shape, dtype).requires_grad_()
    y, y_cf = sdl.silu_dual_layout(x, backend='triton')
    assert y.is_contiguous(memory_format=torch.channels_last) and y_cf.is_contiguous()
    assert y.dtype == y_cf.dtype == dtype and y.shape == y_cf.shape == x.shape
    x64 = x.detach().double().requires_grad_()
    y_ref, y_cf_ref = sdl.silu_dual_layout_ref(x64)
    assert _rel_err(y, y_ref) < tol and _rel_err(y_cf, y_cf_ref) < tol
    assert torch.equal(y, y_cf)
    gen = torch.Generator().manual_seed(1)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)
    dy_cf = torch.randn(shape, generator=gen, dtype=torch.float64)
    # The scan's gradient comes in float32 whatever the activations' dtype.
    grad, = torch.autograd.grad((y, y_cf), x, (dy.to(dtype), dy_cf.float()))
    grad_ref, = torch.autograd.grad((y_ref, y_cf_ref), x64, (dy, dy_cf))
    assert grad.dtype == dtype and grad.is_contiguous(memory_format=torch.channels_last)
    assert _rel_err(grad, grad_ref) < 5 * tol


@pytest.mark.parametrize('used', ['channel_last', 'channel_first'])
def test_gradient_of_one_output(used):
    x = _map((2, 6, 4, 5), torch.float32).requires_grad_()
    y, y_cf = sdl.silu_dual_layout(x, backend='triton')
    out = y if used == 'channel_last' else y_cf
    grad, = torch.autograd.grad(out.square().sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    grad_ref, = torch.autograd.grad(torch.nn.functional.silu(x_ref).square().sum(), x_ref)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-6)


def test_gradcheck_triton_float64():
    x = _map((1, 3, 2, 5), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sdl.silu_dual_layout(t, backend='triton'), (x,))


def test_channel_first_input_and_the_torch_path():
    """An NCHW input is read as channel-last; the PyTorch path returns the same layouts and values."""
    x = _map((2, 5, 3, 4), torch.float32, channels_last=False)
    y, y_cf = sdl.silu_dual_layout(x, backend='triton')
    y_torch, y_cf_torch = sdl.silu_dual_layout(x, backend='torch')
    assert y_torch.is_contiguous(memory_format=torch.channels_last) and y_cf_torch.is_contiguous()
    torch.testing.assert_close(y, y_torch, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(y_cf, y_cf_torch, rtol=1e-6, atol=1e-7)
    assert sdl.silu_dual_layout(x)[0].device.type == 'cpu'  # 'auto' on CPU tensors: PyTorch


def test_every_output_element_is_written(monkeypatch):
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float('nan')) if t.is_floating_point() else t

    monkeypatch.setattr(torch, 'empty', lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, 'empty_like', lambda *a, **k: poison(real_empty_like(*a, **k)))
    x = _map((2, 70, 3, 5), torch.float32).requires_grad_()
    y, y_cf = sdl.silu_dual_layout(x, backend='triton')
    grad, = torch.autograd.grad((y, y_cf), x, (torch.ones_like(y), torch.ones_like(y_cf)))
    assert not y.isnan().any() and not y_cf.isnan().any() and not grad.isnan().any()


@pytest.mark.parametrize('call, error, message', [
    (lambda: sdl.silu_dual_layout(torch.randn(3, 4)), ValueError, 'x must be a (B, C, H, W) tensor, got (3, 4)'),
    (lambda: sdl.silu_dual_layout(torch.ones(1, 2, 3, 4, dtype=torch.int64)), TypeError,
     'x must be a floating-point tensor'),
    (lambda: sdl.silu_dual_layout(torch.randn(1, 2, 3, 4), backend='cuda'), ValueError, 'backend must be one of'),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message.replace('(', r'\(').replace(')', r'\)')):
        call()


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 2), channels=st.integers(1, 70), height=st.integers(1, 9), width=st.integers(1, 9))
def test_any_shape(batch, channels, height, width):
    x = _map((batch, channels, height, width), torch.float32)
    y, y_cf = sdl.silu_dual_layout(x, backend='triton')
    y_ref, _ = sdl.silu_dual_layout_ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-7)
    assert torch.equal(y, y_cf)
