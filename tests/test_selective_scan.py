"""The selective-scan core: Triton (through the CPU interpreter) and the chunked PyTorch path against the sequential
reference, fused 2D routes against the plain permute-scan-merge, gradients, input checks and FLOP counting."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import vmamba_zoo.kernels as K
from vmamba_zoo.kernels import selective_scan as ss

TRITON_DTYPES = (torch.float32, torch.float16)


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3}[dtype]


def assert_close(actual, expected, dtype, what):
    assert torch.isfinite(actual).all(), f'{what}: non-finite values'
    err = ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-12)).item()
    assert err < _tol(dtype), f'{what}: relative error {err:.2e}'


def mamba_inputs(batch, dim, length, groups, state_dim, dtype, with_z, with_D, with_bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, length, generator=gen).to(dtype)
    delta = (0.5 * torch.randn(batch, dim, length, generator=gen)).to(dtype)
    A = -torch.exp(0.5 * torch.randn(dim, state_dim, generator=gen))
    shape = (batch, state_dim, length) if groups == 0 else (batch, groups, state_dim, length)
    B = torch.randn(*shape, generator=gen).to(dtype)
    C = torch.randn(*shape, generator=gen).to(dtype)
    D = torch.randn(dim, generator=gen) if with_D else None
    z = torch.randn(batch, dim, length, generator=gen).to(dtype) if with_z else None
    bias = 0.1 * torch.randn(dim, generator=gen) if with_bias else None
    return u, delta, A, B, C, D, z, bias


def grads_of(out, inputs, cotangent):
    leaves = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, leaves, cotangent.to(out.dtype))


class _Launches:
    """A kernel stand-in that records its name at each launch."""

    def __init__(self, name, kernel, launched):
        self.name, self.kernel, self.launched = name, kernel, launched

    def __getitem__(self, grid):
        self.launched.append(self.name)
        return self.kernel[grid]


# groups == 0 means B/C of shape (batch, N, L).
MAMBA_CASES = [
    # backend, dtype, groups, N, z, D, bias, L
    ('triton', torch.float32, 1, 1, False, True, True, 37),
    ('triton', torch.float32, 2, 16, True, True, False, 13),
    ('triton', torch.float32, 4, 1, False, False, True, 9),
    ('triton', torch.float32, 0, 16, True, False, False, 17),
    ('triton', torch.float16, 4, 16, False, True, True, 11),
    ('triton', torch.float16, 2, 1, True, True, True, 15),
    ('torch', torch.float32, 4, 16, True, True, True, 37),
    ('torch', torch.float32, 1, 1, False, False, False, 5),
    ('torch', torch.float16, 2, 16, True, False, True, 19),
]


@pytest.mark.parametrize('backend,dtype,groups,state_dim,with_z,with_D,with_bias,length', MAMBA_CASES)
def test_selective_scan_fn_matches_reference(backend, dtype, groups, state_dim, with_z, with_D, with_bias, length):
    dim = 8 if groups != 4 else 12
    batch = 1 if backend == 'triton' else 2  # the interpreter runs programs one by one
    inputs = mamba_inputs(batch, dim, length, groups, state_dim, dtype, with_z, with_D, with_bias, seed=length)
    inputs = [t.requires_grad_(True) if t is not None else None for t in inputs]
    u, delta, A, B, C, D, z, bias = inputs
    out, last = K.selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True,
                                    backend=backend)
    ref_inputs = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    ref, ref_last = K.selective_scan_ref(*ref_inputs, delta_softplus=True, return_last_state=True)
    assert out.dtype == dtype and out.shape == (batch, dim, length)
    assert last.dtype == torch.float32 and last.shape == (batch, dim, state_dim)
    assert_close(out, ref, dtype, 'out')
    assert_close(last, ref_last, dtype, 'last_state')
    cotangent = torch.randn_like(ref)
    for name, got, want in zip('u delta A B C D z bias'.split(), grads_of(out, inputs, cotangent),
                               grads_of(ref, ref_inputs, cotangent)):
        assert_close(got, want, dtype, f'd{name}')


@pytest.mark.parametrize('length,summaries', [(11, False), (16, False), (17, True)])
def test_one_chunk_backward_skips_the_chunk_summaries(monkeypatch, length, summaries):
    """A route of one chunk (the interpreter's chunks hold 16 steps) has no chunk to its right, so its backward runs
    no chunk summaries; the gradients, that of the last state included, still match the reference."""
    launched = []

    class Watch:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            launched.append(grid)
            return self.kernel[grid]

    for name in ('_chunk_summary_bwd_kernel', '_chunk_summary_bwd_contiguous_kernel'):  # routed and route-ordered
        monkeypatch.setattr(ss, name, Watch(getattr(ss, name)))
    inputs = mamba_inputs(1, 8, length, 2, 16, torch.float32, True, True, True, seed=3)
    inputs = [t.requires_grad_(True) for t in inputs]
    out, last = K.selective_scan_fn(*inputs[:7], delta_bias=inputs[7], delta_softplus=True, return_last_state=True,
                                    backend='triton')
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    ref, ref_last = K.selective_scan_ref(*ref_inputs[:7], delta_bias=ref_inputs[7], delta_softplus=True,
                                         return_last_state=True)
    gen = torch.Generator().manual_seed(4)
    cot, cot_last = torch.randn(ref.shape, generator=gen), torch.randn(ref_last.shape, generator=gen)
    got = torch.autograd.grad((out * cot).sum() + (last * cot_last).sum(), inputs)
    want = torch.autograd.grad((ref * cot).sum() + (ref_last * cot_last).sum(), ref_inputs)
    for name, g, w in zip('u delta A B C D z bias'.split(), got, want):
        assert_close(g, w, torch.float32, f'd{name}')
    assert bool(launched) == summaries


PATTERN_FACTORIES = {
    'cross': lambda: K.cross_pattern(3, 7),
    'bidirectional': lambda: K.bidirectional_pattern(3, 5),
    'unidirectional': lambda: K.unidirectional_pattern(4, 5),
    'atrous': lambda: K.atrous_pattern(4, 6, 2),
    'multiscale_half': lambda: K.multiscale_patterns(5, 9)[1],
    'custom_revisiting': lambda: K.custom_pattern(
        torch.tensor([[0, 3, 5, 3, 1, 0, 2, 4, 5], [5, 4, 3, 2, 1, 0, 0, 1, 2]]), 2, 3),
}


def routed_inputs(pattern, dim, state_dim, dtype, shared=True, seed=0, batch=1):
    gen = torch.Generator().manual_seed(seed)
    num_routes, (height, width) = pattern.num_routes, (pattern.height, pattern.width)
    x = torch.randn(batch, *(() if shared else (num_routes,)), dim, height, width, generator=gen).to(dtype)
    delta = (0.5 * torch.randn(batch, num_routes, dim, height, width, generator=gen)).to(dtype)
    A = -torch.exp(0.5 * torch.randn(num_routes * dim, state_dim, generator=gen))
    B = torch.randn(batch, num_routes, state_dim, height, width, generator=gen).to(dtype)
    C = torch.randn(batch, num_routes, state_dim, height, width, generator=gen).to(dtype)
    D = torch.randn(num_routes * dim, generator=gen)
    bias = 0.1 * torch.randn(num_routes * dim, generator=gen)
    return [t.requires_grad_(True) for t in (x, delta, A, B, C, D, bias)]


FUSED_CASES = [(name, 'triton', torch.float32, 1) for name in sorted(PATTERN_FACTORIES)] + [
    (name, 'torch', torch.float32, 16) for name in sorted(PATTERN_FACTORIES)] + [('cross', 'triton', torch.float16, 16)]


@pytest.mark.parametrize('pattern_name,backend,dtype,state_dim', FUSED_CASES)
def test_fused_routes_match_plain_and_reference(pattern_name, backend, dtype, state_dim):
    pattern = PATTERN_FACTORIES[pattern_name]()
    inputs = routed_inputs(pattern, 4, state_dim, dtype, seed=state_dim)
    x, delta, A, B, C, D, bias = inputs
    fused = K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                            backend=backend)
    plain = K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                            fused=False, backend=backend)
    ref_inputs = [t.detach().double() for t in inputs]
    positions = pattern.num_positions
    ref = K.scan_routes_ref(
        ref_inputs[0].reshape(1, 1, 4, positions), ref_inputs[1].reshape(1, pattern.num_routes, 4, positions),
        ref_inputs[2].view(pattern.num_routes, 4, -1), ref_inputs[3].flatten(3), ref_inputs[4].flatten(3),
        D=ref_inputs[5].view(pattern.num_routes, 4), delta_bias=ref_inputs[6].view(pattern.num_routes, 4),
        routes=pattern.routes, delta_softplus=True).view_as(fused)
    assert fused.dtype == torch.float32
    assert_close(fused, ref, dtype, 'fused')
    assert_close(plain, ref, dtype, 'plain')
    cotangent = torch.randn_like(fused)
    for name, got, want in zip('x delta A B C D bias'.split(), grads_of(fused, inputs, cotangent),
                               grads_of(plain, inputs, cotangent)):
        assert_close(got, want, dtype, f'd{name} fused vs plain')


@pytest.mark.parametrize('backend', ['triton', 'torch'])
def test_hidden_states_at_every_position(backend):
    """Spatial-Mamba fuses the states: they must equal the reference recurrence, with gradients."""
    pattern = K.unidirectional_pattern(4, 5)
    inputs = routed_inputs(pattern, 3, 2, torch.float32, seed=3)
    x, delta, A, B, C, D, bias = inputs
    y, states = K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                                return_states=True, backend=backend)
    assert states.shape == (1, 1, 3, 2, 4, 5)
    # Sequential recurrence for the single raster route.
    dt = torch.nn.functional.softplus(delta.detach().double()[:, 0].flatten(2) + bias.detach().double()[:, None])
    u = x.detach().double().flatten(2)
    h = torch.zeros(1, 3, 2, dtype=torch.float64)
    expected = []
    for t in range(20):
        h = torch.exp(dt[:, :, t, None] * A.detach().double()) * h + (dt[:, :, t] * u[:, :, t])[..., None] * \
            B.detach().double()[:, 0, :, t // 5, t % 5][:, None]
        expected.append(h)
    expected = torch.stack(expected, -1).view(1, 3, 2, 4, 5)
    assert_close(states[:, 0], expected, torch.float32, 'states')
    weight = torch.randn_like(states)
    grads = torch.autograd.grad((states * weight).sum() + y.sum(), inputs)
    ref_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    y_t, states_t = K.multi_scan_2d(*ref_inputs[:6], delta_bias=ref_inputs[6], delta_softplus=True, pattern=pattern,
                                    return_states=True, backend='torch', fused=False)
    ref_grads = torch.autograd.grad((states_t * weight).sum() + y_t.sum(), ref_inputs)
    for name, got, want in zip('x delta A B C D bias'.split(), grads, ref_grads):
        assert_close(got, want, torch.float32, f'd{name}')


def test_gradcheck_reference_float64():
    inputs = mamba_inputs(1, 4, 6, 2, 3, torch.float64, True, True, True, seed=1)
    inputs = tuple(t.double().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(
        lambda *a: K.selective_scan_ref(*a, delta_softplus=True), inputs, eps=1e-6, atol=1e-6)


def test_gradcheck_chunked_path_float64():
    pattern = K.cross_pattern(2, 3)
    inputs = tuple(t.detach().double().requires_grad_(True)
                   for t in routed_inputs(pattern, 2, 2, torch.float32, batch=2))
    assert torch.autograd.gradcheck(
        lambda x, dt, A, B, C, D, bias: K.multi_scan_2d(x, dt, A, B, C, D, delta_bias=bias, delta_softplus=True,
                                                        pattern=pattern, backend='torch', out_dtype=None),
        inputs, eps=1e-6, atol=1e-6)


def _revisiting_pattern():
    forward = torch.arange(16)
    return K.custom_pattern(torch.stack([torch.cat([forward, torch.tensor([3, 7])]),
                                         torch.cat([forward.flip(0), torch.tensor([0, 0])])]), 4, 4, name='revisit')


@pytest.mark.parametrize('pattern_name,shared,accumulate', [('revisit', True, True), ('revisit', False, True),
                                                            ('cross', False, False), ('atrous', True, False)])
def test_gradcheck_chunked_path_states_and_last_state_float64(pattern_name, shared, accumulate):
    """The PyTorch path's written-out backward, through the output, the last state and the hidden states, on routes
    that revisit positions, with one input per route and with separate route outputs."""
    pattern = _revisiting_pattern() if pattern_name == 'revisit' else K.get_pattern(pattern_name, 4, 4)
    num_routes, positions = pattern.num_routes, 16
    x, delta, A, B, C, D, bias = (t.detach().double() for t in routed_inputs(
        pattern, 2, 2, torch.float32, shared=shared, batch=1))
    inputs = (x.reshape(1, -1, 2, positions), delta.flatten(3), A.view(num_routes, 2, -1), B.flatten(3),
              C.flatten(3), D.view(num_routes, 2), bias.view(num_routes, 2))
    inputs = tuple(t.requires_grad_(True) for t in inputs)

    def scan(*args):
        # Hidden states are kept per position, so a route that revisits one returns only its states there.
        return K.scan_routes(*args[:5], D=args[5], delta_bias=args[6], routes=pattern.routes_on('cpu'),
                             delta_softplus=True, accumulate=accumulate, return_states=pattern_name != 'revisit',
                             return_last_state=True, backend='torch')

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-6)


def test_flop_counter_around_a_cpu_training_step():
    """FlopCounterMode sees the scan's backward run on CPU (torch.func could not run under a dispatch mode)."""
    from torch.utils.flop_counter import FlopCounterMode
    pattern = K.cross_pattern(3, 4)
    inputs = routed_inputs(pattern, 2, 1, torch.float32)
    with FlopCounterMode(display=False) as counter:
        y = K.multi_scan_2d(*inputs[:6], delta_bias=inputs[6], delta_softplus=True, pattern=pattern)
        y.sum().backward()
    assert counter.get_total_flops() > 0 and all(t.grad is not None for t in inputs)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), groups=st.sampled_from([0, 1, 2, 4]), per_group=st.integers(1, 3),
       length=st.integers(1, 40), state_dim=st.sampled_from([1, 2, 5, 16]), softplus=st.booleans())
