"""Linear layer with its activation in the epilogue (kernels/fused_linear.py) against its reference, in Triton's
interpreter."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vmamba_zoo.kernels import fused_linear as la

pytest.importorskip('triton')


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def _rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# 37 rows: three row blocks of 16, the last partial; 40 outputs and 24 inputs: partial column and K blocks.
@pytest.mark.parametrize('act', la.ACTIVATIONS)
@pytest.mark.parametrize('with_bias', [True, False])
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_forward_and_backward_match_the_reference(act, with_bias, dtype, tol):
    x = _randn(37, 24, dtype=dtype).requires_grad_()
    weight = _randn(40, 24, seed=1, scale=0.3).requires_grad_()  # a float32 parameter, as under autocast
    bias = _randn(40, seed=2).requires_grad_() if with_bias else None
    out = la.linear_act(x, weight, bias, act, backend='triton')
    assert out.dtype == dtype and out.shape == (37, 40)
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().to(dtype).double().requires_grad_()
    b64 = bias.detach().to(dtype).double().requires_grad_() if with_bias else None
    ref = la.linear_act_ref(x64, w64, b64, act)
    assert _rel_err(out, ref) < tol
    cotangent = _randn(37, 40, seed=3)
    inputs = (x, weight) + ((bias,) if with_bias else ())
    grads = torch.autograd.grad(out, inputs, cotangent.to(dtype))
    grads_ref = torch.autograd.grad(ref, (x64, w64) + ((b64,) if with_bias else ()), cotangent.double())
    assert grads[0].dtype == dtype and all(g.dtype == torch.float32 for g in grads[1:])
    for grad, grad_ref in zip(grads, grads_ref):
        assert _rel_err(grad, grad_ref) < 5 * tol


@pytest.mark.parametrize('act', ['gelu', 'gelu_tanh'])
def test_forward_equals_the_composite_path_on_16_bit_rounding(act):
    """The kernel rounds the pre-activation to the output dtype before GELU, as ``gelu(addmm(...))`` in float16
    does; the stored pre-activation is that rounded value."""
    x, weight, bias = _randn(33, 16, dtype=torch.float16), _randn(24, 16, seed=1), _randn(24, seed=2)
    out, pre = la.linear_act_forward(x, weight, bias, act, store_pre=True)
    pre_ref = (x.double() @ weight.half().double().t() + bias.half().double()).half()
    torch.testing.assert_close(pre, pre_ref, rtol=1e-3, atol=1e-3)
    out_ref = F.gelu(pre.float(), approximate='tanh' if act == 'gelu_tanh' else 'none').half()
    torch.testing.assert_close(out, out_ref, rtol=1e-3, atol=1e-5)  # erf's last bits differ between libraries


@pytest.mark.parametrize('act', la.ACTIVATIONS)
def test_input_grad_applies_the_activation_derivative(act):
    """``linear_input_grad(dy, W, pre, act)`` is ``gelu_backward(dy @ W, pre)`` with the product rounded first."""
    grad, weight = _randn(37, 40, dtype=torch.float16), _randn(40, 24, seed=1, scale=0.3)
    pre = _randn(37, 24, dtype=torch.float16, seed=2)
    out = la.linear_input_grad(grad, weight, pre if act != 'none' else None, act)
    product = (grad.double() @ weight.half().double()).half()
    expected = product if act == 'none' else torch.ops.aten.gelu_backward(
        product.float(), pre.float(), approximate='tanh' if act == 'gelu_tanh' else 'none').half()
    assert out.dtype == torch.float16 and out.shape == (37, 24)
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)


def test_gradcheck_reference_float64():
    x, weight, bias = _randn(5, 6, dtype=torch.float64), _randn(4, 6, dtype=torch.float64, seed=1), \
        _randn(4, dtype=torch.float64, seed=2)
    for act in la.ACTIVATIONS:
        assert torch.autograd.gradcheck(lambda *t: la.linear_act_ref(*t, act=act),
                                        (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()))


def test_leading_dims_and_the_torch_path():
    """(..., K) inputs keep their leading dims; 'auto' on CPU tensors and 'torch' run the reference."""
    x, weight = _randn(2, 3, 5, 16), _randn(24, 16, seed=1)
    out = la.linear_act(x, weight, act='gelu', backend='triton')
    assert out.shape == (2, 3, 5, 24)
    torch.testing.assert_close(out, la.linear_act(x, weight, act='gelu', backend='torch'), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(la.linear_act(x, weight, act='gelu'), la.linear_act_ref(x, weight, act='gelu'))


def test_every_output_element_is_written(monkeypatch):
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float('nan')) if t.is_floating_point() else t

    monkeypatch.setattr(torch, 'empty', lambda *a, **k: poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, 'empty_like', lambda *a, **k: poison(real_empty_like(*a, **k)))
    x, weight = _randn(37, 24).requires_grad_(), _randn(40, 24, seed=1).requires_grad_()
    out = la.linear_act(x, weight, act='gelu', backend='triton')
    dx, = torch.autograd.grad(out, x, torch.ones_like(out))
    assert not out.isnan().any() and not dx.isnan().any()
    out, pre = la.linear_act_forward(x.detach(), weight.detach(), act='gelu', store_pre=True)
    grad = la.linear_input_grad(out, weight.detach().t().contiguous(), _randn(37, 24, seed=4), 'gelu')
    assert not pre.isnan().any() and not grad.isnan().any()


@pytest.mark.parametrize('call, message', [
    (lambda: la.linear_act(torch.ones(3, 4, dtype=torch.int64), torch.randn(2, 4)), 'x must be a floating-point'),
    (lambda: la.linear_act(torch.randn(3, 4), torch.randn(2, 5)), 'weight must be (N, 4)'),
    (lambda: la.linear_act(torch.randn(3, 4), torch.randn(2, 4), torch.randn(3)), 'bias must be (2,)'),
    (lambda: la.linear_act(torch.randn(3, 4), torch.randn(2, 4), act='relu'), 'act must be one of'),
    (lambda: la.linear_act(torch.randn(3, 4), torch.randn(2, 4), backend='cuda'), 'backend must be one of'),
    (lambda: la.linear_act(torch.randn(3, 4), torch.randn(2, 4, device='meta')), "must be on x's device"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        call()


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 40), n_in=st.integers(1, 40), n_out=st.integers(1, 40),
       act=st.sampled_from(la.ACTIVATIONS), with_bias=st.booleans())
def test_any_shape(rows, n_in, n_out, act, with_bias):
    x, weight = _randn(rows, n_in), _randn(n_out, n_in, seed=1)
    bias = _randn(n_out, seed=2) if with_bias else None
    torch.testing.assert_close(la.linear_act(x, weight, bias, act, backend='triton'),
                               la.linear_act_ref(x, weight, bias, act), rtol=1e-5, atol=1e-5)
