"""The fused nodes' one-launch weight casts and derived SSM weights (kernels/node_weights.py), in Triton's
interpreter, against the reference and inside the nodes."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from vmamba_zoo.kernels import MAX_CASTS, weight_prep, weight_prep_launch, weight_prep_ref


def _assert_prepared_equal(actual, expected):
    (casts, A, blocks), (casts_ref, A_ref, blocks_ref) = actual, expected
    assert len(casts) == len(casts_ref)
    for i, (cast, cast_ref) in enumerate(zip(casts, casts_ref)):
        assert (cast is None) == (cast_ref is None), i
        if cast is not None:
            assert cast.dtype == cast_ref.dtype and cast.shape == cast_ref.shape, i
            assert torch.equal(cast, cast_ref), i  # a cast rounds one way
    assert (A is None) == (A_ref is None) and (blocks is None) == (blocks_ref is None)
    if A is not None:
        assert A.dtype == torch.float32
        torch.testing.assert_close(A, A_ref, rtol=1e-6, atol=0)
    if blocks is not None:
        assert blocks.dtype == blocks_ref.dtype and torch.equal(blocks, blocks_ref)


@settings(max_examples=12, deadline=None)
@given(k_group=st.integers(1, 4), d_inner=st.integers(1, 9), rank=st.integers(1, 4), extra=st.integers(0, 4),
       d_state=st.sampled_from([1, 16]), dtype=st.sampled_from([torch.float16, torch.float32]),
       sizes=st.lists(st.integers(0, 3000), min_size=0, max_size=MAX_CASTS), with_a=st.booleans(),
       with_blocks=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_weight_prep_equals_reference(k_group, d_inner, rank, extra, d_state, dtype, sizes, with_a, with_blocks,
                                      seed):
    """Casts (bit for bit, some absent, some already in the dtype), ``A = -exp(A_logs)`` and the block-diagonal
    dt_proj matrix (bit for bit, zeros outside the blocks) equal the reference for any shapes; the outputs are
    poisoned with NaN before the kernel writes them."""
    generator = torch.Generator().manual_seed(seed)
    casts = [None if size == 0 else torch.randn(size, generator=generator) for size in sizes]
    if casts:
        casts[0] = None if casts[0] is None else casts[0].to(dtype)  # already in dtype: returned as is
    a_logs = torch.randn(k_group * d_inner, d_state, generator=generator) if with_a else None
    dt = torch.randn(k_group, d_inner, rank, generator=generator) if with_blocks else None
    if not any(t is not None for t in (*casts, a_logs, dt)):
        return
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float('nan'))
    try:
        torch.empty = poisoned_empty
        prepared = weight_prep(casts, dtype, a_logs, dt, rank + extra, backend='triton')
    finally:
        torch.empty = real_empty
    _assert_prepared_equal(prepared, weight_prep_ref(casts, dtype, a_logs, dt, rank + extra))
    if casts and casts[0] is not None:
        assert prepared[0][0] is casts[0]


def test_weight_prep_outputs_are_aligned_views_of_one_buffer():
    """The casts and the block-diagonal matrix share one allocation, each starting 128 bytes past an aligned one
    (GEMM libraries pick slower kernels for less aligned operands; CUDA allocations are 512-byte aligned)."""
    casts = [torch.randn(5, 3), torch.randn(7), torch.randn(2, 1, 3, 3)]
    (c0, c1, c2), A, blocks = weight_prep_launch(casts, torch.float16, torch.randn(6, 1), torch.randn(2, 3, 2), 4)
    base = c0.untyped_storage().data_ptr()
    for t in (c0, c1, c2, blocks):
        assert t.untyped_storage().data_ptr() == base
        assert (t.data_ptr() - base) % 128 == 0 and t.is_contiguous()
    assert A.untyped_storage().data_ptr() != c0.untyped_storage().data_ptr()


def test_weight_prep_switch_runs_the_reference_ops(monkeypatch):
    """``weight_prep_launch.enabled = False`` computes the same with PyTorch's ops (for timing the difference)."""
    casts = [torch.randn(4, 3), None, torch.randn(5)]
    args = (torch.randn(8, 1), torch.randn(2, 4, 3), 5)
    fused = weight_prep_launch(casts, torch.float16, *args)
    monkeypatch.setattr(weight_prep_launch, 'enabled', False)
    _assert_prepared_equal(weight_prep_launch(casts, torch.float16, *args), fused)


@pytest.mark.parametrize('call, message', [
    (lambda: weight_prep([torch.randn(2)] * (MAX_CASTS + 1), torch.float16), 'at most 8 casts'),
    (lambda: weight_prep([torch.ones(2, dtype=torch.int32)], torch.float16), r'casts\[0\] must be a floating'),
    (lambda: weight_prep([torch.randn(2)], torch.int8), 'dtype must be a floating dtype'),
    (lambda: weight_prep([None], torch.float16), 'nothing to prepare'),
    (lambda: weight_prep([], torch.float16, dt_projs_weight=torch.randn(4, 3)), r'dt_projs_weight must be \(K, D, R\)'),
    (lambda: weight_prep([], torch.float16, dt_projs_weight=torch.randn(2, 4, 3), row_width=2),
     'row_width must be at least R=3'),
    (lambda: weight_prep([torch.randn(2)], torch.float16, backend='cuda'), 'backend must be one of'),
    (lambda: weight_prep([torch.randn(2), torch.randn(2, device='meta')], torch.float16), r'casts\[1\] is on meta'),
])
def test_weight_prep_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _node_results(layer, norm, x, cotangent, residual):
    for module in (layer, norm):
        module.zero_grad(set_to_none=True)
    x_in = x.clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=torch.float16):
        out = layer(x_in, norm, residual=residual)
    out.backward(cotangent.to(out.dtype))
    return out, x_in.grad, [p.grad for p in (*layer.parameters(), *norm.parameters())]


@pytest.mark.parametrize('kind', ['ss2d', 'mlp'])
def test_nodes_cast_their_weights_in_one_launch(monkeypatch, kind):
    """Under float16 autocast the SS2D branch node and the MLP node get their weight casts (and SS2D its A and
    block-diagonal dt_proj) from the one-launch kernel: output and every gradient equal the nodes' results with
    the casts and derivations op by op, bit for bit."""
    from vmamba_zoo.kernels import node_weights
    from vmamba_zoo.layers import SS2D, ChannelLastLayerNorm, Mlp, mlp as mlp_module
    monkeypatch.setattr(ChannelLastLayerNorm, 'backend', 'triton')
    monkeypatch.setattr(mlp_module, '_casts_on_triton', lambda weight: True)
    launches = []
    real_launch = node_weights._launch
    monkeypatch.setattr(node_weights, '_launch', lambda *args, **kwargs: launches.append(1) or real_launch(
        *args, **kwargs))
    torch.manual_seed(0)
    layer = SS2D(8, d_state=1, ssm_ratio=1.0, dt_rank=3, use_z_gate=False, bias=True, backend='triton') \
        if kind == 'ss2d' else Mlp(8, 20)
    norm = ChannelLastLayerNorm(8)
    x, cotangent = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(weight_prep_launch, 'enabled', enabled)
        launches.clear()
        results[enabled] = _node_results(layer, norm, x, cotangent, residual=True)
        assert len(launches) == int(enabled)
    (out, dx, grads), (out_ref, dx_ref, grads_ref) = results[True], results[False]
    assert torch.equal(out, out_ref) and torch.equal(dx, dx_ref)
    for grad, grad_ref in zip(grads, grads_ref):
        assert grad.dtype == grad_ref.dtype and torch.equal(grad, grad_ref)