def test_chunked_path_matches_reference_on_any_shape(batch, groups, per_group, length, state_dim, softplus):
    dim = max(groups, 1) * per_group
    inputs = [t.double() for t in mamba_inputs(batch, dim, length, groups, state_dim, torch.float64, True, True, True)]
    out = K.selective_scan_fn(*inputs, delta_softplus=softplus, backend='torch')
    ref = K.selective_scan_ref(*inputs, delta_softplus=softplus)
    assert_close(out, ref, torch.float64, 'out')


@pytest.mark.parametrize('length', [1, 15, 16, 17, 255, 256, 257, 300])
def test_block_composition_matches_the_recurrence(length):
    """The CPU path's two-level composition (groups of 16, then the groups' totals, padded with identity steps) gives
    every state of h_t = decay_t h_{t-1} + drive_t, as the step-by-step loop does."""
    gen = torch.Generator().manual_seed(length)
    decay = torch.rand(2, 3, length, 2, generator=gen, dtype=torch.float64)
    drive = torch.randn(2, 3, length, 2, generator=gen, dtype=torch.float64)
    composed_decay, states = ss._compose_block(decay, drive)
    state, expected = torch.zeros(2, 3, 2, dtype=torch.float64), []
    for step in range(length):
        state = decay[..., step, :] * state + drive[..., step, :]
        expected.append(state)
    torch.testing.assert_close(states, torch.stack(expected, dim=-2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(composed_decay, decay.cumprod(dim=-2), rtol=1e-12, atol=1e-12)


def test_cpu_softplus_keeps_the_absolute_error_of_f_softplus():
    x = torch.linspace(-40, 40, 100_001)
    exact = F.softplus(x.double())
    fast_error = (ss._softplus_torch(x).double() - exact).abs().max().item()
    torch_error = (F.softplus(x).double() - exact).abs().max().item()
    assert fast_error <= 2 * torch_error + 1e-7, (fast_error, torch_error)
    assert torch.equal(ss._softplus_torch(x.double()), exact)  # float64 stays F.softplus
    assert ss._softplus_torch(x.half()).dtype == torch.float16


@settings(max_examples=4, deadline=None)
@given(groups=st.sampled_from([1, 2, 4]), length=st.integers(1, 35), state_dim=st.sampled_from([1, 3, 16]))
def test_triton_matches_reference_on_any_shape(groups, length, state_dim):
    inputs = mamba_inputs(1, 2 * groups, length, groups, state_dim, torch.float32, False, True, True)
    out = K.selective_scan_fn(*inputs, delta_softplus=True, backend='triton')
    ref = K.selective_scan_ref(*[t.double() if t is not None else None for t in inputs], delta_softplus=True)
    assert_close(out, ref, torch.float32, 'out')


def test_triton_writes_every_output_element(monkeypatch):
    """Poison every buffer the kernels allocate uninitialised: a skipped element would surface as NaN."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def poisoned_empty(*args, **kwargs):
        return real_empty(*args, **kwargs).fill_(float('nan'))

    def poisoned_empty_like(*args, **kwargs):
        return real_empty_like(*args, **kwargs).fill_(float('nan'))

    monkeypatch.setattr(torch, 'empty', poisoned_empty)
    monkeypatch.setattr(torch, 'empty_like', poisoned_empty_like)
    inputs = routed_inputs(K.unidirectional_pattern(3, 7), 4, 3, torch.float32, shared=False)
    x, delta, A, B, C, D, bias = inputs
    u, dt = x.flatten(3), delta.flatten(3)
    y, states, last = K.scan_routes(u, dt, A.view(1, 4, 3), B.flatten(3), C.flatten(3), D.view(1, 4),
                                    bias.view(1, 4), delta_softplus=True, accumulate=False, return_states=True,
                                    return_last_state=True, backend='triton')
    for name, t in (('y', y), ('states', states), ('last_state', last)):
        assert torch.isfinite(t).all(), f'{name} has unwritten elements'
    grads = torch.autograd.grad(y.sum() + states.sum() + last.sum(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)
    monkeypatch.undo()
    ref = K.scan_routes_ref(u.detach(), dt.detach(), A.detach().view(1, 4, 3), B.detach().flatten(3),
                            C.detach().flatten(3), D.detach().view(1, 4), bias.detach().view(1, 4),
                            delta_softplus=True, accumulate=False)
    assert_close(y, ref, torch.float32, 'y')


def test_patterns_follow_their_definitions():
    cross = K.cross_pattern(2, 3)
    assert cross.routes.tolist() == [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    atrous = K.atrous_pattern(4, 4, 2)
    assert sorted(atrous.routes.flatten().tolist()) == list(range(16))
    assert atrous.routes[0].tolist() == [0, 2, 8, 10] and atrous.routes[3].tolist() == [5, 13, 7, 15]
    full, half = K.multiscale_patterns(5, 6)
    assert full.routes.shape == (1, 30) and (half.height, half.width) == (9, 3) and half.num_routes == 1
    assert K.bidirectional_pattern(4).routes.tolist() == [[0, 1, 2, 3], [3, 2, 1, 0]]
    assert set(K.list_patterns()) >= {'cross', 'bidirectional', 'unidirectional', 'atrous'}
    x = torch.randn(2, 3, 2, 3)
    assert torch.equal(K.cross_merge(K.cross_scan(x, cross), cross), 4 * x)


@pytest.mark.parametrize('make', [lambda: K.cross_pattern(3, 5), lambda: K.bidirectional_pattern(7),
                                  lambda: K.unidirectional_pattern(2, 3), lambda: K.cross_pattern(1, 4)])
def test_raster_cross_scan_and_merge_match_the_position_tables(make):
    """Raster patterns copy their routes as flips and transposes of the map; the same routes given as a plain table
    (no route kinds) take the gather / scatter-add path. Both give the same values and gradients, for a shared map
    and for one map per route."""
    pattern = make()
    table = K.custom_pattern(pattern.routes, pattern.height, pattern.width, 'table')
    assert pattern.route_kinds is not None and table.route_kinds is None
    gen = torch.Generator().manual_seed(5)
    shared = torch.randn(2, 3, pattern.height, pattern.width, generator=gen, dtype=torch.float64)
    per_route = torch.randn(2, pattern.num_routes, 3, pattern.height, pattern.width, generator=gen,
                            dtype=torch.float64)
    ys = torch.randn(2, pattern.num_routes, 3, pattern.route_length, generator=gen, dtype=torch.float64)
    for x in (shared, per_route):
        cot = torch.randn(2, pattern.num_routes, 3, pattern.route_length, generator=gen, dtype=torch.float64)
        outs, grads = [], []
        for p in (pattern, table):
            leaf = x.clone().requires_grad_(True)
            out = K.cross_scan(leaf, p)
            outs.append(out)
            grads.append(torch.autograd.grad(out, leaf, cot)[0])
        assert torch.equal(outs[0], outs[1]) and torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12)
    merged = [K.cross_merge(ys, p) for p in (pattern, table)]
    assert torch.allclose(merged[0], merged[1], rtol=0, atol=1e-12) and merged[0].is_contiguous()
    assert merged[0].data_ptr() != ys.data_ptr()


def test_route_ordered_operands_run_the_specialised_twins(monkeypatch):
    """Route-ordered (contiguous) operands launch the chunked kernels' twins specialised on the map size; routed
    operands the unspecialised kernels."""
    launched = []
    for name in ('_scan_chunk_fwd_kernel', '_scan_chunk_fwd_contiguous_kernel', '_scan_chunk_bwd_kernel',
                 '_scan_chunk_bwd_contiguous_kernel'):
        monkeypatch.setattr(ss, name, _Launches(name, getattr(ss, name), launched))
    u, delta, A, B, C, D, _, bias = [t if t is None else t.requires_grad_(True)
                                     for t in mamba_inputs(1, 4, 9, 1, 16, torch.float32, False, True, True)]
    K.selective_scan_fn(u, delta, A, B, C, D, delta_bias=bias, backend='triton').sum().backward()
    assert launched == ['_scan_chunk_fwd_contiguous_kernel', '_scan_chunk_bwd_contiguous_kernel']
    x, dlt = torch.randn(1, 4, 3, 3, requires_grad=True), torch.randn(1, 2, 4, 3, 3, requires_grad=True)
    Bm, Cm = torch.randn(1, 2, 16, 3, 3), torch.randn(1, 2, 16, 3, 3)
    routes = torch.stack([torch.arange(9), torch.arange(9).flip(0)])
    for min_state_dim, kernels in ((16, ['_scan_chunk_fwd_contiguous_kernel', '_scan_chunk_bwd_contiguous_kernel']),
                                   (17, ['_scan_chunk_fwd_kernel', '_scan_chunk_bwd_kernel'])):
        launched.clear()
        monkeypatch.setattr(ss, 'ROUTE_ORDERED_MIN_STATE_DIM', min_state_dim)  # copies into route order, or not
        K.multi_scan_2d(x, dlt, -torch.rand(8, 16), Bm, Cm, pattern=K.custom_pattern(routes, 3, 3),
                        backend='triton').sum().backward()
        assert launched == kernels


@pytest.mark.parametrize('pattern_name,shared,accumulate', [('custom_revisiting', True, True),
                                                            ('atrous', False, False), ('cross', True, False)])
def test_route_ordered_copies_match_the_routed_kernels(monkeypatch, pattern_name, shared, accumulate):
    """From ROUTE_ORDERED_MIN_STATE_DIM the chunked path copies the operands into route order (rows padded to a
    multiple of 16 that the kernels must ignore) and adds the outputs and gradients back at the routes' positions:
    the same values and gradients as the kernels reading through the route table, on routes that revisit positions,
    with one input per route and with separate route outputs, in batch slices (one per sample here: the
    per-sample gradients concatenated, the parameters' summed). Every buffer allocated uninitialised is poisoned."""
    pattern = PATTERN_FACTORIES[pattern_name]()
    num_routes, positions, dim = pattern.num_routes, pattern.num_positions, 3
    operands = routed_inputs(pattern, dim, 2, torch.float32, shared=shared, batch=2)
    x, delta, A, B, C, D, bias = (t.detach() for t in operands)
    inputs = [t.requires_grad_(True) for t in (
        x.reshape(2, -1, dim, positions), delta.flatten(3), A.view(num_routes, dim, -1), B.flatten(3), C.flatten(3),
        D.view(num_routes, dim), bias.view(num_routes, dim))]
    gen = torch.Generator().manual_seed(2)
    results = []
    for min_state_dim in (1, 3):  # route-ordered copies (d_state 2 >= 1), then the routed kernels
        monkeypatch.setattr(ss, 'ROUTE_ORDERED_MIN_STATE_DIM', min_state_dim)
        monkeypatch.setattr(ss, 'ROUTE_ORDER_SLICE_BYTES', 1)
        real_empty = torch.empty
        monkeypatch.setattr(torch, 'empty', lambda *a, **k: real_empty(*a, **k).fill_(float('nan')))
        copies, merges = [], []
        real_copy = ss._to_route_order
        monkeypatch.setattr(ss, '_to_route_order', lambda *a: copies.append(1) or real_copy(*a))
        for name in ('_route_merge_kernel', '_route_scatter_kernel'):
            monkeypatch.setattr(ss, name, _Launches(name, getattr(ss, name), merges))
        y, last = K.scan_routes(*inputs[:5], D=inputs[5], delta_bias=inputs[6], routes=pattern.routes_on('cpu'),
                                delta_softplus=True, accumulate=accumulate, return_last_state=True, backend='triton')
        if not results:
            cot, cot_last = torch.randn(y.shape, generator=gen), torch.randn(last.shape, generator=gen)
        grads = torch.autograd.grad((y * cot).sum() + (last * cot_last).sum(), inputs)
        monkeypatch.undo()
        assert len(copies) == (2 * (4 + 5) if min_state_dim == 1 else 0)  # two slices: 4 operands, then dy too
        # Routes that visit a position once gather their sums; a revisiting one adds atomically.
        merge = '_route_scatter_kernel' if pattern_name == 'custom_revisiting' else '_route_merge_kernel'
        assert set(merges) == ({merge} if copies else set())
        results.append((y, last, *grads))
    kept_inverse = pattern.routes_on('cpu')._vmamba_zoo_inverse  # decided once per routes tensor
    assert (kept_inverse[1] is None) == (pattern_name == 'custom_revisiting')
    ref = K.scan_routes_ref(*[t.detach().double() for t in inputs[:5]], D=inputs[5].detach().double(),
                            delta_bias=inputs[6].detach().double(), routes=pattern.routes, delta_softplus=True,
                            accumulate=accumulate)
    assert_close(results[0][0], ref, torch.float32, 'y')
    for name, got, want in zip('y last_state du ddelta dA dB dC dD dbias'.split(), *results):
        assert_close(got, want, torch.float32, f'{name} route-ordered vs routed')


@pytest.mark.parametrize('call,message', [
    (lambda i: K.selective_scan_fn(i[0][:, :, :-1], *i[1:]), 'delta must have shape'),
    (lambda i: K.selective_scan_fn(i[0], i[1], i[2][:, :2], *i[3:]), 'B must have shape'),
    (lambda i: K.selective_scan_fn(i[0].long(), *i[1:]), 'u must be float16, bfloat16, float32 or float64'),
    (lambda i: K.selective_scan_fn(*i[:3], i[3].to('meta'), *i[4:]), 'B is on meta but u is on cpu'),
    (lambda i: K.selective_scan_fn(i[0], i[1], i[2].to(torch.complex64), *i[3:]), 'A must be real'),
    (lambda i: K.selective_scan_fn(i[0][0], *i[1:]), 'u must be a 3-D tensor'),
    (lambda i: K.selective_scan_fn(*i[:5], torch.ones(3)), 'D must have shape'),
    (lambda i: K.selective_scan_fn(*i[:5], delta_bias=torch.ones(3)), 'delta_bias must have shape'),
    (lambda i: K.selective_scan_fn(*i, backend='cuda'), "backend must be one of"),
])
def test_bad_input_names_the_argument(call, message):
    inputs = mamba_inputs(2, 4, 5, 2, 3, torch.float32, False, False, False)[:5]
    with pytest.raises((ValueError, TypeError), match=message):
        call(inputs)


def test_bad_patterns_and_maps():
    with pytest.raises(ValueError, match='unknown pattern'):
        K.get_pattern('zigzag', 3, 3)
    with pytest.raises(ValueError, match=r'positions in \[0, 6\)'):
        K.custom_pattern(torch.tensor([[0, 6]]), 2, 3)
    with pytest.raises(ValueError, match='multiples of step'):
        K.atrous_pattern(5, 4, 2)
    pattern = K.cross_pattern(3, 4)
    x, delta, A, B, C, D, bias = routed_inputs(pattern, 2, 1, torch.float32)
    with pytest.raises(ValueError, match='delta must have shape'):
        K.multi_scan_2d(x, delta[:, :2], A, B, C, D, pattern=pattern)
    with pytest.raises(ValueError, match='pattern cross is for 3x4'):
        K.multi_scan_2d(x[..., :3], delta, A, B, C, D, pattern=pattern)
    with pytest.raises(ValueError, match=r'B must have shape \(batch=1, K=4, N=1, 3, 4\)'):
        K.multi_scan_2d(x, delta, A, B.expand(1, 4, 2, 3, 4), C, D, pattern=pattern)
    with pytest.raises(ValueError, match=r'A must have shape \(8, N\) or \(4, 2, N\)'):
        K.multi_scan_2d(x, delta, A[:6], B, C, D, pattern=pattern)
    with pytest.raises(ValueError, match=r'delta_bias must have shape \(8,\) or \(4, 2\)'):
        K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias[:4], pattern=pattern)
    with pytest.raises(TypeError, match='B must be float16, bfloat16, float32 or float64'):
        K.multi_scan_2d(x, delta, A, B.int(), C, D, pattern=pattern, backend='triton')


@pytest.mark.parametrize('dtype,shared', [(torch.float32, True), (torch.float16, True), (torch.float32, False)])
def test_multi_scan_2d_eager_call_is_one_autograd_node(dtype, shared):
    """A plain eager ``multi_scan_2d`` on the Triton raster kernels records one autograd node on the map-shaped
    operands as given (A as (K * D, N), D and the bias flat, x shared by the routes or one per route), not views of
    them; the gradients come back in the operands' shapes and dtypes, as the op-by-op path (``scan_routes`` on views)
    gives them."""
    pattern = K.cross_pattern(5, 8)
    inputs = routed_inputs(pattern, 3, 1, dtype, shared=shared, batch=2)

    def scan(*operands):
        x, delta, A, B, C, D, bias = operands
        return K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                               backend='triton')

    y = scan(*inputs)
    assert type(y.grad_fn).__name__ == '_RasterScanEagerBackward'
    assert {type(node).__name__ for node, _ in y.grad_fn.next_functions if node is not None} == {'AccumulateGrad'}
    cotangent = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, cotangent)
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    ref = K.multi_scan_2d(*ref_inputs[:6], delta_bias=ref_inputs[6], delta_softplus=True, pattern=pattern,
                          fused=False, backend='torch')
    ref_grads = torch.autograd.grad(ref, ref_inputs, cotangent.double())
    assert_close(y, ref, torch.float32, 'y')
    for name, t, g, r in zip(('dx', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias'), inputs, grads, ref_grads):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert_close(g, r, g.dtype, name)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(ss, 'triton_interpreting', lambda: False)
    inputs = mamba_inputs(1, 2, 3, 0, 1, torch.float32, False, False, False)[:5]
    with pytest.raises(RuntimeError, match='TRITON_INTERPRET=1'):
        K.selective_scan_fn(*inputs, backend='triton')


@pytest.mark.parametrize('fused,backend', [(True, 'torch'), (False, 'torch'), (True, 'triton'), (False, 'triton')])
def test_flops_are_counted_the_same_on_every_path(fused, backend):
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    pattern = K.cross_pattern(3, 4)
    inputs = [t.detach() for t in routed_inputs(pattern, 5, 2, torch.float32)]

    class Scan(torch.nn.Module):
        def forward(self, x, delta, A, B, C, D, bias):
            return K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                                   fused=fused, backend=backend)

    expected = 9 * 1 * 12 * (4 * 5) * 2 + 1 * (4 * 5) * 12
    assert expected == K.selective_scan_flops(1, 12, 20, 2, with_D=True)
    counted = FlopCountAnalysis(Scan(), tuple(inputs)).set_op_handle(**K.fvcore_op_handles())
    counted.unsupported_ops_warnings(False)
    assert counted.total() == expected and counted.by_operator()['scan_routes_fwd'] == expected
    with FlopCounterMode(display=False) as counter:
        Scan()(*inputs)
    assert counter.get_total_flops() == expected


def test_kernels_import_without_triton_and_no_top_level_module(tmp_path):
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import torch, importlib.util\n"
        "import vmamba_zoo.kernels as K\n"
        "assert not K.HAS_TRITON\n"
        "u = torch.randn(1, 2, 5); A = -torch.ones(2, 1); B = torch.randn(1, 1, 5)\n"
        "out = K.selective_scan_fn(u, u, A, B, B)\n"
        "assert torch.allclose(out, K.selective_scan_ref(u, u, A, B, B), atol=1e-5)\n"
        "assert importlib.util.find_spec('kernels') is None, 'a top-level kernels module is installed'\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path,
                          env={'PATH': '', 'TRITON_INTERPRET': '0'})
    assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stderr[-2000:]


@pytest.mark.parametrize('model_name', ['vmamba_tiny_s1l8', 'efficient_vmamba_tiny', 'vim_tiny_patch16_224'])
def test_inference_mode_then_training_in_one_process(model_name):
    """Index tensors cached during an inference-mode forward must not break a later training step."""
    import timm

    model = timm.create_model(model_name, num_classes=3)
    x = torch.randn(1, 3, 80, 48)  # a size no other test uses, so the caches are built under inference mode here
    with torch.inference_mode():
        model.eval()(x)
    loss = model.train()(x).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('state_dim', [1, 16])
def test_triton_scan_takes_routes_made_in_inference_mode(state_dim):
    """Routes built under ``torch.inference_mode()`` are inference tensors, which have no version counter to key the
    answers the scan keeps on its routes by: it keeps none and still answers (an H200 run of EfficientVMamba's
    inference failed with "Inference tensors do not track version counter")."""
    pattern = K.atrous_pattern(4, 6, 2)  # d_state 16 runs route-ordered copies, which read the routes' inverse
    x, delta, A, B, C, D, bias = (t.detach() for t in routed_inputs(pattern, 3, state_dim, torch.float32, shared=False))
    num_routes, positions = pattern.num_routes, pattern.height * pattern.width
    with torch.inference_mode():
        routes = pattern.routes.to(torch.int32) + 0
        assert routes.is_inference()

        def scan(backend):
            return K.scan_routes(x.reshape(1, num_routes, 3, positions), delta.flatten(3),
                                 A.view(num_routes, 3, state_dim), B.flatten(3), C.flatten(3), D.view(num_routes, 3),
                                 bias.view(num_routes, 3), routes=routes, delta_softplus=True, accumulate=False,
                                 backend=backend)
        out, expected = scan('triton'), scan('torch')
    assert_close(out, expected, torch.float32, 'y')
    assert not hasattr(routes, '_vmamba_zoo_inverse') and not hasattr(routes, '_vmamba_zoo_revisits')


def test_patterns_first_built_on_the_meta_device_serve_real_tensors():
    with torch.device('meta'):
        meta_pattern = K.cross_pattern(7, 9)  # a size no other test uses: this call fills the cache
    assert meta_pattern.routes.device.type == 'cpu'
    inputs = [t.detach() for t in routed_inputs(meta_pattern, 2, 1, torch.float32)]
    out = K.multi_scan_2d(*inputs[:6], delta_bias=inputs[6], pattern=K.cross_pattern(7, 9), backend='torch')
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------------
# Raster kernels (rows and columns walked forward or backward): whole-map and row-walk forwards, whole-map and chunked
# backwards, selected by map size, and the row-walk backward; each is forced here through the module's switches.
# ---------------------------------------------------------------------------------------------------------------------
RASTER_KERNELS = {
    'whole_map': dict(WHOLE_MAP_FWD_MAX_TILE=1 << 20, WHOLE_MAP_BWD_MAX_TILE=1 << 20),
    'row_walk_chunked_bwd': dict(WHOLE_MAP_FWD_MAX_TILE=0, WHOLE_MAP_BWD_MAX_TILE=0, ROW_WALK_BACKWARD=False),
    'row_walk': dict(WHOLE_MAP_FWD_MAX_TILE=0, WHOLE_MAP_BWD_MAX_TILE=0, ROW_WALK_BACKWARD=True),
}


def _run_raster(pattern, inputs, backend, accumulate=True):
    """``scan_routes`` along ``pattern`` on ``routed_inputs(pattern, 3, ...)`` of batch 2: (y, states, last state)."""
    x, delta, A, B, C, D, bias = inputs
    num_routes, positions = pattern.num_routes, pattern.height * pattern.width
    return K.scan_routes(
        x.reshape(2, -1, 3, positions), delta.flatten(3), A.view(num_routes, 3, -1), B.flatten(3), C.flatten(3),
        D.view(num_routes, 3), bias.view(num_routes, 3), routes=pattern.routes_on('cpu'), delta_softplus=True,
        accumulate=accumulate, return_states=True, return_last_state=True, backend=backend,
        route_kinds=pattern.route_kinds, map_hw=(pattern.height, pattern.width))


@pytest.mark.parametrize('kernel', sorted(RASTER_KERNELS))
@pytest.mark.parametrize('pattern,state_dim,shared,accumulate', [
    (K.cross_pattern(5, 7), 1, True, True),
    (K.cross_pattern(4, 6), 3, True, True),
    (K.cross_pattern(6, 3), 2, False, False),
    (K.bidirectional_pattern(9), 2, True, True),
    (K.unidirectional_pattern(3, 7), 1, False, False),
    (K.cross_pattern(2, 100), 1, True, True),
    (K.cross_pattern(70, 3), 1, True, True),
], ids=['cross5x7', 'cross4x6_N3', 'cross6x3_per_route', 'bidirectional9', 'unidirectional3x7', 'cross_wide2x100',
        'cross_tall70x3'])
def test_raster_kernels_match_reference(monkeypatch, kernel, pattern, state_dim, shared, accumulate):
    for name, value in RASTER_KERNELS[kernel].items():
        monkeypatch.setattr(ss, name, value)
    inputs = routed_inputs(pattern, 3, state_dim, torch.float32, shared=shared, batch=2)
    outs = _run_raster(pattern, inputs, 'triton', accumulate)
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    refs = _run_raster(pattern, ref_inputs, 'torch', accumulate)
    for name, out, ref in zip(('y', 'states', 'last_state'), outs, refs):
        assert_close(out, ref, torch.float32, name)
    cotangents = [torch.randn_like(ref) for ref in refs]
    grads = torch.autograd.grad(outs, inputs, [c.float() for c in cotangents])
    ref_grads = torch.autograd.grad(refs, ref_inputs, cotangents)
    for name, g, r in zip(('dx', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias'), grads, ref_grads):
        assert_close(g, r, torch.float32, name)


@settings(max_examples=6, deadline=None)
@given(height=st.integers(1, 9), width=st.integers(1, 9), state_dim=st.integers(1, 2),
       kernel=st.sampled_from(sorted(RASTER_KERNELS)))
def test_raster_cross_matches_reference_on_any_map(height, width, state_dim, kernel):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in RASTER_KERNELS[kernel].items():
            patch.setattr(ss, name, value)
        pattern = K.cross_pattern(height, width)
        inputs = routed_inputs(pattern, 3, state_dim, torch.float32, batch=2)
        y = _run_raster(pattern, inputs, 'triton')[0]
        ref = _run_raster(pattern, [t.detach().double() for t in inputs], 'torch')[0]
        assert_close(y, ref, torch.float32, 'y')


@pytest.mark.parametrize('kernel', sorted(RASTER_KERNELS))
def test_raster_kernels_write_every_output_element(monkeypatch, kernel):
    for name, value in RASTER_KERNELS[kernel].items():
        monkeypatch.setattr(ss, name, value)
    real_empty, real_empty_strided = torch.empty, torch.empty_strided
    monkeypatch.setattr(torch, 'empty', lambda *a, **k: real_empty(*a, **k).fill_(float('nan')))
    monkeypatch.setattr(torch, 'empty_strided', lambda *a, **k: real_empty_strided(*a, **k).fill_(float('nan')))
    pattern = K.cross_pattern(5, 6)
    inputs = routed_inputs(pattern, 3, 2, torch.float32, batch=2)
    outs = _run_raster(pattern, inputs, 'triton')
    for name, t in zip(('y', 'states', 'last_state'), outs):
        assert torch.isfinite(t).all(), f'{name} has unwritten elements'
    grads = torch.autograd.grad(sum(t.sum() for t in outs), inputs)
    assert all(torch.isfinite(g).all() for g in grads)


def _channel_last(t: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """The same values as ``t`` with the dims from ``channel_dim`` on moved last in memory (an NHWC copy)."""
    order = list(range(t.dim()))
    spatial = order[channel_dim + 1:]
    stored = t.permute(*order[:channel_dim], *spatial, channel_dim).contiguous()
    inverse = [0] * t.dim()
    for position, dim in enumerate(order[:channel_dim] + spatial + [channel_dim]):
        inverse[dim] = position
    return stored.permute(*inverse)


@pytest.mark.parametrize('kernel,state_dim,shared',
                         [('row_walk', 1, True), ('whole_map', 1, True), ('row_walk', 2, False)])
def test_raster_kernels_read_and_write_channel_last_maps(monkeypatch, kernel, state_dim, shared):
    """NHWC input and (batch, H, W, K, D) step sizes (the layouts of a channel-last model) are read in place by the
    row walk, which returns an NHWC output and NHWC gradients; other kernels copy them. Same values either way."""
    for name, value in RASTER_KERNELS[kernel].items():
        monkeypatch.setattr(ss, name, value)
    pattern = K.cross_pattern(5, 7)
    x, delta, A, B, C, D, bias = [t.detach() for t in routed_inputs(pattern, 4, state_dim, torch.float32,
                                                                    shared=shared, batch=2)]
    x_last = _channel_last(x, x.dim() - 3).requires_grad_(True)  # channels adjacent in memory
    stored = delta.permute(0, 3, 4, 1, 2).contiguous()  # (2, 5, 7, K, 4): route-major channels per position
    delta_last = stored.permute(0, 3, 4, 1, 2).requires_grad_(True)
    assert x_last.stride(-3) == 1 and delta_last.stride(2) == 1
    y = K.multi_scan_2d(x_last, delta_last, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern=pattern,
                        backend='triton')
    x_ref, delta_ref = x.double().requires_grad_(True), delta.double().requires_grad_(True)
    ref = K.multi_scan_2d(x_ref, delta_ref, A.double(), B.double(), C.double(), D.double(),
                          delta_bias=bias.double(), delta_softplus=True, pattern=pattern, backend='torch')
    assert_close(y, ref, torch.float32, 'y')
    assert (y.stride(1) == 1) == (kernel == 'row_walk'), f'y strides {y.stride()}'
    cotangent = torch.randn_like(ref)
    dx, ddelta = torch.autograd.grad(y, (x_last, delta_last), cotangent.float())
    dx_ref, ddelta_ref = torch.autograd.grad(ref, (x_ref, delta_ref), cotangent)
    assert_close(dx, dx_ref, torch.float32, 'dx')
    assert_close(ddelta, ddelta_ref, torch.float32, 'ddelta')


@pytest.mark.parametrize('layout', ['nchw', 'nhwc'])
def test_row_walk_forward_runs_one_fixed_program_per_stage(monkeypatch, layout):
    """The forward's pruner keeps exactly the swept program at every VMamba-T stage (no autotuning, and no silent
    fallback to the first configuration because the wanted one is missing from the list)."""
    monkeypatch.setattr(ss, 'triton_interpreting', lambda: False)
    configs = ss._raster_rows_configs()
    prune = ss._row_walk_pruner(ss._row_walk_fwd_program, ss._row_walk_fwd_channel_last_program)
    expected = {'nchw': {64: (1, 1), 32: (1, 1), 16: (2, 1), 8: (16, 2)},
                'nhwc': {64: (8, 4), 32: (16, 4), 16: (32, 4), 8: (32, 8)}}[layout]
    for dim, lanes in ((96, 64), (192, 32), (384, 16), (768, 8)):
        stride_d = 1 if layout == 'nhwc' else lanes * lanes
        kept = prune(configs, dict(D=dim, NP=1, LANES=lanes, stride_u_d=stride_d))
        assert [(c.kwargs['BLOCK_D'], c.num_warps, c.kwargs['NUM_STAGES']) for c in kept] == \
            [expected[lanes] + (1,)], (dim, lanes)


@pytest.mark.parametrize('cap', [80, None])
def test_row_walk_backward_runs_one_fixed_program_per_stage(monkeypatch, cap):
    """The backward's pruner keeps exactly one program at every VMamba-T stage on NCHW maps: 128 elements on one
    warp for rows of 32 lanes and more, 64 below (no autotuning, whose compiles cost 10-12 s per stage), with its
    registers capped at ``ROW_WALK_BWD_MAX_REGISTERS`` (None: uncapped). The channel-last programs stay uncapped, and
    the configuration list itself is left as it was."""
    monkeypatch.setattr(ss, 'triton_interpreting', lambda: False)
    monkeypatch.setattr(ss, 'ROW_WALK_BWD_MAX_REGISTERS', cap)
    configs = ss._raster_rows_configs()
    prune = ss._row_walk_pruner(ss._row_walk_bwd_programs, ss._row_walk_bwd_channel_last_programs)
    for dim, lanes, block_d in ((96, 64, 2), (192, 32, 4), (384, 16, 4), (768, 8, 8)):
        kept = prune(configs, dict(D=dim, NP=1, LANES=lanes, stride_u_d=lanes * lanes))
        assert [(c.kwargs['BLOCK_D'], c.num_warps, c.kwargs['NUM_STAGES'], c.maxnreg) for c in kept] == \
            [(block_d, 1, 1, cap)], (dim, lanes)
    kept = prune(configs, dict(D=192, NP=1, LANES=32, stride_u_d=1))
    assert len(kept) == 3 and all(c.maxnreg is None for c in kept)
    assert all(c.maxnreg is None for c in configs)


def raster_pattern(height, width, kinds):
    """A user-defined pattern of whole-map raster walks of the given kinds (``ScanPattern.route_kinds``)."""
    rows = torch.arange(height * width)
    columns = rows.view(height, width).t().reshape(-1)
    walks = {0: rows, 1: columns, 2: rows.flip(0), 3: columns.flip(0)}
    return K.ScanPattern('raster' + ''.join(map(str, kinds)), height, width,
                         torch.stack([walks[kind] for kind in kinds]), tuple(kinds))


VECTOR_CASES = [  # pattern, input dtype, map of the plan (row-only patterns run rows of up to 64 lanes)
    (K.cross_pattern(5, 8), torch.float32),
    (K.cross_pattern(4, 6), torch.float16),
    (K.cross_pattern(3, 16), torch.float16),
    (K.cross_pattern(6, 4), torch.float32),
    (K.cross_pattern(5, 7), torch.float32),  # an odd width: one lane per thread
    (K.bidirectional_pattern(4, 16), torch.float32),
    (K.unidirectional_pattern(2, 64), torch.float16),
    # Two column routes in the group walked top to bottom (two scratch slabs), one in the other, a reversed row route.
    (raster_pattern(5, 8, (3, 1, 1, 2)), torch.float32),
    # Routes walked bottom to top only: the forward's one output walk is its second, which then adds the skip term.
    (raster_pattern(4, 8, (2, 3)), torch.float16),
]


@pytest.mark.parametrize('pattern,dtype', VECTOR_CASES,
                         ids=['cross5x8', 'cross4x6_fp16', 'cross3x16_fp16', 'cross6x4', 'cross5x7', 'bidirectional',
                              'unidirectional_fp16', 'raster3112', 'raster23_fp16'])
def test_vector_row_walk_matches_the_row_walk_and_reference(monkeypatch, pattern, dtype):
    """At d_state 1 on a shared NCHW input the forward runs the vectorised row walk (several lanes per thread): y and
    the last state match the float64 reference and the one-lane row walk, and every output element is written
    (poisoned buffers). Gradients of y and the last state run the row-walk backward from the states the vectorised
    forward kept; gradients of y alone run the vectorised backward; both match the reference."""
    for name, value in RASTER_KERNELS['row_walk'].items():
        monkeypatch.setattr(ss, name, value)
    launched = []
    real_vector_walk = ss._vector_walk
    monkeypatch.setattr(ss, '_vector_walk', lambda *a, **k: launched.append(real_vector_walk(*a, **k)) or launched[-1])
    x, delta, A, B, C, D, bias = routed_inputs(pattern, 3, 1, dtype, batch=2)
    num_routes, positions = pattern.num_routes, pattern.height * pattern.width

    def scan(vector, *inputs):
        monkeypatch.setattr(ss, 'VECTOR_ROW_WALK', vector)
        x, delta, A, B, C, D, bias = inputs
        return K.scan_routes(
            x.reshape(2, 1, 3, positions), delta.flatten(3), A.view(num_routes, 3, 1), B.flatten(3), C.flatten(3),
            D.view(num_routes, 3), bias.view(num_routes, 3), routes=pattern.routes_on('cpu'), delta_softplus=True,
            accumulate=True, return_last_state=True, backend='triton' if inputs[0].dtype != torch.float64 else 'torch',
            route_kinds=pattern.route_kinds, map_hw=(pattern.height, pattern.width))

    inputs = (x, delta, A, B, C, D, bias)
    real_empty, real_empty_strided = torch.empty, torch.empty_strided
    monkeypatch.setattr(torch, 'empty', lambda *a, **k: real_empty(*a, **k).fill_(float('nan')))
    monkeypatch.setattr(torch, 'empty_strided', lambda *a, **k: real_empty_strided(*a, **k).fill_(float('nan')))
    vector = scan(True, *inputs)
    assert launched and launched[-1] is not None, 'the vectorised row walk did not run'
    launched.clear()
    row_walk = scan(False, *inputs)
    assert not launched or launched[-1] is None
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    ref = scan(True, *ref_inputs)
    for name, out, one_lane, expected in zip(('y', 'last_state'), vector, row_walk, ref):
        assert_close(out, expected, torch.float32, name)
        torch.testing.assert_close(out, one_lane, rtol=1e-5, atol=1e-5, msg=name)
    cotangents = [torch.randn_like(t) for t in ref]
    # With the last state's gradient the row-walk backward runs; with y's alone, the vectorised backward.
    backward_calls = []
    real_launch = ss._LAUNCH['_vector_rows_bwd_kernel']
    du_position = 1 + len(inputs) + 3  # grid, the inputs, entering, dy, scratch, then du
    monkeypatch.setitem(ss._LAUNCH, '_vector_rows_bwd_kernel', lambda *a, **k: backward_calls.append(
        (k.get('maxnreg'), a[du_position].dtype)) or real_launch(*a, **k))
    for outputs, expected, dy in ((vector, ref, cotangents), (vector[:1], ref[:1], cotangents[:1])):
        grads = torch.autograd.grad(outputs, inputs, [c.float() for c in dy], retain_graph=True)
        ref_grads = torch.autograd.grad(expected, ref_inputs, dy, retain_graph=True)
        for name, g, r in zip(('dx', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias'), grads, ref_grads):
            assert_close(g, r, g.dtype, name)  # half-precision inputs get half-precision gradients
    # Its registers are capped where a thread holds several lanes (the compiler keeps one lane's at 64); it stores du
    # in x's dtype, which the eager autograd node would otherwise cast to.
    lanes_per_thread = launched[-1][1]  # the vectorised backward's answer: the last call asked
    expected_cap = ss.VECTOR_ROW_WALK_BWD_MAX_REGISTERS if lanes_per_thread > 1 else None
    assert backward_calls == [(expected_cap, dtype)], \
        'the vectorised backward ran for the wrong calls, with the wrong cap or with du in the wrong dtype'


@pytest.mark.parametrize('kinds,expected', [
    ((0, 1, 2, 3), (0b11, 0, 1)),  # VMamba's cross: one column route in each walk
    ((3, 1, 1, 2), (0b11, 1 << 4, 2)),  # two column routes in the bottom-to-top walk take slabs 0 and 1
    ((0, 2), (0b11, 0, 0)),  # bidirectional: rows only
    ((0,), (0b01, 0, 0)),
    ((3,), (0b10, 0, 1)),
])
def test_vector_backward_groups_routes_by_walk(kinds, expected):
    """The vectorised backward runs the adjoints of kinds 0 and 1 in its first walk and of kinds 2 and 3 in its
    second; column routes of one walk get distinct scratch slabs."""
    packed = sum(kind << (2 * k) for k, kind in enumerate(kinds))
    assert ss._walk_groups(packed, len(kinds)) == expected


def test_vector_walks_cap_registers_only_with_several_lanes_per_thread():
    assert ss._register_cap(128, 4) == {'maxnreg': 128}
    assert ss._register_cap(128, 1) == {} and ss._register_cap(None, 4) == {}


def test_vector_row_walk_applies_only_where_it_can():
    """The vectorised forward takes d_state 1, one input map shared by the routes in NCHW order, a merged output,
    delta with adjacent positions and whole-map strides, and rows that fill the map; anything else runs the
    one-lane row walk."""
    pattern = K.cross_pattern(4, 8)
    plan = ss._raster_plan(3, 32, pattern.route_kinds, (4, 8), 1)
    u, delta = torch.zeros(2, 1, 3, 32), torch.zeros(2, 4, 3, 32)
    B = C = torch.zeros(2, 4, 1, 32)
    y = torch.zeros(2, 3, 32)
    threads, lanes, channels, strides = ss._vector_walk(u, delta, B, C, y, plan, 1, True, False)
    assert (threads * lanes, strides) == (plan[3], (4 * 3, 3, 1))
    model_delta = torch.zeros(4, 3, 2, 32).permute(2, 0, 1, 3)  # (K, D, B, H * W) in memory, as SS2D's dt_proj
    assert ss._vector_walk(u, model_delta, B, C, y, plan, 1, True, False)[3] == (1, 3 * 2, 2)
    refused = {
        'd_state 2': (u, delta, B, C, y, plan, 2, True, False),
        'per-route input': (torch.zeros(2, 4, 3, 32), delta, B, C, y, plan, 1, True, False),
        'separate outputs': (u, delta, B, C, torch.zeros(2, 4, 3, 32), plan, 1, False, False),
        'states returned': (u, delta, B, C, y, plan, 1, True, True),
        'channel-last input': (torch.zeros(2, 32, 1, 3).permute(0, 2, 3, 1), delta, B, C, y, plan, 1, True, False),
        'strided delta': (u, torch.zeros(2, 4, 3, 64)[..., ::2], B, C, y, plan, 1, True, False),
        'short last row': (u[..., :30], delta[..., :30], B[..., :30], C[..., :30], y[..., :30],
                           ss._raster_plan(3, 30, (0,), (1, 30), 1), 1, True, False),
    }
    for what, args in refused.items():
        assert ss._vector_walk(*args) is None, what


@pytest.mark.parametrize('height,width,layout,widest,expected', [
    (56, 56, 'nchw', 2, 4), (28, 28, 'nchw', 4, 4), (14, 14, 'nchw', 2, 2), (7, 7, 'nchw', 2, 1),
    (56, 56, 'nhwc', 2, 1), (4, 4, 'nchw', 8, 2)])
def test_row_walk_backward_alignment_follows_the_layout(monkeypatch, height, width, layout, widest, expected):
    """The one-lane backward is told its rows start V-aligned only on NCHW maps whose width and strides V divides,
    with V at most ``VECTOR_WALK_LANES`` and 16 bytes of the widest operand; ``ROW_WALK_BWD_ALIGNED`` turns it off."""
    positions = height * width
    u = torch.zeros(2, 1, 3, positions)
    delta = torch.zeros(2, 4, 3, positions)
    if layout == 'nhwc':
        u = torch.zeros(2, positions, 1, 3).permute(0, 2, 3, 1)
        delta = torch.zeros(2, positions, 4, 3).permute(0, 2, 3, 1)
    strides = ss._row_walk_strides(u, delta, torch.zeros(2, 3, positions), True)
    assert ss._row_walk_alignment(strides, positions, height, width, widest) == expected
    assert ss._row_walk_alignment(strides, positions + 1, height, width, widest) == 1  # a short last row
    monkeypatch.setattr(ss, 'ROW_WALK_BWD_ALIGNED', False)
    assert ss._row_walk_alignment(strides, positions, height, width, widest) == 1


class _WatchingMode(TorchDispatchMode):
    """A dispatch mode that only passes operators on, as a FLOP counter watching the scan would."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('kernel,accumulate,dtype', [
    ('row_walk', True, torch.float32), ('row_walk', False, torch.float32), ('whole_map', True, torch.float32),
    ('row_walk', True, torch.float16), ('whole_map', True, torch.float16)])
def test_raster_eager_paths_match_the_custom_op(monkeypatch, kernel, accumulate, dtype):
    """Eager training (an autograd.Function) and eager inference (no autograd node, none of the stores only the
    backward needs) skip the custom op that a watching dispatch mode gets. Outputs, the requested states and last
    state, and every input gradient equal the op's (in half precision too, where the eager backward stores ddelta in
    delta's dtype and the op casts its float32 one), every element written (poisoned buffers)."""
    for name, value in RASTER_KERNELS[kernel].items():
        monkeypatch.setattr(ss, name, value)
    pattern = K.cross_pattern(4, 6)
    inputs = routed_inputs(pattern, 3, 2, dtype, batch=2)

    def grads_of(outs):
        weights = [torch.linspace(-1, 1, t.numel()).view(t.shape) for t in outs]
        return torch.autograd.grad(sum((t * w).sum() for t, w in zip(outs, weights)), inputs)

    with _WatchingMode():
        with_op = _run_raster(pattern, inputs, 'triton', accumulate)
        op_grads = grads_of(with_op)
        op_last_state_grads = grads_of(_run_raster(pattern, inputs, 'triton', accumulate)[2:])
    real_empty, real_op = torch.empty, ss._scan_routes_fwd_op
    monkeypatch.setattr(torch, 'empty', lambda *a, **k: real_empty(*a, **k).fill_(float('nan')))
    calls = []
    monkeypatch.setattr(ss, '_scan_routes_fwd_op', lambda *a, **k: calls.append(1) or real_op(*a, **k))
    eager = _run_raster(pattern, inputs, 'triton', accumulate)
    eager_grads = grads_of(eager)
    eager_last_state_grads = grads_of(_run_raster(pattern, inputs, 'triton', accumulate)[2:])  # y unused: dy None
    with torch.no_grad():
        plain = _run_raster(pattern, inputs, 'triton', accumulate)
    assert not calls, 'an eager call went through the custom op'
    for name, a, b, c in zip(('y', 'states', 'last_state'), plain, eager, with_op):
        torch.testing.assert_close(a, c, msg=f'inference {name}')
        torch.testing.assert_close(b, c, msg=f'training {name}')
    for name, a, b in zip(('x', 'delta', 'A', 'B', 'C', 'D', 'delta_bias'), eager_grads, op_grads):
        torch.testing.assert_close(a, b, msg=f'd{name}')
    for name, a, b in zip(('x', 'delta', 'A', 'B', 'C', 'D', 'delta_bias'), eager_last_state_grads,
                          op_last_state_grads):
        torch.testing.assert_close(a, b, msg=f'd{name} through the last state only')
    if accumulate:
        with torch.no_grad():
            y_only = K.multi_scan_2d(*inputs[:6], delta_bias=inputs[6], delta_softplus=True, pattern=pattern,
                                     backend='triton')
        torch.testing.assert_close(y_only, with_op[0].view(y_only.shape))


OPCHECK_CASES = [  # kernel switches, map, route kinds (None: the chunked kernels), channel-last input, return_states,
    # d_state
    ('torch', {}, (3, 5), [0, 1, 2, 3], False, False, 2),
    ('torch_states', {}, (3, 5), [0, 1, 2, 3], False, True, 2),
    ('row_walk', RASTER_KERNELS['row_walk'], (3, 5), [0, 1, 2, 3], True, True, 2),
    ('vector_row_walk', RASTER_KERNELS['row_walk'], (3, 4), [0, 1, 2, 3], False, False, 1),
    ('whole_map', RASTER_KERNELS['whole_map'], (3, 5), [0, 1, 2, 3], False, False, 2),
    ('chunked', {}, (3, 5), None, False, True, 2),
]


@pytest.mark.parametrize('case', OPCHECK_CASES, ids=[case[0] for case in OPCHECK_CASES])
def test_scan_custom_ops_pass_opcheck(monkeypatch, case):
    """torch.compile (inductor) runs the scan through its custom ops: their fakes must give every output's exact
    shape, strides and storage offset, and the outputs must be defined everywhere (AOT tracing compares them whole).
    A wrong fake fails only inside a compiled model, at run time (inductor asserts the strides it planned for)."""
    name, switches, (height, width), route_kinds, channel_last, return_states, state_dim = case
    for switch, value in switches.items():
        monkeypatch.setattr(ss, switch, value)
    pattern = K.cross_pattern(height, width)
    x, delta, A, B, C, D, bias = [t.detach() for t in routed_inputs(pattern, 3, state_dim, torch.float32, batch=2)]
    u = x.reshape(2, 1, 3, height * width)
    if channel_last:
        u = _channel_last(x, 1).reshape(2, 1, 3, height * width)
        assert u.stride(2) == 1
    args = [t.requires_grad_(True)
            for t in (u, delta.flatten(3), A.view(4, 3, state_dim), B.flatten(3), C.flatten(3), D.view(4, 3),
                      bias.view(4, 3))]
    backend = 'torch' if name.startswith('torch') else 'triton'
    args += [pattern.routes_on('cpu').to(torch.int32), True, True, return_states, backend, route_kinds,
             [height, width] if route_kinds else None]
    torch.library.opcheck(ss._scan_routes_fwd_op, args, test_utils=(
        'test_schema', 'test_autograd_registration', 'test_faketensor', 'test_aot_dispatch_dynamic'))


def test_layout_checks_kept_per_layout_answer_as_computed():
    """The row walk's layout checks are kept per (shape, strides): the same shape in another layout gets its own
    answer, and a kept answer equals a fresh one."""
    t = torch.zeros(2, 3, 4, 5)
    cases = [(t, True), (t.permute(0, 2, 1, 3), True), (t[..., ::2], False), (t[:, :1].expand(2, 3, 4, 5), False),
             (t.transpose(2, 3), True)]
    for _ in range(2):
        for tensor, dense in cases:
            assert ss._is_dense(tensor) is dense
            assert ss._layout_is_dense(tensor.shape, tensor.stride()) is dense
            assert ss._by_layout(ss._offsets_fit, tensor) is ss._offsets_fit(tensor.shape, tensor.stride())

    class Layout:  # a layout whose offsets inside one slab pass int32, without its memory
        shape = torch.Size((1, 1, 2, 2 ** 20))

        def stride(self):
            return (0, 0, 2 ** 31, 1)
    assert not ss._by_layout(ss._offsets_fit, Layout())


def test_compiled_raster_scan_builds_no_route_table(monkeypatch):
    """Compiled, the raster kernels get no route table (they walk the routes from route_kinds), so the graph does
    not rebuild one with arange/flip kernels on every call; values and gradients equal the eager call's."""
    import collections
    from torch._functorch.aot_autograd import aot_module_simplified
    for name, value in RASTER_KERNELS['row_walk'].items():
        monkeypatch.setattr(ss, name, value)
    graphs = []

    def counting_backend(module, example_inputs):
        def forward_compiler(graph_module, inputs):
            graphs.append(collections.Counter(str(node.target) for node in graph_module.graph.nodes
                                              if node.op == 'call_function'))
            return graph_module.forward
        return aot_module_simplified(module, example_inputs, fw_compiler=forward_compiler)

    def scan(x, delta, A, B, C, D, bias):
        return K.multi_scan_2d(x, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, pattern='cross',
                               backend='triton')

    pattern = K.cross_pattern(3, 5)
    inputs = routed_inputs(pattern, 3, 1, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(scan, backend=counting_backend, fullgraph=True)(*inputs)
    eager = scan(*inputs)
    torch.testing.assert_close(compiled, eager)
    assert not [op for op in graphs[0] if 'arange' in op or 'flip' in op], graphs[0]
    for got, expected in zip(torch.autograd.grad(compiled.sum(), inputs), torch.autograd.grad(eager.sum(), inputs)):
        torch.testing.assert_close(got, expected)


def test_raster_op_keeps_the_route_table_for_a_chunked_backward(monkeypatch):
    """A forward on the whole-map kernel keeps no entering states, so a backward too large for the whole-map
    backward runs the chunked kernels, which read the route table: the op must still receive it."""
    monkeypatch.setattr(ss, 'WHOLE_MAP_FWD_MAX_TILE', 1 << 20)
    monkeypatch.setattr(ss, 'WHOLE_MAP_BWD_MAX_TILE', 0)
    monkeypatch.setattr(ss, 'ROW_WALK_BACKWARD', True)
    pattern = K.cross_pattern(5, 7)
    inputs = routed_inputs(pattern, 3, 1, torch.float32, batch=2)
    with _WatchingMode():  # the op path, as under torch.compile
        grads = torch.autograd.grad(_run_raster(pattern, inputs, 'triton')[0].sum(), inputs)
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    ref_grads = torch.autograd.grad(_run_raster(pattern, ref_inputs, 'torch')[0].sum(), ref_inputs)
    for name, g, r in zip(('dx', 'ddelta', 'dA', 'dB', 'dC', 'dD', 'ddelta_bias'), grads, ref_grads):
        assert_close(g, r, torch.float32, name)


@pytest.mark.parametrize('kwargs,message', [
    (dict(route_kinds=[0, 1], map_hw=(2, 3)), 'route_kinds must hold K=4 codes'),
    (dict(route_kinds=[0, 1, 2, 5], map_hw=(2, 3)), 'route_kinds must hold K=4 codes'),
    (dict(route_kinds=[0, 1, 2, 3], map_hw=(3, 3)), 'map_hw must be'),
    (dict(route_kinds=[0, 1, 2, 3]), 'map_hw must be'),
])
def test_raster_arguments_are_checked(kwargs, message):
    pattern = K.cross_pattern(2, 3)
    x, delta, A, B, C, D, bias = routed_inputs(pattern, 3, 1, torch.float32)
    with pytest.raises(ValueError, match=message):
        K.scan_routes(x.reshape(1, 1, 3, 6), delta.flatten(3), A.view(4, 3, 1), B.flatten(3), C.flatten(3),
                      routes=pattern.routes_on('cpu'), **kwargs)


@pytest.mark.parametrize('rows,chunk', [(4, 16), (2, 64)])
def test_segmented_reverse_scan_matches_tritons_reverse_scan(rows, chunk):
    """``_reverse_linear_scan`` (in-lane flips, a scan of the segments' totals) computes what
    ``tl.associative_scan(..., reverse=True)`` computes, zero decays (route ends) included."""
    triton = pytest.importorskip('triton')
    import triton.language as tl

    @triton.jit
    def both(a_ptr, b_ptr, out_ptr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
        offsets = tl.arange(0, ROWS)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
        a, b = tl.load(a_ptr + offsets), tl.load(b_ptr + offsets)
        seg_a, seg_b = ss._reverse_linear_scan(a, b, ROWS, CHUNK, 8)
        ref_a, ref_b = tl.associative_scan((a, b), 1, ss._linear_recurrence_combine, reverse=True)
        size: tl.constexpr = ROWS * CHUNK
        tl.store(out_ptr + offsets, seg_a)
        tl.store(out_ptr + size + offsets, seg_b)
        tl.store(out_ptr + 2 * size + offsets, ref_a)
        tl.store(out_ptr + 3 * size + offsets, ref_b)

    gen = torch.Generator().manual_seed(rows * chunk)
    a = torch.rand(rows, chunk, generator=gen)
    a[:, -1] = 0.0  # the decay past a route's end
    a[0, chunk // 3] = 0.0
    b = torch.randn(rows, chunk, generator=gen)
    out = torch.full((4, rows, chunk), float('nan'))
    both[(1,)](a, b, out, ROWS=rows, CHUNK=chunk)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], out[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], out[3], rtol=1e-5, atol=1e-5)
